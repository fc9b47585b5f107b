use super::*;
use crate::args::Args;
use crate::args::Command;
use axoneme_hubble::flow::{CiliumEventType, Ip, Layer4, Tcp};

fn observe_args(flags: &[&str]) -> ObserveArgs {
    let mut argv = vec!["axoneme", "observe"];
    argv.extend_from_slice(flags);
    match Args::try_parse_args(argv).unwrap().command {
        Command::Observe(o) => *o,
        _ => unreachable!(),
    }
}

#[test]
fn the_output_flag_goes_anywhere_and_compact_is_one_of_its_values() {
    for argv in [
        vec!["axoneme", "observe", "-o", "compact", "-f"],
        vec!["axoneme", "-o", "compact", "observe"],
    ] {
        assert_eq!(
            Args::try_parse_args(argv).unwrap().output,
            OutputFormat::Compact
        );
    }
    let a = Args::try_parse_args(["axoneme", "monitor", "-o", "json", "--type", "drop"]).unwrap();
    assert_eq!(a.output, OutputFormat::Json);
}

#[test]
fn one_sided_flags_make_one_filter_and_pods_get_the_default_namespace() {
    let r = request(&observe_args(&[
        "--from-pod",
        "intruder",
        "--to-pod",
        "shop/pay",
        "--verdict",
        "dropped",
        "--protocol",
        "tcp",
        "--type",
        "drop",
    ]))
    .unwrap();
    assert_eq!(r.whitelist.len(), 1);
    let f = &r.whitelist[0];
    assert_eq!(f.source_pod, vec!["default/intruder"]);
    assert_eq!(f.destination_pod, vec!["shop/pay"]);
    assert_eq!(f.verdict, vec![Verdict::Dropped as i32]);
    assert_eq!(f.event_type[0].r#type, message_type::DROP);
    // Hubble's default: the last 20.
    assert_eq!((r.number, r.first, r.follow), (20, false, false));
}

#[test]
fn either_side_flags_make_a_source_and_a_destination_filter() {
    let r = request(&observe_args(&[
        "--pod",
        "web",
        "--label",
        "app=web",
        "--verdict",
        "FORWARDED",
    ]))
    .unwrap();
    assert_eq!(r.whitelist.len(), 2);
    let (from, to) = (&r.whitelist[0], &r.whitelist[1]);
    assert_eq!(from.source_pod, vec!["default/web"]);
    assert_eq!(from.source_label, vec!["app=web"]);
    assert!(from.destination_pod.is_empty());
    assert_eq!(to.destination_pod, vec!["default/web"]);
    assert_eq!(to.destination_label, vec!["app=web"]);
    // Both keep the common fields.
    assert_eq!(from.verdict, to.verdict);
}

#[test]
fn follow_and_windows_change_the_number() {
    let r = request(&observe_args(&["-f"])).unwrap();
    assert_eq!((r.number, r.follow), (0, true));
    assert!(r.whitelist.is_empty());
    let r = request(&observe_args(&["--since", "5m"])).unwrap();
    assert_eq!(r.number, 0);
    let since = u128::from(axoneme_hubble::timestamp_to_ms(r.since.as_ref().unwrap()));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(now - since >= 300_000 && now - since < 310_000);
    let r = request(&observe_args(&["--first", "3"])).unwrap();
    assert_eq!((r.number, r.first), (3, true));
    let r = request(&observe_args(&["--since", "2026-12-01T10:00:00Z"])).unwrap();
    assert_eq!(r.since.unwrap().seconds, 1_796_119_200);
}

#[test]
fn bad_flags_fail_before_connecting_naming_what_is_wrong() {
    for (flags, want) in [
        (vec!["--verdict", "MAYBE"], "invalid verdict \"MAYBE\""),
        (vec!["--type", "dns"], "invalid type \"dns\": known: drop"),
        (
            vec!["--from-ip", "10.0.0.300"],
            "invalid filter source_ip \"10.0.0.300\"",
        ),
        (
            vec!["--http-status", "42"],
            "invalid filter http_status_code \"42\"",
        ),
        (
            vec!["--since", "yesterday"],
            "invalid --since \"yesterday\"",
        ),
        (
            vec!["--traffic-direction", "up"],
            "invalid traffic direction \"up\"",
        ),
        (vec!["--first", "2", "-f"], "--first"),
    ] {
        let e = request(&observe_args(&flags)).unwrap_err();
        assert!(e.to_string().contains(want), "{flags:?}: {e}");
        assert_eq!(
            e.exit_code(),
            crate::error::exit::INVALID_INPUT,
            "{flags:?}"
        );
    }
}

fn drop_flow() -> Flow {
    Flow {
        time: Some(axoneme_hubble::timestamp_ms(1_796_119_200_250)),
        verdict: Verdict::Dropped as i32,
        ip: Some(Ip {
            source: "10.1.1.7".into(),
            destination: "10.1.0.5".into(),
            ..Default::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 40000,
                destination_port: 8080,
                flags: None,
            })),
        }),
        source: Some(Endpoint {
            identity: 300,
            namespace: "default".into(),
            pod_name: "intruder".into(),
            ..Default::default()
        }),
        destination: Some(Endpoint {
            identity: 200,
            ..Default::default()
        }),
        node_name: "n1".into(),
        event_type: Some(CiliumEventType {
            r#type: 1,
            sub_type: 133,
        }),
        drop_reason_desc: DropReason::PolicyDenied as i32,
        traffic_direction: TrafficDirection::Ingress as i32,
        summary: "TCP Policy denied".into(),
        ..Default::default()
    }
}

#[test]
fn flows_print_as_hubble_and_cilium_monitor_do() {
    let f = drop_flow();
    assert_eq!(
        compact(&f),
        "2026-12-01T10:00:00.250Z [n1]: default/intruder:40000 (ID:300) -> 10.1.0.5:8080 (ID:200) drop DROPPED (TCP Policy denied)"
    );
    assert_eq!(
        monitor_line(&f),
        "xx drop (POLICY_DENIED) ifindex 0 identity 300->200: 10.1.1.7:40000 -> 10.1.0.5:8080"
    );
    let verdict = Flow {
        verdict: Verdict::Forwarded as i32,
        event_type: Some(CiliumEventType {
            r#type: 5,
            sub_type: 0,
        }),
        policy_match_type: 2,
        ..f
    };
    assert_eq!(type_text(&verdict), "policy-verdict:L3-L4 INGRESS");
    assert!(monitor_line(&verdict).contains("action allow, match L3-L4"));
    let trace = Flow {
        verdict: Verdict::Redirected as i32,
        event_type: Some(CiliumEventType {
            r#type: 4,
            sub_type: 1,
        }),
        trace_observation_point: TraceObservationPoint::ToProxy as i32,
        ..verdict
    };
    assert_eq!(type_text(&trace), "to-proxy");
    assert_eq!(
        monitor_line(&trace),
        "-> proxy ifindex 0 identity 300->200 state new: 10.1.1.7:40000 -> 10.1.0.5:8080"
    );
}

#[test]
fn the_socket_defaults_beside_the_agents() {
    assert_eq!(
        socket(None, Path::new("/run/x/agent.sock")),
        PathBuf::from("/run/x/hubble.sock")
    );
    assert_eq!(
        socket(Some(Path::new("/h.sock")), Path::new("/run/x/agent.sock")),
        PathBuf::from("/h.sock")
    );
}
