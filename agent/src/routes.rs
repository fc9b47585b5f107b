//! The routes task: direct routing between nodes. Every other node's pod
//! CIDRs go via its underlay address of the same family, in this node's
//! namespace, updated when a node record changes (and every resync
//! interval, to repair what someone else removed).

use std::net::IpAddr;
use std::time::Duration;

use axoneme_identity::{NodeRecord, WatchCache};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::netdev::{self, Ns};

pub async fn run(
    ns: Ns,
    me: String,
    nodes: WatchCache<NodeRecord>,
    resync: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut changes = nodes.subscribe();
    let mut tick = tokio::time::interval(resync);
    let mut have: Vec<(IpNet, IpAddr)> = Vec::new();
    let mut failures = 0;
    loop {
        let retry = async {
            if failures == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(crate::reconcile::backoff(failures)).await;
        };
        tokio::select! {
            _ = changes.recv() => {}
            _ = tick.tick() => have.clear(),
            _ = retry => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        let want = wanted(&me, &nodes);
        if want == have {
            continue;
        }
        let gone: Vec<(IpNet, IpAddr)> =
            have.iter().filter(|r| !want.contains(r)).copied().collect();
        // Every route is tried: a route already gone, or a node not
        // reachable yet, must not keep the others out. Those that fail are
        // tried again at the next change or resync.
        match netdev::sync_routes(&ns, &gone, &want).await {
            Ok(failed) => {
                for e in &failed {
                    warn!(error = %e, "cannot update a node route; retrying at the next resync");
                }
                info!(
                    routes = want.len() - failed.len().min(want.len()),
                    "node routes updated"
                );
                have = want;
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                warn!(error = %e, failures, "cannot update node routes; retrying after a backoff");
            }
        }
    }
}

/// Every other node's pod CIDRs via its underlay address of the same family.
fn wanted(me: &str, nodes: &WatchCache<NodeRecord>) -> Vec<(IpNet, IpAddr)> {
    let mut want = Vec::new();
    for node in nodes.snapshot().values().filter(|n| n.name != me) {
        for cidr in &node.pod_cidrs {
            if let Some(via) = node
                .addresses
                .iter()
                .find(|a| a.is_ipv4() == cidr.addr().is_ipv4())
            {
                want.push((*cidr, *via));
            }
        }
    }
    want
}
