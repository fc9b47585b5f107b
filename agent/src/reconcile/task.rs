//! The reconcile task: owns the [`Driver`] (and so every map), runs a pass
//! when the node's caches change (debounced), when a failed unit is due
//! again, and every resync interval; publishes what it did. Readers (the
//! API, the CNI path, the proxy) only ever see what it published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Desired, Driver, MapWriter, Programmed, Unit, UnitHealth};
use crate::config::ReconcileConfig;
use crate::l7proxy::{self, ProxyView};
use crate::node::NodeState;

/// What the datapath holds, as of the last pass.
#[derive(Debug, Clone, Default)]
pub struct DatapathView {
    pub passes: u64,
    /// Local endpoints enforced with their identity and policy.
    pub programmed: BTreeMap<String, Programmed>,
    /// Interfaces with the programs attached.
    pub attached: usize,
    pub units: BTreeMap<Unit, UnitHealth>,
    /// Policies enforced (key → ModRevision): as of the last pass whose
    /// policy and endpoints units were both in sync.
    pub policies: BTreeMap<String, i64>,
}

impl DatapathView {
    /// Whether every unit is in sync.
    pub fn ok(&self) -> bool {
        self.units.values().all(|h| h.consecutive_failures == 0)
    }
}

/// A local endpoint's standing in the datapath: enforced with this
/// identity, or refused (the endpoints map had no room) with why.
pub type Enforcement = Result<u32, String>;

/// Where the task publishes.
pub struct Outputs {
    pub view: watch::Sender<Arc<DatapathView>>,
    /// Each local endpoint's enforcement by name (CNI ADD waits on it):
    /// its identity once enforced, or why the datapath refused it.
    pub programmed: watch::Sender<BTreeMap<String, Enforcement>>,
    /// The L7 proxy's policy snapshot, when the node runs a proxy.
    pub proxy: Option<watch::Sender<Arc<ProxyView>>>,
    /// Told the timing of every pass that changed the datapath.
    pub regenerations: Option<Arc<dyn Regenerations>>,
}

/// What observes the passes that regenerated endpoints (the metrics).
pub trait Regenerations: Send + Sync {
    fn observe(&self, timing: &super::PassTiming);
}

pub async fn run<W: MapWriter + Send>(
    mut driver: Driver<W>,
    state: NodeState,
    cfg: ReconcileConfig,
    out: Outputs,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut changes = state.subscribe();
    let mut resync = tokio::time::interval(cfg.resync_interval);
    resync.reset();
    let mut enforced = BTreeMap::new();
    loop {
        // Let a burst of changes land before one pass.
        tokio::time::sleep(cfg.reconcile_debounce).await;
        let want = Desired::from_state(&state);
        let report = driver.pass(&want, Instant::now());
        if driver.passes() == 1 {
            info!(outcomes = ?report.outcomes, endpoints = want.local.len(), "datapath ready");
        } else {
            tracing::debug!(outcomes = ?report.outcomes, "datapath reconciled");
        }
        if let Some(r) = out.regenerations.as_ref().filter(|_| report.changed()) {
            r.observe(&report.timing);
        }
        let synced = |u| matches!(report.outcome(u), Some(super::Outcome::Synced(_)));
        if synced(Unit::Policy) && synced(Unit::Endpoints) {
            enforced = want.policy_revisions.clone();
        }
        publish(&driver, &want, &enforced, &out);
        let retry = async {
            match report.retry_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changes.changed() => {}
            _ = resync.tick() => {}
            _ = retry => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

fn publish<W: MapWriter>(
    driver: &Driver<W>,
    want: &Desired,
    enforced: &BTreeMap<String, i64>,
    out: &Outputs,
) {
    if let Some(proxy) = &out.proxy {
        proxy.send_replace(Arc::new(l7proxy::view_of(want, driver.engine())));
    }
    out.programmed.send_replace(
        driver
            .programmed()
            .iter()
            .map(|(name, p)| (name.clone(), Ok(p.info.identity)))
            .chain(
                driver
                    .refused()
                    .iter()
                    .map(|(name, why)| (name.clone(), Err(why.clone()))),
            )
            .collect(),
    );
    out.view.send_replace(Arc::new(DatapathView {
        passes: driver.passes(),
        programmed: driver.programmed().clone(),
        attached: driver.attached(),
        units: driver.health().clone(),
        policies: enforced.clone(),
    }));
}
