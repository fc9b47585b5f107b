//! When the leader's loops run a pass: at once, then after any change
//! (debounced, so a burst of events is one pass), after a failed pass
//! again with exponential backoff, and at a time the loop asks for (work it
//! held back).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Quiet time after a change before a pass: events of one burst (a
/// `kubectl apply` of many objects, a re-list) land in one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// First retry after a failed pass.
pub const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest wait between retries of a failing pass.
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// Paces one loop.
pub struct Pacer {
    changes: watch::Receiver<u64>,
    first: bool,
    retry: Duration,
    retry_at: Option<Instant>,
    wake_at: Option<Instant>,
}

impl Pacer {
    pub fn new(changes: watch::Receiver<u64>) -> Self {
        Pacer {
            changes,
            first: true,
            retry: RETRY_MIN,
            retry_at: None,
            wake_at: None,
        }
    }

    /// Waits until a pass is due; `false` once `cancel` fires.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        if std::mem::take(&mut self.first) {
            self.changes.borrow_and_update();
            return !cancel.is_cancelled();
        }
        let retry_at = match (self.retry_at, self.wake_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = cancel.cancelled() => return false,
            r = self.changes.changed() => {
                if r.is_err() {
                    // The sender is gone: the replica is shutting down.
                    cancel.cancelled().await;
                    return false;
                }
            }
            () = async { tokio::time::sleep_until(retry_at.expect("guarded")).await }, if retry_at.is_some() => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            () = tokio::time::sleep(DEBOUNCE) => {}
        }
        self.changes.borrow_and_update();
        true
    }

    /// Run a pass at `at` even without a change (`None`: no such time).
    pub fn wake_at(&mut self, at: Option<Instant>) {
        self.wake_at = at;
    }

    /// The pass failed: retry after the backoff even without a change.
    pub fn failed(&mut self) {
        self.retry_at = Some(Instant::now() + self.retry);
        self.retry = (self.retry * 2).min(RETRY_MAX);
    }

    /// The pass succeeded: no retry pending.
    pub fn succeeded(&mut self) {
        self.retry_at = None;
        self.retry = RETRY_MIN;
    }
}
