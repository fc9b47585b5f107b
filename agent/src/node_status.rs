//! The node-status task: what this node enforces (which policy at which
//! revision, each endpoint's enforcement), written to the kvstore on the
//! node lease whenever it changes, so the operator can say where a policy
//! is enforced (the `Enforced` condition) and mirror each endpoint's state
//! (CiliumEndpoint). Not on the reconcile path: a slow etcd delays the
//! report, never enforcement.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axoneme_bpf_common::endpoint_flags;
use axoneme_identity::{EndpointEnforcement, NodeStatusRecord};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::lease::Leased;
use crate::reconcile::{backoff, DatapathView};

/// The least time between two writes of the record.
const PACE: Duration = Duration::from_millis(100);

/// The record a view stands for (without its time).
pub fn record(node: &str, view: &DatapathView) -> NodeStatusRecord {
    NodeStatusRecord {
        node: node.to_string(),
        policies: (*view.policies).clone(),
        endpoints: view
            .programmed
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    EndpointEnforcement {
                        ready: true,
                        ingress_enforced: p.info.flags & endpoint_flags::INGRESS_ENFORCED != 0,
                        egress_enforced: p.info.flags & endpoint_flags::EGRESS_ENFORCED != 0,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        updated_ms: 0,
    }
}

pub async fn run(
    node: String,
    key: String,
    leased: Leased,
    mut view: watch::Receiver<Arc<DatapathView>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut written: Option<NodeStatusRecord> = None;
    let mut last_write: Option<tokio::time::Instant> = None;
    let mut failures = 0;
    loop {
        let current = record(&node, &view.borrow_and_update());
        if written.as_ref() != Some(&current) {
            let mut value = current.clone();
            value.updated_ms = crate::events::unix_ms();
            let put = tokio::select! {
                r = leased.put(&key, serde_json::to_vec(&value)?) => r,
                _ = cancel.cancelled() => return Ok(()),
            };
            match put {
                Ok(()) => {
                    written = Some(current);
                    last_write = Some(tokio::time::Instant::now());
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, failures, "cannot write the node status; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures)) => continue,
                        _ = cancel.cancelled() => return Ok(()),
                    }
                }
            }
        }
        tokio::select! {
            r = view.changed() => if r.is_err() { return Ok(()) },
            _ = cancel.cancelled() => return Ok(()),
        }
        // A lone change is written at once; during a burst (a pass every
        // few milliseconds, each record carrying every policy's revision)
        // at most one write per PACE, of the view as it is by then.
        if let Some(t) = last_write {
            tokio::select! {
                _ = tokio::time::sleep_until(t + PACE) => {}
                _ = cancel.cancelled() => return Ok(()),
            }
        }
    }
}
