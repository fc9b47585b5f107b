//! The agent's start against etcd: the node lease, the node record and
//! the previous run's endpoints, retried while etcd is unavailable (the
//! pinned maps keep enforcing meanwhile).

use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::starting::Progress;
use crate::config::Config;
use crate::endpoints;
use crate::lease::Leased;
use crate::netdev::Ns;
use axoneme_identity::{Decode, Layout, NodeCidrs, NodeRecord};
use axoneme_kvstore::{KvError, KvStore};

/// What the start needs from etcd, retried while etcd is unavailable
/// (each call bounded by the kvstore's deadline; an answer that another
/// try cannot change, such as a refused certificate, fails the start): the
/// node lease (resumed when the previous run's is still alive), the node
/// announced on it, and the previous run's endpoints re-announced, all
/// before the caches start so the first pass already has them.
pub(super) async fn join_etcd(
    kv: &KvStore,
    cfg: &Config,
    layout: &Layout,
    record: &mut NodeRecord,
    node_ns: &Ns,
    progress: &watch::Sender<Progress>,
) -> anyhow::Result<(Leased, Vec<crate::endpoints::EndpointState>)> {
    let grace = i64::try_from(cfg.endpoints.node_grace.as_secs()).unwrap_or(i64::MAX);
    let lease_file = cfg.state_dir().join("lease.json");
    let mut backoff = Duration::from_millis(200);
    let leased = loop {
        let attempt = async {
            progress.send_modify(|p| p.step = "granting the node lease");
            let leased = Leased::resume_or_grant(kv.clone(), grace, lease_file.clone())
                .await
                .context("granting the node lease")?;
            progress.send_modify(|p| p.step = "announcing the node");
            // With the pod CIDRs the operator gave it: a record without
            // them would withdraw the other nodes' routes to this node's
            // pods until the node-record task wrote them again.
            if let Some(kv) = kv.get(&layout.node_cidrs(&cfg.node)).await? {
                match <NodeCidrs as Decode>::decode(&kv) {
                    Ok(c) => record.pod_cidrs = c.pod_cidrs,
                    Err(e) => {
                        warn!(error = %e, "this node's CIDR allocation is unreadable; announcing none")
                    }
                }
            }
            leased
                .put(&layout.node(&cfg.node), serde_json::to_vec(&*record)?)
                .await
                .context("announcing the node")?;
            anyhow::Ok(leased)
        };
        match attempt.await {
            Ok(leased) => break leased,
            Err(e) => {
                let lasting = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<KvError>())
                    .is_some_and(|k| !matches!(k, KvError::Exhausted { .. }) && !k.is_retryable());
                if lasting {
                    return Err(e);
                }
                let e = format!("{e:#}");
                warn!(error = %e, retry_in = ?backoff, "etcd does not answer; the previous run's pinned maps keep enforcing");
                progress.send_modify(|p| {
                    p.attempts += 1;
                    p.last_error = Some(e);
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    progress.send_modify(|p| p.step = "re-announcing the previous run's endpoints");
    let ep_dir = cfg.state_dir().join("endpoints");
    let restored = endpoints::restore(&cfg.node, layout, node_ns, &ep_dir, &leased).await;
    if !restored.is_empty() {
        info!(
            endpoints = restored.len(),
            "endpoints of the previous run re-announced"
        );
    }
    Ok((leased, restored))
}
