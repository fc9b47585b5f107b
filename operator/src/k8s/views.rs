//! The leader's read-only view for `kubectl`: a CiliumIdentity per
//! allocated identity, a CiliumEndpoint per endpoint that is a Pod, a
//! CiliumNode per node. They are derived from the kvstore (the truth) and
//! rewritten from it; losing them loses nothing.
//!
//! Each kind is synced by diff once its watch has a complete list: objects
//! that differ are applied (server-side apply under [`FIELD_MANAGER`]),
//! objects the operator made (label [`MANAGED_BY`]) whose source is gone
//! are deleted, with the object's uid as precondition. So identity GC
//! deleting `identities/v1/id/<n>` deletes CiliumIdentity `<n>`, and an
//! endpoint record's removal its CiliumEndpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axoneme_crds::endpoint::{
    AddressPair, EndpointIdentity as CepIdentity, EndpointNetworking, EndpointPolicy,
    EndpointPolicyDirection, EndpointPolicyState, EndpointState, EndpointStatus,
};
use axoneme_crds::k8s_openapi::api::core::v1::Node;
use axoneme_crds::k8s_openapi::jiff::Timestamp;
use axoneme_crds::kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use axoneme_crds::kube::{self, ResourceExt};
use axoneme_crds::node::{IpamSpec, NodeAddress};
use axoneme_crds::{
    condition, upsert_condition, CiliumEndpoint, CiliumIdentity, CiliumNode, Condition, Time,
    CONDITION_AGENT_ANNOUNCED, CONDITION_POLICY_CURRENT,
};
use axoneme_identity::{
    EndpointIdentity, EndpointRecord, IdentityRecord, Layout, NodeRecord, NodeStatusRecord, Raw,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::health::Reason;
use super::pace::Pacer;
use super::status::{reported_revision, SETTLE};
use super::{labels, Kube, KubeMetrics, FIELD_MANAGER, MANAGED_BY};

/// How long one API write may take (the client's own read timeout is
/// minutes, made for watches).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// API writes in flight at once.
const CONCURRENT_WRITES: usize = 16;
/// Label Cilium puts on a CiliumIdentity: the namespace of its pods (the
/// `Namespace` column of `kubectl get ciliumid`).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Policies named in a node's `PolicyCurrent` message, at most.
const NAMED_POLICIES: usize = 5;

/// One API write.
pub struct Op {
    pub resource: &'static str,
    pub verb: &'static str,
    /// The object, for logs.
    pub what: String,
    pub fut: BoxFuture<'static, Result<(), kube::Error>>,
}

/// Runs `ops` (bounded concurrency); records each outcome in the API health
/// and metrics. `false` if any failed (a delete of an object already gone
/// succeeds).
pub async fn execute(metrics: &KubeMetrics, ops: Vec<Op>) -> bool {
    if ops.is_empty() {
        return true;
    }
    let results: Vec<_> = futures::stream::iter(ops.into_iter().map(|op| async move {
        let r = tokio::time::timeout(WRITE_TIMEOUT, op.fut).await;
        (op.resource, op.verb, op.what, r)
    }))
    .buffer_unordered(CONCURRENT_WRITES)
    .collect()
    .await;
    let health = &metrics.health;
    let mut ok = true;
    for (resource, verb, what, r) in results {
        let r = match r {
            Ok(r) => r,
            Err(_) => {
                ok = false;
                health.failed_with(
                    resource,
                    verb,
                    Reason::Unreachable,
                    format!("{what}: no answer within {WRITE_TIMEOUT:?}"),
                );
                continue;
            }
        };
        match r {
            Ok(()) => {
                debug!(resource, verb, %what, "written");
                health.succeeded(resource, verb);
                metrics
                    .object_writes
                    .get_or_create(&labels([("resource", resource), ("op", verb)]))
                    .inc();
            }
            Err(kube::Error::Api(s)) if s.code == 404 && verb == "delete" => {}
            Err(e) => {
                ok = false;
                health.failed(resource, verb, &e);
            }
        }
    }
    ok
}

fn managed(meta_labels: &BTreeMap<String, String>) -> bool {
    meta_labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn delete_op<K>(api: Api<K>, resource: &'static str, obj: &K) -> Op
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let name = obj.name_any();
    let what = format!("{}/{name}", obj.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    info!(resource, %what, "deleting: its source is gone");
    Op {
        resource,
        verb: "delete",
        what,
        fut: async move { api.delete(&name, &params).await.map(|_| ()) }.boxed(),
    }
}

fn apply_op<K>(api: Api<K>, resource: &'static str, name: String, what: String, body: Value) -> Op
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    Op {
        resource,
        verb: "patch",
        what,
        fut: async move {
            api.patch(&name, &apply_params(), &Patch::Apply(&body))
                .await
                .map(|_| ())
        }
        .boxed(),
    }
}

// ---- CiliumIdentity ------------------------------------------------------

/// The CiliumIdentity of an identity: named by the number, its labels as
/// `security-labels` (`source:key` → value), and the namespace label.
pub fn identity_object(rec: &IdentityRecord) -> (String, BTreeMap<String, String>, Value) {
    let name = rec.id.0.to_string();
    let security: BTreeMap<String, String> = rec
        .labels
        .iter()
        .map(|l| (l.source_key(), l.value.to_string()))
        .collect();
    let mut meta_labels = BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]);
    if let Some(ns) = rec.labels.iter().find(|l| l.key == NAMESPACE_LABEL) {
        meta_labels.insert(NAMESPACE_LABEL.to_string(), ns.value.to_string());
    }
    let body = json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumIdentity",
        "metadata": { "name": name, "labels": meta_labels },
        "security-labels": security,
    });
    (name, meta_labels, body)
}

fn labels_hold(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn identity_ops(kube: &Kube) -> Vec<Op> {
    let api: Api<CiliumIdentity> = Api::all(kube.client.clone());
    let observed = kube.index.identities.by_name();
    let mut ops = Vec::new();
    let mut wanted = BTreeSet::new();
    for rec in kube.kv.identities.snapshot().values() {
        let (name, meta_labels, body) = identity_object(rec);
        let current = observed.get(&name).is_some_and(|o| {
            labels_hold(o.labels(), &meta_labels)
                && serde_json::to_value(&o.spec.security_labels).ok()
                    == body.get("security-labels").cloned()
        });
        if !current {
            ops.push(apply_op(
                api.clone(),
                "ciliumidentities",
                name.clone(),
                name.clone(),
                body,
            ));
        }
        wanted.insert(name);
    }
    for (name, obj) in &observed {
        if !wanted.contains(name) && managed(obj.labels()) {
            ops.push(delete_op(api.clone(), "ciliumidentities", obj.as_ref()));
        }
    }
    ops
}

// ---- CiliumEndpoint ------------------------------------------------------

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

fn endpoint_ops(kube: &Kube, layout: &Layout) -> Vec<Op> {
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

// ---- CiliumNode ----------------------------------------------------------

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
struct NodeWrites {
    last: HashMap<String, Instant>,
    /// When a held-back write is due.
    wake: Option<Instant>,
}

fn node_ops(kube: &Kube, layout: &Layout, paced: &mut NodeWrites) -> Vec<Op> {
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

/// Runs the view loop until `term` is cancelled.
pub async fn run(kube: &Kube, layout: &Layout, term: &CancellationToken) {
    let mut pacer = Pacer::new(kube.changes());
    let mut node_writes = NodeWrites::default();
    info!("writing CiliumIdentity, CiliumEndpoint and CiliumNode objects");
    while pacer.wait(term).await {
        let index = &kube.index;
        let mut ops = Vec::new();
        let mut waiting = false;
        if index.identities.ready() {
            ops.extend(identity_ops(kube));
        } else {
            waiting = true;
        }
        if index.endpoints.ready() {
            ops.extend(endpoint_ops(kube, layout));
        } else {
            waiting = true;
        }
        if index.cilium_nodes.ready() && index.nodes.ready() {
            ops.extend(node_ops(kube, layout, &mut node_writes));
        } else {
            waiting = true;
        }
        // A kind whose watch has no list yet is synced once it has one (its
        // InitDone is a change); a failed write is retried with backoff.
        pacer.wake_at(node_writes.wake);
        if execute(&kube.metrics.kube, ops).await || waiting {
            pacer.succeeded();
        } else {
            pacer.failed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_identity::{EndpointEnforcement, LabelSet, NumericIdentity, Source};

    #[test]
    fn identity_objects_carry_security_labels_and_namespace() {
        let rec = IdentityRecord {
            id: NumericIdentity(300),
            labels: LabelSet::parse(
                ["k8s:app=payments", "k8s:io.kubernetes.pod.namespace=shop"],
                Source::K8s,
            )
            .unwrap(),
            allocator: "op".into(),
        };
        let (name, meta_labels, body) = identity_object(&rec);
        assert_eq!(name, "300");
        assert_eq!(meta_labels[NAMESPACE_LABEL], "shop");
        assert_eq!(body["security-labels"]["k8s:app"], "payments");
        assert_eq!(
            body["security-labels"]["k8s:io.kubernetes.pod.namespace"],
            "shop"
        );
        // The object parses as the CRD type.
        let obj: CiliumIdentity = serde_json::from_value(body).unwrap();
        assert_eq!(obj.spec.security_labels.len(), 2);
    }

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

    #[test]
    fn addresses_pair_by_family() {
        let pairs = addressing(&["10.0.0.1".into(), "10.0.0.2/32".into(), "fd00::1".into()]);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].ipv4.as_deref(), Some("10.0.0.2"));
        assert_eq!(pairs[1].ipv6, None);
    }
}
