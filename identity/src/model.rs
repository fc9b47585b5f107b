//! The JSON records stored under the layout's keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::{LabelError, LabelSet, Source};
use crate::numeric::NumericIdentity;

/// A security identity: the number and the label set it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub id: NumericIdentity,
    pub labels: LabelSet,
    /// The operator replica that created it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allocator: String,
}

/// An endpoint as its node's agent reports it (standalone mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: String,
    pub node: String,
    /// All labels as `source:key=value` (unprefixed ones are `k8s:`);
    /// the operator keeps the identity-relevant ones.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The host-side interface (veth) of the endpoint on its node, where
    /// the node's agent attaches the datapath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Kubernetes mode: the Pod this endpoint is (the operator mirrors it
    /// as a CiliumEndpoint of the same namespace and name, owned by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The endpoint's named ports (a Pod's container ports that have a
    /// name; in standalone mode, what the CNI/endpoint record declares):
    /// policies' `toPorts` may name them (`port: http`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_ports: NamedPorts,
    /// Policy audit mode: the endpoint's node reports the flows its policy
    /// would drop (verdict `audit`) and lets them through.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub policy_audit_mode: bool,
}

/// A container port's protocol, as a Pod spec gives it (TCP when omitted).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum PortProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl PortProtocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            PortProtocol::Tcp => 6,
            PortProtocol::Udp => 17,
            PortProtocol::Sctp => 132,
        }
    }
}

/// One named port of an endpoint: `containerPort` and `protocol` of a
/// Pod's `ports[]` entry that has a `name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPort {
    #[serde(default)]
    pub protocol: PortProtocol,
    pub port: u16,
}

/// An endpoint's named ports, by name (Kubernetes keeps a name unique
/// within a pod). Names are lower case (see [`check_port_name`]).
pub type NamedPorts = BTreeMap<String, NamedPort>;

/// Checks a port name as Kubernetes does (an IANA service name): 1-15
/// lower-case letters, digits and '-', with at least one letter, no '-'
/// at either end and no "--". Policies may write names in any case
/// (Cilium compares them case-insensitively): lower-case them first.
pub fn check_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a port name (1-15 lower-case letters, digits and '-', \
             at least one letter, no '-' at either end or twice in a row)"
        ))
    }
}

pub use axoneme_api::names::check_interface_name;

impl EndpointRecord {
    /// The endpoint's full label set; labels without a source are `k8s:`,
    /// as a pod's labels are.
    pub fn label_set(&self) -> Result<LabelSet, LabelError> {
        LabelSet::parse(&self.labels, Source::K8s)
    }
}

/// The operator's answer for one endpoint: its identity, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<NumericIdentity>,
    /// Canonical identity-relevant labels the identity was derived from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub labels: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// ModRevision of the endpoint record this answers.
    pub endpoint_revision: i64,
    pub allocator: String,
}

/// Who holds operator leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub holder: String,
    /// Unix milliseconds when leadership was taken.
    pub since_ms: u64,
}

/// The operator's verdict on a stored policy (standalone mode's equivalent
/// of the CRD's `Valid` condition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub valid: bool,
    /// `path: message` lines when invalid; empty when valid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// ModRevision of the policy this judges.
    pub observed_revision: i64,
    pub operator: String,
}

/// A node as its agent announces it, on the agent's lease: gone when the
/// agent has been dead for the lease TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// The node's underlay addresses: other nodes route its pod CIDRs via
    /// them.
    pub addresses: Vec<std::net::IpAddr>,
    /// The pod CIDRs the agent allocates from (copied from its
    /// `NodeCidrs` once the operator has given them).
    #[serde(default)]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Present when the node encrypts pod traffic with other nodes that do
    /// (transparent IPsec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<NodeEncryption>,
}

/// A node's part in transparent IPsec, for the other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEncryption {
    /// Its boot id (per node pair keys are derived from both nodes').
    pub boot_id: String,
    /// The SPIs of the keys it accepts (has inbound states for): others
    /// send with the newest of theirs it accepts.
    pub spis: Vec<u8>,
}

/// The pod CIDRs the operator leader gave a node (Cilium's CiliumNode
/// `spec.ipam.podCIDRs`), one per configured family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCidrs {
    pub pod_cidrs: Vec<ipnet::IpNet>,
    pub allocator: String,
}

/// What a node's agent has enforced, written by the agent (on its node
/// lease) after a reconcile pass changed it: the operator aggregates the
/// policies' `Enforced` condition and the CiliumEndpoints' status from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusRecord {
    pub node: String,
    /// Policy key (`policies/v1/...`) → the ModRevision of it enforced.
    #[serde(default)]
    pub policies: std::collections::BTreeMap<String, i64>,
    /// Endpoint name → its enforcement.
    #[serde(default)]
    pub endpoints: std::collections::BTreeMap<String, EndpointEnforcement>,
    /// Unix milliseconds of the pass this describes.
    #[serde(default)]
    pub updated_ms: u64,
}

/// One endpoint as its agent enforces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointEnforcement {
    /// Its identity and policy are in the datapath.
    pub ready: bool,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
}

/// A Kubernetes Namespace's labels, mirrored by the operator (Kubernetes
/// mode) for the agents: a pod's `k8s:io.cilium.k8s.namespace.labels.*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A node's labels (Kubernetes mode: the Node object's, mirrored by the
/// operator), for node selectors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLabels {
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_are_optional_in_endpoint_records() {
        // Records written before the field existed still decode.
        let old = r#"{"id":"e1","node":"n1","labels":["app=web"]}"#;
        let rec: EndpointRecord = serde_json::from_str(old).unwrap();
        assert!(rec.named_ports.is_empty());
        // Without named ports the field is left out.
        let text = serde_json::to_string(&rec).unwrap();
        assert!(!text.contains("named_ports"), "{text}");
        // With them, protocol defaults to TCP as in a Pod spec.
        let new = r#"{"id":"e1","node":"n1","named_ports":{"http":{"port":8080},"dns":{"protocol":"UDP","port":53}}}"#;
        let rec: EndpointRecord = serde_json::from_str(new).unwrap();
        assert_eq!(
            rec.named_ports["http"],
            NamedPort {
                protocol: PortProtocol::Tcp,
                port: 8080
            }
        );
        assert_eq!(rec.named_ports["dns"].protocol.number(), 17);
        let back: EndpointRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn port_names_follow_kubernetes() {
        for ok in ["http", "http-80", "a", "dns-tcp", "x1", "abcdefghijklmno"] {
            assert!(check_port_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "80",
            "-http",
            "http-",
            "ht--tp",
            "HTTP",
            "abcdefghijklmnop",
            "h_t",
        ] {
            assert!(check_port_name(bad).is_err(), "{bad}");
        }
    }
}
