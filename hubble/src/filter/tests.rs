//! Hubble's filter semantics, table-driven: within a field any value,
//! across fields all, across whitelist filters any, blacklist excludes.

use super::*;
use crate::flow::{
    CiliumEventType, Endpoint, EventTypeFilter, Flow, FlowFilter, Http, Ip, IpVersion, Layer4,
    Layer7, Tcp, TrafficDirection, Udp, Verdict,
};

fn endpoint(ns: &str, pod: &str, identity: u32, labels: &[&str]) -> Endpoint {
    Endpoint {
        id: 0,
        identity,
        namespace: ns.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        pod_name: pod.into(),
        workloads: vec![],
    }
}

/// The intruder's denied probe of payments (a drop at ingress).
fn drop_flow() -> Flow {
    Flow {
        uuid: "u-drop".into(),
        verdict: Verdict::Dropped as i32,
        ip: Some(Ip {
            source: "10.1.1.7".into(),
            destination: "10.1.0.5".into(),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 40000,
                destination_port: 8080,
                flags: None,
            })),
        }),
        source: Some(endpoint("default", "intruder", 300, &["k8s:app=intruder"])),
        destination: Some(endpoint(
            "default",
            "payments-0",
            200,
            &["k8s:app=payments"],
        )),
        node_name: "node-1".into(),
        event_type: Some(CiliumEventType {
            r#type: 1,
            sub_type: 133,
        }),
        traffic_direction: TrafficDirection::Ingress as i32,
        ..Default::default()
    }
}

/// checkout's GET refused by an L7 rule (403).
fn http_flow() -> Flow {
    Flow {
        uuid: "u-http".into(),
        verdict: Verdict::Dropped as i32,
        ip: Some(Ip {
            source: "fd00::3".into(),
            destination: "fd00::5".into(),
            ip_version: IpVersion::IPv6 as i32,
            encrypted: false,
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 41000,
                destination_port: 8080,
                flags: None,
            })),
        }),
        source: Some(endpoint("shop", "checkout-7f", 100, &["k8s:app=checkout"])),
        destination: Some(endpoint(
            "default",
            "payments-0",
            200,
            &["k8s:app=payments"],
        )),
        node_name: "node-0".into(),
        l7: Some(Layer7 {
            r#type: 2,
            latency_ns: 1000,
            record: Some(layer7::Record::Http(Http {
                code: 403,
                method: "GET".into(),
                url: "http://payments:8080/v1/refund?id=3".into(),
                protocol: "HTTP/1.1".into(),
                headers: vec![],
            })),
        }),
        event_type: Some(CiliumEventType {
            r#type: 129,
            sub_type: 0,
        }),
        traffic_direction: TrafficDirection::Ingress as i32,
        is_reply: Some(pbjson_types::BoolValue { value: false }),
        ..Default::default()
    }
}

/// A forwarded DNS-port UDP flow from a pod without a namespace.
fn udp_flow() -> Flow {
    Flow {
        uuid: "u-udp".into(),
        verdict: Verdict::Forwarded as i32,
        ip: Some(Ip {
            source: "10.1.0.9".into(),
            destination: "10.1.1.2".into(),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Udp(Udp {
                source_port: 5353,
                destination_port: 53,
            })),
        }),
        source: Some(endpoint("", "", 2, &["reserved:world"])),
        destination: Some(endpoint("kube-system", "dns-1", 400, &["k8s:app=dns"])),
        node_name: "node-1".into(),
        event_type: Some(CiliumEventType {
            r#type: 5,
            sub_type: 0,
        }),
        traffic_direction: TrafficDirection::Egress as i32,
        ..Default::default()
    }
}

fn ff(f: impl FnOnce(&mut FlowFilter)) -> FlowFilter {
    let mut x = FlowFilter::default();
    f(&mut x);
    x
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Which of (drop, http, udp) one filter keeps.
#[test]
fn each_field_matches_as_hubble_does() {
    let flows = [drop_flow(), http_flow(), udp_flow()];
    let cases: Vec<(&str, FlowFilter, [bool; 3])> = vec![
        ("empty filter", ff(|_| {}), [true, true, true]),
        (
            "uuid",
            ff(|f| f.uuid = s(&["u-http"])),
            [false, true, false],
        ),
        (
            "source_ip exact",
            ff(|f| f.source_ip = s(&["10.1.1.7"])),
            [true, false, false],
        ),
        (
            "source_ip cidr",
            ff(|f| f.source_ip = s(&["10.1.0.0/16"])),
            [true, false, true],
        ),
        (
            "destination_ip v6 cidr",
            ff(|f| f.destination_ip = s(&["fd00::/64"])),
            [false, true, false],
        ),
        (
            "source_pod ns/prefix",
            ff(|f| f.source_pod = s(&["default/intr"])),
            [true, false, false],
        ),
        (
            "source_pod other ns",
            ff(|f| f.source_pod = s(&["shop/intr"])),
            [false, false, false],
        ),
        (
            "source_pod namespace only",
            ff(|f| f.source_pod = s(&["shop/"])),
            [false, true, false],
        ),
        (
            "source_pod without ns matches only no-namespace pods",
            ff(|f| f.source_pod = s(&["intruder"])),
            [false, false, false],
        ),
        (
            "destination_pod any of",
            ff(|f| f.destination_pod = s(&["default/pay", "kube-system/dns"])),
            [true, true, true],
        ),
        (
            "source_label",
            ff(|f| f.source_label = s(&["app=intruder"])),
            [true, false, false],
        ),
        (
            "source_label with source",
            ff(|f| f.source_label = s(&["reserved:world"])),
            [false, false, true],
        ),
        (
            "destination_label in",
            ff(|f| f.destination_label = s(&["app in (dns, nothing)"])),
            [false, false, true],
        ),
        (
            "verdict",
            ff(|f| f.verdict = vec![Verdict::Dropped as i32]),
            [true, true, false],
        ),
        (
            "traffic_direction",
            ff(|f| f.traffic_direction = vec![TrafficDirection::Egress as i32]),
            [false, false, true],
        ),
        (
            "event_type type",
            ff(|f| {
                f.event_type = vec![EventTypeFilter {
                    r#type: 1,
                    match_sub_type: false,
                    sub_type: 0,
                }]
            }),
            [true, false, false],
        ),
        (
            "event_type sub_type",
            ff(|f| {
                f.event_type = vec![EventTypeFilter {
                    r#type: 1,
                    match_sub_type: true,
                    sub_type: 181,
                }]
            }),
            [false, false, false],
        ),
        (
            "http_status_code class",
            ff(|f| f.http_status_code = s(&["4+"])),
            [false, true, false],
        ),
        (
            "http_status_code exact miss",
            ff(|f| f.http_status_code = s(&["404"])),
            [false, false, false],
        ),
        (
            "protocol tcp",
            ff(|f| f.protocol = s(&["TCP"])),
            [true, true, false],
        ),
        (
            "protocol http",
            ff(|f| f.protocol = s(&["http"])),
            [false, true, false],
        ),
        (
            "protocol udp or http",
            ff(|f| f.protocol = s(&["udp", "http"])),
            [false, true, true],
        ),
        (
            "destination_port",
            ff(|f| f.destination_port = s(&["53"])),
            [false, false, true],
        ),
        (
            "source_port",
            ff(|f| f.source_port = s(&["40000"])),
            [true, false, false],
        ),
        (
            "reply false: unknown does not match",
            ff(|f| f.reply = vec![false]),
            [false, true, false],
        ),
        (
            "source_identity",
            ff(|f| f.source_identity = vec![300, 2]),
            [true, false, true],
        ),
        (
            "destination_identity",
            ff(|f| f.destination_identity = vec![200]),
            [true, true, false],
        ),
        (
            "http_method",
            ff(|f| f.http_method = s(&["get"])),
            [false, true, false],
        ),
        (
            "http_path regex on the path only",
            ff(|f| f.http_path = s(&["^/v1/ref"])),
            [false, true, false],
        ),
        (
            "http_path does not see the query",
            ff(|f| f.http_path = s(&["id=3"])),
            [false, false, false],
        ),
        (
            "node_name glob",
            ff(|f| f.node_name = s(&["node-*1"])),
            [true, false, true],
        ),
        (
            "ip_version",
            ff(|f| f.ip_version = vec![IpVersion::IPv6 as i32]),
            [false, true, false],
        ),
        (
            "service: no flow carries one",
            ff(|f| f.destination_service = s(&["default/payments"])),
            [false, false, false],
        ),
        (
            "fields AND",
            ff(|f| {
                f.verdict = vec![Verdict::Dropped as i32];
                f.protocol = s(&["http"]);
            }),
            [false, true, false],
        ),
    ];
    for (name, filter, want) in cases {
        let c = compile(&filter).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = [
            c.matches(&flows[0]),
            c.matches(&flows[1]),
            c.matches(&flows[2]),
        ];
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn whitelists_or_and_blacklists_subtract() {
    let flows = [drop_flow(), http_flow(), udp_flow()];
    let dropped = ff(|f| f.verdict = vec![Verdict::Dropped as i32]);
    let udp = ff(|f| f.protocol = s(&["udp"]));
    let http = ff(|f| f.protocol = s(&["http"]));
    type Case = (&'static str, Vec<FlowFilter>, Vec<FlowFilter>, [bool; 3]);
    let cases: Vec<Case> = vec![
        ("nothing", vec![], vec![], [true, true, true]),
        (
            "white any",
            vec![dropped.clone(), udp.clone()],
            vec![],
            [true, true, true],
        ),
        ("white one", vec![udp.clone()], vec![], [false, false, true]),
        (
            "black only",
            vec![],
            vec![http.clone()],
            [true, false, true],
        ),
        (
            "white - black",
            vec![dropped.clone()],
            vec![http.clone()],
            [true, false, false],
        ),
        ("black any", vec![], vec![http, udp], [true, false, false]),
    ];
    for (name, white, black, want) in cases {
        let f = Filters::new(&white, &black).unwrap();
        let got = [
            f.matches(&flows[0]),
            f.matches(&flows[1]),
            f.matches(&flows[2]),
        ];
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn bad_filters_name_the_field_and_value() {
    let cases: Vec<(FlowFilter, &str)> = vec![
        (
            ff(|f| f.source_ip = s(&["10.1.1.300"])),
            "invalid filter source_ip \"10.1.1.300\": not an IP address or CIDR",
        ),
        (
            ff(|f| f.source_pod = s(&["/"])),
            "source_pod \"/\": must be [namespace/][<name>]",
        ),
        (
            ff(|f| f.http_status_code = s(&["9+"])),
            "http_status_code \"9+\"",
        ),
        (
            ff(|f| f.http_status_code = s(&["abc"])),
            "http_status_code \"abc\"",
        ),
        (
            ff(|f| f.protocol = s(&["quic"])),
            "protocol \"quic\": known: tcp",
        ),
        (
            ff(|f| f.destination_port = s(&["70000"])),
            "destination_port \"70000\"",
        ),
        (ff(|f| f.http_path = s(&["(["])), "http_path \"([\""),
        (
            ff(|f| f.source_label = s(&["app in (x"])),
            "source_label \"app in (x\": unbalanced",
        ),
        (
            ff(|f| f.dns_query = s(&["x"])),
            "dns_query \"\": not supported",
        ),
    ];
    for (filter, want) in cases {
        let e = match compile(&filter) {
            Ok(_) => panic!("{want}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "{e} does not contain {want}");
    }
}

#[test]
fn url_paths() {
    assert_eq!(url_path("http://h:1/a/b?x#y"), "/a/b");
    assert_eq!(url_path("http://h"), "/");
    assert_eq!(url_path("/a?q"), "/a");
}

#[test]
fn flows_print_as_hubble_json() {
    let v = serde_json::to_value(drop_flow()).unwrap();
    assert_eq!(v["verdict"], "DROPPED");
    assert_eq!(v["source"]["pod_name"], "intruder");
    assert_eq!(v["IP"]["ipVersion"], "IPv4");
    assert_eq!(v["l4"]["TCP"]["destination_port"], 8080);
    assert_eq!(v["traffic_direction"], "INGRESS");
    let back: Flow = serde_json::from_value(v).unwrap();
    assert_eq!(back, drop_flow());
}
