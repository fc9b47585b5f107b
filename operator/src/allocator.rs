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
    CacheEvent, EndpointIdentity, EndpointRecord, IdentityRange, IdentityRecord, LabelFilter,
    LabelSet, Layout, NumericIdentity, Raw, WatchCache,
};
use axoneme_kvstore::{Compare, CompareOp, KvError, KvStore, Txn, TxnOp};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::election::Leadership;
use crate::metrics::{label, Metrics};

mod txn;
use txn::{create_one, Create, Done, CREATE_BATCH};

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

fn same_answer(a: &EndpointIdentity, b: &EndpointIdentity) -> bool {
    a.identity == b.identity
        && a.error == b.error
        && a.labels == b.labels
        && a.endpoint_revision == b.endpoint_revision
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

    /// Replaces the endpoint view with the cache's snapshot.
    fn resync(&mut self, cache: &WatchCache<Raw>) {
        let snapshot = cache.snapshot();
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|k| !snapshot.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.on_delete(&key);
        }
        for (key, raw) in snapshot {
            self.on_upsert(key, raw);
        }
        // Assignments whose endpoint no longer exists.
        let orphans: Vec<String> = self
            .written
            .keys()
            .filter(|k| !self.endpoints.contains_key(*k))
            .cloned()
            .collect();
        for key in orphans {
            self.reconcile(&key);
        }
    }

    fn parse_endpoint(&self, key: &str, raw: &Raw) -> Outcome {
        let record: EndpointRecord = match serde_json::from_slice(&raw.value) {
            Ok(r) => r,
            Err(e) => return Outcome::Invalid(format!("invalid endpoint record JSON: {e}")),
        };
        if let Some((node, id)) = self.layout.split_endpoint_key(key) {
            if record.node != node || record.id != id {
                return Outcome::Invalid(format!(
                    "endpoint record names {}/{} but is stored under {node}/{id}",
                    record.node, record.id
                ));
            }
        }
        let labels = match record.label_set() {
            Ok(l) => l,
            Err(e) => return Outcome::Invalid(format!("invalid labels: {e}")),
        };
        let relevant = self.cfg.filter.filter(&labels);
        if relevant.is_empty() {
            return Outcome::Invalid(
                "endpoint has no identity-relevant labels (see the label filter)".into(),
            );
        }
        Outcome::Labels(relevant.canonical())
    }

    fn add_ref(&mut self, canonical: &str) {
        let n = self.refs.entry(canonical.to_string()).or_default();
        *n += 1;
        if *n == 1 {
            if let Some(id) = self.by_labels.get(canonical) {
                self.stale.remove(id);
            }
        }
    }

    fn drop_ref(&mut self, canonical: &str) {
        if let Some(n) = self.refs.get_mut(canonical) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(canonical);
                if let Some(id) = self.by_labels.get(canonical) {
                    self.stale.insert(*id, Instant::now());
                }
            }
        }
    }

    fn on_upsert(&mut self, key: String, raw: Arc<Raw>) {
        if self
            .endpoints
            .get(&key)
            .is_some_and(|e| e.mod_revision == raw.mod_revision)
        {
            return;
        }
        let outcome = self.parse_endpoint(&key, &raw);
        if let Outcome::Invalid(reason) = &outcome {
            debug!(endpoint = %key, %reason, "invalid endpoint record");
            self.metrics
                .endpoint_errors
                .get_or_create(&label("reason", error_kind(reason)))
                .inc();
        }
        if let Outcome::Labels(c) = &outcome {
            self.add_ref(c);
        }
        self.unanswered.insert(key.clone(), Instant::now());
        let old = self.endpoints.insert(
            key.clone(),
            Endpoint {
                mod_revision: raw.mod_revision,
                outcome,
            },
        );
        if let Some(Endpoint {
            outcome: Outcome::Labels(c),
            ..
        }) = old
        {
            self.drop_ref(&c);
        }
        self.reconcile(&key);
    }

    fn on_delete(&mut self, key: &str) {
        self.unanswered.remove(key);
        if let Some(Endpoint {
            outcome: Outcome::Labels(c),
            ..
        }) = self.endpoints.remove(key)
        {
            self.drop_ref(&c);
        }
        self.exhausted.remove(key);
        self.reconcile(key);
    }

    /// Picks a free number, moving a cursor through the range so a freed
    /// number is reused as late as possible.
    fn reserve_id(&mut self) -> Option<u32> {
        let range = self.cfg.range;
        let (lo, hi) = (u32::from(range.min), u32::from(range.max));
        let base = u32::from(range.cluster_id) << 16;
        for _ in 0..range.size() {
            let n = self.cursor;
            self.cursor = if n >= hi { lo } else { n + 1 };
            let id = base | n;
            if !self.by_id.contains_key(&id) && !self.reserved_ids.contains(&id) {
                self.reserved_ids.insert(id);
                return Some(id);
            }
        }
        None
    }

    fn answer(
        &self,
        ep: &Endpoint,
        identity: Option<u32>,
        error: Option<String>,
    ) -> EndpointIdentity {
        EndpointIdentity {
            identity: identity.map(NumericIdentity),
            labels: match &ep.outcome {
                Outcome::Labels(c) => c.clone(),
                Outcome::Invalid(_) => String::new(),
            },
            error,
            endpoint_revision: ep.mod_revision,
            allocator: self.lead.holder.clone(),
        }
    }

    /// Moves one endpoint's assignment towards what its record asks for.
    fn reconcile(&mut self, key: &str) {
        if self.busy.contains(key) || !self.synced {
            return;
        }
        let Some(ep) = self.endpoints.get(key) else {
            if self.written.contains_key(key) {
                self.spawn_put(key.to_string(), None);
            }
            return;
        };
        let (mod_revision, outcome) = (ep.mod_revision, ep.outcome.clone());
        let ep = &Endpoint {
            mod_revision,
            outcome,
        };
        let target = match &ep.outcome {
            Outcome::Invalid(msg) => self.answer(ep, None, Some(msg.clone())),
            Outcome::Labels(c) => {
                if self.deleting.contains(c) || self.waiting.contains_key(c) {
                    let c = c.clone();
                    self.waiting.entry(c).or_default().insert(key.to_string());
                    return;
                }
                if let Some(id) = self.by_labels.get(c) {
                    self.exhausted.remove(key);
                    self.answer(ep, Some(*id), None)
                } else if let Some(id) = self.reserve_id() {
                    self.exhausted.remove(key);
                    let c = c.clone();
                    let assignment = self.answer(ep, Some(id), None);
                    self.spawn_create(c, id, key.to_string(), assignment);
                    return;
                } else {
                    self.metrics
                        .identity_allocation_failures
                        .get_or_create(&label("reason", "exhausted"))
                        .inc();
                    self.exhausted.insert(key.to_string());
                    let msg = format!(
                        "identity range exhausted: all {} identities of {} are in use",
                        self.cfg.range.size(),
                        self.cfg.range
                    );
                    warn!(endpoint = %key, "{msg}");
                    self.answer(ep, None, Some(msg))
                }
            }
        };
        if self
            .written
            .get(key)
            .is_some_and(|w| same_answer(w, &target))
        {
            return;
        }
        self.spawn_put(key.to_string(), Some(target));
    }

    fn assignment_key(&self, ep: &str) -> String {
        self.layout
            .assignment_for_endpoint_key(ep)
            .unwrap_or_else(|| format!("{}{ep}", self.layout.endpoint_identities_prefix()))
    }

    fn spawn_put(&mut self, ep: String, assignment: Option<EndpointIdentity>) {
        self.busy.insert(ep.clone());
        let key = self.assignment_key(&ep);
        let op = match &assignment {
            Some(a) => TxnOp::put(key, serde_json::to_vec(a).expect("serializes"), None),
            None => TxnOp::delete(key, None),
        };
        let txn = Txn::new().when([self.lead.fence()]).and_then([op]);
        let kv = self.kv.clone();
        self.inflight.push(Box::pin(async move {
            match kv.txn(txn).await {
                Ok(r) if r.succeeded => Done::Put {
                    ep,
                    written: assignment,
                },
                Ok(_) => Done::Fenced,
                Err(e) => Done::Failed(e),
            }
        }));
    }

    /// Queues an identity creation; `flush_creates` sends queued ones
    /// together.
    fn spawn_create(
        &mut self,
        canonical: String,
        id: u32,
        ep: String,
        assignment: EndpointIdentity,
    ) {
        self.busy.insert(ep.clone());
        self.waiting.entry(canonical.clone()).or_default();
        let labels = LabelSet::from_canonical(&canonical).expect("canonical keys parse");
        let record = IdentityRecord {
            id: NumericIdentity(id),
            labels,
            allocator: self.lead.holder.clone(),
        };
        self.create_queue.push(Create {
            id_key: self.layout.identity_id(NumericIdentity(id)),
            labels_key: self.layout.identity_labels(&canonical),
            assignment_key: self.assignment_key(&ep),
            record: serde_json::to_vec(&record).expect("serializes"),
            canonical,
            id,
            ep,
            assignment,
        });
    }

    /// Sends queued creations as one transaction (group commit): etcd's cost
    /// is mostly per transaction, so under load this multiplies the rate of
    /// new identities. If the group's compare fails, each creation is retried
    /// alone to learn which one conflicted and why.
    fn flush_creates(&mut self) {
        for batch in std::mem::take(&mut self.create_queue).chunks(CREATE_BATCH) {
            let batch = batch.to_vec();
            let kv = self.kv.clone();
            let lead = self.lead.clone();
            let ids_prefix = self.layout.identity_ids_prefix();
            self.inflight.push(Box::pin(async move {
                if batch.len() > 1 {
                    let txn = Txn::new()
                        .when(
                            std::iter::once(lead.fence())
                                .chain(batch.iter().flat_map(Create::compares))
                                .collect::<Vec<_>>(),
                        )
                        .and_then(batch.iter().flat_map(Create::puts).collect::<Vec<_>>());
                    match kv.txn(txn).await {
                        Ok(r) if r.succeeded => {
                            let revision = r.revision;
                            return Done::Batch(
                                batch.into_iter().map(|c| c.created(revision)).collect(),
                            );
                        }
                        Ok(_) => {}
                        Err(e) => return Done::Failed(e),
                    }
                }
                let singles = batch
                    .into_iter()
                    .map(|c| create_one(kv.clone(), lead.clone(), ids_prefix.clone(), c));
                Done::Batch(futures::future::join_all(singles).await)
            }));
        }
    }

    /// Starts deleting identities unreferenced for longer than the grace period.
    fn gc(&mut self) {
        if !self.synced {
            return;
        }
        self.metrics.identity_gc_runs.inc();
        let grace = self.cfg.gc_grace;
        let due: Vec<u32> = self
            .stale
            .iter()
            .filter(|(_, since)| since.elapsed() >= grace)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if self.inflight.len() >= self.cfg.max_in_flight {
                break;
            }
            let Some(entry) = self.by_id.get(&id) else {
                self.stale.remove(&id);
                continue;
            };
            let canonical = entry.canonical.clone();
            if self.refs.contains_key(&canonical) || self.deleting.contains(&canonical) {
                self.stale.remove(&id);
                continue;
            }
            self.stale.remove(&id);
            self.deleting.insert(canonical.clone());
            let id_key = self.layout.identity_id(NumericIdentity(id));
            let txn = Txn::new()
                .when([
                    self.lead.fence(),
                    Compare::mod_revision(id_key.clone(), CompareOp::Equal, entry.mod_revision),
                ])
                .and_then([
                    TxnOp::delete(id_key.clone(), None),
                    TxnOp::delete(self.layout.identity_labels(&canonical), None),
                ])
                .or_else([
                    TxnOp::get(self.lead.key.clone(), None),
                    TxnOp::get(id_key, None),
                ]);
            let kv = self.kv.clone();
            let fence = self.lead.fence_revision;
            self.inflight.push(Box::pin(async move {
                match kv.txn(txn).await {
                    Ok(r) if r.succeeded => Done::GcDeleted { canonical, id },
                    Ok(r) => {
                        let first = |i: usize| r.gets.get(i).and_then(|g| g.first()).cloned();
                        if first(0).is_none_or(|l| l.create_revision != fence) {
                            Done::Fenced
                        } else {
                            Done::GcConflict {
                                canonical,
                                id,
                                current: first(1),
                            }
                        }
                    }
                    Err(e) => Done::Failed(e),
                }
            }));
        }
    }

    /// An assignment for `ep` is written: the time since its record
    /// revision was seen, once per revision.
    fn answered(&mut self, ep: &str) {
        if let Some(seen) = self.unanswered.remove(ep) {
            self.metrics
                .identity_assignment_duration
                .observe(seen.elapsed().as_secs_f64());
        }
    }

    fn wake_waiters(&mut self, canonical: &str) {
        if let Some(waiters) = self.waiting.remove(canonical) {
            for ep in waiters {
                self.reconcile(&ep);
            }
        }
    }

    fn on_done(&mut self, done: Done) -> Option<LeaderExit> {
        match done {
            Done::Batch(all) => {
                // A fenced or failed member ends the term; handle the rest first.
                let mut exit = None;
                for d in all {
                    if let Some(e) = self.on_done(d) {
                        exit.get_or_insert(e);
                    }
                }
                return exit;
            }
            Done::Put { ep, written } => {
                self.busy.remove(&ep);
                match written {
                    Some(a) => {
                        self.metrics.assignments_written.inc();
                        self.answered(&ep);
                        self.written.insert(ep.clone(), a);
                    }
                    None => {
                        self.written.remove(&ep);
                    }
                }
                self.reconcile(&ep);
            }
            Done::Created {
                canonical,
                id,
                ep,
                assignment,
                revision,
            } => {
                self.metrics.identity_allocations.inc();
                self.metrics.assignments_written.inc();
                self.answered(&ep);
                self.reserved_ids.remove(&id);
                self.insert_identity(
                    id,
                    IdEntry {
                        canonical: canonical.clone(),
                        mod_revision: revision,
                    },
                );
                self.by_labels.insert(canonical.clone(), id);
                if !self.refs.contains_key(&canonical) {
                    self.stale.insert(id, Instant::now());
                }
                self.busy.remove(&ep);
                self.written.insert(ep.clone(), assignment);
                self.wake_waiters(&canonical);
                self.reconcile(&ep);
            }
            Done::LabelsExist {
                canonical,
                reserved,
                existing,
                ep,
            } => {
                self.reserved_ids.remove(&reserved);
                if let Some((id, mod_revision)) = existing {
                    info!(id, labels = %canonical, "label set already had an identity; adopting it");
                    self.insert_identity(
                        id,
                        IdEntry {
                            canonical: canonical.clone(),
                            mod_revision,
                        },
                    );
                    self.by_labels.insert(canonical.clone(), id);
                    if !self.refs.contains_key(&canonical) {
                        self.stale.insert(id, Instant::now());
                    }
                }
                self.busy.remove(&ep);
                self.wake_waiters(&canonical);
                self.reconcile(&ep);
            }
            Done::IdTaken {
                canonical,
                id,
                taken_by,
                mod_revision,
                ep,
            } => {
                self.reserved_ids.remove(&id);
                let other = taken_by.map(|r| r.labels.canonical()).unwrap_or_default();
                info!(id, "identity number taken meanwhile; picking another");
                if !other.is_empty() {
                    self.by_labels.entry(other.clone()).or_insert(id);
                }
                self.insert_identity(
                    id,
                    IdEntry {
                        canonical: other,
                        mod_revision,
                    },
                );
                self.busy.remove(&ep);
                self.wake_waiters(&canonical);
                self.reconcile(&ep);
            }
            Done::GcDeleted { canonical, id } => {
                info!(id, labels = %canonical, "garbage-collected unused identity");
                self.metrics
                    .identity_gc_entries
                    .get_or_create(&label("status", "deleted"))
                    .inc();
                self.remove_identity(id);
                self.by_labels.remove(&canonical);
                self.deleting.remove(&canonical);
                self.wake_waiters(&canonical);
                let exhausted: Vec<String> = self.exhausted.iter().cloned().collect();
                for ep in exhausted {
                    self.reconcile(&ep);
                }
            }
            Done::GcConflict {
                canonical,
                id,
                current,
            } => {
                self.metrics
                    .identity_gc_entries
                    .get_or_create(&label("status", "conflict"))
                    .inc();
                self.deleting.remove(&canonical);
                match current {
                    Some(kv) => {
                        if let Some(e) = self.by_id.get_mut(&id) {
                            e.mod_revision = kv.mod_revision;
                        }
                        if !self.refs.contains_key(&canonical) {
                            self.stale.insert(id, Instant::now());
                        }
                    }
                    None => {
                        self.remove_identity(id);
                        self.by_labels.remove(&canonical);
                    }
                }
                self.wake_waiters(&canonical);
            }
            Done::Fenced => {
                self.metrics.fenced_writes_rejected.inc();
                warn!("write rejected by the leadership fence: no longer leader");
                return Some(LeaderExit::Fenced);
            }
            Done::Failed(e) => return Some(LeaderExit::Failed(e)),
        }
        None
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

/// A short, bounded label value for the error metric.
fn error_kind(reason: &str) -> &'static str {
    if reason.starts_with("invalid endpoint record JSON") {
        "json"
    } else if reason.starts_with("invalid labels") {
        "labels"
    } else if reason.starts_with("endpoint record names") {
        "key_mismatch"
    } else {
        "no_relevant_labels"
    }
}
