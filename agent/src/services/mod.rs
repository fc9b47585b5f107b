//! kube-proxy replacement: the services unit. One task owns the LB maps
//! (their one writer): it watches the service records in the kvstore
//! (written by `axoneme service` in standalone mode), expands them into
//! frontends (`axoneme_service`), keeps the maps' content for this node
//! up to date record by record ([`desired`], [`table`]: a pass costs what
//! changed) and applies the difference in a reader-safe order
//! ([`sync`]). What it programmed is published ([`Programmed`]) for
//! the API (`axoneme service list`, `axoneme bpf lb list`, `status`).
//!
//! The socket-LB programs that read the maps are attached to the node's
//! cgroup at start (`datapath/lb.rs`).
//!
//! A record that does not parse is reported and skipped, and the
//! service's last good version stays programmed: bad input never takes a
//! working service down.

pub mod desired;
pub mod sync;
pub mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axoneme_api::MapStatus;
pub use axoneme_api::{BackendView, FrontendView, ServicesView};
use axoneme_identity::{CacheEvent, Raw, WatchCache};
use axoneme_service::{BackendState, Frontend, ServiceRecord};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::desired::{Desired, Shadowed, Touched};
use self::sync::LbWriter;
use self::table::{Ids, Table};

/// How long a burst of changes may land before one pass.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// How long after a failed pass the next one runs.
const RETRY: Duration = Duration::from_secs(1);

/// The services unit's inputs.
pub struct Inputs {
    pub node: String,
    pub node_ips: Vec<IpAddr>,
    pub records: WatchCache<Raw>,
    /// External frontends' Maglev tables (the same on every node).
    pub maglev: table::Maglev,
    /// Whether the socket-LB programs translate (else the pods' veths).
    pub socket_lb: bool,
}

/// Which records a pass re-reads.
#[derive(Debug)]
pub enum Dirty {
    All,
    Keys(BTreeSet<String>),
}

impl Dirty {
    pub fn keys<S: ToString>(keys: impl IntoIterator<Item = S>) -> Self {
        Dirty::Keys(keys.into_iter().map(|k| k.to_string()).collect())
    }

    fn add(&mut self, ev: CacheEvent<Raw>) {
        match (ev, &mut *self) {
            (_, Dirty::All) => {}
            (CacheEvent::Upsert { key, .. } | CacheEvent::Delete { key, .. }, Dirty::Keys(k)) => {
                k.insert(key);
            }
            (CacheEvent::Resynced, _) => *self = Dirty::All,
        }
    }
}

/// The last good version of every record, and the keys whose newest
/// version is bad.
#[derive(Default)]
struct Records {
    /// Per key: the revision, and the record's frontends (expanded once per
    /// version, not on every pass).
    good: BTreeMap<String, (i64, Vec<Frontend>)>,
    invalid: BTreeMap<String, (i64, String)>,
}

impl Records {
    /// Re-reads the `dirty` records; the keys whose good version changed
    /// (new, changed or gone).
    fn refresh(&mut self, raw: &BTreeMap<String, Arc<Raw>>, dirty: &Dirty) -> Vec<String> {
        let mut changed = Vec::new();
        match dirty {
            Dirty::All => {
                let gone: Vec<String> = self
                    .good
                    .keys()
                    .chain(self.invalid.keys())
                    .filter(|k| !raw.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.refresh_one(&key, None, &mut changed);
                }
                for (key, r) in raw {
                    self.refresh_one(key, Some(r.as_ref()), &mut changed);
                }
            }
            Dirty::Keys(keys) => {
                for key in keys {
                    self.refresh_one(key, raw.get(key).map(AsRef::as_ref), &mut changed);
                }
            }
        }
        changed.dedup();
        changed
    }

    fn refresh_one(&mut self, key: &str, raw: Option<&Raw>, changed: &mut Vec<String>) {
        let Some(r) = raw else {
            self.invalid.remove(key);
            if self.good.remove(key).is_some() {
                changed.push(key.to_string());
            }
            return;
        };
        let seen = |rev: Option<i64>| rev == Some(r.mod_revision);
        if seen(self.good.get(key).map(|g| g.0)) || seen(self.invalid.get(key).map(|b| b.0)) {
            return;
        }
        match serde_json::from_slice::<ServiceRecord>(&r.value) {
            Ok(rec) => {
                self.invalid.remove(key);
                self.good
                    .insert(key.to_string(), (r.mod_revision, rec.frontends()));
                changed.push(key.to_string());
            }
            Err(e) => {
                warn!(key, error = %e, "service record does not parse: its last good version stays");
                self.invalid
                    .insert(key.to_string(), (r.mod_revision, e.to_string()));
            }
        }
    }

    fn frontends(&self, key: &str) -> &[Frontend] {
        self.good.get(key).map_or(&[], |(_, f)| f)
    }
}

/// What the unit publishes: the summary (a [`ServicesView`] without its
/// frontends) and the frontends' views per record, shared so that a pass
/// copies none of them.
#[derive(Debug, Clone, Default)]
pub struct Programmed {
    pub summary: ServicesView,
    pub frontends: Arc<BTreeMap<String, Arc<[FrontendView]>>>,
    /// Socket LB, or per-packet LB at the pods' veths.
    pub socket_lb: bool,
}

impl Programmed {
    /// The whole view (`GET /v1/services`).
    pub fn view(&self) -> ServicesView {
        ServicesView {
            frontends: self
                .frontends
                .values()
                .flat_map(|v| v.iter().cloned())
                .collect(),
            ..self.summary.clone()
        }
    }

    pub fn frontend_count(&self) -> usize {
        self.frontends.values().map(|v| v.len()).sum()
    }
}

/// The unit's state between passes.
pub struct Unit {
    node: String,
    records: Records,
    desired: Desired,
    /// What the maps hold.
    have: Table,
    /// Keys changed in `desired` not yet brought to the maps; `None`:
    /// compare everything (the first pass, over a previous run's maps).
    pending: Option<Touched>,
    /// Records whose last update failed (retried on the next pass).
    failed: BTreeSet<String>,
    conflicts: BTreeMap<String, Shadowed>,
    programmed: Programmed,
    passes: u64,
}

impl Unit {
    /// The unit on node `node` over maps holding `have` (a previous run's).
    pub fn new(
        node: String,
        node_ips: Vec<IpAddr>,
        maglev: Option<table::Maglev>,
        have: Table,
    ) -> Self {
        let mut ids = Ids::adopt(&have.backends, &have.revnat);
        if let Some(m) = maglev {
            ids = ids.with_maglev(m);
        }
        Unit {
            node: node.clone(),
            records: Records::default(),
            desired: Desired::new(node, node_ips, ids),
            have,
            pending: None,
            failed: BTreeSet::new(),
            conflicts: BTreeMap::new(),
            programmed: Programmed::default(),
            passes: 0,
        }
    }

    /// What the last pass programmed.
    pub fn programmed(&self) -> &Programmed {
        &self.programmed
    }

    /// One pass: re-read the `dirty` records of `raw` (the stored ones),
    /// update the desired table, bring the maps over. Its error, if any.
    pub fn pass<W: LbWriter>(
        &mut self,
        writer: &mut W,
        raw: &BTreeMap<String, Arc<Raw>>,
        dirty: &Dirty,
    ) -> Option<String> {
        let started = std::time::Instant::now();
        let mut keys = self.records.refresh(raw, dirty);
        keys.extend(std::mem::take(&mut self.failed));
        let first = self.pending.is_none();
        let mut touched = Touched::default();
        let mut error = None;
        let mut updated = BTreeSet::new();
        loop {
            for key in &keys {
                match self
                    .desired
                    .set(key, self.records.frontends(key), &mut touched)
                {
                    Ok(Some(s)) => {
                        self.conflicts.insert(key.clone(), s);
                    }
                    Ok(None) => {
                        self.conflicts.remove(key);
                    }
                    Err(e) => {
                        self.failed.insert(key.clone());
                        error = Some(format!("{key}: {e}"));
                    }
                }
                updated.insert(key.clone());
            }
            keys = self.desired.retry_shadowed();
            if keys.is_empty() {
                break;
            }
        }
        if first {
            self.desired.settle();
        }
        let pending = match self.pending.take() {
            Some(mut p) => {
                p.extend(touched);
                p
            }
            None => Touched::everything(&self.have, self.desired.table()),
        };
        match sync::sync_touched(writer, &mut self.have, self.desired.table(), &pending) {
            Ok(c) => {
                self.pending = Some(Touched::default());
                if c.written + c.removed > 0 {
                    info!(
                        records = updated.len(),
                        written = c.written,
                        removed = c.removed,
                        pass_us = started.elapsed().as_micros(),
                        "services programmed"
                    );
                }
            }
            Err(e) => {
                self.pending = (!first).then_some(pending);
                error = Some(format!("{e:#}"));
            }
        }
        self.passes += 1;
        self.publish(&updated, error.clone());
        error
    }

    fn publish(&mut self, updated: &BTreeSet<String>, error: Option<String>) {
        if !updated.is_empty() {
            let views = Arc::make_mut(&mut self.programmed.frontends);
            for key in updated {
                match self.records.good.get(key) {
                    Some((_, fs)) => {
                        views.insert(
                            key.clone(),
                            fs.iter().map(|f| frontend_view(f, &self.node)).collect(),
                        );
                    }
                    None => {
                        views.remove(key);
                    }
                }
            }
        }
        self.programmed.summary = summary(self, error);
    }
}

/// Runs the unit until `cancel`.
pub async fn run<W: LbWriter + Send>(
    mut writer: W,
    inputs: Inputs,
    out: watch::Sender<Arc<Programmed>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    tokio::select! {
        () = inputs.records.ready() => {}
        _ = cancel.cancelled() => return Ok(()),
    }
    let mut sub = inputs.records.subscribe();
    // What the maps hold (and so the ids a previous run gave out).
    let have = writer.read()?;
    let mut unit = Unit::new(inputs.node, inputs.node_ips, Some(inputs.maglev), have);
    unit.programmed.socket_lb = inputs.socket_lb;
    let mut dirty = Dirty::All;
    loop {
        tokio::time::sleep(DEBOUNCE).await;
        while let Some(ev) = sub.try_recv() {
            dirty.add(ev);
        }
        let error = inputs
            .records
            .read(|raw| unit.pass(&mut writer, raw, &dirty));
        if let Some(e) = &error {
            warn!(error = %e, "services pass failed; retrying");
        }
        out.send_replace(Arc::new(unit.programmed.clone()));
        dirty = Dirty::Keys(BTreeSet::new());
        let retry = error.is_some();
        tokio::select! {
            ev = sub.recv() => dirty.add(ev),
            _ = tokio::time::sleep(RETRY), if retry => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

/// The services unit's line in `status`.
pub fn component(p: &Programmed) -> axoneme_api::ComponentStatus {
    let v = &p.summary;
    let message = if !v.enabled {
        "kube-proxy replacement off: Services are left to kube-proxy".to_string()
    } else if let Some(e) = &v.error {
        format!("kube-proxy replacement: the last pass failed: {e}")
    } else {
        let mut m = format!(
            "kube-proxy replacement ({}): {} frontends programmed",
            if p.socket_lb {
                "socket LB"
            } else {
                "per-packet LB at the pods' veths"
            },
            p.frontend_count()
        );
        if !v.invalid.is_empty() {
            m.push_str(&format!(
                "; {} records do not parse (their last good version stays)",
                v.invalid.len()
            ));
        }
        if !v.conflicts.is_empty() {
            m.push_str(&format!(
                "; {} records name a frontend another one owns",
                v.conflicts.len()
            ));
        }
        m
    };
    axoneme_api::ComponentStatus {
        name: "services".into(),
        ok: !v.enabled || v.error.is_none(),
        message,
    }
}

fn frontend_view(f: &Frontend, node: &str) -> FrontendView {
    let selected = f.selectable(node);
    FrontendView {
        service: f.service.clone(),
        kind: f.kind.as_str().to_string(),
        frontend: f.display_addr(),
        backends: f
            .backends
            .iter()
            .map(|b| BackendView {
                address: std::net::SocketAddr::new(b.addr, b.port).to_string(),
                node: b.node.clone(),
                state: match b.state {
                    BackendState::Active => "active",
                    BackendState::Terminating => "terminating",
                    BackendState::NotReady => "not-ready",
                }
                .to_string(),
                selected: selected.iter().any(|s| std::ptr::eq(*s, b)),
            })
            .collect(),
        affinity_timeout: f.affinity_timeout,
        local_only: f.local_only,
    }
}

/// The view's summary after a pass (the frontends are published apart).
fn summary(unit: &Unit, error: Option<String>) -> ServicesView {
    use axoneme_bpf_common::{lb, map_names};
    let have = &unit.have;
    ServicesView {
        enabled: true,
        passes: unit.passes,
        synced: error.is_none(),
        error,
        frontends: Vec::new(),
        maps: [
            (
                map_names::LB_SERVICES,
                have.services.len(),
                lb::LB_SERVICES_MAX,
            ),
            (
                map_names::LB_BACKENDS,
                have.backends.len(),
                lb::LB_BACKENDS_MAX,
            ),
            (map_names::LB_REVNAT, have.revnat.len(), lb::LB_REVNAT_MAX),
            (
                map_names::LB_MAGLEV,
                have.maglev.values().map(Vec::len).sum(),
                lb::LB_MAGLEV_MAX,
            ),
        ]
        .into_iter()
        .map(|(name, entries, max)| MapStatus {
            name: name.to_string(),
            max_entries: max,
            entries: u64::try_from(entries).unwrap_or(u64::MAX),
        })
        .collect(),
        invalid: unit
            .records
            .invalid
            .iter()
            .map(|(k, (_, e))| (k.clone(), e.clone()))
            .collect(),
        conflicts: unit
            .conflicts
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    format!(
                        "{} owned by {}: not programmed for this record",
                        s.frontends.join(", "),
                        s.owner
                    ),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::sync::FakeLb;
    use super::*;

    fn raw(vip: &str, backends: &[&str], rev: i64) -> Arc<Raw> {
        let endpoints: Vec<_> = backends
            .iter()
            .map(|b| serde_json::json!({"addresses": [b], "nodeName": "a"}))
            .collect();
        let record = serde_json::json!({
            "namespace": "default", "name": vip,
            "spec": {"clusterIPs": [vip], "ports": [{"port": 80}]},
            "endpoints": endpoints,
        });
        Arc::new(Raw {
            value: serde_json::to_vec(&record).unwrap(),
            mod_revision: rev,
        })
    }

    fn unit(have: Table) -> Unit {
        Unit::new("a".into(), Vec::new(), None, have)
    }

    fn keys(k: &[&str]) -> Dirty {
        Dirty::keys(k)
    }

    #[test]
    fn a_pass_reads_and_writes_only_what_changed() {
        let mut lb = FakeLb::default();
        let mut u = unit(Table::default());
        let mut store: BTreeMap<String, Arc<Raw>> = (1..=3)
            .map(|i| {
                (
                    format!("s{i}"),
                    raw(&format!("10.96.0.{i}"), &["10.200.0.1"], i),
                )
            })
            .collect();
        assert_eq!(u.pass(&mut lb, &store, &Dirty::All), None);
        // One backend shared by three Services, each with a master, a
        // slot and a reverse-NAT entry.
        assert_eq!(lb.log.len(), 1 + 3 * 3);
        assert_eq!(u.programmed.frontend_count(), 3);
        // s2 gains a backend: its slot, its master, the new backend.
        lb.log.clear();
        store.insert(
            "s2".into(),
            raw("10.96.0.2", &["10.200.0.1", "10.200.0.2"], 10),
        );
        assert_eq!(u.pass(&mut lb, &store, &keys(&["s2"])), None);
        assert_eq!(lb.log, ["set backend 2", "set 80 slot 2", "set 80 slot 0"]);
        assert!(lb.consistent());
        // A bad version of s1: its last good version stays, reported.
        lb.log.clear();
        store.insert(
            "s1".into(),
            Arc::new(Raw {
                value: b"{".to_vec(),
                mod_revision: 11,
            }),
        );
        assert_eq!(u.pass(&mut lb, &store, &keys(&["s1"])), None);
        assert!(lb.log.is_empty());
        assert_eq!(u.programmed.summary.invalid.len(), 1);
        assert_eq!(u.programmed.frontend_count(), 3);
        // s3 deleted: its entries go, the shared backend stays.
        store.remove("s3");
        assert_eq!(u.pass(&mut lb, &store, &keys(&["s3"])), None);
        assert_eq!(
            lb.log,
            ["remove 80 slot 0", "remove 80 slot 1", "remove revnat 3"]
        );
        assert_eq!(u.programmed.frontend_count(), 2);
        assert_eq!(&lb.maps, u.desired.table());
    }

    #[test]
    fn the_first_pass_clears_what_a_previous_run_left() {
        // A previous run programmed s1 and s2; only s2 is still stored.
        let mut lb = FakeLb::default();
        let mut before = unit(Table::default());
        let store: BTreeMap<String, Arc<Raw>> = (1..=2)
            .map(|i| {
                (
                    format!("s{i}"),
                    raw(&format!("10.96.0.{i}"), &[&format!("10.200.0.{i}")], i),
                )
            })
            .collect();
        assert_eq!(before.pass(&mut lb, &store, &Dirty::All), None);
        let left = lb.maps.clone();
        let mut store = store;
        store.remove("s1");
        let mut after = unit(left.clone());
        lb.log.clear();
        assert_eq!(after.pass(&mut lb, &store, &Dirty::All), None);
        assert_eq!(
            lb.log.len(),
            4,
            "s1's master, slot, revnat, backend: {:?}",
            lb.log
        );
        assert!(lb.log.iter().all(|op| op.starts_with("remove")));
        // s2 kept its ids: nothing of it was rewritten.
        assert_eq!(&lb.maps, after.desired.table());
    }

    #[test]
    fn a_map_failure_is_retried_with_what_it_left_pending() {
        let mut lb = FakeLb::default();
        let mut u = unit(Table::default());
        let store: BTreeMap<String, Arc<Raw>> =
            [("s1".to_string(), raw("10.96.0.1", &["10.200.0.1"], 1))].into();
        assert_eq!(u.pass(&mut lb, &store, &Dirty::All), None);
        let mut store = store;
        store.insert("s2".into(), raw("10.96.0.2", &["10.200.0.2"], 2));
        lb.fail_at = Some(2);
        assert!(u.pass(&mut lb, &store, &keys(&["s2"])).is_some());
        assert!(u.programmed.summary.error.is_some());
        // Nothing new to read: the pass still finishes s2.
        assert_eq!(u.pass(&mut lb, &store, &keys(&[])), None);
        assert_eq!(&lb.maps, u.desired.table());
        assert_eq!(lb.maps.services.len(), 4);
        assert!(lb.consistent());
    }
}
