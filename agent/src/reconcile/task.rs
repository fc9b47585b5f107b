//! The reconcile task: owns the [`Driver`] (and so every map), runs a pass
//! when the node's caches change (debounced), when a failed unit is due
//! again, and every resync interval; publishes what it did. Readers (the
//! API, the CNI path, the proxy) only ever see what it published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub policies: Arc<BTreeMap<String, i64>>,
}

impl DatapathView {
    /// Whether every unit is in sync.
    pub fn ok(&self) -> bool {
        self.units.values().all(|h| h.consecutive_failures == 0)
    }
}

/// How long the changes must pause before a pass.
const QUIET: Duration = Duration::from_millis(1);

/// What the reconcile task waits on: the node state's changes.
pub trait StateEvents {
    /// Completes at the next change.
    fn changed(&mut self) -> impl std::future::Future<Output = ()> + Send;
    /// Consumes every change already waiting.
    fn drain(&mut self);
}

/// Lets a burst of changes land before one pass: returns once the changes
/// pause for `quiet` ([`QUIET`]), and at the latest `max` after it was called, with
/// every change waiting consumed (the pass reads the state as it is, so
/// one pass covers them all). A lone change is applied about a
/// millisecond after it arrives, not a whole debounce later (a pod's ADD
/// waits for two: its record, then its identity); a burst is one pass per
/// `max`.
async fn settle(changes: &mut impl StateEvents, quiet: Duration, max: Duration) {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        changes.drain();
        let until = (tokio::time::Instant::now() + quiet).min(deadline);
        let paused = tokio::time::timeout_at(until, changes.changed())
            .await
            .is_err();
        if paused || tokio::time::Instant::now() >= deadline {
            changes.drain();
            return;
        }
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
    let mut enforced = Arc::new(BTreeMap::new());
    loop {
        settle(&mut changes, QUIET, cfg.reconcile_debounce).await;
        let mut want = Desired::from_state(&state);
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
            // Shared with the published view, not copied for it.
            enforced = Arc::new(std::mem::take(&mut want.policy_revisions));
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
    enforced: &Arc<BTreeMap<String, i64>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// Changes as a channel of unit events.
    struct Fake(mpsc::UnboundedReceiver<()>);

    impl StateEvents for Fake {
        async fn changed(&mut self) {
            if self.0.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }

        fn drain(&mut self) {
            while self.0.try_recv().is_ok() {}
        }
    }

    // Tokio's timers tick in milliseconds: the tests' times are several.
    const QUIET_T: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(20);
    const STEP: Duration = Duration::from_millis(2);

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_applied_once_changes_pause() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut c = Fake(rx);
        tx.send(()).unwrap();
        let t0 = tokio::time::Instant::now();
        settle(&mut c, QUIET_T, MAX).await;
        assert_eq!(t0.elapsed(), QUIET_T);
        assert!(c.0.try_recv().is_err(), "the change was consumed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_pass_per_debounce_with_every_change_consumed() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut c = Fake(rx);
        // A change every 2 ms for 60 ms.
        let sender = tokio::spawn(async move {
            for _ in 0..30 {
                tx.send(()).unwrap();
                tokio::time::sleep(STEP).await;
            }
        });
        let t0 = tokio::time::Instant::now();
        settle(&mut c, QUIET_T, MAX).await;
        let took = t0.elapsed();
        assert!(took >= MAX && took <= MAX + STEP, "{took:?}");
        assert!(c.0.try_recv().is_err(), "what had arrived was consumed");
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn changes_that_pause_are_applied_at_the_pause() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut c = Fake(rx);
        tokio::spawn(async move {
            for _ in 0..3 {
                tx.send(()).unwrap();
                tokio::time::sleep(STEP).await;
            }
            // Then quiet (the sender stays, so the channel stays open).
            std::future::pending::<()>().await;
        });
        let t0 = tokio::time::Instant::now();
        settle(&mut c, QUIET_T, MAX).await;
        // The last change at 4 ms, then a quiet spell.
        let took = t0.elapsed();
        let last = STEP * 2;
        assert!(
            took >= last + QUIET_T && took <= last + QUIET_T + STEP,
            "{took:?}"
        );
    }
}
