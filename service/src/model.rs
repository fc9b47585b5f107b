//! The service model: what is stored for a service (a Kubernetes Service's
//! spec and its endpoints), and what the datapath needs from it, its
//! frontends (an address, port and protocol traffic is sent to) each with
//! the backends it may be sent on to.
//!
//! The stored record is lenient on read (unknown fields are ignored, so an
//! older agent reads a newer writer's records); the documents users write
//! are strict (`parse`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`
/// (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// The stored record, JSON in etcd at `Layout::service(ns, name)`; the same
/// in standalone and Kubernetes mode (in Kubernetes mode the operator will
/// build it from a Service and its EndpointSlices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    pub namespace: String,
    pub name: String,
    pub spec: ServiceSpec,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// The subset of Kubernetes' core/v1 `ServiceSpec` that load balancing
/// needs, spelled as Kubernetes spells it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type", default)]
    pub type_: ServiceType,
    /// One address, or two of different families (dual stack).
    #[serde(rename = "clusterIPs", default)]
    pub cluster_ips: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(rename = "externalIPs", default)]
    pub external_ips: Vec<IpAddr>,
    /// Our stand-in for `status.loadBalancer.ingress[].ip`: the addresses a
    /// load balancer in front of the cluster sends this service's traffic to.
    #[serde(rename = "loadBalancerIPs", default)]
    pub load_balancer_ips: Vec<IpAddr>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`; with `ClientIP`
    /// affinity, [`DEFAULT_AFFINITY_TIMEOUT_SECONDS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_timeout_seconds: Option<u32>,
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }

    /// Whether the service is reachable on every node's addresses at its
    /// ports' `nodePort`s.
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport protocol, serialized as Kubernetes spells it (`"TCP"`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Kubernetes' spellings, for code that prefers them.
    pub const TCP: Protocol = Protocol::Tcp;
    pub const UDP: Protocol = Protocol::Udp;
    pub const SCTP: Protocol = Protocol::Sctp;

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The IP protocol number (6, 17, 132).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Parses Kubernetes' spelling (`TCP`, `UDP`, `SCTP`).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One port of a service (`spec.ports[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

impl ServicePort {
    /// The port's name, `""` when it has none (as in EndpointSlices).
    pub fn name_str(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// Where a service port's traffic goes on a backend: a number, or the name
/// of a port the backend declares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(s) => f.write_str(s),
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum TrafficPolicy {
    /// Any backend of the cluster.
    #[default]
    Cluster,
    /// Only backends on the node the traffic arrived at.
    Local,
}

/// A group of backend addresses, like one EndpointSlice endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub conditions: Conditions,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

/// EndpointSlice conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conditions {
    #[serde(default = "yes")]
    pub ready: bool,
    /// Absent: the same as `ready` (as in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: bool,
}

fn yes() -> bool {
    true
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            ready: true,
            serving: None,
            terminating: false,
        }
    }
}

impl Conditions {
    pub fn state(&self) -> BackendState {
        if self.ready {
            BackendState::Active
        } else if self.serving == Some(true) && self.terminating {
            BackendState::Terminating
        } else {
            BackendState::NotReady
        }
    }
}

/// A port an endpoint declares (EndpointSlice `ports[]`: named like the
/// service port it serves, or like a container port a `targetPort` names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// What kind of address a frontend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FrontendKind {
    ClusterIP,
    /// Every address of every node (the frontend's address is the
    /// unspecified address of its family).
    NodePort,
    ExternalIP,
    LoadBalancer,
}

impl FrontendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIP => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIP => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Whether a backend may take connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BackendState {
    /// Ready: takes new connections.
    Active,
    /// Shutting down but still serving: takes new connections only when no
    /// backend is active (Kubernetes' ProxyTerminatingEndpoints).
    Terminating,
    /// Takes no new connections.
    NotReady,
}

/// One address and port a frontend's traffic may be sent to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub state: BackendState,
}

/// An address, port and protocol a service is reached at, and where its
/// traffic may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Frontend {
    /// `namespace/name`.
    pub service: String,
    /// The service port's name, `""` if none.
    pub port_name: String,
    pub kind: FrontendKind,
    /// NodePort: the unspecified address of the family (`0.0.0.0` or
    /// `::`), "every address of the node".
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Only backends of `addr`'s family; sorted by `(addr, port)`, one per
    /// `(addr, port)`.
    pub backends: Vec<Backend>,
    /// `Some(seconds)` iff session affinity is `ClientIP`.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local` for NodePort, ExternalIP and
    /// LoadBalancer frontends; `internalTrafficPolicy: Local` for ClusterIP.
    pub local_only: bool,
}

impl Frontend {
    /// The backends a new connection may use on node `node`: if
    /// `local_only`, only those with `node == Some(node)`; among them the
    /// active ones; if there is none, the terminating ones (Kubernetes'
    /// ProxyTerminatingEndpoints); else none.
    pub fn selectable(&self, node: &str) -> Vec<&Backend> {
        let eligible = || {
            self.backends
                .iter()
                .filter(move |b| !self.local_only || b.node.as_deref() == Some(node))
        };
        let active: Vec<&Backend> = eligible()
            .filter(|b| b.state == BackendState::Active)
            .collect();
        if !active.is_empty() {
            return active;
        }
        eligible()
            .filter(|b| b.state == BackendState::Terminating)
            .collect()
    }

    /// `addr:port/PROTO`, `[v6]:port/PROTO`, and `*:port/PROTO` for a
    /// NodePort frontend (`[*]:port/PROTO` for its IPv6 form).
    pub fn display_addr(&self) -> String {
        let host = match (self.kind, self.addr) {
            (FrontendKind::NodePort, IpAddr::V4(_)) => "*".to_string(),
            (FrontendKind::NodePort, IpAddr::V6(_)) => "[*]".to_string(),
            (_, IpAddr::V4(a)) => a.to_string(),
            (_, IpAddr::V6(a)) => format!("[{a}]"),
        };
        format!("{host}:{}/{}", self.port, self.protocol)
    }
}

/// The unspecified address of `addr`'s family.
pub fn unspecified_like(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

impl ServiceRecord {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The port endpoint `e` serves service port `sp` on, if it serves it:
    /// its port named like `sp` with `sp`'s protocol (EndpointSlice
    /// semantics); else, for a named `targetPort`, its port of that name and
    /// protocol (none: `e` is not a backend of `sp`); else the numeric
    /// `targetPort`; else `sp.port`.
    pub fn backend_port(sp: &ServicePort, e: &Endpoint) -> Option<u16> {
        let named = |name: &str| {
            e.ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == name && p.protocol == sp.protocol)
                .map(|p| p.port)
        };
        if let Some(port) = named(sp.name_str()) {
            return Some(port);
        }
        match &sp.target_port {
            Some(TargetPort::Name(name)) => named(name),
            Some(TargetPort::Number(n)) => Some(*n),
            None => Some(sp.port),
        }
    }

    /// Every backend of service port `sp`, of every family, sorted by
    /// `(addr, port)` with one per `(addr, port)` (the first endpoint's).
    fn backends(&self, sp: &ServicePort) -> Vec<Backend> {
        let mut out: Vec<Backend> = Vec::new();
        for e in &self.endpoints {
            let Some(port) = Self::backend_port(sp, e) else {
                continue;
            };
            for addr in &e.addresses {
                out.push(Backend {
                    addr: *addr,
                    port,
                    node: e.node_name.clone(),
                    state: e.conditions.state(),
                });
            }
        }
        // A stable sort keeps the first endpoint's entry first for dedup.
        // IPv4 sorts before IPv6.
        out.sort_by_key(|b| (b.addr, b.port));
        out.dedup_by(|b, a| a.addr == b.addr && a.port == b.port);
        out
    }

    /// Every frontend of the service, in a fixed order: per port (in spec
    /// order), its ClusterIP frontends (one per `clusterIPs` entry), its
    /// NodePort frontends (NodePort and LoadBalancer types, ports with a
    /// `nodePort`, one per family of the cluster IPs), its ExternalIP
    /// frontends (one per `externalIPs` entry), its LoadBalancer frontends
    /// (LoadBalancer type, one per `loadBalancerIPs` entry).
    pub fn frontends(&self) -> Vec<Frontend> {
        let spec = &self.spec;
        let affinity_timeout = match spec.session_affinity {
            SessionAffinity::ClientIP => Some(
                spec.session_affinity_timeout_seconds
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS),
            ),
            SessionAffinity::None => None,
        };
        let external_local = spec.external_traffic_policy == TrafficPolicy::Local;
        let internal_local = spec.internal_traffic_policy == TrafficPolicy::Local;
        let mut node_port_addrs: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .map(|a| unspecified_like(*a))
            .collect();
        node_port_addrs.sort();
        node_port_addrs.dedup();
        let mut out = Vec::new();
        for sp in &spec.ports {
            let backends = self.backends(sp);
            let frontend = |kind: FrontendKind, addr: IpAddr, port: u16| Frontend {
                service: self.id(),
                port_name: sp.name_str().to_string(),
                kind,
                addr,
                port,
                protocol: sp.protocol,
                backends: backends
                    .iter()
                    .filter(|b| b.addr.is_ipv4() == addr.is_ipv4())
                    .cloned()
                    .collect(),
                affinity_timeout,
                local_only: if kind == FrontendKind::ClusterIP {
                    internal_local
                } else {
                    external_local
                },
            };
            for ip in &spec.cluster_ips {
                out.push(frontend(FrontendKind::ClusterIP, *ip, sp.port));
            }
            if let (true, Some(node_port)) = (spec.type_.has_node_ports(), sp.node_port) {
                for any in &node_port_addrs {
                    out.push(frontend(FrontendKind::NodePort, *any, node_port));
                }
            }
            for ip in &spec.external_ips {
                out.push(frontend(FrontendKind::ExternalIP, *ip, sp.port));
            }
            if spec.type_ == ServiceType::LoadBalancer {
                for ip in &spec.load_balancer_ips {
                    out.push(frontend(FrontendKind::LoadBalancer, *ip, sp.port));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
