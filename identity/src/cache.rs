//! A watch-fed cache of one etcd prefix, with one writer task and many readers.
//!
//! The task lists the prefix, watches from the list's revision + 1, and after a
//! compaction or a broken stream lists again and diffs against what it had, so
//! subscribers see exactly the changes they missed. Subscribers are pushed
//! events; a subscriber that falls too far behind gets `Resynced` and re-reads
//! the snapshot. A value that fails to decode is logged and skipped (counted in
//! `decode_errors`); it never stops the watch.
//!
//! Each value is decoded once and held as an `Arc`: the items, the events
//! in flight and every reader's copy share it (an agent holds tens of
//! thousands of records; a copy per reader multiplied its memory).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axoneme_kvstore::{KeyValue, KvError, KvStore, WatchEvent};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

/// How values are decoded from etcd.
pub trait Decode: Clone + Send + Sync + 'static {
    fn decode(kv: &KeyValue) -> Result<Self, String>;
}

/// Raw values with their revision, for consumers that parse (and report
/// errors) themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl Decode for Raw {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        Ok(Raw {
            value: kv.value.clone(),
            mod_revision: kv.mod_revision,
        })
    }
}

/// A change pushed to subscribers.
#[derive(Debug, Clone)]
pub enum CacheEvent<V> {
    Upsert {
        key: String,
        value: Arc<V>,
    },
    Delete {
        key: String,
        prev: Option<Arc<V>>,
    },
    /// The cache re-listed (or this subscriber lagged): re-read the snapshot.
    Resynced,
}

struct State<V> {
    items: BTreeMap<String, Arc<V>>,
    revision: i64,
    resyncs: u64,
    decode_errors: u64,
}

/// Cache statistics, for status output and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub items: usize,
    pub revision: i64,
    pub resyncs: u64,
    pub decode_errors: u64,
}

/// Readers' handle; cloning is cheap. Dropping the last handle stops the task.
pub struct WatchCache<V> {
    state: Arc<RwLock<State<V>>>,
    events: broadcast::Sender<CacheEvent<V>>,
    ready: watch::Receiver<bool>,
    task: Arc<TaskGuard>,
}

impl<V> Clone for WatchCache<V> {
    fn clone(&self) -> Self {
        WatchCache {
            state: self.state.clone(),
            events: self.events.clone(),
            ready: self.ready.clone(),
            task: self.task.clone(),
        }
    }
}

struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Events a subscriber may fall behind before it is told `Resynced` (and
/// re-reads the snapshot). The channel allocates every slot up front, per
/// cache: a deep buffer costs memory on every agent even when idle, while
/// a lagging subscriber's resync costs one pass over the items.
const EVENT_BUFFER: usize = 1024;

impl<V: Decode> WatchCache<V> {
    /// Starts the cache task for `prefix`. Use `ready()` to wait for the first list.
    pub fn start(kv: KvStore, prefix: String) -> Self {
        let state = Arc::new(RwLock::new(State {
            items: BTreeMap::new(),
            revision: 0,
            resyncs: 0,
            decode_errors: 0,
        }));
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (ready_tx, ready) = watch::channel(false);
        let span = tracing::info_span!("watch_cache", %prefix);
        let task =
            tokio::spawn(run(kv, prefix, state.clone(), events.clone(), ready_tx).instrument(span));
        WatchCache {
            state,
            events,
            ready,
            task: Arc::new(TaskGuard(task)),
        }
    }

    /// Waits until the initial list has been applied.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Changes from now on. What happened before is in `snapshot()`: to see
    /// everything exactly once, subscribe first, then read the snapshot.
    pub fn subscribe(&self) -> Subscription<V> {
        Subscription {
            rx: self.events.subscribe(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.state.read().expect("poisoned").items.get(key).cloned()
    }

    pub fn snapshot(&self) -> BTreeMap<String, Arc<V>> {
        self.state.read().expect("poisoned").items.clone()
    }

    /// The items whose keys start with `prefix` (a copy of those only).
    pub fn snapshot_prefix(&self, prefix: &str) -> BTreeMap<String, Arc<V>> {
        self.read(|items| {
            items
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// Runs `f` on the items in place, without copying them (the cache's
    /// writer waits meanwhile: keep `f` short and never await in it).
    pub fn read<R>(&self, f: impl FnOnce(&BTreeMap<String, Arc<V>>) -> R) -> R {
        f(&self.state.read().expect("poisoned").items)
    }

    pub fn len(&self) -> usize {
        self.state.read().expect("poisoned").items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> CacheStats {
        let s = self.state.read().expect("poisoned");
        CacheStats {
            items: s.items.len(),
            revision: s.revision,
            resyncs: s.resyncs,
            decode_errors: s.decode_errors,
        }
    }

    /// Waits until `pred` holds for the value at `key` (or its absence).
    pub async fn wait_for(
        &self,
        key: &str,
        timeout: Duration,
        pred: impl Fn(Option<&V>) -> bool,
    ) -> Result<Option<Arc<V>>, tokio::time::error::Elapsed> {
        let mut sub = self.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                {
                    let s = self.state.read().expect("poisoned");
                    let v = s.items.get(key);
                    if pred(v.map(|v| &**v)) {
                        return v.cloned();
                    }
                }
                sub.recv().await;
            }
        })
        .await
    }
}

/// A subscriber's stream of changes.
pub struct Subscription<V> {
    rx: broadcast::Receiver<CacheEvent<V>>,
}

impl<V: Clone> Subscription<V> {
    /// The next change. Never misses silently: after lagging it returns
    /// `Resynced`. Pends forever once the cache is gone.
    pub async fn recv(&mut self) -> CacheEvent<V> {
        match self.rx.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(missed = n, "watch cache subscriber lagged; resync");
                CacheEvent::Resynced
            }
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// A change already waiting, without waiting for one.
    pub fn try_recv(&mut self) -> Option<CacheEvent<V>> {
        match self.rx.try_recv() {
            Ok(ev) => Some(ev),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                debug!(missed = n, "watch cache subscriber lagged; resync");
                Some(CacheEvent::Resynced)
            }
            Err(_) => None,
        }
    }
}

fn decode_or_log<V: Decode>(kv: &KeyValue, errors: &mut u64) -> Option<Arc<V>> {
    match V::decode(kv) {
        Ok(v) => Some(Arc::new(v)),
        Err(e) => {
            *errors += 1;
            warn!(key = %kv.key, error = %e, "skipping undecodable value");
            None
        }
    }
}

async fn run<V: Decode>(
    kv: KvStore,
    prefix: String,
    state: Arc<RwLock<State<V>>>,
    events: broadcast::Sender<CacheEvent<V>>,
    ready: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // List and diff against what we have.
        let (kvs, revision) = match kv.get_prefix(&prefix).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "list failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        {
            let mut s = state.write().expect("poisoned");
            let mut fresh = BTreeMap::new();
            let mut errors = 0;
            for item in &kvs {
                if let Some(v) = decode_or_log::<V>(item, &mut errors) {
                    fresh.insert(item.key.clone(), v);
                }
            }
            s.decode_errors += errors;
            let first = s.revision == 0;
            // Deletions that happened while we were not watching.
            for (key, prev) in &s.items {
                if !fresh.contains_key(key) {
                    let _ = events.send(CacheEvent::Delete {
                        key: key.clone(),
                        prev: Some(prev.clone()),
                    });
                }
            }
            for (key, v) in &fresh {
                let _ = events.send(CacheEvent::Upsert {
                    key: key.clone(),
                    value: v.clone(),
                });
            }
            s.items = fresh;
            s.revision = revision;
            if !first {
                s.resyncs += 1;
            }
            let _ = events.send(CacheEvent::Resynced);
            debug!(items = s.items.len(), revision, "listed");
        }
        ready.send_replace(true);

        let mut stream = match kv.watch_prefix(&prefix, revision + 1).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "watch failed to start; resync");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        loop {
            match stream.next().await {
                Ok((batch, rev)) => {
                    let mut s = state.write().expect("poisoned");
                    let mut errors = 0;
                    for ev in batch {
                        match ev {
                            WatchEvent::Put(item) => {
                                if let Some(v) = decode_or_log::<V>(&item, &mut errors) {
                                    s.items.insert(item.key.clone(), v.clone());
                                    let _ = events.send(CacheEvent::Upsert {
                                        key: item.key,
                                        value: v,
                                    });
                                } else if let Some(prev) = s.items.remove(&item.key) {
                                    // The new value is garbage: the old one is gone.
                                    let _ = events.send(CacheEvent::Delete {
                                        key: item.key,
                                        prev: Some(prev),
                                    });
                                }
                            }
                            WatchEvent::Delete { key, .. } => {
                                let prev = s.items.remove(&key);
                                let _ = events.send(CacheEvent::Delete { key, prev });
                            }
                        }
                    }
                    s.decode_errors += errors;
                    s.revision = s.revision.max(rev);
                }
                Err(KvError::Compacted {
                    compact_revision, ..
                }) => {
                    info!(compact_revision, "watch fell behind compaction; resync");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "watch broke; resync");
                    tokio::time::sleep(backoff).await;
                    break;
                }
            }
        }
    }
}
