//! A Service object's fields, read into the model with [`Walk`]: metadata,
//! the spec (type, cluster IPs and families, ports, external and load
//! balancer addresses, session affinity, traffic policies) and the
//! `endpoints` list. Unreadable fields are reported and left at a
//! placeholder, so validation still sees the rest.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::walk::{child, Walk};
use super::DEFAULT_NAMESPACE;
use crate::model::{
    Conditions, Endpoint, EndpointPort, Protocol, ServicePort, ServiceRecord, ServiceSpec,
    ServiceType, SessionAffinity, TargetPort, TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT_SECONDS,
};

/// Reads a Service object; `None` when it is not one at all. Fields that
/// cannot be read are reported and left at a placeholder.
pub(super) fn read_service(w: &mut Walk, value: &Value) -> Option<ServiceRecord> {
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

pub(super) const SPEC_FIELDS: &[&str] = &[
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
