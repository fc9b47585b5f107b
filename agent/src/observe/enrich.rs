//! Datapath events and L7 requests as Hubble flows, with both ends
//! enriched: the identity's labels (from the identity cache) and, for
//! addresses that are endpoints anywhere in the cluster, the pod's name
//! and namespace (from the endpoint records every agent watches).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axoneme_bpf_common::{direction, event_kind, family, match_type, trace_point, verdict, Event};
use axoneme_hubble::flow::{
    layer4, layer7, CiliumEventType, DropReason, Endpoint, Flow, FlowType, Http, IcmPv4, IcmPv6,
    Ip, IpVersion, L7FlowType, Layer4, Layer7, NetworkInterface, Sctp, Tcp, TraceObservationPoint,
    TrafficDirection, Udp, Verdict,
};
use axoneme_hubble::message_type;
use axoneme_identity::{Layout, NumericIdentity, PeerEndpoint};
use axoneme_policy::compile::Direction;

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

/// Turns events into [`Record`]s; owned by the observer task.
pub struct Enricher {
    state: NodeState,
    node: Arc<str>,
    /// Endpoint address → its record's key, rebuilt after the records
    /// change (a record's addresses share one key).
    pods: HashMap<IpAddr, Arc<str>>,
    stale: bool,
    /// Flow ends already built, by address and identity: an identity's
    /// labels are formatted once, not per flow. Emptied with the index.
    ends: HashMap<(IpAddr, u32), Arc<Endpoint>>,
}

/// Flow ends kept at most; the cache starts over beyond it.
const ENDS_CACHED: usize = 4096;

/// An event as the ring keeps it: the event itself and both ends as they
/// were when it arrived (an identity's labels, a pod's name), so a flow
/// read later says what was true then. Its Hubble [`Flow`] (formatted
/// addresses, summary, URL, UUID text) is built when first read and kept
/// (boxed: a record nobody reads holds no room for one): events nobody
/// reads cost their copy and two shared ends, not a flow each.
pub struct Record {
    event: FlowEvent,
    header: Header,
    uuid: uuid::Uuid,
    source: Arc<Endpoint>,
    destination: Arc<Endpoint>,
    node: Arc<str>,
    flow: OnceLock<Box<Flow>>,
}

impl Record {
    fn new(event: FlowEvent, ends: (Arc<Endpoint>, Arc<Endpoint>), node: Arc<str>) -> Self {
        Record {
            header: header(&event),
            uuid: uuid::Uuid::new_v4(),
            source: ends.0,
            destination: ends.1,
            node,
            flow: OnceLock::new(),
            event,
        }
    }

    pub fn time_ms(&self) -> u64 {
        match &self.event {
            FlowEvent::Datapath { time_ms, .. } => *time_ms,
            FlowEvent::Http(h) => h.time_ms,
        }
    }

    /// The Hubble flow, built on the first call.
    pub fn flow(&self) -> &Flow {
        self.flow.get_or_init(|| {
            Box::new(match &self.event {
                FlowEvent::Datapath { event, time_ms } => datapath(self, event, *time_ms),
                FlowEvent::Http(h) => http(self, h),
            })
        })
    }

    /// Its flow's type, the event it came from, and its verdict's name, as
    /// metric labels (`L7`, `http`, `FORWARDED`), without building it.
    pub fn labels(&self) -> (&'static str, &'static str, &'static str) {
        let h = &self.header;
        let subtype = match h.event_type {
            message_type::TRACE => trace_point::name(u8::try_from(h.sub_type).unwrap_or(u8::MAX)),
            message_type::DROP => "drop",
            message_type::POLICY_VERDICT => "policy-verdict",
            message_type::ACCESS_LOG => "http",
            _ => "other",
        };
        let kind = match h.flow_type {
            FlowType::L7 => "L7",
            _ => "L3_L4",
        };
        (kind, subtype, h.verdict.as_str_name())
    }

    fn ends(&self) -> (Option<Endpoint>, Option<Endpoint>) {
        (
            Some((*self.source).clone()),
            Some((*self.destination).clone()),
        )
    }

    /// A record whose flow is `flow` as given (tests of the readers).
    #[cfg(test)]
    pub fn built(flow: Flow) -> Self {
        let time_ms = flow
            .time
            .as_ref()
            .map_or(0, axoneme_hubble::timestamp_to_ms);
        Record {
            event: FlowEvent::Datapath {
                event: Event::default(),
                time_ms,
            },
            header: Header {
                verdict: Verdict::try_from(flow.verdict).unwrap_or(Verdict::Unknown),
                event_type: 0,
                sub_type: 0,
                reason: 0,
                flow_type: FlowType::L3L4,
            },
            uuid: uuid::Uuid::nil(),
            source: Arc::default(),
            destination: Arc::default(),
            node: Arc::from(""),
            flow: OnceLock::from(Box::new(flow)),
        }
    }
}

/// What an event is, in Hubble's terms, known without building its flow.
#[derive(Debug, Clone, Copy)]
struct Header {
    verdict: Verdict,
    event_type: i32,
    sub_type: i32,
    /// The datapath's drop reason (0 unless dropped).
    reason: u8,
    flow_type: FlowType,
}

fn header(e: &FlowEvent) -> Header {
    let e = match e {
        FlowEvent::Http(h) => {
            return Header {
                verdict: match h.verdict {
                    L7Verdict::Forwarded => Verdict::Forwarded,
                    L7Verdict::Denied | L7Verdict::Malformed => Verdict::Dropped,
                    L7Verdict::UpstreamError => Verdict::Error,
                },
                event_type: message_type::ACCESS_LOG,
                sub_type: 0,
                reason: 0,
                flow_type: FlowType::L7,
            }
        }
        FlowEvent::Datapath { event, .. } => event,
    };
    let (verdict, event_type, reason) = match (e.kind, e.verdict) {
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
    Header {
        verdict,
        event_type,
        sub_type: match event_type {
            // The trace point.
            message_type::TRACE => i32::from(e.reason),
            message_type::DROP => i32::from(reason),
            _ => 0,
        },
        reason,
        flow_type: FlowType::L3L4,
    }
}

impl Enricher {
    pub fn new(state: NodeState) -> Self {
        Enricher {
            node: Arc::from(state.node()),
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

    fn endpoint(&mut self, ip: IpAddr, identity: u32) -> Arc<Endpoint> {
        // A node's identity follows its labels, which these changes do
        // not cover: built each time.
        if NumericIdentity(identity).is_node_scope() {
            return Arc::new(self.build_endpoint(ip, identity));
        }
        if let Some(end) = self.ends.get(&(ip, identity)) {
            return end.clone();
        }
        if self.ends.len() >= ENDS_CACHED {
            self.ends.clear();
        }
        let end = Arc::new(self.build_endpoint(ip, identity));
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

    /// The event with both ends as they are now.
    pub fn record(&mut self, event: FlowEvent) -> Record {
        let (src, dst) = match &event {
            FlowEvent::Datapath { event: e, .. } => (
                (views::address(e.family, &e.saddr), e.src_identity),
                (views::address(e.family, &e.daddr), e.dst_identity),
            ),
            FlowEvent::Http(h) => ((h.src.0.ip(), h.src.1), (h.dst.0.ip(), h.dst.1)),
        };
        let ends = (self.endpoint(src.0, src.1), self.endpoint(dst.0, dst.1));
        Record::new(event, ends, self.node.clone())
    }
}

fn datapath(r: &Record, e: &Event, time_ms: u64) -> Flow {
    let h = &r.header;
    let (src, dst) = (
        views::address(e.family, &e.saddr),
        views::address(e.family, &e.daddr),
    );
    let (sport, dport) = (u16::from_be(e.sport), u16::from_be(e.dport));
    let protocol = views::protocol_name(e.protocol);
    let trace = (h.event_type == message_type::TRACE).then_some(e.reason);
    let summary = match (h.verdict, trace) {
        (_, Some(point)) => format!("{protocol} {}", trace_point::name(point)),
        (Verdict::Dropped, _) => format!("{protocol} {}", views::drop_reason_text(h.reason)),
        _ => format!(
            "{protocol} policy verdict ({})",
            match_type::name(e.match_type)
        ),
    };
    let (source, destination) = r.ends();
    Flow {
        time: Some(axoneme_hubble::timestamp_ms(time_ms)),
        uuid: r.uuid.to_string(),
        verdict: h.verdict as i32,
        drop_reason: u32::from(h.reason),
        ip: Some(ip(src, dst, e.family == family::IPV6)),
        l4: l4(e.protocol, sport, dport),
        source,
        destination,
        r#type: FlowType::L3L4 as i32,
        node_name: r.node.to_string(),
        event_type: Some(CiliumEventType {
            r#type: h.event_type,
            sub_type: h.sub_type,
        }),
        trace_observation_point: trace
            .map_or(TraceObservationPoint::UnknownPoint, observation_point)
            as i32,
        traffic_direction: if e.direction == direction::INGRESS {
            TrafficDirection::Ingress
        } else {
            TrafficDirection::Egress
        } as i32,
        policy_match_type: if h.event_type == message_type::POLICY_VERDICT {
            u32::from(e.match_type)
        } else {
            0
        },
        // A reason this Hubble API does not name would fail every
        // client's decoding of the whole stream: reported as unknown.
        drop_reason_desc: DropReason::try_from(i32::from(h.reason)).unwrap_or(DropReason::Unknown)
            as i32,
        interface: Some(NetworkInterface {
            index: e.ifindex,
            name: String::new(),
        }),
        summary,
        ..Default::default()
    }
}

fn http(r: &Record, h: &HttpEvent) -> Flow {
    let (src, dst): (SocketAddr, SocketAddr) = (h.src.0, h.dst.0);
    let url = format!("http://{}{}", h.request.host(), h.request.path());
    let summary = format!("HTTP/1.1 {} {} {}", h.request.method(), url, h.status);
    let (source, destination) = r.ends();
    Flow {
        time: Some(axoneme_hubble::timestamp_ms(h.time_ms)),
        uuid: r.uuid.to_string(),
        verdict: r.header.verdict as i32,
        ip: Some(ip(src.ip(), dst.ip(), src.is_ipv6())),
        l4: l4(6, src.port(), dst.port()),
        source,
        destination,
        r#type: FlowType::L7 as i32,
        node_name: r.node.to_string(),
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
        traffic_direction: match h.direction {
            Direction::Ingress => TrafficDirection::Ingress,
            Direction::Egress => TrafficDirection::Egress,
        } as i32,
        is_reply: Some(axoneme_hubble::BoolValue { value: false }),
        summary,
        ..Default::default()
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

    fn end(identity: u32, pod: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            identity,
            pod_name: pod.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_record_builds_its_flow_once_when_read_with_the_labels_it_was_counted_by() {
        let http = HttpEvent {
            time_ms: 1_700_000_000_123,
            verdict: L7Verdict::Denied,
            direction: Direction::Ingress,
            src: ("10.1.0.5:40000".parse().unwrap(), 300),
            dst: ("10.1.0.6:8080".parse().unwrap(), 301),
            request: crate::l7proxy::event::RequestText::new("POST", "/pay?x=1", "payments:8080"),
            status: 403,
            latency_us: 7,
        };
        let r = Record::new(
            FlowEvent::Http(http),
            (end(300, "checkout"), end(301, "payments")),
            Arc::from("n0"),
        );
        assert_eq!(r.labels(), ("L7", "http", "DROPPED"));
        assert_eq!(r.time_ms(), 1_700_000_000_123);
        let f = r.flow();
        assert!(std::ptr::eq(f, r.flow()), "built once");
        assert_eq!(f.verdict, Verdict::Dropped as i32);
        assert_eq!(f.r#type, FlowType::L7 as i32);
        assert_eq!(f.node_name, "n0");
        assert_eq!(f.summary, "HTTP/1.1 POST http://payments:8080/pay?x=1 403");
        assert_eq!(f.traffic_direction, TrafficDirection::Ingress as i32);
        assert_eq!(f.source.as_ref().unwrap().pod_name, "checkout");
        assert_eq!(f.destination.as_ref().unwrap().identity, 301);
        assert_eq!(f.uuid.len(), 36);

        let trace = Event {
            kind: event_kind::TRACE,
            reason: trace_point::TO_PROXY,
            protocol: 6,
            ..Default::default()
        };
        let drop = Event {
            kind: event_kind::DROP,
            reason: axoneme_bpf_common::drop_reason::DROP_POLICY,
            protocol: 17,
            ..Default::default()
        };
        for (event, labels, sub_type) in [
            (
                trace,
                ("L3_L4", trace_point::name(trace_point::TO_PROXY)),
                i32::from(trace_point::TO_PROXY),
            ),
            (
                drop,
                ("L3_L4", "drop"),
                i32::from(axoneme_bpf_common::drop_reason::DROP_POLICY),
            ),
        ] {
            let r = Record::new(
                FlowEvent::Datapath { event, time_ms: 5 },
                (end(1, ""), end(2, "")),
                Arc::from("n0"),
            );
            assert_eq!((r.labels().0, r.labels().1), labels);
            let f = r.flow();
            assert_eq!(
                r.labels().2,
                Verdict::try_from(f.verdict).unwrap().as_str_name()
            );
            assert_eq!(f.event_type.as_ref().unwrap().sub_type, sub_type);
        }
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
