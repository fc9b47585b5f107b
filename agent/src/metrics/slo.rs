//! The latency task: when a policy revision or a new local endpoint record
//! reaches this agent (its etcd watch delivers it), and when the
//! reconciler publishes that it is in the datapath; the difference goes to
//! the histograms of [`super::Latencies`].
//!
//! The start is the watch's delivery, not the etcd write: etcd records no
//! write time, and on a healthy cluster delivery takes a millisecond or
//! two. It includes the operator's part (its verdict on a policy, the
//! identity of an endpoint), which the agent waits for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axoneme_identity::CacheEvent;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Latencies;
use crate::node::NodeState;
use crate::reconcile::DatapathView;

/// How long a change is waited for: a policy the operator finds invalid
/// is never enforced (and then forgotten).
const GIVE_UP: Duration = Duration::from_secs(600);

/// What is waited for, and since when.
#[derive(Default)]
struct Pending {
    /// Policy key → (revision, seen).
    policies: BTreeMap<String, (i64, Instant)>,
    /// Local endpoint name → seen.
    endpoints: BTreeMap<String, Instant>,
}

impl Pending {
    /// Observes what `view` shows enforced; forgets what waited too long.
    fn settle(&mut self, view: &DatapathView, now: Instant, out: &Latencies) {
        self.policies.retain(|key, (rev, seen)| {
            if view.policies.get(key).is_some_and(|r| r >= rev) {
                out.policy_enforced(now.duration_since(*seen).as_secs_f64());
                return false;
            }
            now.duration_since(*seen) < GIVE_UP
        });
        self.endpoints.retain(|name, seen| {
            if view.programmed.contains_key(name) {
                out.identity_ready(now.duration_since(*seen).as_secs_f64());
                return false;
            }
            now.duration_since(*seen) < GIVE_UP
        });
    }
}

pub async fn run(
    state: NodeState,
    mut view: watch::Receiver<Arc<DatapathView>>,
    out: Latencies,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (policy_cache, _) = state.policy_caches();
    let mut policies = policy_cache.subscribe();
    let mut records = state.records().subscribe();
    let mut pending = Pending::default();
    let layout = state.layout().clone();
    loop {
        tokio::select! {
            ev = policies.recv() => {
                if let CacheEvent::Upsert { key, value } = ev {
                    let enforced = view.borrow().policies.get(&key).copied();
                    if enforced.is_none_or(|r| r < value.mod_revision) {
                        pending
                            .policies
                            .entry(key)
                            .and_modify(|p| if p.0 < value.mod_revision { *p = (value.mod_revision, Instant::now()) })
                            .or_insert((value.mod_revision, Instant::now()));
                    }
                } else if let CacheEvent::Delete { key, .. } = ev {
                    pending.policies.remove(&key);
                }
            }
            ev = records.recv() => {
                if let CacheEvent::Upsert { key, .. } = ev {
                    if let Some((node, name)) = layout.split_endpoint_key(&key) {
                        // New endpoints only: a changed record of one in
                        // the datapath is not an endpoint becoming ready.
                        if node == state.node() && !view.borrow().programmed.contains_key(name) {
                            pending.endpoints.entry(name.to_string()).or_insert_with(Instant::now);
                        }
                    }
                }
            }
            r = view.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                let v = view.borrow_and_update().clone();
                pending.settle(&v, Instant::now(), &out);
            }
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_counts_once_enforced_at_it_or_later() {
        let out = Latencies::new("n1");
        let t0 = Instant::now();
        let mut p = Pending::default();
        p.policies.insert("a".into(), (5, t0));
        p.policies.insert("b".into(), (7, t0));
        p.endpoints.insert("ep".into(), t0);
        let mut view = DatapathView::default();
        Arc::make_mut(&mut view.policies).insert("a".into(), 4);
        Arc::make_mut(&mut view.policies).insert("b".into(), 8);
        p.settle(&view, t0 + Duration::from_millis(30), &out);
        // b at 8 ≥ 7: observed; a still at 4; the endpoint not programmed.
        assert_eq!(p.policies.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(p.endpoints.len(), 1);
        Arc::make_mut(&mut view.policies).insert("a".into(), 5);
        p.settle(&view, t0 + Duration::from_millis(50), &out);
        assert!(p.policies.is_empty());
        // What never happens is forgotten.
        p.settle(&view, t0 + GIVE_UP, &out);
        assert!(p.endpoints.is_empty());
        let text = {
            let mut r = prometheus_client::registry::Registry::default();
            r.register("d", "d", out.policy_implementation_delay.clone());
            axoneme_exposition::render(&r, axoneme_exposition::Format::Text)
        };
        assert!(text.contains("d_count 2"), "{text}");
    }
}
