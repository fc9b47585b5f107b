//! What the datapath should hold, read from the node's caches in one
//! synchronous step (no etcd call: the caches are fed by their own watch
//! tasks).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axoneme_identity::{LabelSet, NamedPorts, NumericIdentity, ReservedIdentity};
use axoneme_policy::Policy;
use ipnet::IpNet;

use crate::node::NodeState;

/// One of this node's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub name: String,
    pub interface: String,
    /// `None` until the operator has assigned one: the interface then drops
    /// everything.
    pub identity: Option<NumericIdentity>,
    pub addresses: Vec<IpAddr>,
    /// The endpoint asks for policy audit mode.
    pub policy_audit_mode: bool,
    /// The interface's index when the agent attached its programs itself
    /// (the host endpoint's device); else the attach unit attaches the
    /// pods' programs to `interface`.
    pub ifindex: Option<u32>,
}

/// What the datapath should enforce.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub identities: BTreeMap<NumericIdentity, LabelSet>,
    pub policies: BTreeMap<String, Arc<Policy>>,
    /// The ModRevision of each of `policies` (what "enforced" refers to).
    pub policy_revisions: BTreeMap<String, i64>,
    pub local: Vec<LocalEndpoint>,
    /// Every endpoint address in the cluster with its identity.
    pub ipcache: BTreeMap<IpNet, NumericIdentity>,
    /// Every endpoint in the cluster that names ports, by its key, with
    /// its identity (policies' `port: NAME` resolve to them).
    pub named_ports: BTreeMap<String, (NumericIdentity, NamedPorts)>,
}

impl Desired {
    /// Reads the node's caches.
    pub fn from_state(state: &NodeState) -> Self {
        let layout = state.layout();
        // Read in place: a pass must not copy every record of the cluster
        // (with 10,000 endpoints that was megabytes per pass).
        let mut identities: BTreeMap<NumericIdentity, LabelSet> = state
            .identities()
            .read(|items| items.values().map(|r| (r.id, r.labels.clone())).collect());
        let mut local = Vec::new();
        let mut ipcache = BTreeMap::new();
        let mut named_ports = BTreeMap::new();
        state.assignments().read(|assignments| {
            state.records().read(|records| {
                for (key, record) in records {
                    let Some((node, name)) = layout.split_endpoint_key(key) else {
                        continue;
                    };
                    let identity = assignments
                        .get(&layout.endpoint_identity(node, name))
                        .and_then(|a| a.identity);
                    if let Some(id) = identity {
                        if !record.named_ports.is_empty() {
                            named_ports.insert(key.clone(), (id, record.named_ports.clone()));
                        }
                        for ip in &record.addresses {
                            ipcache.insert(IpNet::from(*ip), id);
                        }
                    }
                    if node == state.node() {
                        if let Some(interface) = &record.interface {
                            local.push(LocalEndpoint {
                                name: name.to_string(),
                                interface: interface.to_string(),
                                identity,
                                addresses: record.addresses.to_vec(),
                                policy_audit_mode: record.policy_audit_mode,
                                ifindex: None,
                            });
                        }
                    }
                }
            })
        });
        // Nodes' own addresses: `host` here, each other node's its own
        // node identity (`remote-node`, with its labels) elsewhere (an
        // endpoint that has one keeps its own identity). Traffic from them
        // is judged as the node's, whether or not the host firewall is on.
        let nodes = state.node_identities();
        for (ip, id) in &nodes.addresses {
            ipcache.entry(IpNet::from(*ip)).or_insert(*id);
        }
        identities.extend(nodes.identities);
        // The pods' gateway addresses are the source of what the node
        // sends its own pods: the host (pods cannot send from them).
        for gw in [crate::netdev::GATEWAY_V4, crate::netdev::GATEWAY_V6] {
            if let Ok(ip) = gw.parse::<IpAddr>() {
                ipcache
                    .entry(IpNet::from(ip))
                    .or_insert(ReservedIdentity::Host.id());
            }
        }
        // This node's labels are the host identity's (host policies and
        // node selectors select by them).
        let labels = state.labels_of_node(state.node());
        let id = ReservedIdentity::Host.id();
        identities.insert(
            id,
            crate::host::identity_labels(ReservedIdentity::Host, &labels),
        );
        if let Some(host) = state.host() {
            local.push(LocalEndpoint {
                name: crate::host::NAME.to_string(),
                interface: host.device.clone(),
                identity: Some(id),
                addresses: host.addresses.clone(),
                policy_audit_mode: crate::host::audit_mode(&labels),
                ifindex: Some(host.ifindex),
            });
        }
        let policies = state.valid_policies_by_key();
        let policy_revisions = state.policy_caches().0.read(|raw| {
            policies
                .keys()
                .filter_map(|k| raw.get(k).map(|r| (k.clone(), r.mod_revision)))
                .collect()
        });
        Desired {
            identities,
            policies,
            policy_revisions,
            local,
            ipcache,
            named_ports,
        }
    }
}
