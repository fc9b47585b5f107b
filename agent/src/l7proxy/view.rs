//! The policy snapshot the proxy reads: every address's identity, this
//! node's endpoints, and the policies (with their L7 rules compiled) of
//! the local identities that have L7 rules. Built after every reconcile
//! pass and swapped in whole, so a policy change applies to the next
//! request, also on an open keep-alive connection.

mod lpm;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Decision, Direction, EndpointPolicy, Verdict, PROTO_TCP};
use axoneme_policy::l7::{HttpMatcher, HttpRequest};
use ipnet::IpNet;
use tracing::warn;

pub use lpm::Lpm;

/// What the proxy needs from the node's state.
#[derive(Default)]
pub struct ProxyView {
    /// Every endpoint address and policy CIDR in the cluster, for
    /// longest-prefix match.
    ipcache: Lpm<NumericIdentity>,
    /// This node's endpoints' addresses.
    local: HashMap<IpAddr, NumericIdentity>,
    /// The policies of local endpoint identities that have L7 rules.
    policies: HashMap<NumericIdentity, Arc<EndpointPolicy>>,
    /// Each distinct rule list, compiled once (keyed by its address).
    matchers: HashMap<usize, Arc<HttpMatcher>>,
}

/// An address as the proxy's rules see it: its identity, and whether it
/// is an endpoint of this node (whose rules this proxy applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub identity: NumericIdentity,
    pub local: bool,
}

impl ProxyView {
    /// Builds a view; rule lists whose regexes do not compile (validation
    /// rejects them first) deny every request.
    pub fn new(
        ipcache: BTreeMap<IpNet, NumericIdentity>,
        local: HashMap<IpAddr, NumericIdentity>,
        policies: HashMap<NumericIdentity, Arc<EndpointPolicy>>,
    ) -> Self {
        let mut matchers = HashMap::new();
        for p in policies.values() {
            for dir in [Direction::Ingress, Direction::Egress] {
                for v in p.direction(dir).entries.values() {
                    if let Verdict::Redirect(rules) = v {
                        let key = Arc::as_ptr(rules) as usize;
                        if let std::collections::hash_map::Entry::Vacant(e) = matchers.entry(key) {
                            match HttpMatcher::new(rules) {
                                Ok(m) => {
                                    e.insert(Arc::new(m));
                                }
                                Err(err) => {
                                    warn!(error = %err, "L7 rules do not compile; their requests are denied")
                                }
                            }
                        }
                    }
                }
            }
        }
        ProxyView {
            ipcache: ipcache.into_iter().collect(),
            local,
            policies,
            matchers,
        }
    }

    /// The identity of an address: a local endpoint's, else the longest
    /// ipcache prefix's, else world.
    pub fn identity(&self, ip: IpAddr) -> NumericIdentity {
        self.peer(ip).identity
    }

    /// Whether `ip` is an address of an endpoint of this node.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.local.contains_key(&ip)
    }

    /// The identity of an address and whether it is local, in one lookup
    /// for a local endpoint.
    pub fn peer(&self, ip: IpAddr) -> Peer {
        if let Some(id) = self.local.get(&ip) {
            return Peer {
                identity: *id,
                local: true,
            };
        }
        Peer {
            identity: self
                .ipcache
                .get(ip)
                .copied()
                .unwrap_or(NumericIdentity(axoneme_bpf_common::IDENTITY_WORLD)),
            local: false,
        }
    }

    /// Which side's L7 rules refuse the request, of the sides on this node
    /// (the destination's ingress, the source's egress); `None`: it passes.
    pub fn denied_by(
        &self,
        src: Peer,
        dst: Peer,
        port: u16,
        req: &HttpRequest<'_>,
    ) -> Option<Direction> {
        let side = |local: Peer, dir: Direction, peer: NumericIdentity| {
            if !local.local {
                return true;
            }
            let Some(policy) = self.policies.get(&local.identity) else {
                return true;
            };
            match policy.direction(dir).lookup(peer, PROTO_TCP, port) {
                Decision::Allow => true,
                Decision::Deny(_) => false,
                Decision::Redirect(rules) => self
                    .matchers
                    .get(&(Arc::as_ptr(&rules) as usize))
                    .is_some_and(|m| m.allows(req)),
            }
        };
        if !side(dst, Direction::Ingress, src.identity) {
            Some(Direction::Ingress)
        } else if !side(src, Direction::Egress, dst.identity) {
            Some(Direction::Egress)
        } else {
            None
        }
    }
}

/// The proxy's view of what `want` asks and the engine computed: every
/// address's identity, this node's endpoints, and the policies of local
/// identities that have L7 rules.
pub fn view_of(
    want: &crate::reconcile::Desired,
    engine: &axoneme_policy::engine::Engine,
) -> ProxyView {
    let mut local = HashMap::new();
    let mut policies = HashMap::new();
    for ep in &want.local {
        let Some(id) = ep.identity else { continue };
        for a in &ep.addresses {
            local.insert(*a, id);
        }
        if let Some(p) = engine.endpoint_policy(id) {
            let has_l7 = [Direction::Ingress, Direction::Egress].iter().any(|d| {
                p.direction(*d)
                    .entries
                    .values()
                    .any(|v| matches!(v, Verdict::Redirect(_)))
            });
            if has_l7 {
                policies.entry(id).or_insert_with(|| Arc::new(p.clone()));
            }
        }
    }
    // Without L7 rules on this node the datapath redirects nothing here
    // and no rule asks for a peer's identity: no copy of the cluster's
    // addresses to keep.
    let mut ipcache = BTreeMap::new();
    if !policies.is_empty() {
        ipcache.clone_from(&want.ipcache);
        for (net, id) in engine.cidr_identities() {
            ipcache.entry(net).or_insert(id);
        }
    }
    ProxyView::new(ipcache, local, policies)
}

/// A cluster-sized ipcache, addresses to look up in it, and the linear
/// scan this view replaced: the view's tests check it against the scan,
/// and `cargo xtask bench proxy-view` times both.
pub mod fixtures {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use axoneme_identity::NumericIdentity;
    use ipnet::IpNet;

    /// The lookup this view replaced: an exact prefix, else a scan of
    /// every prefix for the longest that contains the address.
    pub fn scan(ipcache: &BTreeMap<IpNet, NumericIdentity>, ip: IpAddr) -> NumericIdentity {
        if let Some(id) = ipcache.get(&IpNet::from(ip)) {
            return *id;
        }
        ipcache
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, id)| *id)
            .unwrap_or(NumericIdentity(axoneme_bpf_common::IDENTITY_WORLD))
    }

    /// 10,000 prefixes as a cluster's ipcache has them: endpoint
    /// addresses of both families and a few policy CIDRs.
    pub fn ipcache() -> BTreeMap<IpNet, NumericIdentity> {
        let mut m = BTreeMap::new();
        for i in 0..4_990u32 {
            let v4 = Ipv4Addr::from(0x0ac8_0000 + i);
            let v6 = Ipv6Addr::from(0xfd00_00a0_0000_0000_0000_0000_0000_0000u128 + u128::from(i));
            m.insert(IpAddr::from(v4).into(), NumericIdentity(1000 + i % 300));
            m.insert(IpAddr::from(v6).into(), NumericIdentity(1000 + i % 300));
        }
        for (id, net) in (16_777_217..).zip([
            "0.0.0.0/0",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "203.0.113.0/24",
            "198.51.100.0/25",
            "::/0",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "fd00::/8",
            "100.64.0.0/10",
            "8.8.8.8/32",
        ]) {
            m.insert(net.parse().unwrap(), NumericIdentity(id));
        }
        m
    }

    /// Addresses to look up: every 50th endpoint address of each family, and
    /// others in and outside the policy CIDRs.
    pub fn probes() -> Vec<IpAddr> {
        let mut p = Vec::new();
        for i in (0..4_990u32).step_by(50) {
            p.push(IpAddr::from(Ipv4Addr::from(0x0ac8_0000 + i)));
            p.push(IpAddr::from(Ipv6Addr::from(
                0xfd00_00a0_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
            )));
        }
        for s in [
            "10.9.9.9",
            "172.20.1.1",
            "203.0.113.7",
            "8.8.8.8",
            "1.1.1.1",
            "2001:db8:1::5",
            "2001:db8:2::5",
            "fe80::1",
        ] {
            p.push(s.parse().unwrap());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{ipcache, probes, scan};
    use super::*;

    #[test]
    fn identities_are_the_scans() {
        let m = ipcache();
        let view = ProxyView::new(m.clone(), HashMap::new(), HashMap::new());
        for ip in probes() {
            assert_eq!(view.identity(ip), scan(&m, ip), "{ip}");
            assert!(!view.is_local(ip));
        }
    }
}
