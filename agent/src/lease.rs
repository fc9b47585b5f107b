//! The node lease and the keys it holds: the node record and the endpoint
//! records the agent created. Its TTL is the node's grace (`--node-grace`):
//! while the agent runs it renews the lease every third of the TTL; when
//! the agent stops (a crash, a restart, an upgrade) the keys stay for the
//! TTL, so other nodes keep trusting this node's pods, and a restarted
//! agent resumes the same lease (its ID is kept in the state directory)
//! with nothing vanishing in between. A node gone for good is forgotten
//! when the lease expires, or at once when it is revoked (`axoneme node
//! delete`). If the lease is lost while the agent lives (etcd unreachable
//! for longer than the TTL), a new one is granted and every key is
//! written again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// Keys written on the node lease.
#[derive(Clone)]
pub struct Leased {
    kv: KvStore,
    ttl: i64,
    /// Where the lease's ID is kept for the next run.
    file: Option<PathBuf>,
    inner: Arc<Mutex<Inner>>,
}

/// The lease as kept in the state directory.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    lease: i64,
}

impl Leased {
    /// Grants a lease (`ttl` seconds).
    pub async fn grant(kv: KvStore, ttl: i64) -> Result<Self, KvError> {
        let lease = kv.lease_grant(ttl).await?;
        info!(lease, ttl, "node lease granted");
        Ok(Self::with(kv, ttl, None, lease))
    }

    fn with(kv: KvStore, ttl: i64, file: Option<PathBuf>, lease: i64) -> Self {
        Leased {
            kv,
            ttl,
            file,
            inner: Arc::new(Mutex::new(Inner {
                lease,
                keys: BTreeMap::new(),
            })),
        }
    }

    /// Resumes the lease a previous run kept in `file` if it is still
    /// alive, else grants a new one (`ttl` seconds); keeps its ID in `file`.
    pub async fn resume_or_grant(kv: KvStore, ttl: i64, file: PathBuf) -> Result<Self, KvError> {
        let kept = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Kept>(&b).ok());
        if let Some(Kept { lease }) = kept {
            match kv.lease_keep_alive(lease).await {
                // A renewal answers with the lease's TTL: the same grace
                // as now, or a new lease (the old keys move to it).
                Ok(granted) if granted == ttl => {
                    info!(lease, ttl, "node lease of the previous run resumed");
                    return Ok(Self::with(kv, ttl, Some(file), lease));
                }
                Ok(granted) if granted > 0 => {
                    info!(
                        lease,
                        granted, ttl, "the node grace changed; granting a new lease"
                    )
                }
                Ok(_) => info!(
                    lease,
                    "the previous run's node lease expired; granting a new one"
                ),
                Err(e) if is_lease_gone(&e) => {
                    info!(
                        lease,
                        "the previous run's node lease expired; granting a new one"
                    )
                }
                Err(e) => return Err(e),
            }
        }
        let lease = kv.lease_grant(ttl).await?;
        info!(lease, ttl, "node lease granted");
        keep(&file, lease);
        Ok(Self::with(kv, ttl, Some(file), lease))
    }

    /// The lease's ID.
    pub async fn id(&self) -> i64 {
        self.inner.lock().await.lease
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

    /// Stops holding `key` (a renewal no longer writes it back), then
    /// deletes it: whether it was there. When the deletion fails the
    /// caller retries it.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let mut inner = self.inner.lock().await;
        inner.keys.remove(key);
        self.kv.delete(key).await
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
            // A stop does not wait for etcd: the renewal may retry for the
            // kvstore's deadline.
            tokio::select! {
                () = self.renew() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// One renewal; a lost lease is granted again with every key.
    async fn renew(&self) {
        let mut inner = self.inner.lock().await;
        match self.kv.lease_keep_alive(inner.lease).await {
            Ok(_) => {}
            Err(e) if is_lease_gone(&e) => {
                warn!(
                    lease = inner.lease,
                    "node lease lost; granting a new one and rewriting the node's keys"
                );
                if let Err(e) = self.regrant(&mut inner).await {
                    warn!(error = %e, "cannot renew the node lease yet; retrying");
                }
            }
            Err(e) => warn!(error = %e, "node lease keep-alive failed; retrying"),
        }
    }

    async fn regrant(&self, inner: &mut Inner) -> Result<(), KvError> {
        inner.lease = self.kv.lease_grant(self.ttl).await?;
        if let Some(file) = &self.file {
            keep(file, inner.lease);
        }
        for (k, v) in &inner.keys {
            self.kv.put(k, v.clone(), inner.lease).await?;
        }
        info!(
            lease = inner.lease,
            keys = inner.keys.len(),
            "node lease renewed; keys rewritten"
        );
        Ok(())
    }
}

/// Writes the lease's ID for the next run (a failure only costs the next
/// run a new lease: its keys are then written again).
fn keep(file: &Path, lease: i64) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(&Kept { lease }).expect("serializes"),
        )?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        warn!(file = %file.display(), error = %e, "cannot keep the node lease's ID");
    }
}

fn is_lease_gone(e: &KvError) -> bool {
    matches!(e, KvError::LeaseExpired(_)) || e.to_string().contains("lease not found")
}
