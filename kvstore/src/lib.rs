//! The etcd v3 client layer every Axoneme component uses.
//!
//! etcd-client's balanced channel keeps sending some requests to a member that
//! is down, so instead this layer holds one client per member and routes every
//! call to a "current" member. A call that fails in a way that another member
//! could answer (transport error, timeout, `Unavailable`, no leader) rotates to
//! the next member and is retried with exponential backoff until a deadline.
//!
//! Retried writes must be safe to repeat: every write in Axoneme is a
//! transaction guarded by a compare (create-if-absent, mod-revision or
//! leadership fence), so a retry of a write that did commit fails its compare
//! and the caller re-reads instead of writing twice.

#![forbid(unsafe_code)]

mod config;
pub mod metrics;
mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backoff::ExponentialBackoff;
use etcd_client::{Client, ConnectOptions, GetOptions, LeaseGrantOptions};
use tracing::{debug, warn};

/// Keys per page of [`KvStore::get_prefix`]: at Axoneme's largest values
/// (a few KiB) a page stays well under gRPC's 4 MiB answer limit.
pub const GET_PAGE: i64 = 500;

/// The end of the range of keys starting with `prefix` (etcd's rule: the
/// prefix with its last byte below 0xff incremented; `\0` for all keys).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub use config::{KvArgs, KvConfig, TlsFiles};
pub use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
pub use watch::{WatchEvent, WatchStream};

/// Errors of the kvstore layer.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("no etcd endpoints configured")]
    NoEndpoints,
    #[error("invalid etcd configuration: {0}")]
    Config(String),
    // Causes are part of these messages and deliberately not `#[source]`s,
    // so that printing the error chain does not repeat them.
    #[error("reading TLS file {path}: {error}")]
    TlsFile { path: String, error: std::io::Error },
    #[error(
        "etcd unavailable: {op} failed on every member for {elapsed:.1?}; last error from {endpoint}: {last}"
    )]
    Exhausted {
        op: &'static str,
        endpoint: String,
        elapsed: Duration,
        last: Box<KvError>,
    },
    #[error("etcd {op} timed out after {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    /// Printed as its cause in a few words (`connection refused`,
    /// `unavailable: etcdserver: no leader`), not tonic's debug dump.
    #[error("{}", describe_etcd_error(.0))]
    Etcd(#[from] etcd_client::Error),
    #[error("watch from revision {requested} is compacted (oldest available {compact_revision})")]
    Compacted {
        requested: i64,
        compact_revision: i64,
    },
    #[error("watch canceled by etcd: {0}")]
    WatchCanceled(String),
    #[error("lease {0} has expired or was revoked")]
    LeaseExpired(i64),
}

impl KvError {
    /// Whether another attempt, possibly on another member, could succeed.
    pub fn is_retryable(&self) -> bool {
        use etcd_client::Error as E;
        match self {
            KvError::Timeout { .. } => true,
            KvError::Etcd(E::TransportError(_) | E::IoError(_)) => true,
            KvError::Etcd(E::GRpcStatus(s)) => {
                matches!(
                    s.code(),
                    tonic_code::UNAVAILABLE
                        | tonic_code::DEADLINE_EXCEEDED
                        | tonic_code::UNKNOWN
                        | tonic_code::ABORTED
                        | tonic_code::RESOURCE_EXHAUSTED
                        | tonic_code::CANCELLED
                ) || s.message().contains("no leader")
            }
            KvError::Etcd(E::LeaseKeepAliveError(m)) => !m.contains("not found"),
            KvError::Etcd(E::WatchError(_)) => true,
            _ => false,
        }
    }
}

/// An etcd client error in a few words: for a transport failure, the
/// innermost cause (`connection refused`, `deadline has elapsed`); for an
/// answer from etcd, its code and message.
pub fn describe_etcd_error(e: &etcd_client::Error) -> String {
    use etcd_client::Error as E;
    // The innermost error of the chain (tonic wraps hyper wraps io).
    let innermost = |e: &(dyn std::error::Error + 'static)| {
        let mut cur = e;
        while let Some(next) = cur.source() {
            cur = next;
        }
        match cur.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused".to_string()
            }
            Some(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                "connection timed out".to_string()
            }
            _ => cur.to_string(),
        }
    };
    match e {
        E::GRpcStatus(s) => match std::error::Error::source(s) {
            Some(src) if s.code() == tonic::Code::Unavailable => innermost(src),
            _ => {
                let code = format!("{:?}", s.code()).to_lowercase();
                if s.message().is_empty() {
                    code
                } else {
                    format!("{code}: {}", s.message())
                }
            }
        },
        E::TransportError(t) => innermost(t),
        E::IoError(io) => innermost(io),
        other => other.to_string(),
    }
}

mod tonic_code {
    pub type Code = tonic::Code;
    pub const CANCELLED: Code = Code::Cancelled;
    pub const UNKNOWN: Code = Code::Unknown;
    pub const DEADLINE_EXCEEDED: Code = Code::DeadlineExceeded;
    pub const RESOURCE_EXHAUSTED: Code = Code::ResourceExhausted;
    pub const ABORTED: Code = Code::Aborted;
    pub const UNAVAILABLE: Code = Code::Unavailable;
}

pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// One key and its metadata, decoupled from etcd-client's protobuf types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl From<&etcd_client::KeyValue> for KeyValue {
    fn from(kv: &etcd_client::KeyValue) -> Self {
        KeyValue {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

/// The result of a transaction.
/// etcd's default `--max-txn-ops`: the most compares, and the most
/// operations in each branch, of one transaction.
pub const MAX_TXN_OPS: usize = 128;

#[derive(Debug, Clone)]
pub struct TxnResult {
    pub succeeded: bool,
    pub revision: i64,
    /// Key-values returned by `TxnOp::get` operations, in order.
    pub gets: Vec<Vec<KeyValue>>,
}

/// Health of one etcd member as seen by this client.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberHealth {
    pub endpoint: String,
    pub healthy: bool,
    pub member_id: Option<String>,
    pub is_leader: bool,
    pub raft_term: Option<u64>,
    pub error: Option<String>,
}

struct Member {
    endpoint: String,
    client: Client,
}

struct Inner {
    members: Vec<Member>,
    current: AtomicUsize,
    config: KvConfig,
    observer: std::sync::OnceLock<Arc<dyn KvObserver>>,
}

/// Told how every call ended (for metrics): the operation, whether it
/// succeeded, and its time with retries included.
pub trait KvObserver: Send + Sync {
    fn observe(&self, op: &'static str, ok: bool, elapsed: Duration);
}

/// A cheaply cloneable handle on the etcd cluster.
#[derive(Clone)]
pub struct KvStore {
    inner: Arc<Inner>,
}

impl KvStore {
    /// Connects to every configured member. Connection is lazy: a member that
    /// is down now does not fail this call.
    pub async fn connect(config: KvConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(KvError::NoEndpoints);
        }
        let tls = match &config.tls {
            Some(files) => Some(files.load()?),
            None => None,
        };
        let mut members = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let mut options = ConnectOptions::new()
                .with_connect_timeout(config.connect_timeout)
                .with_timeout(config.request_timeout)
                .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
                .with_keep_alive_while_idle(true)
                .with_require_leader(true);
            if let Some(tls) = &tls {
                options = options.with_tls(tls.clone());
            }
            // Connecting is lazy: what fails here is the configuration,
            // with TLS the files (a key that is not the certificate's, a
            // PEM that does not parse), which the message names.
            let client = Client::connect([endpoint.as_str()], Some(options))
                .await
                .map_err(|e| match &config.tls {
                    Some(files) => KvError::Config(format!(
                        "the TLS files ({}) cannot be used: {}",
                        files.describe(),
                        describe_etcd_error(&e)
                    )),
                    None => KvError::Etcd(e),
                })?;
            members.push(Member {
                endpoint: endpoint.clone(),
                client,
            });
        }
        Ok(KvStore {
            inner: Arc::new(Inner {
                members,
                current: AtomicUsize::new(0),
                config,
                observer: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Tells `observer` how every later call of this store (and its clones)
    /// ends. Set once: false if an observer was already set.
    pub fn observe_with(&self, observer: Arc<dyn KvObserver>) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    pub fn config(&self) -> &KvConfig {
        &self.inner.config
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .members
            .iter()
            .map(|m| m.endpoint.clone())
            .collect()
    }

    fn member(&self) -> (usize, &Member) {
        let idx = self.inner.current.load(Ordering::Relaxed) % self.inner.members.len();
        (idx, &self.inner.members[idx])
    }

    /// Moves off a failed member, unless another caller already did.
    fn rotate_from(&self, failed: usize) {
        let next = (failed + 1) % self.inner.members.len();
        if self
            .inner
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            debug!(
                from = %self.inner.members[failed].endpoint,
                to = %self.inner.members[next].endpoint,
                "etcd member failed; rotating"
            );
        }
    }

    /// Runs `f` against the current member with a timeout, rotating members and
    /// backing off on retryable errors until `config.retry_deadline` passes.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.inner.config.request_timeout;
        let started = std::time::Instant::now();
        let policy = ExponentialBackoff {
            initial_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(500),
            multiplier: 2.0,
            max_elapsed_time: Some(self.inner.config.retry_deadline),
            ..ExponentialBackoff::default()
        };
        let last_endpoint = std::sync::Mutex::new(String::new());
        let attempt = || async {
            let (idx, member) = self.member();
            *last_endpoint.lock().expect("poisoned") = member.endpoint.clone();
            // No attempt outlives the call's deadline.
            let remaining = self
                .inner
                .config
                .retry_deadline
                .saturating_sub(started.elapsed());
            let timeout = timeout.min(remaining.max(Duration::from_millis(50)));
            let result = match tokio::time::timeout(timeout, f(member.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => KvError::Etcd(e),
                Err(_) => KvError::Timeout { op, timeout },
            };
            if result.is_retryable() {
                debug!(op, endpoint = %member.endpoint, error = %result, "retryable etcd error");
                self.rotate_from(idx);
                Err(backoff::Error::transient(result))
            } else {
                Err(backoff::Error::permanent(result))
            }
        };
        let result = match backoff::future::retry(policy, attempt).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_retryable() => {
                let endpoint = last_endpoint.lock().expect("poisoned").clone();
                warn!(op, %endpoint, error = %e, "etcd call failed on every member");
                Err(KvError::Exhausted {
                    op,
                    endpoint,
                    elapsed: started.elapsed(),
                    last: Box::new(e),
                })
            }
            Err(e) => Err(e),
        };
        if let Some(observer) = self.inner.observer.get() {
            observer.observe(op, result.is_ok(), started.elapsed());
        }
        result
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        let resp = self
            .call("get", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(KeyValue::from))
    }

    /// Reads every key under `prefix`, with the revision the read was taken
    /// at: in pages of [`GET_PAGE`] keys, every page at the first one's
    /// revision, so a large prefix (10,000 services) never makes one answer
    /// larger than gRPC's 4 MiB message limit, and the result is one
    /// consistent snapshot.
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let resp = self
                .call("get_prefix", |mut c| {
                    let (from, end) = (from.clone(), end.clone());
                    let mut options = GetOptions::new().with_range(end).with_limit(GET_PAGE);
                    if revision != 0 {
                        options = options.with_revision(revision);
                    }
                    async move { c.get(from, Some(options)).await }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            out.extend(resp.kvs().iter().map(KeyValue::from));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    /// Reads each of `keys` (`None`: absent), in transactions of at most
    /// [`MAX_TXN_OPS`] reads, with the revision of the first.
    pub async fn get_many(&self, keys: &[String]) -> Result<(Vec<Option<KeyValue>>, i64)> {
        let mut out = Vec::with_capacity(keys.len());
        let mut revision = 0;
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.clone(), None)).collect();
            let r = self.txn(Txn::new().and_then(ops)).await?;
            if revision == 0 {
                revision = r.revision;
            }
            out.extend(r.gets.into_iter().map(|g| g.into_iter().next()));
        }
        Ok((out, revision))
    }

    /// Counts keys under `prefix` without transferring them.
    pub async fn count_prefix(&self, prefix: &str) -> Result<i64> {
        let prefix = prefix.to_owned();
        let resp = self
            .call("count_prefix", |mut c| {
                let prefix = prefix.clone();
                async move {
                    c.get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await
                }
            })
            .await?;
        Ok(resp.count())
    }

    /// Unconditional put; `lease` 0 means no lease. Only for keys that have a
    /// single writer (an agent's own records); shared keys go through `txn`.
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<i64> {
        let key = key.to_owned();
        let resp = self
            .call("put", |mut c| {
                let (key, value) = (key.clone(), value.clone());
                let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                async move { c.put(key, value, options).await }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Deletes one key; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        let resp = self
            .call("delete", |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    /// Deletes every key under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64> {
        let prefix = prefix.to_owned();
        let resp = self
            .call("delete_prefix", |mut c| {
                let prefix = prefix.clone();
                async move {
                    c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        Ok(resp.deleted())
    }

    /// Runs a transaction. It must be safe to repeat (see the crate docs).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let resp = self
            .call("txn", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let gets = resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g.kvs().iter().map(KeyValue::from).collect()),
                _ => None,
            })
            .collect();
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
            gets,
        })
    }

    /// Grants a lease with `ttl` seconds.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64> {
        let resp = self
            .call("lease_grant", |mut c| async move {
                c.lease_grant(ttl, None::<LeaseGrantOptions>).await
            })
            .await?;
        Ok(resp.id())
    }

    /// Renews a lease once; fails with `LeaseExpired` if it is gone.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        let ttl = match self
            .call("lease_keep_alive", |mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(resp) => Ok(resp.ttl()),
                    None => Err(etcd_client::Error::LeaseKeepAliveError(
                        "keep-alive stream closed".into(),
                    )),
                }
            })
            .await
        {
            Ok(ttl) => ttl,
            Err(KvError::Etcd(etcd_client::Error::LeaseKeepAliveError(m)))
                if m.contains("not found") =>
            {
                0
            }
            Err(e) => return Err(e),
        };
        if ttl <= 0 {
            return Err(KvError::LeaseExpired(id));
        }
        Ok(ttl)
    }

    /// Revokes a lease (its keys are deleted). Missing leases are not an error.
    pub async fn lease_revoke(&self, id: i64) -> Result<()> {
        match self
            .call(
                "lease_revoke",
                |mut c| async move { c.lease_revoke(id).await },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(KvError::Etcd(etcd_client::Error::GRpcStatus(s)))
                if s.message().contains("lease not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Watches every key under `prefix` from `start_revision` (inclusive).
    pub async fn watch_prefix(&self, prefix: &str, start_revision: i64) -> Result<WatchStream> {
        watch::open(self, prefix, start_revision).await
    }

    /// Asks every member for its status; never fails as a whole.
    pub async fn member_health(&self) -> Vec<MemberHealth> {
        let timeout = self.inner.config.request_timeout;
        let checks = self.inner.members.iter().map(|m| {
            let mut client = m.client.clone();
            let endpoint = m.endpoint.clone();
            async move {
                match tokio::time::timeout(timeout, client.status()).await {
                    Ok(Ok(s)) => {
                        let header_member = s.header().map(|h| h.member_id());
                        MemberHealth {
                            endpoint,
                            healthy: s.leader() != 0,
                            member_id: header_member.map(|id| format!("{id:x}")),
                            is_leader: header_member == Some(s.leader()),
                            raft_term: Some(s.raft_term()),
                            error: (s.leader() == 0).then(|| "member has no leader".to_string()),
                        }
                    }
                    Ok(Err(e)) => MemberHealth::failed(endpoint, describe_etcd_error(&e)),
                    Err(_) => {
                        MemberHealth::failed(endpoint, format!("timed out after {timeout:?}"))
                    }
                }
            }
        });
        futures::future::join_all(checks).await
    }

    pub(crate) async fn raw_watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<(etcd_client::WatchStream, String)> {
        let prefix = prefix.to_owned();
        let (idx, _) = self.member();
        let endpoint = self.inner.members[idx].endpoint.clone();
        self.call("watch", |mut c| {
            let prefix = prefix.clone();
            async move {
                let options = etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start_revision)
                    .with_prev_key();
                c.watch(prefix, Some(options)).await
            }
        })
        .await
        .map(|s| (s, endpoint))
    }

    /// Called by watch streams that broke, so the next open tries another member.
    pub(crate) fn report_failed_endpoint(&self, endpoint: &str) {
        if let Some(idx) = self
            .inner
            .members
            .iter()
            .position(|m| m.endpoint == endpoint)
        {
            self.rotate_from(idx);
        }
    }
}

impl MemberHealth {
    pub fn failed(endpoint: String, error: String) -> Self {
        MemberHealth {
            endpoint,
            healthy: false,
            member_id: None,
            is_leader: false,
            raft_term: None,
            error: Some(error),
        }
    }
}

#[cfg(test)]
mod prefix_end_tests {
    use super::prefix_end;

    #[test]
    fn the_range_of_a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"a/b/"), b"a/b0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
