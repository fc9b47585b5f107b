//! CiliumNode objects: one per node (a Node object or a node record),
//! with the node's addresses and pod CIDRs as spec and the agent's health
//! as the `AgentAnnounced` and `PolicyCurrent` conditions, whose writes
//! are paced per node ([`NodeWrites`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axoneme_crds::k8s_openapi::api::core::v1::Node;
use axoneme_crds::k8s_openapi::jiff::Timestamp;
use axoneme_crds::kube::api::{Api, Patch};
use axoneme_crds::kube::ResourceExt;
use axoneme_crds::node::{IpamSpec, NodeAddress};
use axoneme_crds::{
    condition, upsert_condition, CiliumNode, Condition, Time, CONDITION_AGENT_ANNOUNCED,
    CONDITION_POLICY_CURRENT,
};
use axoneme_identity::{Layout, NodeRecord, NodeStatusRecord, Raw};
use futures::FutureExt;
use serde_json::json;
use tokio::time::Instant;

use super::{apply_op, apply_params, delete_op, managed, Op};
use crate::k8s::status::{reported_revision, SETTLE};
use crate::k8s::{Kube, MANAGED_BY};

/// Policies named in a node's `PolicyCurrent` message, at most.
const NAMED_POLICIES: usize = 5;

/// A node's addresses: the agent's (node record) if it announced, else the
/// Node object's InternalIPs.
fn node_addresses(record: Option<&NodeRecord>, node: Option<&Node>) -> Vec<NodeAddress> {
    match record {
        Some(r) => r
            .addresses
            .iter()
            .map(|a| NodeAddress {
                address_type: "InternalIP".into(),
                ip: a.to_string(),
            })
            .collect(),
        None => node
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| NodeAddress {
                address_type: "InternalIP".into(),
                ip: a.address.clone(),
            })
            .collect(),
    }
}

fn unknown(type_: &str, reason: &str, message: &str, now: &Time) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: "Unknown".into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: now.clone(),
    }
}

/// The agent's health as CiliumNode conditions: `AgentAnnounced` from the
/// node record's presence (it lives on the agent's lease), `PolicyCurrent`
/// from the node's report against the policy store.
pub fn node_conditions(
    layout: &Layout,
    record: Option<&NodeRecord>,
    report: Option<&NodeStatusRecord>,
    policies: &BTreeMap<String, Arc<Raw>>,
    now: &Time,
) -> [Condition; 2] {
    let announced = match record {
        Some(_) => condition(
            CONDITION_AGENT_ANNOUNCED,
            true,
            "Announced",
            "the agent's node record is in the kvstore (its lease is alive)",
            None,
            now.clone(),
        ),
        None => condition(
            CONDITION_AGENT_ANNOUNCED,
            false,
            "NotAnnounced",
            "no node record in the kvstore: the agent has not started, or has been \
             gone for longer than its node grace",
            None,
            now.clone(),
        ),
    };
    let current = match report {
        None => unknown(
            CONDITION_POLICY_CURRENT,
            "NotReported",
            "the agent has not reported what it enforces",
            now,
        ),
        Some(r) => {
            let when = i64::try_from(r.updated_ms)
                .ok()
                .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                .map_or_else(|| "an unknown time".to_string(), |t| t.to_string());
            // Counted in full, formatted only as far as the message names.
            let mut n = 0;
            let mut named = Vec::new();
            for (key, raw) in policies {
                let have = reported_revision(layout, r, key);
                if have.is_some_and(|have| have >= raw.mod_revision) {
                    continue;
                }
                n += 1;
                if named.len() < NAMED_POLICIES {
                    let short = key.strip_prefix(&layout.policies_prefix()).unwrap_or(key);
                    named.push(match have {
                        Some(have) => format!("{short} (revision {have} of {})", raw.mod_revision),
                        None => format!("{short} (not enforced)"),
                    });
                }
            }
            if n == 0 {
                condition(
                    CONDITION_POLICY_CURRENT,
                    true,
                    "Current",
                    format!(
                        "enforces all {} policies at their current revision (report of {when})",
                        policies.len()
                    ),
                    None,
                    now.clone(),
                )
            } else {
                let named = named.join(", ");
                condition(
                    CONDITION_POLICY_CURRENT,
                    false,
                    "Behind",
                    format!(
                        "{n} of {} policies behind (report of {when}): {named}{}",
                        policies.len(),
                        if n > NAMED_POLICIES { ", ..." } else { "" }
                    ),
                    None,
                    now.clone(),
                )
            }
        }
    };
    [announced, current]
}

/// When each CiliumNode's status was last written, to pace its writes: a
/// change of `AgentAnnounced` is written at once, a change of only
/// `PolicyCurrent` (whose message moves with every report of the agent's,
/// and whose state flips with every policy during a burst) at most once
/// per [`SETTLE`] per node, with the state as it is then.
#[derive(Default)]
pub(super) struct NodeWrites {
    last: HashMap<String, Instant>,
    /// When a held-back write is due.
    pub(super) wake: Option<Instant>,
}

pub(super) fn node_ops(kube: &Kube, layout: &Layout, paced: &mut NodeWrites) -> Vec<Op> {
    let api: Api<CiliumNode> = Api::all(kube.client.clone());
    let observed = kube.index.cilium_nodes.by_name();
    let k8s_nodes = kube.index.nodes.by_name();
    let records = kube.kv.node_records();
    let cidrs = kube.kv.node_cidrs.snapshot();
    let reports = kube.kv.node_reports();
    let policies = kube.kv.policies.snapshot();
    let now = Time(Timestamp::now());
    let instant = Instant::now();
    let names: BTreeSet<String> = k8s_nodes.keys().chain(records.keys()).cloned().collect();
    paced.last.retain(|n, _| names.contains(n));
    paced.wake = None;
    let mut ops = Vec::new();
    for name in &names {
        let record = records.get(name).map(Arc::as_ref);
        let addresses = node_addresses(record, k8s_nodes.get(name).map(AsRef::as_ref));
        let pod_cidrs: Vec<String> = cidrs
            .get(&layout.node_cidrs(name))
            .map(|c| c.pod_cidrs.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let obs = observed.get(name);
        let spec_current = obs.is_some_and(|o| {
            managed(o.labels())
                && o.spec.addresses == addresses
                && o.spec
                    .ipam
                    .as_ref()
                    .map(|i| i.pod_cidrs.clone())
                    .unwrap_or_default()
                    == pod_cidrs
        });
        if !spec_current {
            let ipam = IpamSpec {
                pod_cidrs: pod_cidrs.clone(),
                ..IpamSpec::default()
            };
            let body = json!({
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNode",
                "metadata": { "name": name, "labels": { MANAGED_BY.0: MANAGED_BY.1 } },
                "spec": { "addresses": addresses, "ipam": ipam },
            });
            ops.push(apply_op(
                api.clone(),
                "ciliumnodes",
                name.clone(),
                name.clone(),
                body,
            ));
        }
        let mut conds = obs
            .and_then(|o| o.status.as_ref())
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let [announced, current] = node_conditions(
            layout,
            record,
            reports.get(name).map(Arc::as_ref),
            &policies,
            &now,
        );
        let urgent = upsert_condition(&mut conds, announced);
        let changed = upsert_condition(&mut conds, current) || urgent;
        let due = match paced.last.get(name) {
            Some(at) if !urgent && instant < *at + SETTLE => {
                let at = *at + SETTLE;
                paced.wake = Some(paced.wake.map_or(at, |w| w.min(at)));
                false
            }
            _ => true,
        };
        // The status of an object not created yet is written on the next
        // pass (the status subresource cannot create the object).
        if changed && due && obs.is_some() {
            paced.last.insert(name.clone(), instant);
            let ours: Vec<&Condition> = conds
                .iter()
                .filter(|c| {
                    c.type_ == CONDITION_AGENT_ANNOUNCED || c.type_ == CONDITION_POLICY_CURRENT
                })
                .collect();
            let body = json!({
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNode",
                "status": { "conditions": ours },
            });
            let (api, name) = (api.clone(), name.clone());
            ops.push(Op {
                resource: "ciliumnodes/status",
                verb: "patch",
                what: name.clone(),
                fut: async move {
                    api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
                        .await
                        .map(|_| ())
                }
                .boxed(),
            });
        }
    }
    for (name, obj) in &observed {
        if !names.contains(name) && managed(obj.labels()) {
            ops.push(delete_op(api.clone(), "ciliumnodes", obj.as_ref()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_conditions_from_record_and_report() {
        let l = Layout::default();
        let now = Time(Timestamp::from_second(100).unwrap());
        let key = l.policy("cnp", Some("default"), "p");
        let policies = BTreeMap::from([(
            key.clone(),
            Arc::new(Raw {
                value: vec![],
                mod_revision: 42,
            }),
        )]);
        let [a, p] = node_conditions(&l, None, None, &policies, &now);
        assert_eq!((a.status.as_str(), p.status.as_str()), ("False", "Unknown"));
        let mut report = NodeStatusRecord {
            node: "n".into(),
            updated_ms: 1_000,
            ..Default::default()
        };
        report.policies.insert(key.clone(), 40);
        let rec = NodeRecord {
            name: "n".into(),
            addresses: vec![],
            pod_cidrs: vec![],
            encryption: None,
        };
        let [a, p] = node_conditions(&l, Some(&rec), Some(&report), &policies, &now);
        assert_eq!(a.status, "True");
        assert_eq!(p.status, "False");
        assert_eq!(
            p.message,
            "1 of 1 policies behind (report of 1970-01-01T00:00:01Z): cnp/default/p (revision 40 of 42)"
        );
        report.policies.insert(key, 42);
        let [_, p] = node_conditions(&l, Some(&rec), Some(&report), &policies, &now);
        assert_eq!(p.status, "True");
    }
}
