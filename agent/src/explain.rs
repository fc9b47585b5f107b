//! `axoneme policy explain` live: a flow between endpoints (or addresses)
//! of the cluster, judged by the reference evaluator over what this agent
//! enforces (the identities, policies and named ports its caches hold, read
//! as a reconcile pass reads them), with the deciding rules; and, for each
//! end that is one of this node's endpoints, the datapath's own word: its
//! policy map looked up as the programs look it up, and its enforcement
//! flags. The two are reported side by side, so a disagreement (a bug)
//! shows instead of hiding.

use std::net::IpAddr;

use axoneme_api::{cni_code, ApiError, ExplainRequest};
use axoneme_bpf_common::endpoint_flags;
use axoneme_identity::{LabelSet, NumericIdentity};
use axoneme_policy::compile::{add_cidr_identities, cidr_identities, Direction, EnforcementMode};
use axoneme_policy::explain::{self, DatapathCheck, ExplainReport};
use axoneme_policy::selector::Identities;
use axoneme_policy::{Policy, PortNames};

use crate::datapath::{direction_code, MapReader};
use crate::node::NodeState;
use crate::reconcile::{DatapathView, Desired};

fn invalid(msg: String) -> ApiError {
    ApiError::new(cni_code::INVALID_ENDPOINT, msg, "")
}

/// One end of the flow, resolved.
struct End {
    identity: NumericIdentity,
    labels: LabelSet,
    /// This node's endpoint name, when it is one.
    local: Option<String>,
}

/// What a reconcile pass would compute from: the identities (CIDR ones
/// included) and policies the node's caches hold.
struct Inputs {
    want: Desired,
    policies: Vec<Policy>,
    ids: Identities,
    cidrs: std::collections::BTreeMap<ipnet::IpNet, NumericIdentity>,
}

impl Inputs {
    /// The identity the datapath finds for `ip` (the ipcache and the
    /// policies' CIDRs; else `world`).
    fn identity_of_ip(&self, ip: IpAddr) -> NumericIdentity {
        explain::identity_of_ip(ip, self.want.ipcache.iter().chain(self.cidrs.iter()))
    }
}

fn inputs(state: &NodeState) -> Inputs {
    let want = Desired::from_state(state);
    let policies: Vec<Policy> = want.policies.values().map(|p| (**p).clone()).collect();
    let mut ids = Identities::with_reserved();
    for (id, labels) in &want.identities {
        ids.insert(*id, labels.clone());
    }
    let mut ports: std::collections::BTreeMap<NumericIdentity, PortNames> = Default::default();
    for (id, named) in want.named_ports.values() {
        let union = ports.entry(*id).or_default();
        for (name, protocol, port) in PortNames::of_endpoint(named).iter() {
            union.insert(name, protocol, port);
        }
    }
    for (id, p) in ports {
        ids.set_ports(id, p);
    }
    let cidrs = cidr_identities(&policies);
    add_cidr_identities(&mut ids, &cidrs);
    Inputs {
        want,
        policies,
        ids,
        cidrs,
    }
}

/// Explains `req` with what the agent enforces now.
pub fn explain(
    req: &ExplainRequest,
    view: &DatapathView,
    state: &NodeState,
    mode: EnforcementMode,
    maps: &MapReader,
) -> Result<ExplainReport, ApiError> {
    let protocol = explain::protocol_number(&req.protocol).map_err(invalid)?;
    let inputs = inputs(state);
    let (want, policies, ids) = (&inputs.want, &inputs.policies, &inputs.ids);

    let resolve = |what: &str, given: &str| -> Result<End, ApiError> {
        if let Ok(ip) = given.parse::<IpAddr>() {
            let identity = inputs.identity_of_ip(ip);
            let local = want
                .local
                .iter()
                .find(|e| e.addresses.contains(&ip))
                .map(|e| e.name.clone());
            return Ok(End {
                identity,
                labels: ids.get(identity).cloned().unwrap_or_default(),
                local,
            });
        }
        let found;
        let (node, name) = match given.strip_prefix("pod:") {
            // A Pod by namespace and name, wherever it runs.
            Some(pod) => {
                let (ns, pod) = pod.split_once('/').unwrap_or(("default", pod));
                found = state
                    .records()
                    .read(|records| {
                        records.iter().find_map(|(key, r)| {
                            (r.namespace.as_deref() == Some(ns)
                                && r.pod_name.as_deref() == Some(pod))
                            .then(|| state.layout().split_endpoint_key(key))
                            .flatten()
                            .map(|(n, e)| (n.to_string(), e.to_string()))
                        })
                    })
                    .ok_or_else(|| {
                        ApiError::new(
                            cni_code::UNKNOWN_CONTAINER,
                            format!("{what}: no endpoint of Pod {ns}/{pod} in the cluster"),
                            "",
                        )
                    })?;
                (found.0.as_str(), found.1.as_str())
            }
            None => given.split_once('/').unwrap_or((state.node(), given)),
        };
        let key = state.layout().endpoint(node, name);
        if state.records().get(&key).is_none() {
            return Err(ApiError::new(
                cni_code::UNKNOWN_CONTAINER,
                format!("{what}: no endpoint {node}/{name} in the cluster"),
                "",
            ));
        }
        let identity = state
            .assignments()
            .get(&state.layout().endpoint_identity(node, name))
            .and_then(|a| a.identity)
            .ok_or_else(|| {
                invalid(format!(
                    "{what}: endpoint {node}/{name} has no identity yet (its traffic is dropped)"
                ))
            })?;
        Ok(End {
            identity,
            labels: ids.get(identity).cloned().unwrap_or_default(),
            local: (node == state.node()).then(|| name.to_string()),
        })
    };
    let source = resolve("from", &req.from)?;
    let destination = resolve("to", &req.to)?;
    let request = req.method.as_ref().map(|method| explain::RequestSpec {
        method: method.clone(),
        path: req.path.clone(),
        host: req.host.clone(),
        headers: req.headers.clone(),
    });
    let mut report = explain::report(
        policies,
        ids,
        (source.identity, &source.labels),
        (destination.identity, &destination.labels),
        &req.protocol,
        req.port,
        request.as_ref(),
        mode,
    )
    .map_err(invalid)?;
    let mut checks = Vec::new();
    for (end, dir, peer, said) in [
        (
            &source,
            Direction::Egress,
            destination.identity,
            &report.egress,
        ),
        (
            &destination,
            Direction::Ingress,
            source.identity,
            &report.ingress,
        ),
    ] {
        let Some(name) = &end.local else { continue };
        let Some(programmed) = view.programmed.get(name) else {
            continue;
        };
        let (flag, side) = match dir {
            Direction::Ingress => (endpoint_flags::INGRESS_ENFORCED, "ingress"),
            Direction::Egress => (endpoint_flags::EGRESS_ENFORCED, "egress"),
        };
        let entry = maps
            .policy_lookup(
                programmed.info.endpoint_id,
                peer.0,
                direction_code(dir),
                protocol,
                req.port,
            )
            .map_err(|e| {
                ApiError::new(
                    cni_code::IO_FAILURE,
                    "cannot read the policy map",
                    crate::error_chain(&e),
                )
            })?;
        let verdict = match entry {
            Some(v) if v.is_deny() => "denied",
            Some(v) if v.proxy_port != 0 => "http",
            Some(_) => "allowed",
            None if programmed.info.flags & flag != 0 => "denied",
            None => "allowed",
        };
        // A deny rule is an entry; the default deny is none.
        let agrees = verdict == said.verdict && (said.denied_by.is_empty() || entry.is_some());
        checks.push(DatapathCheck {
            direction: side.into(),
            endpoint: name.clone(),
            verdict: verdict.into(),
            agrees,
            audit: programmed.info.flags & endpoint_flags::AUDIT != 0,
        });
    }
    report.datapath = checks;
    Ok(report)
}

/// The lifelines (`crate::host`) the host's policy would deny if they
/// were not always allowed, each named as a flow: what a user should
/// know before relying on that policy elsewhere.
pub fn denied_lifelines(
    state: &NodeState,
    mode: EnforcementMode,
    lifelines: &[std::net::SocketAddr],
) -> Vec<String> {
    let inputs = inputs(state);
    let host = axoneme_identity::ReservedIdentity::Host.id();
    let Some(labels) = inputs.want.identities.get(&host) else {
        return Vec::new();
    };
    let none = PortNames::default();
    lifelines
        .iter()
        .filter(|l| {
            let peer = inputs.identity_of_ip(l.ip());
            let verdict = axoneme_policy::oracle::direction_verdict(
                &inputs.policies,
                &inputs.ids,
                labels,
                &none,
                Direction::Egress,
                peer,
                6,
                l.port(),
                mode,
            );
            matches!(verdict, axoneme_policy::oracle::OracleVerdict::Deny(_))
        })
        .map(|l| format!("egress to {l}/TCP"))
        .collect()
}
