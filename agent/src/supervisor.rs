//! One task per concern, each with a span and the agent's cancellation
//! token. A task that ends while the agent runs (an error, a panic, or a
//! return it should never make) takes the whole agent down on purpose:
//! every other task is cancelled and the process exits non-zero, so its
//! supervisor (the DaemonSet, systemd, the test harness) restarts it, and
//! the new run adopts the pinned datapath, which kept enforcing. A task
//! limping on half-dead is what this rules out.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

/// How long the tasks get to stop after the agent is told to.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Supervisor {
    tasks: JoinSet<(&'static str, Result<()>)>,
    cancel: CancellationToken,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// The token every task stops on.
    pub fn cancel(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs `task` as the concern `name` (its log lines carry `task=name`).
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<()>> + Send + 'static,
    ) {
        let span = tracing::info_span!("task", name);
        self.tasks
            .spawn(async move { (name, task.await) }.instrument(span));
    }

    /// Runs a blocking `task` on a thread of its own.
    pub fn spawn_blocking(
        &mut self,
        name: &'static str,
        task: impl FnOnce() -> Result<()> + Send + 'static,
    ) {
        let span = tracing::info_span!("task", name);
        self.tasks.spawn_blocking(move || {
            let _entered = span.enter();
            (name, task())
        });
    }

    /// Runs until `shutdown` completes (a clean stop) or a task ends (a
    /// failure); then stops every task.
    pub async fn run(mut self, shutdown: impl Future<Output = &'static str>) -> Result<()> {
        let outcome = tokio::select! {
            signal = shutdown => {
                info!(signal, "shutting down; the pinned datapath keeps enforcing");
                Ok(())
            }
            Some(ended) = self.tasks.join_next() => {
                let e = match ended {
                    Ok((name, Ok(()))) => anyhow!("task {name} ended while the agent runs"),
                    Ok((name, Err(e))) => e.context(format!("task {name} failed")),
                    Err(e) => anyhow!("a task panicked: {e}"),
                };
                error!(error = %format!("{e:#}"), "stopping the agent (restart it: it adopts its pinned datapath)");
                Err(e)
            }
        };
        self.cancel.cancel();
        let stopped = tokio::time::timeout(STOP_GRACE, async {
            while let Some(ended) = self.tasks.join_next().await {
                match ended {
                    Ok((name, Err(e))) => {
                        warn!(task = name, error = %format!("{e:#}"), "task failed while stopping")
                    }
                    Err(e) if e.is_panic() => warn!(error = %e, "task panicked while stopping"),
                    _ => {}
                }
            }
        })
        .await;
        if stopped.is_err() {
            warn!("some tasks did not stop within {STOP_GRACE:?}; leaving them");
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_fails_stops_the_others_and_the_agent() {
        let mut s = Supervisor::new();
        let cancel = s.cancel();
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.spawn("waits", async move {
            cancel.cancelled().await;
            let _ = tx.send(());
            Ok(())
        });
        s.spawn("fails", async { Err(anyhow!("boom")) });
        let e = s.run(std::future::pending()).await.unwrap_err();
        assert_eq!(format!("{e:#}"), "task fails failed: boom");
        rx.await.expect("the other task was cancelled");
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_too() {
        let mut s = Supervisor::new();
        s.spawn("quits", async { Ok(()) });
        let e = s.run(std::future::pending()).await.unwrap_err();
        assert!(e.to_string().contains("task quits ended"), "{e}");
    }

    #[tokio::test]
    async fn a_panic_is_caught_and_reported() {
        let mut s = Supervisor::new();
        s.spawn_blocking("panics", || panic!("oops"));
        let e = s.run(std::future::pending()).await.unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
    }

    #[tokio::test]
    async fn shutdown_stops_every_task_cleanly() {
        let mut s = Supervisor::new();
        let cancel = s.cancel();
        s.spawn("waits", async move {
            cancel.cancelled().await;
            Ok(())
        });
        s.run(async { "test" }).await.unwrap();
    }
}
