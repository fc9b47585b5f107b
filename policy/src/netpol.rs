//! Kubernetes NetworkPolicy (networking.k8s.io/v1) translated into the
//! cilium.io/v2 model, the way Cilium does it (pkg/k8s/network_policy.go):
//!
//! - `podSelector` becomes the rule's `endpointSelector`, scoped to the
//!   policy's namespace (keys get the `k8s:` source, as in Cilium).
//! - Each `from`/`to` peer becomes one ingress/egress rule carrying the rule's
//!   `ports`: `podSelector` alone selects pods of the policy's namespace;
//!   `namespaceSelector` selects pods whose namespace labels match (Cilium
//!   copies namespace labels onto pods as `io.cilium.k8s.namespace.labels.<key>`;
//!   an empty `namespaceSelector` selects every namespace), narrowed by a
//!   `podSelector` given with it; `ipBlock` becomes a `fromCIDRSet`/`toCIDRSet`.
//!   An empty or missing `from`/`to` means every peer (`fromEntities: [all]`,
//!   Cilium's unscoped wildcard selector).
//! - `ports[]` become one `toPorts` entry each: `protocol` defaults to TCP, a
//!   missing `port` means every port of the protocol (written 1-65535),
//!   `endPort` ends a range. A named port
//!   stays a name, resolved per endpoint as in a CiliumNetworkPolicy (the
//!   selected pods' port for ingress, the destination pods' for egress).
//! - `policyTypes` (default: Ingress, plus Egress when egress rules exist):
//!   a listed direction without rules is default-deny, translated to a rule
//!   whose only peer is the `none` entity (enforced, allows nothing). Rules of
//!   a direction left out of an explicit `policyTypes` are an error: Kubernetes
//!   ignores them and Cilium enforces them, and a policy is never enforced
//!   with part of it silently ignored (or differently than written).
//!
//! Errors carry the NetworkPolicy's own field paths
//! (`spec.ingress[0].ports[0].port: 70000 is not a valid port (1-65535)`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{
    CidrRule, EgressRule, EndpointSelector, IngressRule, PortProtocol, PortRule, PortValue, Rule,
    RuleLabel, SelectorOperator, SelectorRequirement,
};
use crate::document::{Policy, PolicyErrors, PolicyKind};
use crate::entity::Entity;
use crate::selector::NAMESPACE_LABEL;
use crate::validate::{self, parse_cidr, selector_label, FieldError};

pub const API_VERSION: &str = "networking.k8s.io/v1";
pub const KIND: &str = "NetworkPolicy";
/// Cilium's prefix for namespace labels copied onto pods.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels";

/// `spec` of a NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    /// TCP (default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A number or a named port; missing means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

fn err(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Whether `value` is an object for this module (by kind or API group).
pub fn is_network_policy(value: &serde_json::Value) -> bool {
    value.get("kind").and_then(|k| k.as_str()) == Some(KIND)
        || value.get("apiVersion").and_then(|v| v.as_str()) == Some(API_VERSION)
}

/// Parses, validates and translates one NetworkPolicy object.
pub fn parse_object(value: &serde_json::Value, label: &str) -> Result<Policy, PolicyErrors> {
    let name = value
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let fail = |errors: Vec<FieldError>| PolicyErrors {
        policy: name.clone().unwrap_or_else(|| label.to_string()),
        errors,
    };
    let Some(obj) = value.as_object() else {
        return Err(fail(vec![err("", "a policy must be a YAML/JSON object")]));
    };
    let mut errors = Vec::new();
    match obj.get("apiVersion").and_then(|v| v.as_str()) {
        Some(API_VERSION) => {}
        Some(other) => errors.push(err(
            "apiVersion",
            format!("{other:?} is not supported for a NetworkPolicy (want {API_VERSION})"),
        )),
        None => errors.push(err("apiVersion", "is required")),
    }
    match obj.get("kind").and_then(|v| v.as_str()) {
        Some(KIND) => {}
        Some(other) => errors.push(err(
            "kind",
            format!("{other:?} is not a policy kind (want {KIND} in {API_VERSION})"),
        )),
        None => errors.push(err("kind", "is required")),
    }
    match &name {
        Some(n) => {
            if let Err(reason) = validate::check_dns_subdomain(n) {
                errors.push(err("metadata.name", format!("{n:?} {reason}")));
            }
        }
        None => errors.push(err("metadata.name", "is required")),
    }
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default")
        .to_string();
    if let Err(reason) = validate::check_dns_label(&namespace) {
        errors.push(err("metadata.namespace", format!("{namespace:?} {reason}")));
    }
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            errors.push(err(key, "unknown field"));
        }
    }
    let mut rule = None;
    let mut warnings = Vec::new();
    match obj.get("spec") {
        None => errors.push(err("spec", "is required")),
        Some(raw) => match serde_path_to_error::deserialize::<_, NetworkPolicySpec>(raw) {
            Ok(spec) => {
                warnings = named_port_warnings(&spec);
                rule = Some(translate(
                    name.as_deref().unwrap_or(label),
                    &namespace,
                    &spec,
                    &mut errors,
                ));
            }
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." {
                    "spec".to_string()
                } else {
                    format!("spec.{inner}")
                };
                let msg = e.inner().to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                errors.push(err(&path, msg));
            }
        },
    }
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    Ok(Policy {
        kind: PolicyKind::NetworkPolicy,
        warnings,
        name: name.expect("no errors means a name"),
        namespace: Some(namespace),
        rules: vec![(
            "spec".to_string(),
            rule.expect("no errors means a translated spec"),
        )],
        object: value.clone(),
    })
}

/// Translates a NetworkPolicy spec into one cilium.io/v2 rule, appending
/// every problem (with the NetworkPolicy's field paths) to `errors`.
pub fn translate(
    name: &str,
    namespace: &str,
    spec: &NetworkPolicySpec,
    errors: &mut Vec<FieldError>,
) -> Rule {
    let first_error = errors.len();
    let mut has_ingress_type = false;
    let mut has_egress_type = false;
    for (i, t) in spec.policy_types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => has_ingress_type = true,
            "Egress" => has_egress_type = true,
            other => errors.push(err(
                &format!("spec.policyTypes[{i}]"),
                format!("{other:?} is not a policy type (want Ingress or Egress)"),
            )),
        }
    }
    let explicit_types = !spec.policy_types.is_empty();
    if explicit_types && !has_ingress_type && !spec.ingress.is_empty() {
        errors.push(err(
            "spec.ingress",
            "policyTypes does not list Ingress, so these rules would be ignored by Kubernetes \
             (and enforced by Cilium); add Ingress to policyTypes or remove them",
        ));
    }
    if explicit_types && !has_egress_type && !spec.egress.is_empty() {
        errors.push(err(
            "spec.egress",
            "policyTypes does not list Egress, so these rules would be ignored by Kubernetes \
             (and enforced by Cilium); add Egress to policyTypes or remove them",
        ));
    }

    let endpoint_selector = match &spec.pod_selector {
        Some(sel) => pod_selector(sel, namespace, "spec.podSelector", errors),
        None => {
            errors.push(err(
                "spec.podSelector",
                "is required ({} selects every pod in the namespace)",
            ));
            EndpointSelector::default()
        }
    };

    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().enumerate() {
        let p = format!("spec.ingress[{i}]");
        let to_ports = ports(&r.ports, &p, errors);
        if r.from.is_empty() {
            ingress.push(IngressRule {
                from_entities: vec![Entity::All.to_string()],
                to_ports: to_ports.clone(),
                ..Default::default()
            });
        }
        for (j, peer) in r.from.iter().enumerate() {
            let (endpoints, cidr_set) =
                peer_fields(peer, namespace, &format!("{p}.from[{j}]"), errors);
            ingress.push(IngressRule {
                from_endpoints: endpoints,
                from_cidr_set: cidr_set,
                to_ports: to_ports.clone(),
                ..Default::default()
            });
        }
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().enumerate() {
        let p = format!("spec.egress[{i}]");
        let to_ports = ports(&r.ports, &p, errors);
        if r.to.is_empty() {
            egress.push(EgressRule {
                to_entities: vec![Entity::All.to_string()],
                to_ports: to_ports.clone(),
                ..Default::default()
            });
        }
        for (j, peer) in r.to.iter().enumerate() {
            let (endpoints, cidr_set) =
                peer_fields(peer, namespace, &format!("{p}.to[{j}]"), errors);
            egress.push(EgressRule {
                to_endpoints: endpoints,
                to_cidr_set: cidr_set,
                to_ports: to_ports.clone(),
                ..Default::default()
            });
        }
    }
    // Cilium: ingress is default-deny unless the policy is egress-only;
    // egress only when listed. The `none` entity selects no peer, so the
    // direction is enforced and nothing is allowed.
    if ingress.is_empty() && (has_ingress_type || !has_egress_type) {
        ingress.push(IngressRule {
            from_entities: vec![Entity::None.to_string()],
            ..Default::default()
        });
    }
    if egress.is_empty() && has_egress_type {
        egress.push(EgressRule {
            to_entities: vec![Entity::None.to_string()],
            ..Default::default()
        });
    }

    let k8s_label = |key: &str, value: &str| RuleLabel {
        key: key.to_string(),
        value: Some(value.to_string()),
        source: Some("k8s".to_string()),
    };
    let rule = Rule {
        endpoint_selector: Some(endpoint_selector),
        ingress,
        egress,
        labels: vec![
            k8s_label("io.cilium.k8s.policy.derived-from", KIND),
            k8s_label("io.cilium.k8s.policy.name", name),
            k8s_label("io.cilium.k8s.policy.namespace", namespace),
        ],
        ..Default::default()
    };
    // The translation of a valid NetworkPolicy is a valid rule; anything the
    // checks above missed is reported rather than enforced.
    if errors.len() == first_error {
        let mut internal = Vec::new();
        validate::rule(
            &rule,
            PolicyKind::NetworkPolicy,
            "spec",
            &mut internal,
            &mut Vec::new(),
        );
        errors.extend(internal.into_iter().map(|e| FieldError {
            path: "spec".to_string(),
            message: format!("translated rule is invalid: {e}"),
        }));
    }
    rule
}

/// `sel` with every key written `k8s:<prefix><key>` (Cilium's k8s source;
/// `prefix` is empty for pod labels), after checking each key and value.
fn prefixed_selector(
    sel: &EndpointSelector,
    prefix: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> (BTreeMap<String, String>, Vec<SelectorRequirement>) {
    let key_of = |k: &str| format!("k8s:{prefix}{k}");
    let mut labels = BTreeMap::new();
    for (k, v) in &sel.match_labels {
        let key = key_of(k);
        match selector_label(&key, v) {
            Ok(_) => {
                labels.insert(key, v.clone());
            }
            Err(e) => errors.push(err(&format!("{path}.matchLabels.{k}"), e)),
        }
    }
    let mut exprs = Vec::new();
    for (i, req) in sel.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let key = key_of(&req.key);
        if let Err(e) = selector_label(&key, "") {
            errors.push(err(&format!("{p}.key"), e));
        }
        match req.operator {
            SelectorOperator::In | SelectorOperator::NotIn => {
                if req.values.is_empty() {
                    errors.push(err(
                        &format!("{p}.values"),
                        format!("operator {:?} needs at least one value", req.operator),
                    ));
                }
                for (j, v) in req.values.iter().enumerate() {
                    if let Err(e) = selector_label(&key, v) {
                        errors.push(err(&format!("{p}.values[{j}]"), e));
                    }
                }
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                if !req.values.is_empty() {
                    errors.push(err(
                        &format!("{p}.values"),
                        format!("operator {:?} takes no values", req.operator),
                    ));
                }
            }
        }
        exprs.push(SelectorRequirement {
            key,
            operator: req.operator,
            values: req.values.clone(),
        });
    }
    (labels, exprs)
}

/// A pod selector of the policy's namespace.
fn pod_selector(
    sel: &EndpointSelector,
    namespace: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> EndpointSelector {
    let (mut match_labels, match_expressions) = prefixed_selector(sel, "", path, errors);
    match_labels.insert(format!("k8s:{NAMESPACE_LABEL}"), namespace.to_string());
    EndpointSelector {
        match_labels: match_labels.into(),
        match_expressions,
    }
}

/// One peer's endpoint selectors and CIDR set.
fn peer_fields(
    peer: &NetworkPolicyPeer,
    namespace: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> (Vec<EndpointSelector>, Vec<CidrRule>) {
    let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    let mut endpoints = Vec::new();
    let mut cidr_set = Vec::new();
    match (&peer.ip_block, selectors) {
        (None, false) => errors.push(err(
            path,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        )),
        (Some(_), true) => errors.push(err(
            &format!("{path}.ipBlock"),
            "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
        )),
        _ => {}
    }
    if let Some(ns_sel) = &peer.namespace_selector {
        let ns_prefix = format!("{NAMESPACE_LABELS_PREFIX}.");
        let (mut match_labels, mut match_expressions) = prefixed_selector(
            ns_sel,
            &ns_prefix,
            &format!("{path}.namespaceSelector"),
            errors,
        );
        if let Some(pod_sel) = &peer.pod_selector {
            let (l, e) = prefixed_selector(pod_sel, "", &format!("{path}.podSelector"), errors);
            match_labels.extend(l);
            match_expressions.extend(e);
        }
        // Any namespace (Cilium's selector for an empty namespaceSelector).
        // Always added: naming the namespace label is also what keeps a
        // namespaced policy's selector from being scoped to its own namespace.
        match_expressions.push(SelectorRequirement {
            key: format!("k8s:{NAMESPACE_LABEL}"),
            operator: SelectorOperator::Exists,
            values: vec![],
        });
        endpoints.push(EndpointSelector {
            match_labels: match_labels.into(),
            match_expressions,
        });
    } else if let Some(pod_sel) = &peer.pod_selector {
        endpoints.push(pod_selector(
            pod_sel,
            namespace,
            &format!("{path}.podSelector"),
            errors,
        ));
    }
    if let Some(block) = &peer.ip_block {
        let p = format!("{path}.ipBlock");
        match parse_cidr(&block.cidr) {
            Ok(net) => {
                for (k, ex) in block.except.iter().enumerate() {
                    match parse_cidr(ex) {
                        Ok(e) if !net.contains(&e) || e == net => errors.push(err(
                            &format!("{p}.except[{k}]"),
                            format!("{ex} is not strictly inside {}", block.cidr),
                        )),
                        Ok(_) => {}
                        Err(e) => errors.push(err(&format!("{p}.except[{k}]"), e)),
                    }
                }
            }
            Err(e) => errors.push(err(&format!("{p}.cidr"), e)),
        }
        cidr_set.push(CidrRule {
            cidr: Some(block.cidr.clone()),
            except: block.except.clone(),
            cidr_group_ref: None,
        });
    }
    (endpoints, cidr_set)
}

/// What validation cannot know offline: whether the pods declare the
/// named ports (with the NetworkPolicy's field paths).
fn named_port_warnings(spec: &NetworkPolicySpec) -> Vec<FieldError> {
    let ingress: Vec<&[NetworkPolicyPort]> = spec.ingress.iter().map(|r| &r.ports[..]).collect();
    let egress: Vec<&[NetworkPolicyPort]> = spec.egress.iter().map(|r| &r.ports[..]).collect();
    let mut out = Vec::new();
    for (dir, is_egress, rules) in [("ingress", false, ingress), ("egress", true, egress)] {
        for (i, list) in rules.into_iter().enumerate() {
            for (j, pp) in list.iter().enumerate() {
                let Some(Ok(validate::PortSpec::Name(name))) =
                    pp.port.as_ref().map(|v| validate::parse_port(&v.0))
                else {
                    continue;
                };
                let protocol =
                    validate::parse_protocol(Some(pp.protocol.as_deref().unwrap_or("TCP")))
                        .unwrap_or(validate::Protocol::Tcp);
                out.push(err(
                    &format!("spec.{dir}[{i}].ports[{j}].port"),
                    validate::named_port_warning(&name, is_egress, protocol),
                ));
            }
        }
    }
    out
}

/// `ports[]` as `toPorts` (one entry per port, as Cilium does).
fn ports(list: &[NetworkPolicyPort], path: &str, errors: &mut Vec<FieldError>) -> Vec<PortRule> {
    let mut out = Vec::new();
    for (i, pp) in list.iter().enumerate() {
        let p = format!("{path}.ports[{i}]");
        let protocol = match pp.protocol.as_deref() {
            None | Some("TCP") => "TCP",
            Some("UDP") => "UDP",
            Some("SCTP") => "SCTP",
            Some(other) => {
                errors.push(err(
                    &format!("{p}.protocol"),
                    format!("{other:?} is not one of TCP, UDP, SCTP"),
                ));
                "TCP"
            }
        };
        let (port, end_port) = match &pp.port {
            None => {
                if let Some(e) = pp.end_port {
                    errors.push(err(
                        &format!("{p}.endPort"),
                        format!("{e}: endPort needs a port"),
                    ));
                }
                // Every port of the protocol.
                ("1".to_string(), Some(65535))
            }
            Some(v) => {
                match validate::parse_port(&v.0) {
                    // Kubernetes has no port 0 ("every port" is no port).
                    Ok(validate::PortSpec::Range(0, _)) => {
                        errors.push(err(
                            &format!("{p}.port"),
                            format!(
                                "{} is not a valid port (1-65535)",
                                if v.0.is_empty() { "\"\"" } else { &v.0 }
                            ),
                        ));
                        ("1".to_string(), None)
                    }
                    Ok(validate::PortSpec::Range(n, _)) => {
                        let n = i32::from(n);
                        match pp.end_port {
                            Some(e) if e < n || e > 65535 => {
                                errors.push(err(
                                    &format!("{p}.endPort"),
                                    format!("{e} must be between port ({n}) and 65535"),
                                ));
                                (n.to_string(), None)
                            }
                            e => (n.to_string(), e.filter(|e| *e != n)),
                        }
                    }
                    // A named port: the selected pods' (ingress) or the
                    // destination pods' (egress) container port of that name.
                    Ok(validate::PortSpec::Name(name)) => {
                        if let Some(e) = pp.end_port {
                            errors.push(err(
                            &format!("{p}.endPort"),
                            format!("{e}: a range needs a numeric port, not the named port {name:?}"),
                        ));
                        }
                        (name, None)
                    }
                    Err(e) => {
                        errors.push(err(&format!("{p}.port"), e));
                        ("1".to_string(), None)
                    }
                }
            }
        };
        out.push(PortRule {
            ports: vec![PortProtocol {
                port: PortValue(port),
                end_port,
                protocol: Some(protocol.to_string()),
            }],
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests;
