//! Leader election on etcd: a leased key created with create-if-absent.
//!
//! The winner's fence is the leader key's create revision: every write the
//! leader makes carries `create_revision(leader key) == fence` in the same
//! transaction. A leader that was paused or partitioned past its lease TTL
//! finds the key gone or re-created by someone else, and its writes fail
//! their compare instead of landing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axoneme_identity::{Layout, LeaderRecord};
use axoneme_kvstore::{Compare, CompareOp, KvError, KvStore, PutOptions, Txn, TxnOp, WatchEvent};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Held leadership.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub key: String,
    pub lease: i64,
    /// The leader key's create revision: the fencing token.
    pub fence_revision: i64,
    pub holder: String,
}

impl Leadership {
    /// The compare that makes a transaction apply only while we still lead.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.fence_revision)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Blocks until this replica is leader. Returns `None` if cancelled.
pub async fn campaign(
    kv: &KvStore,
    layout: &Layout,
    holder: &str,
    ttl: i64,
    cancel: &CancellationToken,
) -> Result<Option<Leadership>, KvError> {
    let key = layout.operator_leader();
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let lease = kv.lease_grant(ttl).await?;
        let record = serde_json::to_vec(&LeaderRecord {
            holder: holder.to_string(),
            since_ms: now_ms(),
        })
        .expect("leader record serializes");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                record,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let result = kv.txn(txn).await?;
        if result.succeeded {
            info!(holder, lease, fence = result.revision, "became leader");
            return Ok(Some(Leadership {
                key,
                lease,
                fence_revision: result.revision,
                holder: holder.to_string(),
            }));
        }
        // Someone else leads (possibly ourselves from a retried txn that did
        // commit: then the key carries our lease).
        let current = result.gets.first().and_then(|g| g.first()).cloned();
        if let Some(cur) = &current {
            if cur.lease == lease {
                info!(holder, lease, "became leader (retried campaign)");
                return Ok(Some(Leadership {
                    key,
                    lease,
                    fence_revision: cur.create_revision,
                    holder: holder.to_string(),
                }));
            }
        }
        let _ = kv.lease_revoke(lease).await;
        let Some(cur) = current else { continue };
        let leader = serde_json::from_slice::<LeaderRecord>(&cur.value)
            .map(|r| r.holder)
            .unwrap_or_else(|_| "<unreadable>".into());
        info!(holder, %leader, "standing by");
        wait_for_deletion(kv, &key, cur.mod_revision, cancel).await;
    }
}

/// Returns when `key` is deleted after `revision`, or on cancellation.
async fn wait_for_deletion(kv: &KvStore, key: &str, revision: i64, cancel: &CancellationToken) {
    let mut stream = match kv.watch_prefix(key, revision + 1).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch leader key; retrying campaign shortly");
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            next = stream.next() => match next {
                Ok((events, _)) => {
                    if events.iter().any(|e| matches!(e, WatchEvent::Delete { key: k, .. } if k == key)) {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "leader watch broke; re-campaigning");
                    return;
                }
            }
        }
    }
}

/// Keeps the lease alive every TTL/3; returns when leadership is lost (lease
/// expired, or no successful renewal for a whole TTL) or on cancellation.
pub async fn hold(kv: &KvStore, leadership: &Leadership, ttl: i64, cancel: &CancellationToken) {
    let ttl = Duration::from_secs(u64::try_from(ttl.max(1)).unwrap_or(1));
    let period = ttl / 3;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        match tokio::time::timeout(period, kv.lease_keep_alive(leadership.lease)).await {
            Ok(Ok(_)) => last_ok = tokio::time::Instant::now(),
            Ok(Err(KvError::LeaseExpired(_))) => {
                warn!(
                    lease = leadership.lease,
                    "leader lease expired; stepping down"
                );
                return;
            }
            Ok(Err(e)) => warn!(error = %e, "lease renewal failed"),
            Err(_) => warn!("lease renewal timed out"),
        }
        if last_ok.elapsed() >= ttl {
            warn!("no lease renewal for a whole TTL; stepping down");
            return;
        }
    }
}

/// Gives leadership up at once (on shutdown), so the standby need not wait a TTL.
pub async fn resign(kv: &KvStore, leadership: &Leadership) {
    if let Err(e) = kv.lease_revoke(leadership.lease).await {
        warn!(error = %e, "could not revoke leader lease; it will expire");
    }
}
