//! Cluster-pool IPAM: the leader gives every node that announces itself
//! (`nodes/v1/<node>`, on the agent's lease) one pod CIDR per configured
//! pool (`node-cidrs/v1/<node>`, fenced), as Cilium's cluster-pool mode
//! fills CiliumNode `spec.ipam.podCIDRs`. Agents allocate pod addresses
//! from it.
//!
//! A node's CIDRs outlive its lease (an agent restart keeps its pods'
//! addresses); they are released once the node has been gone for
//! `release_after`, and a released CIDR goes to the back of the line.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axoneme_identity::{CacheEvent, Layout, NodeCidrs, NodeRecord, WatchCache};
use axoneme_kvstore::{KvStore, Txn, TxnOp};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::allocator::LeaderExit;
use crate::election::Leadership;

/// One pool: per-node CIDRs of `mask` bits carved from `cidr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub cidr: IpNet,
    pub mask: u8,
}

impl Pool {
    /// Checks that `mask` carves `cidr` into node CIDRs of at least 4
    /// addresses (network, gateway-free pods, broadcast for IPv4).
    pub fn new(cidr: IpNet, mask: u8) -> Result<Self, String> {
        let max = cidr.max_prefix_len();
        if mask < cidr.prefix_len() || mask > max - 2 {
            return Err(format!(
                "mask size {mask} does not fit pool {cidr} (it must be between {} and {})",
                cidr.prefix_len(),
                max - 2
            ));
        }
        if cidr.trunc() != cidr {
            return Err(format!(
                "pool {cidr} has host bits set (did you mean {}?)",
                cidr.trunc()
            ));
        }
        Ok(Pool { cidr, mask })
    }

    fn contains(&self, net: &IpNet) -> bool {
        net.prefix_len() == self.mask && self.cidr.contains(net)
    }
}

/// The IPAM settings.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub pools: Vec<Pool>,
    pub release_after: Duration,
}

/// Picks the first CIDR of `pool` that is neither used nor recently
/// released; a recently released one only when nothing else is left.
pub fn pick(pool: &Pool, used: &BTreeSet<IpNet>, released: &[IpNet]) -> Option<IpNet> {
    let subnets = pool.cidr.subnets(pool.mask).ok()?;
    let mut fallback = None;
    for net in subnets {
        if used.contains(&net) {
            continue;
        }
        if released.contains(&net) {
            fallback = fallback.or(Some(net));
            continue;
        }
        return Some(net);
    }
    fallback
}

/// Keeps every announced node's CIDRs while `lead` holds.
pub async fn run(
    kv: KvStore,
    layout: Layout,
    lead: Leadership,
    cfg: IpamConfig,
    nodes: WatchCache<NodeRecord>,
    cancel: CancellationToken,
) -> LeaderExit {
    let mut sub = nodes.subscribe();
    nodes.ready().await;
    let mut given: BTreeMap<String, NodeCidrs> = BTreeMap::new();
    match kv.get_prefix(&layout.node_cidrs_prefix()).await {
        Ok((kvs, _)) => {
            for item in kvs {
                let Some(node) = item.key.strip_prefix(&layout.node_cidrs_prefix()) else {
                    continue;
                };
                match serde_json::from_slice::<NodeCidrs>(&item.value) {
                    Ok(c) => {
                        given.insert(node.to_string(), c);
                    }
                    Err(e) => {
                        warn!(key = %item.key, error = %e, "unreadable node CIDRs; rewriting them")
                    }
                }
            }
        }
        Err(e) => return LeaderExit::Failed(e),
    }
    let mut ipam = Ipam {
        kv,
        layout,
        lead,
        cfg,
        given,
        absent_since: HashMap::new(),
        released: Vec::new(),
    };
    // Releases are time-based: look again now and then without events.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        if let Some(exit) = ipam.reconcile(&nodes.snapshot()).await {
            return exit;
        }
        tokio::select! {
            _ = cancel.cancelled() => return LeaderExit::Cancelled,
            ev = sub.recv() => {
                if let CacheEvent::Upsert { key, .. } = &ev {
                    tracing::debug!(%key, "node announced");
                }
            }
            _ = tick.tick() => {}
        }
    }
}

struct Ipam {
    kv: KvStore,
    layout: Layout,
    lead: Leadership,
    cfg: IpamConfig,
    given: BTreeMap<String, NodeCidrs>,
    absent_since: HashMap<String, Instant>,
    released: Vec<IpNet>,
}

impl Ipam {
    async fn reconcile(&mut self, nodes: &BTreeMap<String, Arc<NodeRecord>>) -> Option<LeaderExit> {
        let present: BTreeSet<&str> = nodes
            .keys()
            .filter_map(|k| k.strip_prefix(&self.layout.nodes_prefix()))
            .collect();
        // Release the CIDRs of nodes gone for long enough.
        let now = Instant::now();
        let absent: Vec<String> = self
            .given
            .keys()
            .filter(|n| !present.contains(n.as_str()))
            .cloned()
            .collect();
        self.absent_since.retain(|n, _| absent.contains(n));
        for node in absent {
            let since = *self.absent_since.entry(node.clone()).or_insert(now);
            if now.duration_since(since) < self.cfg.release_after {
                continue;
            }
            let op = TxnOp::delete(self.layout.node_cidrs(&node), None);
            if let Some(exit) = self.write(op).await {
                return Some(exit);
            }
            if let Some(c) = self.given.remove(&node) {
                info!(%node, cidrs = ?c.pod_cidrs, "node gone; pod CIDRs released");
                self.released.extend(c.pod_cidrs);
            }
            self.absent_since.remove(&node);
        }
        // Give every present node one CIDR per pool.
        for node in present {
            let mut cidrs = self
                .given
                .get(node)
                .map(|c| c.pod_cidrs.clone())
                .unwrap_or_default();
            let mut changed = false;
            for pool in &self.cfg.pools {
                if cidrs.iter().any(|c| pool.contains(c)) {
                    continue;
                }
                let used: BTreeSet<IpNet> = self
                    .given
                    .values()
                    .flat_map(|c| c.pod_cidrs.iter().copied())
                    .collect();
                match pick(pool, &used, &self.released) {
                    Some(net) => {
                        self.released.retain(|r| *r != net);
                        cidrs.push(net);
                        changed = true;
                    }
                    None => {
                        warn!(%node, pool = %pool.cidr, "pod CIDR pool exhausted; the node gets no CIDR from it")
                    }
                }
            }
            if !changed {
                continue;
            }
            let record = NodeCidrs {
                pod_cidrs: cidrs,
                allocator: self.lead.holder.clone(),
            };
            let value = serde_json::to_vec(&record).expect("serializes");
            let op = TxnOp::put(self.layout.node_cidrs(node), value, None);
            if let Some(exit) = self.write(op).await {
                return Some(exit);
            }
            info!(%node, cidrs = ?record.pod_cidrs, "pod CIDRs given");
            self.given.insert(node.to_string(), record);
        }
        None
    }

    async fn write(&self, op: TxnOp) -> Option<LeaderExit> {
        match self
            .kv
            .txn(Txn::new().when([self.lead.fence()]).and_then([op]))
            .await
        {
            Ok(r) if r.succeeded => None,
            Ok(_) => Some(LeaderExit::Fenced),
            Err(e) => Some(LeaderExit::Failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn pools_are_checked() {
        assert!(Pool::new(net("10.200.0.0/16"), 24).is_ok());
        assert!(Pool::new(net("fd00:a0::/104"), 120).is_ok());
        assert!(Pool::new(net("10.200.0.0/16"), 8)
            .unwrap_err()
            .contains("does not fit"));
        assert!(Pool::new(net("10.200.0.0/16"), 31)
            .unwrap_err()
            .contains("between 16 and 30"));
        assert!(Pool::new(net("10.200.1.0/16"), 24)
            .unwrap_err()
            .contains("10.200.0.0/16"));
    }

    #[test]
    fn picks_the_first_free_and_reuses_released_last() {
        let pool = Pool::new(net("10.0.0.0/30"), 31).unwrap_err();
        assert!(pool.contains("between"));
        let pool = Pool::new(net("10.0.0.0/28"), 30).unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(pick(&pool, &used, &[]), Some(net("10.0.0.0/30")));
        used.insert(net("10.0.0.0/30"));
        let released = [net("10.0.0.4/30")];
        assert_eq!(pick(&pool, &used, &released), Some(net("10.0.0.8/30")));
        used.insert(net("10.0.0.8/30"));
        used.insert(net("10.0.0.12/30"));
        assert_eq!(pick(&pool, &used, &released), Some(net("10.0.0.4/30")));
        used.insert(net("10.0.0.4/30"));
        assert_eq!(pick(&pool, &used, &released), None);
    }
}
