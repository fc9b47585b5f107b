//! CiliumEndpoint objects: one per endpoint that is a Pod, in the Pod's
//! namespace and owned by it, with a status made from the endpoint's
//! record, its identity assignment, its node and the node's report of
//! what it enforces.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use axoneme_crds::endpoint::{
    AddressPair, EndpointIdentity as CepIdentity, EndpointNetworking, EndpointPolicy,
    EndpointPolicyDirection, EndpointPolicyState, EndpointState, EndpointStatus,
};
use axoneme_crds::kube::api::Api;
use axoneme_crds::kube::ResourceExt;
use axoneme_crds::CiliumEndpoint;
use axoneme_identity::{
    EndpointIdentity, EndpointRecord, IdentityRecord, Layout, NodeRecord, NodeStatusRecord,
};
use serde_json::{json, Value};
use tracing::debug;

use super::{apply_op, delete_op, managed, Op};
use crate::k8s::{Kube, MANAGED_BY};

/// An endpoint's addresses as Cilium pairs them (the first IPv4 with the
/// first IPv6, and so on).
fn addressing(addresses: &[String]) -> Vec<AddressPair> {
    let parsed: Vec<IpAddr> = addresses
        .iter()
        .filter_map(|a| {
            a.parse::<IpAddr>()
                .ok()
                .or_else(|| a.parse::<ipnet::IpNet>().ok().map(|n| n.addr()))
        })
        .collect();
    let v4: Vec<String> = parsed
        .iter()
        .filter(|a| a.is_ipv4())
        .map(ToString::to_string)
        .collect();
    let v6: Vec<String> = parsed
        .iter()
        .filter(|a| a.is_ipv6())
        .map(ToString::to_string)
        .collect();
    (0..v4.len().max(v6.len()))
        .map(|i| AddressPair {
            ipv4: v4.get(i).cloned(),
            ipv6: v6.get(i).cloned(),
        })
        .collect()
}

fn direction(enforcing: bool) -> EndpointPolicyDirection {
    EndpointPolicyDirection {
        enforcing,
        state: Some(if enforcing {
            EndpointPolicyState::Enforcing
        } else {
            EndpointPolicyState::NonEnforcing
        }),
    }
}

/// The status of an endpoint's CiliumEndpoint.
pub fn endpoint_status(
    rec: &EndpointRecord,
    assignment: Option<&EndpointIdentity>,
    identity: Option<&IdentityRecord>,
    node: Option<&NodeRecord>,
    report: Option<&NodeStatusRecord>,
) -> EndpointStatus {
    let enforcement = report.and_then(|r| r.endpoints.get(&rec.id));
    let id = assignment.and_then(|a| a.identity);
    let state = if assignment.is_some_and(|a| a.error.is_some()) {
        EndpointState::Invalid
    } else if id.is_none() {
        EndpointState::WaitingForIdentity
    } else if enforcement.is_some_and(|e| e.ready) {
        EndpointState::Ready
    } else {
        EndpointState::NotReady
    };
    EndpointStatus {
        id: None,
        identity: id.map(|id| CepIdentity {
            id: Some(i64::from(id.0)),
            labels: identity
                .map(|i| i.labels.to_strings())
                .or_else(|| {
                    assignment.map(|a| {
                        a.labels
                            .split(';')
                            .filter(|s| !s.is_empty())
                            .map(|s| s.strip_suffix('=').unwrap_or(s).to_string())
                            .collect()
                    })
                })
                .unwrap_or_default(),
        }),
        networking: Some(EndpointNetworking {
            addressing: addressing(&rec.addresses),
            node: node
                .and_then(|n| n.addresses.first())
                .map(ToString::to_string),
        }),
        encryption: None,
        policy: enforcement.map(|e| EndpointPolicy {
            ingress: Some(direction(e.ingress_enforced)),
            egress: Some(direction(e.egress_enforced)),
        }),
        state: Some(state),
    }
}

fn owner_references(rec: &EndpointRecord) -> Value {
    match (&rec.pod_name, &rec.pod_uid) {
        (Some(name), Some(uid)) => json!([{
            "apiVersion": "v1",
            "kind": "Pod",
            "name": name,
            "uid": uid,
        }]),
        _ => json!([]),
    }
}

pub(super) fn endpoint_ops(kube: &Kube, layout: &Layout) -> Vec<Op> {
    let observed: BTreeMap<(String, String), Arc<CiliumEndpoint>> = kube
        .index
        .endpoints
        .state()
        .into_iter()
        .map(|o| ((o.namespace().unwrap_or_default(), o.name_any()), o))
        .collect();
    let assignments = kube.kv.assignments.snapshot();
    let identities = kube.kv.identities.snapshot();
    let nodes = kube.kv.node_records();
    let reports = kube.kv.node_reports();
    let mut ops = Vec::new();
    let mut wanted = BTreeSet::new();
    for (key, rec) in kube.kv.endpoints.snapshot() {
        let Some(pod) = rec.pod_name.clone() else {
            continue;
        };
        let ns = rec.namespace.clone().unwrap_or_else(|| "default".into());
        if !wanted.insert((ns.clone(), pod.clone())) {
            debug!(endpoint = %key, "a second endpoint of pod {ns}/{pod}; the first is shown");
            continue;
        }
        let assignment = layout
            .assignment_for_endpoint_key(&key)
            .and_then(|k| assignments.get(&k));
        let identity = assignment
            .and_then(|a| a.identity)
            .and_then(|id| identities.get(&layout.identity_id(id)));
        let status = endpoint_status(
            &rec,
            assignment.map(Arc::as_ref),
            identity.map(Arc::as_ref),
            nodes.get(&rec.node).map(Arc::as_ref),
            reports.get(&rec.node).map(Arc::as_ref),
        );
        let owners = owner_references(&rec);
        let current = observed.get(&(ns.clone(), pod.clone())).is_some_and(|o| {
            o.status.as_ref() == Some(&status)
                && managed(o.labels())
                && serde_json::to_value(&o.metadata.owner_references)
                    .ok()
                    .map(|v| if v.is_null() { json!([]) } else { v })
                    == Some(owners.clone())
        });
        if current {
            continue;
        }
        let body = json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumEndpoint",
            "metadata": {
                "name": pod,
                "namespace": ns,
                "labels": { MANAGED_BY.0: MANAGED_BY.1 },
                "ownerReferences": owners,
            },
            "status": status,
        });
        ops.push(apply_op(
            Api::<CiliumEndpoint>::namespaced(kube.client.clone(), &ns),
            "ciliumendpoints",
            pod.clone(),
            format!("{ns}/{pod}"),
            body,
        ));
    }
    for ((ns, name), obj) in &observed {
        if !wanted.contains(&(ns.clone(), name.clone())) && managed(obj.labels()) {
            ops.push(delete_op(
                Api::<CiliumEndpoint>::namespaced(kube.client.clone(), ns),
                "ciliumendpoints",
                obj.as_ref(),
            ));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_identity::{EndpointEnforcement, NumericIdentity};

    #[test]
    fn endpoint_status_from_the_records() {
        let rec = EndpointRecord {
            id: "c1".into(),
            node: "n1".into(),
            labels: vec!["app=web".into()],
            addresses: vec!["10.200.0.5".into(), "fd00::5".into()],
            namespace: Some("shop".into()),
            interface: None,
            pod_name: Some("web".into()),
            pod_uid: Some("uid-1".into()),
            named_ports: Default::default(),
            policy_audit_mode: false,
        };
        let assignment = EndpointIdentity {
            identity: Some(NumericIdentity(300)),
            labels: "k8s:app=web;".into(),
            error: None,
            endpoint_revision: 5,
            allocator: "op".into(),
        };
        let node = NodeRecord {
            name: "n1".into(),
            addresses: vec!["192.168.77.1".parse().unwrap()],
            pod_cidrs: vec![],
            encryption: None,
        };
        let mut report = NodeStatusRecord {
            node: "n1".into(),
            ..Default::default()
        };
        let s = endpoint_status(&rec, Some(&assignment), None, Some(&node), None);
        assert_eq!(s.state, Some(EndpointState::NotReady));
        assert_eq!(s.identity.as_ref().unwrap().id, Some(300));
        assert_eq!(s.identity.as_ref().unwrap().labels, ["k8s:app=web"]);
        let net = s.networking.unwrap();
        assert_eq!(net.node.as_deref(), Some("192.168.77.1"));
        assert_eq!(net.addressing[0].ipv4.as_deref(), Some("10.200.0.5"));
        assert_eq!(net.addressing[0].ipv6.as_deref(), Some("fd00::5"));
        report.endpoints.insert(
            "c1".into(),
            EndpointEnforcement {
                ready: true,
                ingress_enforced: true,
                egress_enforced: false,
            },
        );
        let s = endpoint_status(&rec, Some(&assignment), None, Some(&node), Some(&report));
        assert_eq!(s.state, Some(EndpointState::Ready));
        let p = s.policy.unwrap();
        assert_eq!(
            p.ingress.unwrap().state,
            Some(EndpointPolicyState::Enforcing)
        );
        assert_eq!(
            p.egress.unwrap().state,
            Some(EndpointPolicyState::NonEnforcing)
        );
        let s = endpoint_status(&rec, None, None, None, None);
        assert_eq!(s.state, Some(EndpointState::WaitingForIdentity));
        assert!(s.identity.is_none());
    }

    #[test]
    fn addresses_pair_by_family() {
        let pairs = addressing(&["10.0.0.1".into(), "10.0.0.2/32".into(), "fd00::1".into()]);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].ipv4.as_deref(), Some("10.0.0.2"));
        assert_eq!(pairs[1].ipv6, None);
    }
}
