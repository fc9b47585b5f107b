//! The API's views of the datapath and the node, built from what the
//! tasks published (the reconciler's [`DatapathView`], the kvstore probe,
//! the node's caches) and from read-only handles on the pinned maps.

use std::net::IpAddr;

use axoneme_api::{
    cni_code, ApiError, ComponentStatus, CtEntry, EndpointView, EventView, IpcacheEntry, MapStatus,
    PolicyEntry, Status, SyncUnitStatus,
};
use axoneme_bpf_common::{
    ct_flags, direction, drop_reason, endpoint_flags, event_kind, family, map_names, match_type,
    policy_flags, trace_point, verdict, Event, PolicyKey,
};

use crate::datapath::{DatapathError, MapReader};
use crate::endpoints::Endpoints;
use crate::kvhealth::KvHealth;
use crate::node::NodeState;
use crate::reconcile::DatapathView;

/// An address from the datapath's 16-byte form.
pub fn address(fam: u8, a: &[u8; 16]) -> IpAddr {
    if fam == family::IPV4 {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

fn map_failure(e: DatapathError) -> ApiError {
    ApiError::new(
        cni_code::IO_FAILURE,
        "cannot read the BPF maps",
        crate::error_chain(&e),
    )
}

/// Protocol numbers by their names.
pub fn protocol_name(p: u8) -> String {
    match p {
        0 => "ANY".into(),
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

/// The node's status.
pub fn status(
    view: &DatapathView,
    state: &NodeState,
    endpoints: &Endpoints,
    maps: &MapReader,
    kv: Option<&KvHealth>,
) -> Status {
    let mut components = vec![KvHealth::component(kv)];
    let failing: Vec<String> = view
        .units
        .iter()
        .filter_map(|(unit, h)| {
            h.last_error
                .as_ref()
                .filter(|_| h.consecutive_failures > 0)
                .map(|e| format!("{} failing ({}x): {e}", unit.name(), h.consecutive_failures))
        })
        .collect();
    components.push(ComponentStatus {
        name: "datapath".into(),
        ok: failing.is_empty() && view.passes > 0,
        message: if view.passes == 0 {
            "no reconcile pass yet".into()
        } else if failing.is_empty() {
            format!(
                "{} endpoints enforced, programs on {} interfaces",
                view.programmed.len(),
                view.attached
            )
        } else {
            format!("keeping the last state; {}", failing.join("; "))
        },
    });
    components.push(audit_component(view));
    let cidrs = endpoints.pod_cidrs();
    components.push(ComponentStatus {
        name: "ipam".into(),
        ok: !cidrs.is_empty(),
        message: if cidrs.is_empty() {
            "no pod CIDR from the operator yet".into()
        } else {
            format!(
                "pod CIDRs {}",
                cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    });
    let map_status = map_status(maps);
    let policies = state.valid_policies_by_key();
    let policy_revision = state
        .policy_caches()
        .0
        .snapshot()
        .values()
        .map(|r| r.mod_revision)
        .max()
        .unwrap_or(0);
    Status {
        node: state.node().to_string(),
        ok: components.iter().all(|c| c.ok),
        components,
        pod_cidrs: cidrs.iter().map(ToString::to_string).collect(),
        maps: map_status,
        programs_attached: view.attached,
        endpoints: state.endpoints().len(),
        identities: state.identities().len(),
        policies: policies.len(),
        policy_revision,
        sync_units: view
            .units
            .iter()
            .map(|(unit, h)| SyncUnitStatus {
                name: unit.name().into(),
                ok: h.consecutive_failures == 0,
                consecutive_failures: h.consecutive_failures,
                failures_total: h.failures_total,
                changes_total: h.changes_total,
                last_error: h.last_error.clone(),
            })
            .collect(),
    }
}

/// Each map's entries against its size (the pinned maps, read as they are).
pub fn map_status(maps: &MapReader) -> Vec<MapStatus> {
    let count = |n: Result<usize, DatapathError>| n.map(|n| n as u64).unwrap_or(0);
    let mut out = vec![
        MapStatus {
            name: "ipcache".into(),
            max_entries: maps.capacity(map_names::IPCACHE),
            entries: count(maps.ipcache_entries().map(|v| v.len())),
        },
        MapStatus {
            name: "endpoints".into(),
            max_entries: maps.capacity(map_names::ENDPOINTS),
            entries: count(maps.endpoints().map(|v| v.len())),
        },
        MapStatus {
            name: "endpoint-addresses".into(),
            max_entries: maps.capacity(map_names::ENDPOINT_ADDRS),
            entries: count(maps.endpoint_addresses()),
        },
        MapStatus {
            name: "policy".into(),
            max_entries: maps.capacity(map_names::POLICY),
            entries: count(maps.policy_entries().map(|v| v.len())),
        },
    ];
    // Two tables, each full on its own: IPv4 and IPv6 flows.
    let (ct4, ct6) = maps.ct_counts().unwrap_or_default();
    out.extend([
        MapStatus {
            name: "ct4".into(),
            max_entries: maps.capacity(map_names::CT4),
            entries: ct4 as u64,
        },
        MapStatus {
            name: "ct6".into(),
            max_entries: maps.capacity(map_names::CT),
            entries: ct6 as u64,
        },
    ]);
    out
}

/// The `policy-audit` line in `status`: which endpoints the datapath has
/// in audit mode (their policy's drops are reported, not enforced).
fn audit_component(view: &DatapathView) -> ComponentStatus {
    let audited: Vec<&str> = view
        .programmed
        .iter()
        .filter(|(_, p)| p.info.flags & endpoint_flags::AUDIT != 0)
        .map(|(name, _)| name.as_str())
        .collect();
    const SHOWN: usize = 10;
    let message = match audited.len() {
        0 => "off: every endpoint's policy is enforced".to_string(),
        n => format!(
            "on for {n} of {} endpoints (drops are reported as `audit`, not enforced): {}{}",
            view.programmed.len(),
            audited[..n.min(SHOWN)].join(", "),
            if n > SHOWN { ", ..." } else { "" }
        ),
    };
    ComponentStatus {
        name: "policy-audit".into(),
        ok: true,
        message,
    }
}

/// Kubernetes mode's line in `status`: the watch of this node's Pods.
pub fn kubernetes(pods: &crate::k8s::Pods) -> ComponentStatus {
    let (ok, message) = match pods.error() {
        Some(e) => (false, format!("the Pod watch fails: {e}")),
        None if !pods.synced() => (false, "the Pod watch has not synced yet".into()),
        None => (true, "watching this node's Pods".into()),
    };
    ComponentStatus {
        name: "kubernetes".into(),
        ok,
        message,
    }
}

/// This node's endpoints: every record stored under the node, with what
/// the datapath holds for it.
pub fn endpoints(view: &DatapathView, state: &NodeState, eps: &Endpoints) -> Vec<EndpointView> {
    let layout = state.layout();
    let prefix = layout.node_endpoints_prefix(state.node());
    let states = eps.states();
    let assignments = state.endpoints();
    let mut out = Vec::new();
    for (key, record) in state.local_records().snapshot() {
        let Some(name) = key.strip_prefix(&prefix) else {
            continue;
        };
        let programmed = view.programmed.get(name);
        let identity = assignments
            .get(&layout.endpoint_identity(state.node(), name))
            .and_then(|a| a.identity)
            .map(|i| i.0);
        let flags = programmed.map(|p| p.info.flags).unwrap_or(0);
        out.push(EndpointView {
            name: name.to_string(),
            container_id: states.get(name).map(|s| s.container_id.clone()),
            interface: record.interface.clone().unwrap_or_default(),
            ifindex: programmed.map(|p| p.ifindex),
            identity,
            addresses: record.addresses.clone(),
            labels: record.labels.clone(),
            enforced: programmed.is_some(),
            ingress_enforced: flags & endpoint_flags::INGRESS_ENFORCED != 0,
            egress_enforced: flags & endpoint_flags::EGRESS_ENFORCED != 0,
            policy_audit_mode: flags & endpoint_flags::AUDIT != 0,
        });
    }
    out
}

pub fn ipcache(maps: &MapReader) -> Result<Vec<IpcacheEntry>, ApiError> {
    let mut out: Vec<IpcacheEntry> = maps
        .ipcache_entries()
        .map_err(map_failure)?
        .into_iter()
        .map(|(net, v)| IpcacheEntry {
            prefix: net.to_string(),
            identity: v.identity,
        })
        .collect();
    out.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    Ok(out)
}

/// The policy entries of an endpoint, named by its endpoint name or its
/// number (the first field of its policy keys).
pub fn policy(
    view: &DatapathView,
    maps: &MapReader,
    endpoint: &str,
) -> Result<Vec<PolicyEntry>, ApiError> {
    let id = match view.programmed.get(endpoint) {
        Some(p) => p.info.endpoint_id,
        None => endpoint.parse::<u32>().map_err(|_| {
            ApiError::new(
                cni_code::UNKNOWN_CONTAINER,
                format!("no enforced endpoint {endpoint:?} on this node (give its name or number)"),
                "",
            )
        })?,
    };
    let mut out = Vec::new();
    for (prefix, key, value) in maps.policy_entries().map_err(map_failure)? {
        if key.endpoint_id != id {
            continue;
        }
        out.push(policy_entry(prefix, &key, &value));
    }
    out.sort_by(|a, b| {
        (&a.direction, a.identity, &a.protocol, &a.ports).cmp(&(
            &b.direction,
            b.identity,
            &b.protocol,
            &b.ports,
        ))
    });
    Ok(out)
}

fn policy_entry(
    prefix: u32,
    key: &PolicyKey,
    value: &axoneme_bpf_common::PolicyValue,
) -> PolicyEntry {
    let (protocol, ports) = if prefix <= PolicyKey::EXACT_BITS {
        ("ANY".to_string(), "ANY".to_string())
    } else {
        let port_bits = prefix - PolicyKey::EXACT_BITS - 8;
        let ports = if port_bits == 0 {
            "ANY".to_string()
        } else {
            let start = u32::from(key.dport_host());
            let end = start + (1u32 << (16 - port_bits)) - 1;
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        };
        (protocol_name(key.protocol), ports)
    };
    let proxy_port = u16::from_be(value.proxy_port);
    PolicyEntry {
        direction: if key.direction == direction::INGRESS {
            "ingress".into()
        } else {
            "egress".into()
        },
        identity: key.identity,
        protocol,
        ports,
        verdict: if value.flags & policy_flags::DENY != 0 {
            "deny".into()
        } else if proxy_port != 0 {
            "redirect".into()
        } else {
            "allow".into()
        },
        proxy_port,
        packets: value.packets,
        bytes: value.bytes,
    }
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

pub fn ct(maps: &MapReader) -> Result<Vec<CtEntry>, ApiError> {
    let now = monotonic_ns();
    let mut out = Vec::new();
    for (k, v) in maps.ct_entries().map_err(map_failure)? {
        if v.expires_ns <= now {
            continue;
        }
        let ep = |a: &[u8; 16], port: u16| {
            let ip = address(k.family, a);
            let port = u16::from_be(port);
            match ip {
                IpAddr::V4(_) => format!("{ip}:{port}"),
                IpAddr::V6(_) => format!("[{ip}]:{port}"),
            }
        };
        let state = if v.flags & ct_flags::CLOSING != 0 {
            "closing"
        } else if v.flags & ct_flags::SEEN_REPLY != 0 {
            "established"
        } else {
            "new"
        };
        out.push(CtEntry {
            protocol: protocol_name(k.protocol),
            src: ep(&k.saddr, k.sport),
            dst: ep(&k.daddr, k.dport),
            state: state.into(),
            via: if v.flags & ct_flags::PROXY_UPSTREAM != 0 {
                "proxy-upstream".into()
            } else if v.proxy_port != 0 {
                format!("proxy:{}", u16::from_be(v.proxy_port))
            } else {
                String::new()
            },
            expires_in_s: (v.expires_ns - now) / 1_000_000_000,
            packets: v.packets,
            bytes: v.bytes,
        });
    }
    out.sort_by(|a, b| (&a.src, &a.dst).cmp(&(&b.src, &b.dst)));
    Ok(out)
}

/// Cilium's words for its drop reasons.
pub fn drop_reason_text(reason: u8) -> &'static str {
    match reason {
        drop_reason::DROP_INVALID_SIP => "Invalid source ip",
        drop_reason::DROP_POLICY => "Policy denied",
        drop_reason::DROP_INVALID => "Invalid packet",
        drop_reason::DROP_CT_INVALID_HDR => "CT: Invalid header",
        drop_reason::DROP_UNKNOWN_L3 => "Unknown L3 target address",
        drop_reason::DROP_NO_ENDPOINT => "No endpoint (not enforced yet)",
        drop_reason::DROP_CT_CREATE_FAILED => "CT: Map insertion failed",
        drop_reason::DROP_INVALID_EXTHDR => "Invalid IPv6 extension header",
        drop_reason::DROP_FRAG_NOT_FOUND => "Fragmentation needed / first fragment not seen",
        drop_reason::DROP_POLICY_DENY => "Policy denied by denylist",
        drop_reason::DROP_UNENCRYPTED => "Traffic is unencrypted",
        drop_reason::DROP_NO_SERVICE => "Service backend not found",
        drop_reason::DROP_WRITE_ERROR => "Failed to write into packet",
        _ => "",
    }
}

/// An event as the API and the log show it.
pub fn event(e: &Event, time_ms: u64) -> EventView {
    EventView {
        time_ms,
        kind: match e.kind {
            event_kind::DROP => "drop",
            event_kind::TRACE => "trace",
            event_kind::POLICY_VERDICT => "policy-verdict",
            _ => "other",
        }
        .into(),
        reason: e.reason,
        reason_text: match e.kind {
            event_kind::DROP => drop_reason_text(e.reason).into(),
            event_kind::TRACE => trace_point::name(e.reason).into(),
            _ => String::new(),
        },
        verdict: match e.verdict {
            verdict::ALLOWED => "allowed",
            verdict::DENIED => "denied",
            verdict::REDIRECTED => "redirected",
            verdict::AUDIT => "audit",
            _ => "",
        }
        .into(),
        direction: if e.direction == direction::INGRESS {
            "ingress".into()
        } else {
            "egress".into()
        },
        src_identity: e.src_identity,
        dst_identity: e.dst_identity,
        src: address(e.family, &e.saddr).to_string(),
        dst: address(e.family, &e.daddr).to_string(),
        protocol: protocol_name(e.protocol),
        sport: u16::from_be(e.sport),
        dport: u16::from_be(e.dport),
        ifindex: e.ifindex,
        match_type: match_type::name(e.match_type).into(),
        http: None,
    }
}

/// One request the L7 proxy judged, kept compact (the ring takes one per
/// request: building an [`EventView`] here would cost a dozen
/// allocations; it is built when the API asks).
#[derive(Debug, Clone)]
pub struct HttpEvent {
    pub time_ms: u64,
    pub verdict: crate::l7proxy::Verdict,
    /// Whose rules: the destination's (ingress) or the source's (egress).
    pub direction: axoneme_policy::compile::Direction,
    pub src: (std::net::SocketAddr, u32),
    pub dst: (std::net::SocketAddr, u32),
    /// Method, path and host, in one allocation.
    pub request: crate::l7proxy::event::RequestText,
    pub status: u16,
    pub latency_us: u64,
}

impl From<&HttpEvent> for EventView {
    fn from(e: &HttpEvent) -> Self {
        EventView {
            time_ms: e.time_ms,
            kind: "http".into(),
            reason: 0,
            reason_text: String::new(),
            verdict: e.verdict.as_str().into(),
            direction: crate::l7proxy::event::direction_name(e.direction).into(),
            src_identity: e.src.1,
            dst_identity: e.dst.1,
            src: e.src.0.ip().to_string(),
            dst: e.dst.0.ip().to_string(),
            protocol: "TCP".into(),
            sport: e.src.0.port(),
            dport: e.dst.0.port(),
            ifindex: 0,
            match_type: "L7".into(),
            http: Some(axoneme_api::HttpInfo {
                method: e.request.method().into(),
                path: e.request.path().into(),
                host: e.request.host().into(),
                status: e.status,
                latency_us: e.latency_us,
            }),
        }
    }
}

enum Recorded {
    Datapath(EventView),
    Http(HttpEvent),
}

/// The agent's most recent events (datapath and L7), shared by the event
/// task, the proxy and the API; every event recorded also goes to the flow
/// pipeline ([`crate::observe`]) when Hubble is on.
#[derive(Clone, Default)]
pub struct EventRing {
    recent: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Recorded>>>,
    flows: crate::observe::FlowSink,
}

impl EventRing {
    /// Events kept for `axoneme events`.
    pub const CAPACITY: usize = 4096;

    /// A ring that also feeds `flows`.
    pub fn with_flows(flows: crate::observe::FlowSink) -> Self {
        EventRing {
            recent: Default::default(),
            flows,
        }
    }

    fn record(&self, e: Recorded) {
        let mut q = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == Self::CAPACITY {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// A datapath event, as read (`event`) and as shown (`view`).
    pub fn push(&self, event: &Event, view: EventView) {
        self.flows.send(crate::observe::FlowEvent::Datapath {
            event: *event,
            time_ms: view.time_ms,
        });
        self.record(Recorded::Datapath(view));
    }

    pub fn push_http(&self, e: HttpEvent) {
        self.flows.send(crate::observe::FlowEvent::Http(e.clone()));
        self.record(Recorded::Http(e));
    }

    /// Oldest first.
    pub fn snapshot(&self) -> Vec<EventView> {
        let q = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        q.iter()
            .map(|e| match e {
                Recorded::Datapath(v) => v.clone(),
                Recorded::Http(h) => h.into(),
            })
            .collect()
    }
}
