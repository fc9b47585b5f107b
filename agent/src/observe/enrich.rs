//! Datapath events and L7 requests as Hubble flows, with both ends
//! enriched: the identity's labels (from the identity cache) and, for
//! addresses that are endpoints anywhere in the cluster, the pod's name
//! and namespace (from the endpoint records every agent watches).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axoneme_bpf_common::{direction, event_kind, family, match_type, trace_point, verdict, Event};
use axoneme_hubble::flow::{
    layer4, layer7, CiliumEventType, DropReason, Endpoint, Flow, FlowType, Http, IcmPv4, IcmPv6,
    Ip, IpVersion, L7FlowType, Layer4, Layer7, NetworkInterface, Sctp, Tcp, TraceObservationPoint,
    TrafficDirection, Udp, Verdict,
};
use axoneme_hubble::message_type;
use axoneme_identity::{Layout, NumericIdentity, PeerEndpoint};

use super::FlowEvent;
use crate::l7proxy::Verdict as L7Verdict;
use crate::node::NodeState;
use crate::views::{self, HttpEvent};

/// A pod as flows name it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pod {
    namespace: String,
    name: String,
}

/// Turns events into flows; owned by the observer task.
pub struct Enricher {
    state: NodeState,
    /// Endpoint address → its record's key, rebuilt after the records
    /// change (a record's addresses share one key).
    pods: HashMap<IpAddr, Arc<str>>,
    stale: bool,
    /// Flow ends already built, by address and identity: an identity's
    /// labels are formatted once, not per flow. Emptied with the index.
    ends: HashMap<(IpAddr, u32), Endpoint>,
}

/// Flow ends kept at most; the cache starts over beyond it.
const ENDS_CACHED: usize = 4096;

impl Enricher {
    pub fn new(state: NodeState) -> Self {
        Enricher {
            state,
            pods: HashMap::new(),
            stale: true,
            ends: HashMap::new(),
        }
    }

    /// Changes to the endpoint records and to the identities: call
    /// [`Self::invalidate`] on each.
    pub fn subscribe(&self) -> Changes {
        Changes {
            records: self.state.records().subscribe(),
            identities: self.state.identities().subscribe(),
        }
    }

    pub fn invalidate(&mut self) {
        self.stale = true;
        self.ends.clear();
    }

    fn pod(&mut self, ip: IpAddr) -> Option<Pod> {
        if self.stale {
            self.pods = self.state.records().read(index);
            self.stale = false;
        }
        let key = self.pods.get(&ip)?;
        let record = self.state.records().get(key)?;
        Some(pod(self.state.layout(), key, &record))
    }

    fn endpoint(&mut self, ip: IpAddr, identity: u32) -> Endpoint {
        // A node's identity follows its labels, which these changes do
        // not cover: built each time.
        if NumericIdentity(identity).is_node_scope() {
            return self.build_endpoint(ip, identity);
        }
        if let Some(end) = self.ends.get(&(ip, identity)) {
            return end.clone();
        }
        if self.ends.len() >= ENDS_CACHED {
            self.ends.clear();
        }
        let end = self.build_endpoint(ip, identity);
        self.ends.insert((ip, identity), end.clone());
        end
    }

    fn build_endpoint(&mut self, ip: IpAddr, identity: u32) -> Endpoint {
        let labels = self
            .state
            .labels_of(NumericIdentity(identity))
            .map(|l| l.to_strings())
            .unwrap_or_default();
        let (namespace, pod_name) = self
            .pod(ip)
            .map(|p| (p.namespace, p.name))
            .unwrap_or_default();
        Endpoint {
            id: 0,
            identity,
            namespace,
            labels,
            pod_name,
            workloads: Vec::new(),
        }
    }

    pub fn flow(&mut self, e: &FlowEvent) -> Flow {
        match e {
            FlowEvent::Datapath { event, time_ms } => self.datapath(event, *time_ms),
            FlowEvent::Http(h) => self.http(h),
        }
    }

    fn datapath(&mut self, e: &Event, time_ms: u64) -> Flow {
        let (src, dst) = (
            views::address(e.family, &e.saddr),
            views::address(e.family, &e.daddr),
        );
        let (sport, dport) = (u16::from_be(e.sport), u16::from_be(e.dport));
        let (flow_verdict, event_type, reason) = match (e.kind, e.verdict) {
            (event_kind::DROP, _) => (Verdict::Dropped, message_type::DROP, e.reason),
            // As Hubble reads a trace: to the proxy is redirected.
            (event_kind::TRACE, _) if e.reason == trace_point::TO_PROXY => {
                (Verdict::Redirected, message_type::TRACE, 0)
            }
            (event_kind::TRACE, _) => (Verdict::Forwarded, message_type::TRACE, 0),
            (_, verdict::DENIED) => (
                Verdict::Dropped,
                message_type::POLICY_VERDICT,
                axoneme_bpf_common::drop_reason::DROP_POLICY,
            ),
            (_, verdict::REDIRECTED) => (Verdict::Redirected, message_type::POLICY_VERDICT, 0),
            (_, verdict::AUDIT) => (Verdict::Audit, message_type::POLICY_VERDICT, 0),
            _ => (Verdict::Forwarded, message_type::POLICY_VERDICT, 0),
        };
        let protocol = views::protocol_name(e.protocol);
        let trace = (event_type == message_type::TRACE).then_some(e.reason);
        let summary = match (flow_verdict, trace) {
            (_, Some(point)) => format!("{protocol} {}", trace_point::name(point)),
            (Verdict::Dropped, _) => format!("{protocol} {}", views::drop_reason_text(reason)),
            _ => format!(
                "{protocol} policy verdict ({})",
                match_type::name(e.match_type)
            ),
        };
        Flow {
            time: Some(axoneme_hubble::timestamp_ms(time_ms)),
            uuid: uuid::Uuid::new_v4().to_string(),
            verdict: flow_verdict as i32,
            drop_reason: u32::from(reason),
            ip: Some(ip(src, dst, e.family == family::IPV6)),
            l4: l4(e.protocol, sport, dport),
            source: Some(self.endpoint(src, e.src_identity)),
            destination: Some(self.endpoint(dst, e.dst_identity)),
            r#type: FlowType::L3L4 as i32,
            node_name: self.state.node().to_string(),
            event_type: Some(CiliumEventType {
                r#type: event_type,
                sub_type: match trace {
                    Some(point) => i32::from(point),
                    None if event_type == message_type::DROP => i32::from(reason),
                    None => 0,
                },
            }),
            trace_observation_point: trace
                .map_or(TraceObservationPoint::UnknownPoint, observation_point)
                as i32,
            traffic_direction: if e.direction == direction::INGRESS {
                TrafficDirection::Ingress
            } else {
                TrafficDirection::Egress
            } as i32,
            policy_match_type: if event_type == message_type::POLICY_VERDICT {
                u32::from(e.match_type)
            } else {
                0
            },
            // A reason this Hubble API does not name would fail every
            // client's decoding of the whole stream: reported as unknown.
            drop_reason_desc: DropReason::try_from(i32::from(reason)).unwrap_or(DropReason::Unknown)
                as i32,
            interface: Some(NetworkInterface {
                index: e.ifindex,
                name: String::new(),
            }),
            summary,
            ..Default::default()
        }
    }

    fn http(&mut self, h: &HttpEvent) -> Flow {
        let (src, dst): (SocketAddr, SocketAddr) = (h.src.0, h.dst.0);
        let v = match h.verdict {
            L7Verdict::Forwarded => Verdict::Forwarded,
            L7Verdict::Denied | L7Verdict::Malformed => Verdict::Dropped,
            L7Verdict::UpstreamError => Verdict::Error,
        };
        let url = format!("http://{}{}", h.request.host(), h.request.path());
        let summary = format!("HTTP/1.1 {} {} {}", h.request.method(), url, h.status);
        Flow {
            time: Some(axoneme_hubble::timestamp_ms(h.time_ms)),
            uuid: uuid::Uuid::new_v4().to_string(),
            verdict: v as i32,
            ip: Some(ip(src.ip(), dst.ip(), src.is_ipv6())),
            l4: l4(6, src.port(), dst.port()),
            source: Some(self.endpoint(src.ip(), h.src.1)),
            destination: Some(self.endpoint(dst.ip(), h.dst.1)),
            r#type: FlowType::L7 as i32,
            node_name: self.state.node().to_string(),
            l7: Some(Layer7 {
                r#type: L7FlowType::Response as i32,
                latency_ns: h.latency_us.saturating_mul(1000),
                record: Some(layer7::Record::Http(Http {
                    code: u32::from(h.status),
                    method: h.request.method().to_string(),
                    url,
                    protocol: "HTTP/1.1".into(),
                    headers: Vec::new(),
                })),
            }),
            event_type: Some(CiliumEventType {
                r#type: message_type::ACCESS_LOG,
                sub_type: 0,
            }),
            traffic_direction: match crate::l7proxy::event::direction_name(h.direction) {
                "ingress" => TrafficDirection::Ingress,
                _ => TrafficDirection::Egress,
            } as i32,
            is_reply: Some(axoneme_hubble::BoolValue { value: false }),
            summary,
            ..Default::default()
        }
    }
}

/// What makes an [`Enricher`]'s caches stale.
pub struct Changes {
    records: axoneme_identity::Subscription<PeerEndpoint>,
    identities: axoneme_identity::Subscription<axoneme_identity::PeerIdentity>,
}

impl Changes {
    /// The next change of either.
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.records.recv() => {}
            _ = self.identities.recv() => {}
        }
    }
}

/// Hubble's observation point of a datapath trace point (Cilium's
/// `TRACE_TO_LXC`, 0, is `TO_ENDPOINT`, 101).
fn observation_point(point: u8) -> TraceObservationPoint {
    match point {
        trace_point::TO_ENDPOINT => TraceObservationPoint::ToEndpoint,
        trace_point::TO_PROXY => TraceObservationPoint::ToProxy,
        trace_point::FROM_ENDPOINT => TraceObservationPoint::FromEndpoint,
        _ => TraceObservationPoint::UnknownPoint,
    }
}

/// A flow's type and the event it came from, as metric labels.
pub fn kind(f: &Flow) -> (&'static str, &'static str) {
    let subtype = match f.event_type.as_ref().map(|e| (e.r#type, e.sub_type)) {
        Some((message_type::TRACE, point)) => {
            trace_point::name(u8::try_from(point).unwrap_or(u8::MAX))
        }
        Some((message_type::DROP, _)) => "drop",
        Some((message_type::POLICY_VERDICT, _)) => "policy-verdict",
        Some((message_type::ACCESS_LOG, _)) => "http",
        _ => "other",
    };
    let kind = if f.r#type == FlowType::L7 as i32 {
        "L7"
    } else {
        "L3_L4"
    };
    (kind, subtype)
}

/// A flow's verdict's name (`DROPPED`, ...).
pub fn verdict_name(f: &Flow) -> &'static str {
    Verdict::try_from(f.verdict).map_or("VERDICT_UNKNOWN", |v| v.as_str_name())
}

/// Address → pod over every endpoint record; addresses given with a
/// prefix length (`10.0.0.5/32`) count by their address.
fn index(records: &BTreeMap<String, Arc<PeerEndpoint>>) -> HashMap<IpAddr, Arc<str>> {
    let mut pods = HashMap::new();
    for (key, r) in records {
        let key: Arc<str> = Arc::from(key.as_str());
        for ip in &r.addresses {
            pods.insert(*ip, key.clone());
        }
    }
    pods
}

/// The pod of the record at `key`; without a pod name, the endpoint's
/// name (its key's last segment) stands in.
fn pod(layout: &Layout, key: &str, r: &PeerEndpoint) -> Pod {
    let name = match (&r.pod_name, layout.split_endpoint_key(key)) {
        (Some(pod), _) => pod.to_string(),
        (None, Some((_, endpoint))) => endpoint.to_string(),
        (None, None) => key.to_string(),
    };
    Pod {
        namespace: r.namespace.as_deref().unwrap_or_default().to_string(),
        name,
    }
}

fn ip(src: IpAddr, dst: IpAddr, v6: bool) -> Ip {
    Ip {
        source: src.to_string(),
        destination: dst.to_string(),
        ip_version: if v6 { IpVersion::IPv6 } else { IpVersion::IPv4 } as i32,
        encrypted: false,
    }
}

fn l4(protocol: u8, sport: u16, dport: u16) -> Option<Layer4> {
    let (s, d) = (u32::from(sport), u32::from(dport));
    let p = match protocol {
        6 => layer4::Protocol::Tcp(Tcp {
            source_port: s,
            destination_port: d,
            flags: None,
        }),
        17 => layer4::Protocol::Udp(Udp {
            source_port: s,
            destination_port: d,
        }),
        132 => layer4::Protocol::Sctp(Sctp {
            source_port: s,
            destination_port: d,
        }),
        1 => layer4::Protocol::IcmPv4(IcmPv4 { r#type: 0, code: 0 }),
        58 => layer4::Protocol::IcmPv6(IcmPv6 { r#type: 0, code: 0 }),
        _ => return None,
    };
    Some(Layer4 { protocol: Some(p) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_the_datapath_reports_has_a_text_and_a_hubble_name() {
        for reason in axoneme_bpf_common::drop_reason::ALL {
            assert!(!views::drop_reason_text(reason).is_empty(), "{reason}");
            let hubble = DropReason::try_from(i32::from(reason));
            assert!(hubble.is_ok(), "{reason} is not in flow.proto's DropReason");
        }
    }

    #[test]
    fn the_pod_index_takes_every_address_of_every_record() {
        use axoneme_identity::EndpointRecord;
        let layout = Layout::default();
        let rec = |id: &str, ns: Option<&str>, pod: Option<&str>, addrs: &[&str]| {
            let r = EndpointRecord {
                id: id.into(),
                node: "n".into(),
                labels: vec![],
                addresses: addrs.iter().map(|a| a.to_string()).collect(),
                namespace: ns.map(Into::into),
                interface: None,
                pod_name: pod.map(Into::into),
                pod_uid: None,
                named_ports: Default::default(),
                policy_audit_mode: false,
            };
            (layout.endpoint("n", id), Arc::new(PeerEndpoint::from(&r)))
        };
        let records: BTreeMap<_, _> = [
            rec(
                "c1",
                Some("shop"),
                Some("checkout"),
                &["10.1.0.5", "fd00::5/128"],
            ),
            rec("c2", None, None, &["10.1.0.6/32", "bogus"]),
        ]
        .into();
        let idx = index(&records);
        let pod_at = |ip: &str| {
            let key = &idx[&ip.parse::<IpAddr>().unwrap()];
            pod(&layout, key, &records[&**key])
        };
        let shop = Pod {
            namespace: "shop".into(),
            name: "checkout".into(),
        };
        assert_eq!(pod_at("10.1.0.5"), shop);
        assert_eq!(pod_at("fd00::5"), shop);
        // Without a pod name, the endpoint's name stands in.
        assert_eq!(pod_at("10.1.0.6").name, "c2");
        assert_eq!(idx.len(), 3);
    }

    #[test]
    fn ports_and_protocols_map_to_hubble_layer4() {
        assert!(matches!(
            l4(6, 1, 2).unwrap().protocol,
            Some(layer4::Protocol::Tcp(Tcp {
                source_port: 1,
                destination_port: 2,
                ..
            }))
        ));
        assert!(matches!(
            l4(17, 1, 2).unwrap().protocol,
            Some(layer4::Protocol::Udp(_))
        ));
        assert!(matches!(
            l4(58, 0, 0).unwrap().protocol,
            Some(layer4::Protocol::IcmPv6(_))
        ));
        assert!(l4(47, 0, 0).is_none());
    }
}
