//! Service documents: Kubernetes `v1` `Service` objects as YAML or JSON
//! (several per text, `---`-separated, or a `List`), each with a top-level
//! `endpoints:` list naming its backends in standalone mode (where no pods
//! are selected):
//!
//! ```yaml
//! apiVersion: v1
//! kind: Service
//! metadata: {name: payments, namespace: default}
//! spec:
//!   clusterIP: 10.96.0.10
//!   ports: [{name: http, port: 80, targetPort: 8080}]
//! endpoints:                       # EndpointSlice-like, one per backend group
//! - addresses: [10.200.0.11]
//!   nodeName: node-a
//!   conditions: {ready: true}      # the default; serving, terminating
//!   ports: [{name: http, port: 8080}]   # optional, as in EndpointSlices
//! ```
//!
//! Parsing is strict: an unknown field is an error naming it (a typo must
//! not silently change a service), and so is a Kubernetes field this model
//! does not take (`selector`, `externalName`, ...), with the reason. Every
//! error of every document is reported, each with its field path; then
//! every valid service is checked ([`crate::validate::service`]) and the
//! services against each other ([`crate::validate::conflicts`]).

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value};

use crate::model::{
    Conditions, Endpoint, EndpointPort, Protocol, ServicePort, ServiceRecord, ServiceSpec,
    ServiceType, SessionAffinity, TargetPort, TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT_SECONDS,
};
use crate::validate::{self, FieldError};

/// The namespace of a document that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Parses and validates every document in `text` (multi-document YAML, or
/// JSON). All or nothing: the services, or every error of every document
/// (an empty text is no services, not an error).
pub fn parse_documents(text: &str) -> Result<Vec<ServiceRecord>, Vec<FieldError>> {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (label, value) in documents(text, &mut errors) {
        match parse_service(&value, &label) {
            Ok(r) => records.push(r),
            Err(e) => errors.extend(e),
        }
    }
    errors.extend(validate::conflicts(&records, &[]));
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(errors)
    }
}

/// Every object of `text`, labelled `document N` (`document N item M` in a
/// List); a YAML syntax error ends the stream (later documents cannot be
/// located reliably).
fn documents(text: &str, errors: &mut Vec<FieldError>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", i + 1);
        let value: Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(FieldError::new(
                    &label,
                    "",
                    format!("not valid YAML or JSON: {e}"),
                ));
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document (a trailing `---`)
        }
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind == "List" || kind == "ServiceList" {
            match value.get("items").and_then(Value::as_array) {
                Some(items) => out.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(j, item)| (format!("{label} item {j}"), item.clone())),
                ),
                None => errors.push(FieldError::new(
                    &label,
                    "items",
                    "a List needs a list of items",
                )),
            }
            continue;
        }
        out.push((label, value));
    }
    out
}

/// Kubernetes fields this model does not take, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "spec.selector",
        "is not supported: standalone mode selects no pods; list the backends under \
         `endpoints` (beside `spec`)",
    ),
    (
        "spec.externalName",
        "ExternalName services are not supported",
    ),
    (
        "spec.loadBalancerIP",
        "is not supported: give the addresses in spec.loadBalancerIPs",
    ),
    ("spec.loadBalancerSourceRanges", "is not supported yet"),
    ("spec.loadBalancerClass", "is not supported yet"),
    ("spec.allocateLoadBalancerNodePorts", "is not supported yet"),
    ("spec.healthCheckNodePort", "is not supported yet"),
    ("spec.publishNotReadyAddresses", "is not supported yet"),
    ("spec.trafficDistribution", "is not supported yet"),
    (
        "status",
        "is not supported: give load balancer addresses in spec.loadBalancerIPs",
    ),
];

/// Shape errors of one document, as `(path, message)`.
#[derive(Default)]
struct Walk {
    errors: Vec<(String, String)>,
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Walk {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push((path.to_string(), message.into()));
    }

    /// An object with only `fields`; other keys are errors.
    fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        fields: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = v.as_object() else {
            self.err(path, "must be an object");
            return None;
        };
        for key in map.keys() {
            if fields.contains(&key.as_str()) {
                continue;
            }
            let p = child(path, key);
            if let Some((_, why)) = UNSUPPORTED.iter().find(|(f, _)| *f == p) {
                self.err(&p, *why);
            } else if let Some(f) = fields.iter().find(|f| f.eq_ignore_ascii_case(key)) {
                self.err(&p, format!("unknown field (did you mean {f}?)"));
            } else {
                self.err(
                    &p,
                    format!("unknown field (known here: {})", fields.join(", ")),
                );
            }
        }
        Some(map)
    }

    fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.err(path, "must be a string");
                None
            }
        }
    }

    fn bool(&mut self, v: &Value, path: &str) -> Option<bool> {
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                self.err(path, "must be true or false");
                None
            }
        }
    }

    /// 0-65535 (0 is left to validation, which says "must be 1-65535").
    fn port(&mut self, v: &Value, path: &str) -> Option<u16> {
        match v.as_i64() {
            Some(n) => match u16::try_from(n) {
                Ok(p) => Some(p),
                Err(_) => {
                    self.err(path, "must be 1-65535");
                    None
                }
            },
            None => {
                self.err(path, "must be a port number 1-65535");
                None
            }
        }
    }

    fn u32(&mut self, v: &Value, path: &str) -> Option<u32> {
        match v.as_i64().map(u32::try_from) {
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                self.err(path, format!("{v} is out of range"));
                None
            }
            None => {
                self.err(path, "must be a number");
                None
            }
        }
    }

    fn ip(&mut self, v: &Value, path: &str) -> Option<IpAddr> {
        let s = self.string(v, path)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(path, format!("{s:?} is not an IP address"));
                None
            }
        }
    }

    /// A list; `null` (a key with nothing after it) is an empty one.
    fn list<'v>(&mut self, v: &'v Value, path: &str) -> &'v [Value] {
        match v.as_array() {
            Some(l) => l,
            None if v.is_null() => &[],
            None => {
                self.err(path, "must be a list");
                &[]
            }
        }
    }

    /// A list of addresses; a bad one stays as `0.0.0.0` (its error is
    /// reported) so that the others keep their indices.
    fn ips(&mut self, v: &Value, path: &str) -> Vec<IpAddr> {
        self.list(v, path)
            .iter()
            .enumerate()
            .map(|(i, a)| {
                self.ip(a, &format!("{path}[{i}]"))
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            })
            .collect()
    }

    fn choice<T: Copy>(&mut self, v: &Value, path: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(v, path)?;
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.err(path, format!("{s:?} is not one of {}", names.join(", ")));
                None
            }
        }
    }

    fn protocol(&mut self, v: Option<&Value>, path: &str) -> Protocol {
        let Some(v) = v else {
            return Protocol::Tcp;
        };
        self.choice(
            v,
            path,
            &[
                ("TCP", Protocol::Tcp),
                ("UDP", Protocol::Udp),
                ("SCTP", Protocol::Sctp),
            ],
        )
        .unwrap_or_default()
    }
}

/// Whether two field paths are the same field or one is inside the other.
fn related(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
    };
    inside(a, b) || inside(b, a)
}

/// The field paths a message names (`spec.ports[1]`, `endpoints[0].addresses[2]`).
fn mentioned_paths(message: &str) -> impl Iterator<Item = &str> {
    let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']');
    message
        .split(move |c: char| !path_char(c))
        .map(|p| p.trim_end_matches('.'))
        .filter(|p| p.starts_with("spec.") || p.starts_with("endpoints["))
}

/// Parses and validates one object.
pub fn parse_service(value: &Value, label: &str) -> Result<ServiceRecord, Vec<FieldError>> {
    let mut w = Walk::default();
    let record = read_service(&mut w, value);
    let (service, record) = match record {
        Some(r) if !r.name.is_empty() => (r.id(), Some(r)),
        other => (label.to_string(), other),
    };
    let shape = std::mem::take(&mut w.errors);
    let mut errors: Vec<FieldError> = shape
        .iter()
        .map(|(p, m)| FieldError::new(&service, p, m.clone()))
        .collect();
    if let Some(r) = &record {
        // What validation says about a field already reported (and read
        // as a placeholder) is noise.
        // So is what it says about another field that was (`port 81/TCP
        // is also spec.ports[1]'s` when spec.ports[1].protocol was unreadable).
        errors.extend(validate::service(r).into_iter().filter(|e| {
            !shape.iter().any(|(p, _)| {
                related(p, &e.path) || mentioned_paths(&e.message).any(|q| related(p, q))
            })
        }));
    }
    match record {
        Some(r) if errors.is_empty() => Ok(r),
        _ => Err(errors),
    }
}

/// Reads a Service object; `None` when it is not one at all. Fields that
/// cannot be read are reported and left at a placeholder.
fn read_service(w: &mut Walk, value: &Value) -> Option<ServiceRecord> {
    // Another kind of object: that, and nothing about its fields.
    match value.get("kind").map(|k| k.as_str()) {
        Some(Some("Service")) => {}
        Some(Some(other)) => {
            w.err("kind", format!("{other:?} is not a Service"));
            return None;
        }
        Some(None) => w.err("kind", "must be a string (Service)"),
        None if value.is_object() => w.err("kind", "is required (Service)"),
        None => {}
    }
    let top = w.object(
        value,
        "",
        &["apiVersion", "kind", "metadata", "spec", "endpoints"],
    )?;
    match top.get("apiVersion").and_then(Value::as_str) {
        Some("v1") => {}
        Some(other) => w.err(
            "apiVersion",
            format!("{other:?} is not supported (want v1)"),
        ),
        None => w.err("apiVersion", "is required (v1)"),
    }
    let (mut name, mut namespace) = (String::new(), DEFAULT_NAMESPACE.to_string());
    match top.get("metadata") {
        Some(m) => {
            if let Some(m) = w.object(
                m,
                "metadata",
                &["name", "namespace", "labels", "annotations"],
            ) {
                match m.get("name") {
                    Some(n) => name = w.string(n, "metadata.name").unwrap_or_default(),
                    None => w.err("metadata.name", "is required"),
                }
                if let Some(ns) = m.get("namespace") {
                    namespace = w
                        .string(ns, "metadata.namespace")
                        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
                }
                for field in ["labels", "annotations"] {
                    if let Some(map) = m.get(field) {
                        let path = format!("metadata.{field}");
                        if !map
                            .as_object()
                            .is_some_and(|o| o.values().all(Value::is_string))
                        {
                            w.err(&path, "must be a map of strings");
                        }
                    }
                }
            }
        }
        None => w.err("metadata", "is required (metadata.name at least)"),
    }
    let spec = match top.get("spec") {
        Some(s) => read_spec(w, s),
        None => {
            w.err("spec", "is required");
            ServiceSpec::default()
        }
    };
    let endpoints = top
        .get("endpoints")
        .map(|e| {
            w.list(e, "endpoints")
                .iter()
                .enumerate()
                .map(|(i, e)| read_endpoint(w, e, &format!("endpoints[{i}]")))
                .collect()
        })
        .unwrap_or_default();
    Some(ServiceRecord {
        namespace,
        name,
        spec,
        endpoints,
    })
}

const SPEC_FIELDS: &[&str] = &[
    "type",
    "clusterIP",
    "clusterIPs",
    "ipFamilies",
    "ipFamilyPolicy",
    "ports",
    "externalIPs",
    "loadBalancerIPs",
    "sessionAffinity",
    "sessionAffinityConfig",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
];

fn read_spec(w: &mut Walk, v: &Value) -> ServiceSpec {
    let mut spec = ServiceSpec::default();
    let Some(s) = w.object(v, "spec", SPEC_FIELDS) else {
        return spec;
    };
    if let Some(t) = s.get("type") {
        if t.as_str() == Some("ExternalName") {
            w.err("spec.type", "ExternalName services are not supported");
        } else if let Some(t) = w.choice(
            t,
            "spec.type",
            &[
                ("ClusterIP", ServiceType::ClusterIP),
                ("NodePort", ServiceType::NodePort),
                ("LoadBalancer", ServiceType::LoadBalancer),
            ],
        ) {
            spec.type_ = t;
        }
    }
    read_cluster_ips(w, s, &mut spec);
    if let Some(ports) = s.get("ports") {
        spec.ports = w
            .list(ports, "spec.ports")
            .iter()
            .enumerate()
            .map(|(i, p)| read_port(w, p, &format!("spec.ports[{i}]")))
            .collect();
    }
    if let Some(v) = s.get("externalIPs") {
        spec.external_ips = w.ips(v, "spec.externalIPs");
    }
    if let Some(v) = s.get("loadBalancerIPs") {
        spec.load_balancer_ips = w.ips(v, "spec.loadBalancerIPs");
    }
    if let Some(v) = s.get("sessionAffinity") {
        spec.session_affinity = w
            .choice(
                v,
                "spec.sessionAffinity",
                &[
                    ("None", SessionAffinity::None),
                    ("ClientIP", SessionAffinity::ClientIP),
                ],
            )
            .unwrap_or_default();
    }
    if let Some(v) = s.get("sessionAffinityConfig") {
        let path = "spec.sessionAffinityConfig";
        let timeout = w
            .object(v, path, &["clientIP"])
            .and_then(|c| c.get("clientIP"))
            .and_then(|c| w.object(c, &format!("{path}.clientIP"), &["timeoutSeconds"]))
            .and_then(|c| c.get("timeoutSeconds"))
            .and_then(|t| w.u32(t, &format!("{path}.clientIP.timeoutSeconds")));
        // Given at all, even without a timeout: validation says whether it
        // may be (only with ClientIP).
        spec.session_affinity_timeout_seconds =
            Some(timeout.unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS));
    } else if spec.session_affinity == SessionAffinity::ClientIP {
        spec.session_affinity_timeout_seconds = Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    }
    let policies = [
        ("Cluster", TrafficPolicy::Cluster),
        ("Local", TrafficPolicy::Local),
    ];
    if let Some(v) = s.get("externalTrafficPolicy") {
        spec.external_traffic_policy = w
            .choice(v, "spec.externalTrafficPolicy", &policies)
            .unwrap_or_default();
    }
    if let Some(v) = s.get("internalTrafficPolicy") {
        spec.internal_traffic_policy = w
            .choice(v, "spec.internalTrafficPolicy", &policies)
            .unwrap_or_default();
    }
    spec
}

/// `clusterIP`, `clusterIPs`, and the `ipFamilies` and `ipFamilyPolicy`
/// they must agree with.
fn read_cluster_ips(w: &mut Walk, s: &Map<String, Value>, spec: &mut ServiceSpec) {
    let single = match s.get("clusterIP").map(|v| w.string(v, "spec.clusterIP")) {
        Some(Some(ip)) if ip == "None" => {
            w.err(
                "spec.clusterIP",
                "headless services (clusterIP: None) are not supported",
            );
            None
        }
        Some(Some(ip)) if ip.is_empty() => None,
        Some(Some(ip)) => match ip.parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                w.err("spec.clusterIP", format!("{ip:?} is not an IP address"));
                None
            }
        },
        _ => None,
    };
    spec.cluster_ips = match s.get("clusterIPs") {
        Some(v) => {
            let ips = w.ips(v, "spec.clusterIPs");
            if let (Some(a), Some(first)) = (single, ips.first()) {
                if a != *first {
                    w.err(
                        "spec.clusterIPs[0]",
                        format!("{first} must be the same as spec.clusterIP ({a})"),
                    );
                }
            }
            ips
        }
        None => single.into_iter().collect(),
    };
    if let Some(v) = s.get("ipFamilies") {
        let families = w.list(v, "spec.ipFamilies");
        if families.len() > 2 {
            w.err("spec.ipFamilies", "at most 2 (IPv4, IPv6)");
        }
        for (i, f) in families.iter().enumerate() {
            let path = format!("spec.ipFamilies[{i}]");
            let Some(v4) = w.choice(f, &path, &[("IPv4", true), ("IPv6", false)]) else {
                continue;
            };
            match spec.cluster_ips.get(i) {
                Some(a) if a.is_ipv4() != v4 => {
                    w.err(&path, format!("does not match spec.clusterIPs[{i}] ({a})"))
                }
                Some(_) => {}
                None => w.err(
                    &path,
                    "has no cluster IP of this family (standalone mode allocates none)",
                ),
            }
        }
    }
    if let Some(v) = s.get("ipFamilyPolicy") {
        let path = "spec.ipFamilyPolicy";
        let n = spec.cluster_ips.len();
        match w.choice(
            v,
            path,
            &[
                ("SingleStack", 1),
                ("PreferDualStack", 0),
                ("RequireDualStack", 2),
            ],
        ) {
            Some(1) if n > 1 => w.err(path, "SingleStack, but there are 2 cluster IPs"),
            Some(2) if n == 1 => w.err(
                path,
                "RequireDualStack, but there is 1 cluster IP (give one per family)",
            ),
            _ => {}
        }
    }
}

fn read_port(w: &mut Walk, v: &Value, path: &str) -> ServicePort {
    let mut port = ServicePort {
        name: None,
        protocol: Protocol::Tcp,
        port: 0,
        target_port: None,
        node_port: None,
    };
    let Some(p) = w.object(
        v,
        path,
        &[
            "name",
            "protocol",
            "port",
            "targetPort",
            "nodePort",
            "appProtocol",
        ],
    ) else {
        return port;
    };
    port.name = p
        .get("name")
        .and_then(|n| w.string(n, &child(path, "name")));
    port.protocol = w.protocol(p.get("protocol"), &child(path, "protocol"));
    match p.get("port") {
        Some(n) => port.port = w.port(n, &child(path, "port")).unwrap_or_default(),
        None => w.err(&child(path, "port"), "is required"),
    }
    port.target_port = p.get("targetPort").and_then(|t| {
        let tpath = child(path, "targetPort");
        if t.is_string() {
            w.string(t, &tpath).map(TargetPort::Name)
        } else {
            w.port(t, &tpath).map(TargetPort::Number)
        }
    });
    port.node_port = p
        .get("nodePort")
        .and_then(|n| w.port(n, &child(path, "nodePort")));
    if let Some(a) = p.get("appProtocol") {
        // Taken as Kubernetes takes it (a hint for implementations); unused.
        w.string(a, &child(path, "appProtocol"));
    }
    port
}

fn read_endpoint(w: &mut Walk, v: &Value, path: &str) -> Endpoint {
    let mut ep = Endpoint {
        addresses: Vec::new(),
        node_name: None,
        conditions: Conditions::default(),
        ports: Vec::new(),
    };
    let Some(e) = w.object(v, path, &["addresses", "nodeName", "conditions", "ports"]) else {
        return ep;
    };
    match e.get("addresses") {
        Some(a) => ep.addresses = w.ips(a, &child(path, "addresses")),
        None => w.err(&child(path, "addresses"), "is required"),
    }
    ep.node_name = e
        .get("nodeName")
        .and_then(|n| w.string(n, &child(path, "nodeName")));
    if let Some(c) = e.get("conditions") {
        let cpath = child(path, "conditions");
        if let Some(c) = w.object(c, &cpath, &["ready", "serving", "terminating"]) {
            if let Some(b) = c
                .get("ready")
                .and_then(|b| w.bool(b, &child(&cpath, "ready")))
            {
                ep.conditions.ready = b;
            }
            ep.conditions.serving = c
                .get("serving")
                .and_then(|b| w.bool(b, &child(&cpath, "serving")));
            if let Some(b) = c
                .get("terminating")
                .and_then(|b| w.bool(b, &child(&cpath, "terminating")))
            {
                ep.conditions.terminating = b;
            }
        }
    }
    if let Some(ports) = e.get("ports") {
        let ppath = child(path, "ports");
        ep.ports = w
            .list(ports, &ppath)
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let path = format!("{ppath}[{i}]");
                let mut port = EndpointPort {
                    name: None,
                    port: 0,
                    protocol: Protocol::Tcp,
                };
                if let Some(p) = w.object(p, &path, &["name", "port", "protocol"]) {
                    port.name = p
                        .get("name")
                        .and_then(|n| w.string(n, &child(&path, "name")));
                    match p.get("port") {
                        Some(n) => port.port = w.port(n, &child(&path, "port")).unwrap_or_default(),
                        None => w.err(&child(&path, "port"), "is required"),
                    }
                    port.protocol = w.protocol(p.get("protocol"), &child(&path, "protocol"));
                }
                port
            })
            .collect();
    }
    ep
}

#[cfg(test)]
mod tests;
