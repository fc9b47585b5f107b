use super::*;
use serde_json::json;

fn record(v: serde_json::Value) -> ServiceRecord {
    serde_json::from_value(v).expect("a record")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `kind addr:port/proto -> [addr:port state node, ...]`, one line per
/// frontend, for compact table-driven expectations.
fn describe(r: &ServiceRecord) -> Vec<String> {
    r.frontends()
        .iter()
        .map(|f| {
            let backends: Vec<String> = f
                .backends
                .iter()
                .map(|b| {
                    format!(
                        "{}:{}:{:?}@{}",
                        b.addr,
                        b.port,
                        b.state,
                        b.node.as_deref().unwrap_or("-")
                    )
                })
                .collect();
            format!(
                "{} {} {} -> [{}]",
                f.kind.as_str(),
                f.port_name,
                f.display_addr(),
                backends.join(" ")
            )
        })
        .collect()
}

fn payments() -> serde_json::Value {
    json!({
        "namespace": "default",
        "name": "payments",
        "spec": {
            "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]
        },
        "endpoints": [
            {"addresses": ["10.200.0.12"], "nodeName": "node-b"},
            {"addresses": ["10.200.0.11"], "nodeName": "node-a"},
            {"addresses": ["10.200.1.13"], "nodeName": "node-b", "conditions": {"ready": false}}
        ]
    })
}

#[test]
fn stored_form_round_trips_and_defaults() {
    let r = record(payments());
    assert_eq!(r.id(), "default/payments");
    assert_eq!(r.spec.type_, ServiceType::ClusterIP);
    assert_eq!(r.spec.ports[0].protocol, Protocol::TCP);
    assert_eq!(r.spec.ports[0].target_port, Some(TargetPort::Number(8080)));
    assert_eq!(r.endpoints[0].conditions, Conditions::default());
    let text = serde_json::to_value(&r).unwrap();
    assert_eq!(text["spec"]["type"], "ClusterIP");
    assert_eq!(text["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(text["spec"]["sessionAffinity"], "None");
    assert_eq!(text["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(text["spec"]["clusterIPs"][0], "10.96.0.10");
    assert_eq!(record(text), r);
    // Named target ports, Kubernetes' spellings of every enum.
    let r = record(json!({
        "namespace": "ns", "name": "s",
        "spec": {
            "type": "LoadBalancer", "clusterIPs": ["10.96.0.1"],
            "ports": [{"port": 53, "protocol": "UDP", "targetPort": "dns", "nodePort": 30053}],
            "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local", "externalIPs": ["192.0.2.1"],
            "loadBalancerIPs": ["198.51.100.1"], "someFutureField": 1
        }
    }));
    assert_eq!(
        r.spec.ports[0].target_port,
        Some(TargetPort::Name("dns".into()))
    );
    assert_eq!(r.spec.session_affinity, SessionAffinity::ClientIP);
    assert_eq!(r.spec.external_traffic_policy, TrafficPolicy::Local);
    assert!(r.endpoints.is_empty());
    let v = serde_json::to_value(&r.frontends()[0]).unwrap();
    assert_eq!(v["kind"], "ClusterIP");
    assert_eq!(v["protocol"], "UDP");
}

#[test]
fn backend_states() {
    let c = |ready, serving, terminating| {
        Conditions {
            ready,
            serving,
            terminating,
        }
        .state()
    };
    use BackendState::*;
    for (conditions, want) in [
        (c(true, None, false), Active),
        (c(true, Some(true), false), Active),
        // Ready wins, as in Kubernetes (ready implies serving, not terminating).
        (c(true, Some(true), true), Active),
        (c(false, Some(true), true), Terminating),
        (c(false, None, true), NotReady),
        (c(false, Some(false), true), NotReady),
        (c(false, Some(true), false), NotReady),
        (c(false, None, false), NotReady),
    ] {
        assert_eq!(conditions, want);
    }
}

#[test]
fn frontends_table() {
    struct Case {
        name: &'static str,
        record: serde_json::Value,
        want: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "one port, backends sorted, numeric targetPort",
            record: payments(),
            want: &[
                "ClusterIP http 10.96.0.10:80/TCP -> [10.200.0.11:8080:Active@node-a \
                     10.200.0.12:8080:Active@node-b 10.200.1.13:8080:NotReady@node-b]",
            ],
        },
        Case {
            name: "no targetPort: the service port",
            record: json!({"namespace": "n", "name": "s",
                "spec": {"clusterIPs": ["10.96.0.1"], "ports": [{"port": 80}]},
                "endpoints": [{"addresses": ["10.0.0.1"]}]}),
            want: &["ClusterIP  10.96.0.1:80/TCP -> [10.0.0.1:80:Active@-]"],
        },
        Case {
            name: "named targetPort: each endpoint's own port of that name; none, not a backend",
            record: json!({"namespace": "n", "name": "s",
            "spec": {"clusterIPs": ["10.96.0.1"],
                     "ports": [{"port": 80, "targetPort": "web"}]},
            "endpoints": [
                {"addresses": ["10.0.0.1"], "ports": [{"name": "web", "port": 8080}]},
                {"addresses": ["10.0.0.2"], "ports": [{"name": "web", "port": 9090}]},
                {"addresses": ["10.0.0.3"], "ports": [{"name": "other", "port": 7070}]},
                {"addresses": ["10.0.0.4"],
                 "ports": [{"name": "web", "port": 6060, "protocol": "UDP"}]}
            ]}),
            want: &["ClusterIP  10.96.0.1:80/TCP -> [10.0.0.1:8080:Active@- \
                     10.0.0.2:9090:Active@-]"],
        },
        Case {
            name: "an endpoint port named like the service port wins over targetPort",
            record: json!({"namespace": "n", "name": "s",
            "spec": {"clusterIPs": ["10.96.0.1"], "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "metrics", "port": 9100, "protocol": "TCP"}]},
            "endpoints": [
                {"addresses": ["10.0.0.1"], "ports": [
                    {"name": "http", "port": 8081}, {"name": "metrics", "port": 9101}]},
                {"addresses": ["10.0.0.2"]}
            ]}),
            want: &[
                "ClusterIP http 10.96.0.1:80/TCP -> [10.0.0.1:8081:Active@- \
                 10.0.0.2:8080:Active@-]",
                "ClusterIP metrics 10.96.0.1:9100/TCP -> [10.0.0.1:9101:Active@- \
                 10.0.0.2:9100:Active@-]",
            ],
        },
        Case {
            name: "dual stack: each frontend only its family's backends",
            record: json!({"namespace": "n", "name": "s",
                "spec": {"clusterIPs": ["fd00:96::1", "10.96.0.1"],
                         "ports": [{"port": 80, "targetPort": 8080}]},
                "endpoints": [{"addresses": ["10.0.0.1", "fd00::1"], "nodeName": "a"}]}),
            want: &[
                "ClusterIP  [fd00:96::1]:80/TCP -> [fd00::1:8080:Active@a]",
                "ClusterIP  10.96.0.1:80/TCP -> [10.0.0.1:8080:Active@a]",
            ],
        },
        Case {
            name: "NodePort: ClusterIP plus one node port per family; ports without one get none",
            record: json!({"namespace": "n", "name": "s",
                "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.1", "fd00:96::1"],
                         "ports": [
                            {"name": "a", "port": 80, "nodePort": 30080},
                            {"name": "b", "port": 81, "protocol": "UDP"}]},
                "endpoints": [{"addresses": ["10.0.0.1"]}]}),
            want: &[
                "ClusterIP a 10.96.0.1:80/TCP -> [10.0.0.1:80:Active@-]",
                "ClusterIP a [fd00:96::1]:80/TCP -> []",
                "NodePort a *:30080/TCP -> [10.0.0.1:80:Active@-]",
                "NodePort a [*]:30080/TCP -> []",
                "ClusterIP b 10.96.0.1:81/UDP -> [10.0.0.1:81:Active@-]",
                "ClusterIP b [fd00:96::1]:81/UDP -> []",
            ],
        },
        Case {
            name: "nodePort on a ClusterIP service is ignored (validation rejects it)",
            record: json!({"namespace": "n", "name": "s",
                "spec": {"clusterIPs": ["10.96.0.1"],
                         "ports": [{"port": 80, "nodePort": 30080}]}}),
            want: &["ClusterIP  10.96.0.1:80/TCP -> []"],
        },
        Case {
            name: "LoadBalancer: ClusterIP, NodePort, ExternalIP, LoadBalancer",
            record: json!({"namespace": "n", "name": "s",
                "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.1"],
                         "externalIPs": ["192.0.2.1"],
                         "loadBalancerIPs": ["198.51.100.1", "198.51.100.2"],
                         "ports": [{"port": 443, "nodePort": 30443}]}}),
            want: &[
                "ClusterIP  10.96.0.1:443/TCP -> []",
                "NodePort  *:30443/TCP -> []",
                "ExternalIP  192.0.2.1:443/TCP -> []",
                "LoadBalancer  198.51.100.1:443/TCP -> []",
                "LoadBalancer  198.51.100.2:443/TCP -> []",
            ],
        },
        Case {
            name: "loadBalancerIPs need type LoadBalancer; externalIPs do not",
            record: json!({"namespace": "n", "name": "s",
                "spec": {"clusterIPs": ["10.96.0.1"], "externalIPs": ["192.0.2.1"],
                         "loadBalancerIPs": ["198.51.100.1"], "ports": [{"port": 80}]}}),
            want: &[
                "ClusterIP  10.96.0.1:80/TCP -> []",
                "ExternalIP  192.0.2.1:80/TCP -> []",
            ],
        },
        Case {
            name: "the same address twice: one backend, the first endpoint's",
            record: json!({"namespace": "n", "name": "s",
                "spec": {"clusterIPs": ["10.96.0.1"], "ports": [{"port": 80}]},
                "endpoints": [
                    {"addresses": ["10.0.0.1"], "nodeName": "a"},
                    {"addresses": ["10.0.0.1"], "nodeName": "b"}]}),
            want: &["ClusterIP  10.96.0.1:80/TCP -> [10.0.0.1:80:Active@a]"],
        },
    ];
    for case in cases {
        assert_eq!(describe(&record(case.record)), case.want, "{}", case.name);
    }
}

#[test]
fn affinity_and_traffic_policies() {
    let mut v = json!({"namespace": "n", "name": "s",
        "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.1"], "externalIPs": ["192.0.2.1"],
                 "ports": [{"port": 80, "nodePort": 30080}]}});
    let kinds = |r: &ServiceRecord| -> Vec<(FrontendKind, Option<u32>, bool)> {
        r.frontends()
            .iter()
            .map(|f| (f.kind, f.affinity_timeout, f.local_only))
            .collect()
    };
    use FrontendKind::*;
    assert_eq!(
        kinds(&record(v.clone())),
        [
            (ClusterIP, None, false),
            (NodePort, None, false),
            (ExternalIP, None, false)
        ]
    );
    v["spec"]["sessionAffinity"] = json!("ClientIP");
    v["spec"]["externalTrafficPolicy"] = json!("Local");
    assert_eq!(
        kinds(&record(v.clone())),
        [
            (ClusterIP, Some(10_800), false),
            (NodePort, Some(10_800), true),
            (ExternalIP, Some(10_800), true)
        ]
    );
    v["spec"]["sessionAffinityTimeoutSeconds"] = json!(60);
    v["spec"]["externalTrafficPolicy"] = json!("Cluster");
    v["spec"]["internalTrafficPolicy"] = json!("Local");
    assert_eq!(
        kinds(&record(v)),
        [
            (ClusterIP, Some(60), true),
            (NodePort, Some(60), false),
            (ExternalIP, Some(60), false)
        ]
    );
}

fn backend(addr: &str, node: &str, state: BackendState) -> Backend {
    Backend {
        addr: ip(addr),
        port: 8080,
        node: Some(node.to_string()),
        state,
    }
}

#[test]
fn selectable_table() {
    use BackendState::*;
    let frontend = |local_only: bool, backends: Vec<Backend>| Frontend {
        service: "n/s".into(),
        port_name: String::new(),
        kind: FrontendKind::NodePort,
        addr: ip("0.0.0.0"),
        port: 30080,
        protocol: Protocol::Tcp,
        backends,
        affinity_timeout: None,
        local_only,
    };
    let mixed = vec![
        backend("10.0.0.1", "a", Active),
        backend("10.0.0.2", "a", Terminating),
        backend("10.0.0.3", "b", Active),
        backend("10.0.0.4", "b", NotReady),
        backend("10.0.0.5", "c", Terminating),
        backend("10.0.0.6", "c", NotReady),
    ];
    /// (case, local_only, backends, node, the addresses selectable there)
    type Case<'a> = (&'a str, bool, &'a [Backend], &'a str, &'a [&'a str]);
    let cases: &[Case<'_>] = &[
        (
            "active ones only",
            false,
            &mixed,
            "a",
            &["10.0.0.1", "10.0.0.3"],
        ),
        (
            "local: this node's active",
            true,
            &mixed,
            "a",
            &["10.0.0.1"],
        ),
        ("local: node b", true, &mixed, "b", &["10.0.0.3"]),
        // No active backend on c: its terminating ones (not b's active one).
        (
            "local: terminating fallback",
            true,
            &mixed,
            "c",
            &["10.0.0.5"],
        ),
        ("local: no backend on the node", true, &mixed, "d", &[]),
        (
            "cluster: terminating fallback",
            false,
            &[
                backend("10.0.0.2", "a", Terminating),
                backend("10.0.0.4", "b", NotReady),
                backend("10.0.0.5", "c", Terminating),
            ],
            "a",
            &["10.0.0.2", "10.0.0.5"],
        ),
        (
            "not ready only: nothing",
            false,
            &[backend("10.0.0.4", "b", NotReady)],
            "b",
            &[],
        ),
        ("no backends", false, &[], "a", &[]),
    ];
    for (name, local_only, backends, node, want) in cases {
        let f = frontend(*local_only, backends.to_vec());
        let got: Vec<String> = f
            .selectable(node)
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(got, *want, "{name}");
    }
    // Backends without a node never count as local.
    let mut b = backend("10.0.0.9", "a", Active);
    b.node = None;
    assert!(frontend(true, vec![b.clone()]).selectable("a").is_empty());
    assert_eq!(frontend(false, vec![b]).selectable("a").len(), 1);
}

#[test]
fn frontends_from_the_record_select_per_node() {
    let mut v = payments();
    v["spec"]["internalTrafficPolicy"] = json!("Local");
    let r = record(v);
    let f = &r.frontends()[0];
    assert!(f.local_only);
    let on = |node| -> Vec<String> {
        f.selectable(node)
            .iter()
            .map(|b| b.addr.to_string())
            .collect()
    };
    assert_eq!(on("node-a"), ["10.200.0.11"]);
    // node-b's other backend is not ready.
    assert_eq!(on("node-b"), ["10.200.0.12"]);
    assert!(on("node-c").is_empty());
}

#[test]
fn display_addresses() {
    let r = record(json!({"namespace": "n", "name": "s",
        "spec": {"type": "NodePort", "clusterIPs": ["fd00::1"],
                 "ports": [{"port": 80, "nodePort": 30080, "protocol": "SCTP"}]}}));
    let shown: Vec<String> = r.frontends().iter().map(Frontend::display_addr).collect();
    assert_eq!(shown, ["[fd00::1]:80/SCTP", "[*]:30080/SCTP"]);
}
