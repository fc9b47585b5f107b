//! The host firewall's agent side: this node as an endpoint.
//!
//! With `--enable-host-firewall` the node is an endpoint of identity
//! `reserved:host` whose labels are the node's (Kubernetes mode: the
//! Node's, mirrored by the operator; standalone: `axoneme node label` and
//! `--node-labels`). Host policies (`nodeSelector`) select it; the node
//! label `axoneme.io/policy-audit-mode=true` puts it in policy audit mode;
//! the reconcile driver programs it like a pod's endpoint, keyed by the node
//! device's ifindex, where the device programs judge the node's own
//! traffic (`bpf/programs/src/host.rs`).
//!
//! Lifelines: the agent's kvstore members and the Kubernetes API server
//! (this module's [`lifeline_keys`]) are written to `LIFELINE` once, at
//! the start (`Datapath::set_lifelines`, the map's only writer); the
//! node's traffic with them is never judged, so no host policy can cut
//! the agent off from what it needs to undo that policy.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use axoneme_bpf_common::{family, LifelineKey};
use axoneme_identity::numeric::NODE_SCOPE;
use axoneme_identity::{LabelSet, NodeLabels, NumericIdentity, ReservedIdentity, WatchCache};

use crate::config::Labels;

/// The host endpoint's name among the node's endpoints.
pub const NAME: &str = "host";

/// This node's host endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEndpoint {
    /// The device its traffic is judged at (the one with the node's
    /// address).
    pub device: String,
    pub ifindex: u32,
    /// The node's addresses: its traffic is what is to or from them.
    pub addresses: Vec<IpAddr>,
    /// The lifelines' addresses (`LIFELINE`), for `status`.
    pub lifelines: Vec<SocketAddr>,
}

/// This node's labels: the stored ones (`key`'s record in `cache`), with
/// `flags` over them.
pub fn node_labels(cache: &WatchCache<NodeLabels>, key: &str, flags: &Labels) -> Labels {
    cache
        .get(key)
        .map(|l| l.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(flags.clone())
        .collect()
}

/// Whether the node's labels put its host endpoint in policy audit mode
/// (the label `axoneme.io/policy-audit-mode=true`, as the Pod annotation
/// of that name does for a pod; any other value enforces).
pub fn audit_mode(labels: &Labels) -> bool {
    labels
        .get(crate::k8s::AUDIT_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The identity labels of a node, as host policies and node selectors
/// see them (`axoneme_policy::selector::node_identity_labels`).
pub use axoneme_policy::selector::node_identity_labels as identity_labels;

/// What `LIFELINE` holds for these addresses: TCP to or from each.
pub fn lifeline_keys(addrs: &[SocketAddr]) -> Vec<LifelineKey> {
    let mut keys: Vec<LifelineKey> = addrs
        .iter()
        .map(|a| {
            let (fam, addr) = match a.ip() {
                IpAddr::V4(v4) => {
                    let mut addr = [0; 16];
                    addr[..4].copy_from_slice(&v4.octets());
                    (family::IPV4, addr)
                }
                IpAddr::V6(v6) => (family::IPV6, v6.octets()),
            };
            LifelineKey {
                addr,
                port: a.port().to_be(),
                protocol: 6,
                family: fam,
            }
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The address and port of a URL (`http://10.0.0.1:2379`, `https://[fd00::1]:6443`;
/// the scheme's port when it has none). Names are looked up.
pub async fn url_addrs(url: &str) -> Vec<SocketAddr> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let default = if scheme == "https" { 443 } else { 80 };
    let host_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:{default}")
    } else {
        authority.to_string()
    };
    let lookup = tokio::net::lookup_host(host_port);
    match tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => {
            tracing::warn!(%url, "cannot resolve a lifeline: the host firewall may judge its traffic");
            Vec::new()
        }
    }
}

/// The `host-firewall` line of `status`: on which device, what is
/// enforced; off, whether a host policy selects this node (then it is not
/// enforced here, which is a failure to see).
pub fn component(
    state: &crate::node::NodeState,
    view: &crate::reconcile::DatapathView,
    mode: axoneme_policy::EnforcementMode,
) -> axoneme_api::ComponentStatus {
    use axoneme_bpf_common::endpoint_flags as f;
    let status = |ok, message| axoneme_api::ComponentStatus {
        name: "host-firewall".into(),
        ok,
        message,
    };
    let labels = state.labels_of_node(state.node());
    let Some(host) = state.host() else {
        let labels = identity_labels(ReservedIdentity::Host, &labels);
        let selecting: Vec<String> = state
            .valid_policies_by_key()
            .into_iter()
            .filter(|(_, p)| {
                let ns = p.namespace.as_deref();
                p.rules.iter().any(|(_, r)| {
                    axoneme_policy::selector::Subject::of(r, ns)
                        .is_some_and(|s| s.is_host() && s.matches(&labels))
                })
            })
            .map(|(k, _)| k)
            .collect();
        return if selecting.is_empty() {
            status(true, "disabled".into())
        } else {
            status(
                false,
                format!(
                    "disabled (--enable-host-firewall), but host policies select this node and are NOT enforced: {}",
                    selecting.join(", ")
                ),
            )
        };
    };
    let Some(p) = view.programmed.get(NAME) else {
        return status(
            false,
            format!(
                "on {}: the host endpoint is not programmed yet",
                host.device
            ),
        );
    };
    let flags = p.info.flags;
    let dir = |bit| if flags & bit != 0 { "enforced" } else { "open" };
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let lifelines: Vec<String> = host.lifelines.iter().map(ToString::to_string).collect();
    let or_none = |v: Vec<String>, sep: &str| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(sep)
        }
    };
    let mut message = format!(
        "on {}: ingress {}, egress {}{}; node labels: {}; always allowed: {}",
        host.device,
        dir(f::INGRESS_ENFORCED),
        dir(f::EGRESS_ENFORCED),
        if flags & f::AUDIT != 0 {
            " (audit mode)"
        } else {
            ""
        },
        or_none(labels, ","),
        or_none(lifelines, ", "),
    );
    let denied = crate::explain::denied_lifelines(state, mode, &host.lifelines);
    if !denied.is_empty() {
        message.push_str(&format!(
            "; warning: the host policy would deny {} (allowed anyway: a lifeline)",
            denied.join(", ")
        ));
    }
    status(true, message)
}

/// What the nodes' records give the ipcache and the policy engine: this
/// node's addresses are `host`; each other node's are an identity of its
/// own (`NODE_SCOPE`, node-local like CIDR identities) with
/// `reserved:remote-node` and the node's labels, so that node selectors
/// (`fromNodes`) tell nodes apart and `remote-node` stands for them all.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodeIdentities {
    pub addresses: BTreeMap<IpAddr, NumericIdentity>,
    pub identities: BTreeMap<NumericIdentity, LabelSet>,
}

/// [`NodeIdentities`] of `nodes` (name, addresses, labels), seen from node
/// `me`. A node's number is a hash of its name (stable while it lives;
/// the same on every node unless two names collide, then the one sorting
/// later takes the next free number).
pub fn node_identities<'a>(
    me: &str,
    nodes: impl Iterator<Item = (&'a str, &'a [IpAddr], Labels)>,
) -> NodeIdentities {
    let mut nodes: Vec<_> = nodes.collect();
    nodes.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = NodeIdentities::default();
    let host = ReservedIdentity::Host.id();
    for (name, addrs, labels) in nodes {
        let id = if name == me {
            host
        } else {
            let mut n = fnv(name) & SPAN;
            while out
                .identities
                .contains_key(&NumericIdentity(NODE_SCOPE | n))
            {
                n = (n + 1) & SPAN;
            }
            let id = NumericIdentity(NODE_SCOPE | n);
            out.identities
                .insert(id, identity_labels(ReservedIdentity::RemoteNode, &labels));
            id
        };
        for a in addrs {
            // Two records claiming one address: this node's wins.
            if id == host || !out.addresses.contains_key(a) {
                out.addresses.insert(*a, id);
            }
        }
    }
    out
}

/// The numbers of `NODE_SCOPE`.
const SPAN: u32 = (1 << 23) - 1;

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_identity_has_the_node_labels_beside_reserved_host() {
        let labels: Labels = [("env", "dev"), ("host", "x"), ("bad key!", "v")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let set = identity_labels(ReservedIdentity::Host, &labels);
        assert!(axoneme_policy::selector::is_host(&set));
        assert_eq!(set.get("env").map(|l| l.value), Some("dev"));
        assert_eq!(set.len(), 2, "{set:?}");
    }

    #[tokio::test]
    async fn lifelines_are_the_urls_addresses_and_ports() {
        let mut addrs = url_addrs("http://127.0.0.1:2379").await;
        addrs.extend(url_addrs("https://[fd00::1]").await);
        addrs.extend(url_addrs("127.0.0.1:2379").await);
        let keys = lifeline_keys(&addrs);
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys
            .iter()
            .any(|k| k.family == family::IPV6 && u16::from_be(k.port) == 443));
        assert!(keys.iter().any(|k| k.family == family::IPV4
            && u16::from_be(k.port) == 2379
            && k.addr[..4] == [127, 0, 0, 1]));
    }

    #[test]
    fn this_nodes_addresses_are_host_and_each_other_nodes_its_own_remote_node() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (a, b, c) = (ip("192.168.77.1"), ip("192.168.77.2"), ip("192.168.77.3"));
        let dev: Labels = [("env".to_string(), "dev".to_string())].into();
        let (mine, theirs, third) = ([a], [b, a], [c]);
        let nodes = || {
            [
                ("n1", &theirs[..], dev.clone()),
                ("n0", &mine[..], Labels::new()),
                ("n2", &third[..], Labels::new()),
            ]
            .into_iter()
        };
        let m = node_identities("n0", nodes());
        assert_eq!(m.addresses[&a], ReservedIdentity::Host.id());
        let (n1, n2) = (m.addresses[&b], m.addresses[&c]);
        assert!(n1 != n2 && n1.is_node_scope() && n2.is_node_scope());
        assert!(axoneme_policy::selector::is_node(&m.identities[&n1]));
        assert_eq!(m.identities[&n1].get("env").map(|l| l.value), Some("dev"));
        // Seen from another node: the same numbers.
        let other = node_identities("n2", nodes());
        assert_eq!(other.addresses[&b], n1);
        assert_eq!(other.addresses[&c], ReservedIdentity::Host.id());
    }
}
