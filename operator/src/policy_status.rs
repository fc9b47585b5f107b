//! Standalone mode's policy validation: the leader judges every policy
//! stored under `policies/v1/` and writes a `PolicyStatus` beside it (the
//! equivalent of the CRD's `Valid` condition). Agents enforce only policies
//! whose status is valid for the policy's current revision.

use std::collections::HashMap;
use std::sync::Arc;

use axoneme_identity::{CacheEvent, Layout, PolicyStatus, Raw, WatchCache};
use axoneme_kvstore::{KvStore, Txn, TxnOp};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::allocator::LeaderExit;
use crate::election::Leadership;
use crate::metrics::{label, Metrics};

/// The policy a key names: `(kind, namespace, name)`.
fn key_parts<'a>(layout: &Layout, key: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = key.strip_prefix(&layout.policies_prefix())?;
    let mut it = rest.splitn(3, '/');
    Some((it.next()?, it.next()?, it.next()?))
}

/// Judges one stored policy.
pub fn judge(layout: &Layout, key: &str, raw: &Raw, operator: &str) -> PolicyStatus {
    let status = |valid: bool, message: String| PolicyStatus {
        valid,
        message,
        observed_revision: raw.mod_revision,
        operator: operator.to_string(),
    };
    let Ok(text) = std::str::from_utf8(&raw.value) else {
        return status(false, "stored policy is not UTF-8 text".into());
    };
    let mut docs = axoneme_policy::parse_documents(text);
    if docs.len() != 1 {
        return status(
            false,
            format!("expected one policy object, found {}", docs.len()),
        );
    }
    match docs.remove(0) {
        Err(e) => status(false, e.to_string()),
        Ok(p) => {
            let want = layout.policy(p.kind.short_name(), p.namespace.as_deref(), &p.name);
            if want != key {
                return status(
                    false,
                    format!("{}: stored under {key} but names {want}", p.name),
                );
            }
            status(true, String::new())
        }
    }
}

/// Keeps every policy's status current while `lead` holds.
pub async fn run(
    kv: KvStore,
    layout: Layout,
    lead: Leadership,
    metrics: Arc<Metrics>,
    policies: WatchCache<Raw>,
    cancel: CancellationToken,
) -> LeaderExit {
    let mut sub = policies.subscribe();
    policies.ready().await;
    let mut written: HashMap<String, PolicyStatus> = HashMap::new();
    match kv.get_prefix(&layout.policy_status_prefix()).await {
        Ok((kvs, _)) => {
            for item in kvs {
                let policy_key =
                    item.key
                        .replacen(&layout.policy_status_prefix(), &layout.policies_prefix(), 1);
                if let Ok(s) = serde_json::from_slice::<PolicyStatus>(&item.value) {
                    written.insert(policy_key, s);
                } else {
                    // Unreadable: rewrite it.
                    written.insert(
                        policy_key,
                        PolicyStatus {
                            valid: false,
                            message: String::new(),
                            observed_revision: -1,
                            operator: String::new(),
                        },
                    );
                }
            }
        }
        Err(e) => return LeaderExit::Failed(e),
    }
    let mut r = Reconciler {
        kv,
        layout,
        lead,
        metrics,
        written,
    };
    if let Some(exit) = r.resync(&policies).await {
        return exit;
    }
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return LeaderExit::Cancelled,
            ev = sub.recv() => ev,
        };
        let exit = match ev {
            CacheEvent::Upsert { key, value } => r.reconcile(&key, Some(&value)).await,
            CacheEvent::Delete { key, .. } => r.reconcile(&key, None).await,
            CacheEvent::Resynced => r.resync(&policies).await,
        };
        if let Some(exit) = exit {
            return exit;
        }
    }
}

struct Reconciler {
    kv: KvStore,
    layout: Layout,
    lead: Leadership,
    metrics: Arc<Metrics>,
    written: HashMap<String, PolicyStatus>,
}

impl Reconciler {
    async fn resync(&mut self, policies: &WatchCache<Raw>) -> Option<LeaderExit> {
        let snapshot = policies.snapshot();
        let gone: Vec<String> = self
            .written
            .keys()
            .filter(|k| !snapshot.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(exit) = self.reconcile(&key, None).await {
                return Some(exit);
            }
        }
        for (key, raw) in &snapshot {
            if let Some(exit) = self.reconcile(key, Some(raw)).await {
                return Some(exit);
            }
        }
        None
    }

    async fn reconcile(&mut self, key: &str, raw: Option<&Raw>) -> Option<LeaderExit> {
        if key_parts(&self.layout, key).is_none() {
            warn!(%key, "ignoring a key that does not name a policy");
            return None;
        }
        let status_key = self.layout.status_for_policy_key(key)?;
        let op = match raw {
            Some(raw) => {
                let status = judge(&self.layout, key, raw, &self.lead.holder);
                let current = self.written.get(key);
                if current.is_some_and(|c| {
                    c.valid == status.valid
                        && c.message == status.message
                        && c.observed_revision == status.observed_revision
                }) {
                    return None;
                }
                self.metrics
                    .policy_validations
                    .get_or_create(&label(
                        "result",
                        if status.valid { "valid" } else { "invalid" },
                    ))
                    .inc();
                if status.valid {
                    info!(policy = %key, "policy valid");
                } else {
                    warn!(policy = %key, message = %status.message, "policy invalid");
                }
                let value = serde_json::to_vec(&status).expect("serializes");
                self.written.insert(key.to_string(), status);
                TxnOp::put(status_key, value, None)
            }
            None => {
                // Nothing to delete when no status was written.
                self.written.remove(key)?;
                TxnOp::delete(status_key, None)
            }
        };
        match self
            .kv
            .txn(Txn::new().when([self.lead.fence()]).and_then([op]))
            .await
        {
            Ok(r) if r.succeeded => None,
            Ok(_) => {
                self.metrics.fenced_writes_rejected.inc();
                Some(LeaderExit::Fenced)
            }
            Err(e) => Some(LeaderExit::Failed(e)),
        }
    }
}
