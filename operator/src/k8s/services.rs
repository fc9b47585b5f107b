//! Services for the kube-proxy replacement: a Kubernetes Service and its
//! EndpointSlices, as the record agents load-balance
//! (`services/v1/<namespace>/<name>`, the same record `axoneme service`
//! stores in standalone mode), so agents keep watching only the kvstore.
//!
//! What Axoneme does not load-balance is left to others and not mirrored:
//! `ExternalName` (DNS), headless Services (`clusterIP: None`, DNS), and
//! Services the `service.kubernetes.io/service-proxy-name` label hands to
//! another proxy (as kube-proxy and Cilium skip them). EndpointSlices are
//! joined by their `kubernetes.io/service-name` label; FQDN slices and
//! addresses that do not parse are skipped.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axoneme_crds::k8s_openapi::api::core::v1::Service;
use axoneme_crds::k8s_openapi::api::discovery::v1::EndpointSlice;
use axoneme_crds::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use axoneme_service::{
    Conditions, Endpoint, EndpointPort, Protocol, ServicePort, ServiceRecord, ServiceSpec,
    ServiceType, SessionAffinity, TargetPort, TrafficPolicy,
};

/// The label joining an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A Service with this label belongs to another service proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// What a Service asks of the kube-proxy replacement.
#[derive(Debug, PartialEq)]
pub enum Mirrored {
    /// Load-balance it as this record.
    Record(Box<ServiceRecord>),
    /// Not Axoneme's to load-balance (the reason, for the log).
    Skipped(&'static str),
}

/// EndpointSlices grouped by `(namespace, service name)`.
pub fn slices_by_service(
    slices: &[Arc<EndpointSlice>],
) -> BTreeMap<(String, String), Vec<Arc<EndpointSlice>>> {
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for s in slices {
        let (Some(ns), Some(service)) = (
            s.metadata.namespace.as_ref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        out.entry((ns.clone(), service.clone()))
            .or_default()
            .push(s.clone());
    }
    // Slices in a stable order, so the record (and what is written) does
    // not depend on the watch's.
    for v in out.values_mut() {
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    out
}

/// The record of `svc` with the endpoints of `slices` (its own), or why it
/// is skipped; `Err` names the field the record cannot take.
pub fn record(svc: &Service, slices: &[Arc<EndpointSlice>]) -> Result<Mirrored, String> {
    let meta = &svc.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    if meta
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return Ok(Mirrored::Skipped("handled by another service proxy"));
    }
    let Some(spec) = &svc.spec else {
        return Err("spec: missing".into());
    };
    let type_ = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => return Ok(Mirrored::Skipped("ExternalName")),
        other => return Err(format!("spec.type: {other:?} is not a service type")),
    };
    let ips = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default();
    if ips.iter().any(|ip| ip == "None") {
        return Ok(Mirrored::Skipped("headless"));
    }
    let cluster_ips = addresses("spec.clusterIPs", &ips)?;
    if cluster_ips.is_empty() {
        // Not yet allocated; nothing to balance until it is.
        return Ok(Mirrored::Skipped("no cluster IP yet"));
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let at = |field: &str| format!("spec.ports[{i}].{field}");
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            protocol: protocol(p.protocol.as_deref())
                .map_err(|e| format!("{}: {e}", at("protocol")))?,
            port: port(p.port).map_err(|e| format!("{}: {e}", at("port")))?,
            target_port: match &p.target_port {
                None => None,
                Some(IntOrString::Int(n)) => Some(TargetPort::Number(
                    port(*n).map_err(|e| format!("{}: {e}", at("targetPort")))?,
                )),
                Some(IntOrString::String(s)) => Some(TargetPort::Name(s.clone())),
            },
            node_port: match p.node_port {
                // NodePort 0: none allocated (allocateLoadBalancerNodePorts: false).
                None | Some(0) => None,
                Some(n) => Some(port(n).map_err(|e| format!("{}: {e}", at("nodePort")))?),
            },
        });
    }
    let lb_ingress: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect();
    let affinity = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => SessionAffinity::None,
        "ClientIP" => SessionAffinity::ClientIP,
        other => return Err(format!("spec.sessionAffinity: {other:?}")),
    };
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .map(|t| {
            u32::try_from(t)
                .map_err(|_| format!("sessionAffinityConfig.clientIP.timeoutSeconds: {t}"))
        })
        .transpose()?;
    let record = ServiceRecord {
        namespace,
        name,
        spec: ServiceSpec {
            type_,
            cluster_ips,
            ports,
            external_ips: addresses(
                "spec.externalIPs",
                spec.external_ips.as_deref().unwrap_or_default(),
            )?,
            load_balancer_ips: if type_ == ServiceType::LoadBalancer {
                addresses("status.loadBalancer.ingress", &lb_ingress)?
            } else {
                Vec::new()
            },
            session_affinity: affinity,
            session_affinity_timeout_seconds: timeout
                .filter(|_| affinity == SessionAffinity::ClientIP),
            external_traffic_policy: policy(spec.external_traffic_policy.as_deref()),
            internal_traffic_policy: policy(spec.internal_traffic_policy.as_deref()),
        },
        endpoints: slices.iter().flat_map(|s| endpoints(s)).collect(),
    };
    Ok(Mirrored::Record(Box::new(record)))
}

/// One slice's endpoints, each with the slice's ports. Kubernetes reads a
/// missing `ready` or `serving` as true.
fn endpoints(slice: &EndpointSlice) -> Vec<Endpoint> {
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    let ports: Vec<EndpointPort> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(EndpointPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: port(p.port?).ok()?,
                protocol: protocol(p.protocol.as_deref()).ok()?,
            })
        })
        .collect();
    slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(|e| {
            let addresses: Vec<IpAddr> =
                e.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            if addresses.is_empty() {
                return None;
            }
            let c = e.conditions.clone().unwrap_or_default();
            Some(Endpoint {
                addresses,
                node_name: e.node_name.clone(),
                conditions: Conditions {
                    ready: c.ready.unwrap_or(true),
                    serving: Some(c.serving.unwrap_or(true)),
                    terminating: c.terminating.unwrap_or(false),
                },
                ports: ports.clone(),
            })
        })
        .collect()
}

fn addresses(field: &str, ips: &[String]) -> Result<Vec<IpAddr>, String> {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            ip.parse()
                .map_err(|_| format!("{field}[{i}]: {ip:?} is not an IP address"))
        })
        .collect()
}

fn port(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{n} is not a port"))
}

fn protocol(p: Option<&str>) -> Result<Protocol, String> {
    let p = p.unwrap_or("TCP");
    Protocol::parse(p).ok_or_else(|| format!("{p:?} is not TCP, UDP or SCTP"))
}

fn policy(p: Option<&str>) -> TrafficPolicy {
    // The API server accepts only Cluster and Local (and the legacy
    // "Cluster" default); anything else is read as Cluster.
    match p {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }

    fn slice(json: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(json).unwrap())
    }

    fn web() -> serde_json::Value {
        serde_json::json!({
            "metadata": {"namespace": "shop", "name": "web", "uid": "u1", "resourceVersion": "9"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web", "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053}
                ],
                "selector": {"app": "web"},
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Cluster"
            },
            "status": {"loadBalancer": {}}
        })
    }

    fn web_slices() -> Vec<Arc<EndpointSlice>> {
        vec![
            slice(serde_json::json!({
                "metadata": {"namespace": "shop", "name": "web-b",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.0.1.5"], "nodeName": "n1",
                     "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["not-an-ip"]}
                ],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                          {"name": "dns", "port": 5353, "protocol": "UDP"}]
            })),
            slice(serde_json::json!({
                "metadata": {"namespace": "shop", "name": "web-a",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.5"], "nodeName": "n0"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
            })),
            slice(serde_json::json!({
                "metadata": {"namespace": "shop", "name": "other-x",
                             "labels": {"kubernetes.io/service-name": "other"}},
                "addressType": "FQDN",
                "endpoints": [{"addresses": ["example.test"]}]
            })),
        ]
    }

    #[test]
    fn a_service_and_its_slices_make_the_record() {
        let by = slices_by_service(&web_slices());
        let mine = &by[&("shop".to_string(), "web".to_string())];
        assert_eq!(
            mine.iter()
                .map(|s| s.metadata.name.clone().unwrap())
                .collect::<Vec<_>>(),
            ["web-a", "web-b"],
            "joined by label, in name order"
        );
        let Mirrored::Record(r) = record(&service(web()), mine).unwrap() else {
            panic!("skipped");
        };
        assert_eq!(r.id(), "shop/web");
        assert_eq!(r.spec.type_, ServiceType::NodePort);
        assert_eq!(
            r.spec.cluster_ips,
            [
                "10.96.0.20".parse::<IpAddr>().unwrap(),
                "fd00:96::20".parse().unwrap()
            ]
        );
        assert_eq!(
            r.spec.ports[0].target_port,
            Some(TargetPort::Name("web".into()))
        );
        assert_eq!(r.spec.ports[0].node_port, Some(30080));
        assert_eq!(r.spec.ports[1].protocol, Protocol::Udp);
        assert_eq!(r.spec.ports[1].target_port, Some(TargetPort::Number(5353)));
        assert_eq!(r.spec.session_affinity_timeout_seconds, Some(60));
        assert_eq!(r.spec.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(r.endpoints.len(), 2, "the unparsable address is dropped");
        assert_eq!(
            r.endpoints[0].addresses,
            ["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        assert!(
            r.endpoints[0].conditions.ready,
            "absent conditions are ready"
        );
        let t = &r.endpoints[1];
        assert_eq!(t.node_name.as_deref(), Some("n1"));
        assert_eq!(
            t.conditions.state(),
            axoneme_service::BackendState::Terminating
        );
        assert_eq!(t.ports.len(), 2);
        // What agents are given validates as any stored record must, and
        // the named target port resolves through the slice's port.
        assert_eq!(axoneme_service::validate::service(&r), vec![]);
        let fe = r.frontends();
        let http = fe.iter().find(|f| f.port == 80).unwrap();
        assert!(http.backends.iter().all(|b| b.port == 8080));
    }

    #[test]
    fn what_others_balance_is_skipped() {
        let mut headless = web();
        headless["spec"]["type"] = "ClusterIP".into();
        headless["spec"]["clusterIP"] = "None".into();
        headless["spec"]["clusterIPs"] = serde_json::json!(["None"]);
        assert_eq!(
            record(&service(headless), &[]),
            Ok(Mirrored::Skipped("headless"))
        );
        let mut external = web();
        external["spec"] =
            serde_json::json!({"type": "ExternalName", "externalName": "db.example"});
        assert_eq!(
            record(&service(external), &[]),
            Ok(Mirrored::Skipped("ExternalName"))
        );
        let mut other = web();
        other["metadata"]["labels"] =
            serde_json::json!({"service.kubernetes.io/service-proxy-name": "elsewhere"});
        assert!(matches!(
            record(&service(other), &[]),
            Ok(Mirrored::Skipped(_))
        ));
    }

    #[test]
    fn load_balancer_ingress_and_bad_fields() {
        let mut lb = web();
        lb["spec"]["type"] = "LoadBalancer".into();
        lb["status"] = serde_json::json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "lb.test"}]}});
        let Mirrored::Record(r) = record(&service(lb), &[]).unwrap() else {
            panic!("skipped");
        };
        assert_eq!(
            r.spec.load_balancer_ips,
            ["192.0.2.10".parse::<IpAddr>().unwrap()]
        );
        let mut bad = web();
        bad["spec"]["ports"][1]["port"] = 70000.into();
        assert_eq!(
            record(&service(bad), &[]).unwrap_err(),
            "spec.ports[1].port: 70000 is not a port"
        );
        let mut bad = web();
        bad["spec"]["externalIPs"] = serde_json::json!(["1.2.3"]);
        assert_eq!(
            record(&service(bad), &[]).unwrap_err(),
            "spec.externalIPs[0]: \"1.2.3\" is not an IP address"
        );
    }
}
