//! The agent's lease and the keys it holds: the node record and the
//! endpoint records the agent created. If the agent dies they vanish after
//! the TTL, so other nodes stop trusting its pods' addresses; if the lease
//! is lost while the agent lives (etcd unreachable for longer than the
//! TTL), a new one is granted and every key is written again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axoneme_kvstore::{KvError, KvStore};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

struct Inner {
    lease: i64,
    keys: BTreeMap<String, Vec<u8>>,
}

/// Keys written on the agent's lease.
#[derive(Clone)]
pub struct Leased {
    kv: KvStore,
    ttl: i64,
    inner: Arc<Mutex<Inner>>,
}

impl Leased {
    /// Grants the lease (`ttl` seconds).
    pub async fn grant(kv: KvStore, ttl: i64) -> Result<Self, KvError> {
        let lease = kv.lease_grant(ttl).await?;
        info!(lease, ttl, "agent lease granted");
        Ok(Leased {
            kv,
            ttl,
            inner: Arc::new(Mutex::new(Inner {
                lease,
                keys: BTreeMap::new(),
            })),
        })
    }

    /// Writes `key` on the lease (and again whenever the lease is renewed).
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        let mut inner = self.inner.lock().await;
        match self.kv.put(key, value.clone(), inner.lease).await {
            Ok(_) => {}
            Err(e) if is_lease_gone(&e) => {
                inner.keys.insert(key.to_string(), value);
                return self.regrant(&mut inner).await;
            }
            Err(e) => return Err(e),
        }
        inner.keys.insert(key.to_string(), value);
        Ok(())
    }

    /// Deletes `key` and stops holding it.
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        let mut inner = self.inner.lock().await;
        self.kv.delete(key).await?;
        inner.keys.remove(key);
        Ok(())
    }

    /// Keeps the lease alive until `cancel`. The lease is never revoked: a
    /// restarted agent rewrites its keys on a new lease before the old one
    /// expires, so a restart does not make its pods vanish.
    pub async fn keep_alive(self, cancel: CancellationToken) {
        let period = Duration::from_millis(u64::try_from(self.ttl).unwrap_or(1) * 1000 / 3);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let mut inner = self.inner.lock().await;
            match self.kv.lease_keep_alive(inner.lease).await {
                Ok(_) => {}
                Err(e) if is_lease_gone(&e) => {
                    warn!(
                        lease = inner.lease,
                        "agent lease lost; granting a new one and rewriting the node's keys"
                    );
                    if let Err(e) = self.regrant(&mut inner).await {
                        warn!(error = %e, "cannot renew the agent lease yet; retrying");
                    }
                }
                Err(e) => warn!(error = %e, "agent lease keep-alive failed; retrying"),
            }
        }
    }

    async fn regrant(&self, inner: &mut Inner) -> Result<(), KvError> {
        inner.lease = self.kv.lease_grant(self.ttl).await?;
        for (k, v) in &inner.keys {
            self.kv.put(k, v.clone(), inner.lease).await?;
        }
        info!(
            lease = inner.lease,
            keys = inner.keys.len(),
            "agent lease renewed; keys rewritten"
        );
        Ok(())
    }
}

fn is_lease_gone(e: &KvError) -> bool {
    matches!(e, KvError::LeaseExpired(_)) || e.to_string().contains("lease not found")
}
