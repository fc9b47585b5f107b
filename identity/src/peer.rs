//! What an agent keeps of every endpoint in the cluster.
//!
//! Each agent watches every endpoint record and identity assignment of the
//! cluster (its ipcache maps every pod address to an identity), so with
//! tens of thousands of endpoints what it keeps per endpoint is most of its
//! memory. It keeps only what its datapath, flows and API read: the
//! addresses (parsed), the pod's name and namespace, named ports, and for
//! its own endpoints the interface and audit mode. The stored records stay
//! [`EndpointRecord`] and [`EndpointIdentity`]; these are decoded from the
//! same JSON, through them, so the two can never disagree on the format.

use std::net::IpAddr;

use axoneme_kvstore::KeyValue;

use crate::cache::Decode;
use crate::labels::LabelSet;
use crate::model::{EndpointIdentity, EndpointRecord, IdentityRecord, NamedPorts};
use crate::numeric::NumericIdentity;

/// An endpoint record as agents keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEndpoint {
    /// The record's addresses that parse, as an address or a host prefix
    /// (`10.0.0.5`, `fd00::5/128`); anything else is left out.
    pub addresses: Box<[IpAddr]>,
    pub namespace: Option<Box<str>>,
    pub pod_name: Option<Box<str>>,
    /// The host-side interface (on its own node).
    pub interface: Option<Box<str>>,
    pub named_ports: NamedPorts,
    pub policy_audit_mode: bool,
}

fn boxed(s: &Option<String>) -> Option<Box<str>> {
    s.as_deref().map(Box::from)
}

impl From<&EndpointRecord> for PeerEndpoint {
    fn from(r: &EndpointRecord) -> Self {
        PeerEndpoint {
            addresses: r
                .addresses
                .iter()
                .filter_map(|a| a.split('/').next().unwrap_or(a).parse().ok())
                .collect(),
            namespace: boxed(&r.namespace),
            pod_name: boxed(&r.pod_name),
            interface: boxed(&r.interface),
            named_ports: r.named_ports.clone(),
            policy_audit_mode: r.policy_audit_mode,
        }
    }
}

impl Decode for PeerEndpoint {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        EndpointRecord::decode(kv).map(|r| PeerEndpoint::from(&r))
    }
}

/// An identity assignment as agents keep it: without the labels it was
/// derived from (the identity's record has them) or the allocator's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub identity: Option<NumericIdentity>,
    pub error: Option<Box<str>>,
    /// ModRevision of the endpoint record this answers.
    pub endpoint_revision: i64,
}

impl From<&EndpointIdentity> for Assignment {
    fn from(a: &EndpointIdentity) -> Self {
        Assignment {
            identity: a.identity,
            error: boxed(&a.error),
            endpoint_revision: a.endpoint_revision,
        }
    }
}

impl Decode for Assignment {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        EndpointIdentity::decode(kv).map(|a| Assignment::from(&a))
    }
}

/// An identity as agents keep it: its number and labels, without the
/// name of the operator replica that allocated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub id: NumericIdentity,
    pub labels: LabelSet,
}

impl Decode for PeerIdentity {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        IdentityRecord::decode(kv).map(|r| PeerIdentity {
            id: r.id,
            labels: r.labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value,
            create_revision: 1,
            mod_revision: 2,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn a_peer_endpoint_keeps_what_agents_read_of_the_stored_record() {
        let record = EndpointRecord {
            id: "c1".into(),
            node: "n1".into(),
            labels: vec!["k8s:app=checkout".into()],
            addresses: vec!["10.1.0.5".into(), "fd00::5/128".into(), "bogus".into()],
            namespace: Some("shop".into()),
            interface: Some("lxc1".into()),
            pod_name: Some("checkout-1".into()),
            pod_uid: Some("u".into()),
            named_ports: [(
                "http".to_string(),
                crate::NamedPort {
                    port: 8080,
                    protocol: crate::PortProtocol::Tcp,
                },
            )]
            .into(),
            policy_audit_mode: true,
        };
        let peer = PeerEndpoint::decode(&kv(serde_json::to_vec(&record).unwrap())).unwrap();
        assert_eq!(
            &*peer.addresses,
            &[
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(peer.namespace.as_deref(), Some("shop"));
        assert_eq!(peer.pod_name.as_deref(), Some("checkout-1"));
        assert_eq!(peer.interface.as_deref(), Some("lxc1"));
        assert_eq!(peer.named_ports, record.named_ports);
        assert!(peer.policy_audit_mode);
        // A record that does not parse is refused, not kept empty.
        assert!(PeerEndpoint::decode(&kv(b"{\"id\": 3}".to_vec())).is_err());
    }

    #[test]
    fn an_assignment_keeps_the_identity_the_error_and_the_revision() {
        let stored = EndpointIdentity {
            identity: Some(NumericIdentity(70_000)),
            labels: "k8s:app=checkout".into(),
            error: None,
            endpoint_revision: 41,
            allocator: "op-a".into(),
        };
        let a = Assignment::decode(&kv(serde_json::to_vec(&stored).unwrap())).unwrap();
        assert_eq!(
            a,
            Assignment {
                identity: Some(NumericIdentity(70_000)),
                error: None,
                endpoint_revision: 41
            }
        );
        let refused = EndpointIdentity {
            identity: None,
            error: Some("too many labels".into()),
            ..stored
        };
        let a = Assignment::decode(&kv(serde_json::to_vec(&refused).unwrap())).unwrap();
        assert_eq!(a.error.as_deref(), Some("too many labels"));
        assert_eq!(a.identity, None);
    }
}
