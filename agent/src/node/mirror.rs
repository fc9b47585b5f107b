//! A consumer's copy of a watch cache, and the change feed built on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axoneme_identity::{CacheEvent, Decode, WatchCache};
use tracing::{debug, info};

/// A change to one key of a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<V> {
    Added { key: String, value: V },
    Updated { key: String, old: V, new: V },
    Removed { key: String, old: V },
}

/// A consumer's copy of a cache: applies the cache's events and says what
/// changed. After `Resynced` it diffs against the snapshot, so changes missed
/// while the cache re-listed (or this consumer lagged) are still reported,
/// and events repeating what it already has report nothing.
#[derive(Debug, Clone)]
pub struct Mirror<V> {
    items: BTreeMap<String, V>,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Mirror {
            items: BTreeMap::new(),
        }
    }
}

impl<V: Clone + PartialEq> Mirror<V> {
    pub fn items(&self) -> &BTreeMap<String, V> {
        &self.items
    }

    pub fn upsert(&mut self, key: String, value: V) -> Option<Change<V>> {
        match self.items.insert(key.clone(), value.clone()) {
            None => Some(Change::Added { key, value }),
            Some(old) if old != value => Some(Change::Updated {
                key,
                old,
                new: value,
            }),
            Some(_) => None,
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Change<V>> {
        self.items.remove(key).map(|old| Change::Removed {
            key: key.to_string(),
            old,
        })
    }

    /// Replaces the copy with `snapshot`, returning the differences.
    pub fn resync(&mut self, snapshot: BTreeMap<String, V>) -> Vec<Change<V>> {
        let mut changes: Vec<Change<V>> = Vec::new();
        let gone: Vec<String> = self
            .items
            .keys()
            .filter(|k| !snapshot.contains_key(*k))
            .cloned()
            .collect();
        changes.extend(gone.iter().filter_map(|k| self.remove(k)));
        for (key, value) in snapshot {
            changes.extend(self.upsert(key, value));
        }
        changes
    }
}

impl<V: PartialEq> Mirror<Arc<V>> {
    /// Applies one cache event; `snapshot` is read only on `Resynced`.
    pub fn apply(
        &mut self,
        event: CacheEvent<V>,
        snapshot: impl FnOnce() -> BTreeMap<String, Arc<V>>,
    ) -> Vec<Change<Arc<V>>> {
        match event {
            CacheEvent::Upsert { key, value } => self.upsert(key, value).into_iter().collect(),
            CacheEvent::Delete { key, .. } => self.remove(&key).into_iter().collect(),
            CacheEvent::Resynced => self.resync(snapshot()),
        }
    }
}

/// Feeds `on_change` with a cache's changes: first its content once ready
/// (`initial` true), then every change, of the keys under `prefix` (the
/// copy it keeps holds only those). Never returns.
pub(super) async fn follow<V: Decode + PartialEq>(
    cache: &WatchCache<V>,
    prefix: &str,
    mut on_change: impl FnMut(Change<Arc<V>>, bool),
) {
    // Subscribe before reading the snapshot: nothing falls in between.
    let mut sub = cache.subscribe();
    cache.ready().await;
    let mut mirror = Mirror::default();
    for change in mirror.resync(cache.snapshot_prefix(prefix)) {
        on_change(change, true);
    }
    let stats = cache.stats();
    info!(
        items = stats.items,
        revision = stats.revision,
        "cache synced"
    );
    loop {
        let event = sub.recv().await;
        let resync = match &event {
            CacheEvent::Upsert { key, .. } | CacheEvent::Delete { key, .. } => {
                if !key.starts_with(prefix) {
                    continue;
                }
                false
            }
            CacheEvent::Resynced => true,
        };
        let changes = mirror.apply(event, || cache.snapshot_prefix(prefix));
        if resync {
            let stats = cache.stats();
            debug!(
                items = stats.items,
                resyncs = stats.resyncs,
                changes = changes.len(),
                "cache resynced"
            );
        }
        for change in changes {
            on_change(change, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(items: &[(&str, u32)]) -> BTreeMap<String, Arc<u32>> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), Arc::new(*v)))
            .collect()
    }

    #[test]
    fn mirror_reports_changes_once() {
        let mut m = Mirror::<Arc<u32>>::default();
        assert_eq!(
            m.apply(
                CacheEvent::Upsert {
                    key: "a".into(),
                    value: Arc::new(1)
                },
                || unreachable!()
            ),
            [Change::Added {
                key: "a".into(),
                value: Arc::new(1)
            }]
        );
        // A repeat (e.g. the initial list's event after the snapshot) is no change.
        assert!(m.upsert("a".into(), Arc::new(1)).is_none());
        assert_eq!(
            m.upsert("a".into(), Arc::new(2)),
            Some(Change::Updated {
                key: "a".into(),
                old: Arc::new(1),
                new: Arc::new(2)
            })
        );
        assert_eq!(
            m.apply(
                CacheEvent::Delete {
                    key: "a".into(),
                    prev: None
                },
                || unreachable!()
            ),
            [Change::Removed {
                key: "a".into(),
                old: Arc::new(2)
            }]
        );
        assert!(m.remove("a").is_none(), "deleting twice reports once");
    }

    #[test]
    fn mirror_diffs_on_resync() {
        let mut m = Mirror::default();
        m.resync(snap(&[("a", 1), ("b", 2), ("c", 3)]));
        let changes = m.apply(CacheEvent::Resynced, || {
            snap(&[("b", 2), ("c", 4), ("d", 5)])
        });
        assert_eq!(
            changes,
            [
                Change::Removed {
                    key: "a".into(),
                    old: Arc::new(1)
                },
                Change::Updated {
                    key: "c".into(),
                    old: Arc::new(3),
                    new: Arc::new(4)
                },
                Change::Added {
                    key: "d".into(),
                    value: Arc::new(5)
                },
            ]
        );
        assert_eq!(m.items(), &snap(&[("b", 2), ("c", 4), ("d", 5)]));
    }
}
