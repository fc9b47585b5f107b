//! Validation of services, with the field path of every error in the
//! document a user wrote (`default/payments: spec.ports[1].port: must be
//! 1-65535`). Every error is collected, not just the first.
//!
//! [`service`] checks one record on its own (Kubernetes' rules for the
//! fields we take, plus what standalone mode needs: cluster IPs given, node
//! ports given for NodePort services, endpoints that fit the service);
//! [`conflicts`] checks services against each other (the same name twice,
//! a cluster IP or a frontend two services share).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use crate::model::{
    FrontendKind, Protocol, ServiceRecord, ServiceType, SessionAffinity, TargetPort, TrafficPolicy,
};

/// One problem, the service it is in and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldError {
    /// `namespace/name`, or `document N` when the document names none.
    pub service: String,
    /// The field's path in the document (`spec.ports[1].port`); empty for
    /// the document as a whole.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(service: &str, path: &str, message: impl Into<String>) -> Self {
        FieldError {
            service: service.to_string(),
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.service, self.message)
        } else {
            write!(f, "{}: {}: {}", self.service, self.path, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// Kubernetes' default node port range (`--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The longest `sessionAffinityConfig.clientIP.timeoutSeconds` (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

fn label_chars(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A DNS-1123 label (namespaces, port names): 1-63 lower-case letters,
/// digits and '-', alphanumeric at both ends.
pub fn check_dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 || !label_chars(s) || s.starts_with('-') || s.ends_with('-') {
        return Err(
            "must be a DNS label: 1-63 lower-case letters, digits and '-', \
                    alphanumeric at both ends"
                .into(),
        );
    }
    Ok(())
}

/// A DNS-1035 label (service names): a DNS-1123 label that starts with a
/// letter.
pub fn check_dns1035_label(s: &str) -> Result<(), String> {
    if check_dns1123_label(s).is_err() || !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(
            "must be a DNS-1035 label: 1-63 lower-case letters, digits and '-', \
                    starting with a letter and ending alphanumeric"
                .into(),
        );
    }
    Ok(())
}

/// A DNS-1123 subdomain (node names): dot-separated DNS labels, at most 253
/// characters.
pub fn check_dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|p| check_dns1123_label(p).is_err()) {
        return Err(
            "must be a DNS subdomain: lower-case letters, digits, '-' and '.', \
                    at most 253 characters"
                .into(),
        );
    }
    Ok(())
}

/// A container port name, as a named `targetPort` refers to one (Kubernetes'
/// IANA_SVC_NAME): 1-15 lower-case letters, digits and '-', at least one
/// letter, no '-' at either end or twice in a row.
pub fn check_port_name(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 15
        || !label_chars(s)
        || !s.chars().any(|c| c.is_ascii_lowercase())
        || s.starts_with('-')
        || s.ends_with('-')
        || s.contains("--")
    {
        let hint = if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
            " (a port number goes unquoted)"
        } else {
            ""
        };
        return Err(format!(
            "must be a port name: 1-15 lower-case letters, digits and '-', with a letter, \
             no '-' at either end or twice in a row{hint}"
        ));
    }
    Ok(())
}

/// Why `addr` cannot be a service or backend address, if it cannot.
pub fn check_address(addr: IpAddr) -> Result<(), String> {
    let bad = if addr.is_unspecified() {
        "unspecified"
    } else if addr.is_loopback() {
        "a loopback address"
    } else if addr.is_multicast() {
        "a multicast address"
    } else if addr == IpAddr::from([255, 255, 255, 255]) {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(format!("{addr} is {bad}"))
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

struct Errors<'a> {
    service: &'a str,
    out: Vec<FieldError>,
}

impl Errors<'_> {
    fn add(&mut self, path: impl AsRef<str>, message: impl Into<String>) {
        self.out
            .push(FieldError::new(self.service, path.as_ref(), message));
    }
}

/// Checks one service on its own; every error found.
pub fn service(r: &ServiceRecord) -> Vec<FieldError> {
    let id = r.id();
    let mut e = Errors {
        service: &id,
        out: Vec::new(),
    };
    if let Err(m) = check_dns1035_label(&r.name) {
        e.add("metadata.name", format!("{:?} {m}", r.name));
    }
    if let Err(m) = check_dns1123_label(&r.namespace) {
        e.add("metadata.namespace", format!("{:?} {m}", r.namespace));
    }
    let spec = &r.spec;

    // Cluster IPs: standalone mode allocates none.
    match spec.cluster_ips.len() {
        0 => e.add(
            "spec.clusterIPs",
            "is required: give the service's address in clusterIP (standalone mode \
             allocates none)",
        ),
        1 => {}
        2 if spec.cluster_ips[0].is_ipv4() != spec.cluster_ips[1].is_ipv4() => {}
        2 => e.add(
            "spec.clusterIPs",
            format!(
                "two addresses must be of different families (one IPv4, one IPv6), \
                 both are {}",
                family(&spec.cluster_ips[0])
            ),
        ),
        n => e.add(
            "spec.clusterIPs",
            format!("at most 2 addresses (one per family), not {n}"),
        ),
    }
    for (i, a) in spec.cluster_ips.iter().enumerate() {
        if let Err(m) = check_address(*a) {
            e.add(format!("spec.clusterIPs[{i}]"), m);
        }
    }
    for (field, list) in [
        ("externalIPs", &spec.external_ips),
        ("loadBalancerIPs", &spec.load_balancer_ips),
    ] {
        for (i, a) in list.iter().enumerate() {
            let path = format!("spec.{field}[{i}]");
            if let Err(m) = check_address(*a) {
                e.add(&path, m);
            } else if let Some(j) = list[..i].iter().position(|b| b == a) {
                e.add(&path, format!("{a} is also spec.{field}[{j}]"));
            }
        }
    }
    if !spec.load_balancer_ips.is_empty() && spec.type_ != ServiceType::LoadBalancer {
        e.add(
            "spec.loadBalancerIPs",
            format!(
                "only a LoadBalancer service has load balancer addresses (type is {})",
                spec.type_
            ),
        );
    }

    // Ports.
    if spec.ports.is_empty() {
        e.add("spec.ports", "a service needs at least one port");
    }
    let many = spec.ports.len() > 1;
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut numbers: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut node_ports: HashMap<(u16, Protocol), usize> = HashMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        match &p.name {
            Some(name) => {
                if let Err(m) = check_dns1123_label(name) {
                    e.add(format!("{path}.name"), format!("{name:?} {m}"));
                } else if let Some(j) = names.insert(name, i) {
                    e.add(
                        format!("{path}.name"),
                        format!("{name:?} is also the name of spec.ports[{j}]"),
                    );
                }
            }
            None if many => e.add(
                format!("{path}.name"),
                "is required when a service has more than one port",
            ),
            None => {}
        }
        if p.port == 0 {
            e.add(format!("{path}.port"), "must be 1-65535");
        } else if let Some(j) = numbers.insert((p.port, p.protocol), i) {
            // On the port as a whole: the protocol is half of it.
            e.add(
                &path,
                format!("port {}/{} is also spec.ports[{j}]'s", p.port, p.protocol),
            );
        }
        match &p.target_port {
            Some(TargetPort::Number(0)) => {
                e.add(format!("{path}.targetPort"), "must be 1-65535");
            }
            Some(TargetPort::Name(name)) => {
                if let Err(m) = check_port_name(name) {
                    e.add(format!("{path}.targetPort"), format!("{name:?} {m}"));
                }
            }
            Some(TargetPort::Number(_)) | None => {}
        }
        match p.node_port {
            Some(_) if !spec.type_.has_node_ports() => e.add(
                format!("{path}.nodePort"),
                format!(
                    "only NodePort and LoadBalancer services have node ports (type is {})",
                    spec.type_
                ),
            ),
            Some(n) if !NODE_PORTS.contains(&n) => e.add(
                format!("{path}.nodePort"),
                format!(
                    "{n} is outside the node port range {}-{}",
                    NODE_PORTS.start(),
                    NODE_PORTS.end()
                ),
            ),
            Some(n) => {
                if let Some(j) = node_ports.insert((n, p.protocol), i) {
                    e.add(
                        &path,
                        format!("nodePort {n}/{} is also spec.ports[{j}]'s", p.protocol),
                    );
                }
            }
            None if spec.type_ == ServiceType::NodePort => e.add(
                format!("{path}.nodePort"),
                "is required for a NodePort service (standalone mode allocates none)",
            ),
            None => {}
        }
    }

    // Session affinity and traffic policies.
    match (spec.session_affinity, spec.session_affinity_timeout_seconds) {
        (SessionAffinity::ClientIP, Some(t)) if t == 0 || t > MAX_AFFINITY_TIMEOUT_SECONDS => e
            .add(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("must be 1-{MAX_AFFINITY_TIMEOUT_SECONDS}, not {t}"),
            ),
        (SessionAffinity::None, Some(_)) => e.add(
            "spec.sessionAffinityConfig",
            "applies only with sessionAffinity: ClientIP",
        ),
        _ => {}
    }
    if spec.external_traffic_policy == TrafficPolicy::Local
        && !spec.type_.has_node_ports()
        && spec.external_ips.is_empty()
    {
        e.add(
            "spec.externalTrafficPolicy",
            "Local applies only to NodePort and LoadBalancer services and to services \
             with externalIPs",
        );
    }

    // Endpoints.
    let families: Vec<bool> = spec.cluster_ips.iter().map(IpAddr::is_ipv4).collect();
    let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (j, ep) in r.endpoints.iter().enumerate() {
        let path = format!("endpoints[{j}]");
        if ep.addresses.is_empty() {
            e.add(format!("{path}.addresses"), "an endpoint needs an address");
        }
        for (k, a) in ep.addresses.iter().enumerate() {
            let apath = format!("{path}.addresses[{k}]");
            if let Err(m) = check_address(*a) {
                e.add(&apath, m);
            } else if !families.is_empty() && !families.contains(&a.is_ipv4()) {
                e.add(
                    &apath,
                    format!(
                        "{a} is {}, and the service has no {} cluster IP",
                        family(a),
                        family(a)
                    ),
                );
            } else if let Some(other) = seen.insert(*a, apath.clone()) {
                e.add(&apath, format!("{a} is also {other}"));
            }
        }
        if let Some(node) = &ep.node_name {
            if let Err(m) = check_dns1123_subdomain(node) {
                e.add(format!("{path}.nodeName"), format!("{node:?} {m}"));
            }
        }
        if ep.conditions.ready && ep.conditions.terminating {
            e.add(
                format!("{path}.conditions"),
                "a terminating endpoint is not ready: give ready: false (and serving: true \
                 while it still serves)",
            );
        }
        let mut port_names: HashMap<(&str, Protocol), usize> = HashMap::new();
        for (k, p) in ep.ports.iter().enumerate() {
            let ppath = format!("{path}.ports[{k}]");
            if p.port == 0 {
                e.add(format!("{ppath}.port"), "must be 1-65535");
            }
            let name = p.name.as_deref().unwrap_or("");
            if !name.is_empty() {
                if let Err(m) = check_dns1123_label(name) {
                    e.add(format!("{ppath}.name"), format!("{name:?} {m}"));
                }
            }
            if let Some(l) = port_names.insert((name, p.protocol), k) {
                e.add(
                    &ppath,
                    format!(
                        "a {} port named {name:?} is also {path}.ports[{l}]",
                        p.protocol
                    ),
                );
            }
        }
        if !spec.ports.is_empty()
            && !spec
                .ports
                .iter()
                .any(|sp| ServiceRecord::backend_port(sp, ep).is_some())
        {
            let wanted: Vec<String> = spec
                .ports
                .iter()
                .filter_map(|sp| match &sp.target_port {
                    Some(TargetPort::Name(n)) => Some(format!("{n:?}/{}", sp.protocol)),
                    _ => None,
                })
                .collect();
            e.add(
                format!("{path}.ports"),
                format!(
                    "serves none of the service's ports: it declares no port named {}",
                    wanted.join(" or ")
                ),
            );
        }
    }
    e.out
}

/// Checks services against each other: a `namespace/name` twice among
/// `new`, and a cluster IP or a frontend (address, port, protocol; node
/// ports on every node address) that one of `new` shares with another of
/// `new` or with one of `others` (services already stored: one with the
/// `namespace/name` of a service of `new` is the one it replaces and is left
/// out). Errors are reported on the services of `new` only.
pub fn conflicts(new: &[ServiceRecord], others: &[ServiceRecord]) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, r) in new.iter().enumerate() {
        if let Some(j) = ids.insert(r.id(), i) {
            out.push(FieldError::new(
                &r.id(),
                "metadata.name",
                format!(
                    "this service is defined more than once (services {} and {})",
                    j + 1,
                    i + 1
                ),
            ));
        }
    }
    let stored: Vec<&ServiceRecord> = others
        .iter()
        .filter(|o| !ids.contains_key(&o.id()))
        .collect();
    // Who holds each cluster IP and each frontend, first come first served:
    // the stored services, then the new ones in order.
    let mut cluster_ips: HashMap<IpAddr, String> = HashMap::new();
    let mut frontends: HashMap<(IpAddr, u16, Protocol), String> = HashMap::new();
    let mut claim = |r: &ServiceRecord, report: bool, out: &mut Vec<FieldError>| {
        let id = r.id();
        // Cluster IPs already reported: not again for each of their ports.
        let mut taken = Vec::new();
        for (i, a) in r.spec.cluster_ips.iter().enumerate() {
            match cluster_ips.get(a) {
                Some(other) if *other != id => {
                    taken.push(*a);
                    if report {
                        out.push(FieldError::new(
                            &id,
                            &format!("spec.clusterIPs[{i}]"),
                            format!("{a} is also the cluster IP of {other}"),
                        ));
                    }
                }
                _ => {
                    cluster_ips.insert(*a, id.clone());
                }
            }
        }
        for f in r.frontends() {
            let key = (f.addr, f.port, f.protocol);
            match frontends.get(&key) {
                Some(other) if *other != id => {
                    if report && !(f.kind == FrontendKind::ClusterIP && taken.contains(&f.addr)) {
                        out.push(FieldError::new(
                            &id,
                            &frontend_path(r, f.kind, f.addr, f.port, f.protocol),
                            format!("{} is also a frontend of {other}", f.display_addr()),
                        ));
                    }
                }
                _ => {
                    frontends.insert(key, id.clone());
                }
            }
        }
    };
    for r in stored {
        claim(r, false, &mut out);
    }
    for r in new {
        claim(r, true, &mut out);
    }
    out
}

/// Where a frontend comes from in the document.
fn frontend_path(
    r: &ServiceRecord,
    kind: FrontendKind,
    addr: IpAddr,
    port: u16,
    protocol: Protocol,
) -> String {
    let spec = &r.spec;
    let port_index = |want: fn(&crate::model::ServicePort, u16) -> bool| {
        spec.ports
            .iter()
            .position(|p| p.protocol == protocol && want(p, port))
            .unwrap_or_default()
    };
    let list_index = |list: &[IpAddr]| list.iter().position(|a| *a == addr).unwrap_or_default();
    match kind {
        FrontendKind::NodePort => format!(
            "spec.ports[{}].nodePort",
            port_index(|p, n| p.node_port == Some(n))
        ),
        FrontendKind::ClusterIP => format!("spec.clusterIPs[{}]", list_index(&spec.cluster_ips)),
        FrontendKind::ExternalIP => format!("spec.externalIPs[{}]", list_index(&spec.external_ips)),
        FrontendKind::LoadBalancer => format!(
            "spec.loadBalancerIPs[{}]",
            list_index(&spec.load_balancer_ips)
        ),
    }
}

#[cfg(test)]
mod tests;
