//! Identity allocation and garbage collection: the leader's work.
//!
//! One task owns all state (no locks): endpoint records arrive from a watch
//! cache, and each endpoint is reconciled towards its desired assignment.
//! Writes run concurrently (bounded) as fenced transactions; their results
//! come back into the same task. At most one write per endpoint is in flight,
//! so writes for one endpoint land in order.
//!
//! Invariants, each enforced by etcd rather than by this process alone:
//! - one ID per label set and one label set per ID: an identity is created
//!   with `create_revision == 0` on both its id key and its labels key;
//! - only the current leader writes: every transaction carries the fence;
//! - GC never deletes an identity that changed since it was judged unused:
//!   the delete compares the id key's mod revision.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axoneme_identity::{
    CacheEvent, EndpointIdentity, IdentityRange, IdentityRecord, LabelFilter, Layout,
    NumericIdentity, Raw, WatchCache,
};
use axoneme_kvstore::{KvError, KvStore};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::election::Leadership;
use crate::metrics::Metrics;

mod reconcile;
mod results;
mod txn;
mod writes;
use txn::{Create, Done};

/// Allocation and GC settings.
#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    pub range: IdentityRange,
    pub filter: LabelFilter,
    /// How long an identity must stay unreferenced before it is deleted.
    pub gc_grace: Duration,
    /// How often GC looks for identities past their grace period.
    pub gc_interval: Duration,
    /// Concurrent etcd writes.
    pub max_in_flight: usize,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            range: IdentityRange::default(),
            filter: LabelFilter::default(),
            gc_grace: Duration::from_secs(15 * 60),
            gc_interval: Duration::from_secs(60),
            max_in_flight: 64,
        }
    }
}

/// Why the leader's work ended.
#[derive(Debug)]
pub enum LeaderExit {
    Cancelled,
    /// A write was refused because the fence no longer holds.
    Fenced,
    Failed(KvError),
}

/// What an endpoint record asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Canonical identity-relevant labels.
    Labels(String),
    /// The record is unusable; the message says why.
    Invalid(String),
}

#[derive(Debug)]
struct Endpoint {
    mod_revision: i64,
    outcome: Outcome,
}

#[derive(Debug)]
struct IdEntry {
    canonical: String,
    mod_revision: i64,
}

struct Allocator {
    kv: KvStore,
    layout: Layout,
    lead: Leadership,
    cfg: AllocatorConfig,
    metrics: Arc<Metrics>,
    by_id: HashMap<u32, IdEntry>,
    by_labels: HashMap<String, u32>,
    /// Endpoints per canonical label set (references).
    refs: HashMap<String, usize>,
    /// Unreferenced identities and since when.
    stale: HashMap<u32, Instant>,
    /// Label sets being created or garbage-collected, with waiting endpoints.
    waiting: HashMap<String, HashSet<String>>,
    deleting: HashSet<String>,
    reserved_ids: HashSet<u32>,
    cursor: u32,
    endpoints: HashMap<String, Endpoint>,
    written: HashMap<String, EndpointIdentity>,
    busy: HashSet<String>,
    exhausted: HashSet<String>,
    /// When the leader saw each endpoint record revision not yet answered:
    /// the start of `identity_assignment_duration_seconds`.
    unanswered: HashMap<String, Instant>,
    inflight: FuturesUnordered<BoxFuture<'static, Done>>,
    create_queue: Vec<Create>,
    synced: bool,
    /// Identities inside the configured range (for the free-numbers gauge).
    in_range: u32,
}

/// Runs allocation and GC while `lead` holds; returns why it stopped.
pub async fn run(
    kv: KvStore,
    layout: Layout,
    lead: Leadership,
    cfg: AllocatorConfig,
    metrics: Arc<Metrics>,
    endpoints: WatchCache<Raw>,
    cancel: CancellationToken,
) -> LeaderExit {
    let mut a = Allocator {
        cursor: u32::from(cfg.range.min),
        kv,
        layout,
        lead,
        cfg,
        metrics,
        by_id: HashMap::new(),
        by_labels: HashMap::new(),
        refs: HashMap::new(),
        stale: HashMap::new(),
        waiting: HashMap::new(),
        deleting: HashSet::new(),
        reserved_ids: HashSet::new(),
        endpoints: HashMap::new(),
        written: HashMap::new(),
        busy: HashSet::new(),
        exhausted: HashSet::new(),
        unanswered: HashMap::new(),
        inflight: FuturesUnordered::new(),
        create_queue: Vec::new(),
        synced: false,
        in_range: 0,
    };
    if let Err(e) = a.load().await {
        return LeaderExit::Failed(e);
    }
    let mut sub = endpoints.subscribe();
    endpoints.ready().await;
    a.synced = true;
    a.resync(&endpoints);
    a.flush_creates();
    a.update_gauges();
    info!(
        identities = a.by_id.len(),
        endpoints = a.endpoints.len(),
        "leader state loaded"
    );
    let mut gc_tick = tokio::time::interval(a.cfg.gc_interval);
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let room = a.inflight.len() < a.cfg.max_in_flight;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return LeaderExit::Cancelled,
            Some(done) = a.inflight.next() => {
                if let Some(exit) = a.on_done(done) {
                    return exit;
                }
            }
            ev = sub.recv(), if room => {
                a.on_event(ev, &endpoints);
                // Take what else is already queued, so creations group up.
                for _ in 0..EVENT_BURST {
                    match sub.recv().now_or_never() {
                        Some(ev) => a.on_event(ev, &endpoints),
                        None => break,
                    }
                }
            }
            _ = gc_tick.tick(), if room => a.gc(),
        }
        a.flush_creates();
    }
}

/// Events handled before queued creations are sent.
const EVENT_BURST: usize = 256;

impl Allocator {
    fn on_event(&mut self, ev: CacheEvent<Raw>, endpoints: &WatchCache<Raw>) {
        match ev {
            CacheEvent::Upsert { key, value } => self.on_upsert(key, value),
            CacheEvent::Delete { key, .. } => self.on_delete(&key),
            CacheEvent::Resynced => self.resync(endpoints),
        }
    }

    /// Loads identities and existing assignments.
    async fn load(&mut self) -> Result<(), KvError> {
        let (ids, _) = self
            .kv
            .get_prefix(&self.layout.identity_ids_prefix())
            .await?;
        for kv in ids {
            let Some(id) = self.layout.parse_identity_key(&kv.key) else {
                warn!(key = %kv.key, "ignoring identity key with a non-numeric id");
                continue;
            };
            let canonical = match serde_json::from_slice::<IdentityRecord>(&kv.value) {
                Ok(rec) => rec.labels.canonical(),
                Err(e) => {
                    // The number stays used; nothing is ever allocated over it.
                    warn!(key = %kv.key, error = %e, "unreadable identity record; keeping its number reserved");
                    String::new()
                }
            };
            if !canonical.is_empty() {
                if let Some(other) = self.by_labels.insert(canonical.clone(), id.0) {
                    warn!(id = id.0, other, labels = %canonical, "two identities for one label set");
                }
            }
            self.insert_identity(
                id.0,
                IdEntry {
                    canonical,
                    mod_revision: kv.mod_revision,
                },
            );
        }
        let (assignments, _) = self
            .kv
            .get_prefix(&self.layout.endpoint_identities_prefix())
            .await?;
        for kv in assignments {
            let ep_key = kv.key.replacen(
                &self.layout.endpoint_identities_prefix(),
                &self.layout.endpoints_prefix(),
                1,
            );
            match serde_json::from_slice::<EndpointIdentity>(&kv.value) {
                Ok(a) => {
                    self.written.insert(ep_key, a);
                }
                Err(_) => {
                    // Unreadable: an entry that never matches forces a rewrite.
                    self.written.insert(
                        ep_key,
                        EndpointIdentity {
                            identity: None,
                            labels: String::new(),
                            error: Some("unreadable".into()),
                            endpoint_revision: -1,
                            allocator: String::new(),
                        },
                    );
                }
            }
        }
        // Every identity starts unreferenced; endpoints will claim theirs.
        let now = Instant::now();
        for (id, e) in &self.by_id {
            if !e.canonical.is_empty() {
                self.stale.insert(*id, now);
            }
        }
        Ok(())
    }

    fn insert_identity(&mut self, id: u32, entry: IdEntry) {
        if self.by_id.insert(id, entry).is_none() && self.cfg.range.contains(NumericIdentity(id)) {
            self.in_range += 1;
        }
        self.update_gauges();
    }

    fn remove_identity(&mut self, id: u32) {
        if self.by_id.remove(&id).is_some() && self.cfg.range.contains(NumericIdentity(id)) {
            self.in_range -= 1;
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        self.metrics
            .identities
            .set(i64::try_from(self.by_id.len()).unwrap_or(i64::MAX));
        self.metrics
            .identity_range_free
            .set(i64::from(self.cfg.range.size()) - i64::from(self.in_range));
    }
}
