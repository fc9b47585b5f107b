//! One case per rule: a document and every error it must give (exactly).

use crate::parse::parse_documents;
use crate::validate::*;

/// Every error of `text` as a line, sorted (empty when it is valid).
fn errors(text: &str) -> Vec<String> {
    match parse_documents(text) {
        Ok(_) => vec![],
        Err(e) => {
            let mut lines: Vec<String> = e.iter().map(ToString::to_string).collect();
            lines.sort();
            lines
        }
    }
}

/// A valid service `s` in namespace `n` with `spec` and `rest` (top-level
/// fields, e.g. `endpoints`) in YAML flow style.
fn svc(spec: &str, rest: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec: {spec}\n{rest}"
    )
}

fn check(cases: &[(&str, String, &[&str])]) {
    for (name, doc, want) in cases {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(errors(doc), want, "case {name}:\n{doc}");
    }
}

#[test]
fn names() {
    let named = |name: &str, ns: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name:?}, namespace: {ns:?}}}\n\
             spec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}]}}\n"
        )
    };
    check(&[
        ("good", named("payments-v2", "shop-1"), &[]),
        (
            "service name must start with a letter (DNS-1035)",
            named("2pay", "default"),
            &[
                "default/2pay: metadata.name: \"2pay\" must be a DNS-1035 label: 1-63 lower-case \
               letters, digits and '-', starting with a letter and ending alphanumeric",
            ],
        ),
        (
            "upper case",
            named("Pay", "default"),
            &[
                "default/Pay: metadata.name: \"Pay\" must be a DNS-1035 label: 1-63 lower-case \
               letters, digits and '-', starting with a letter and ending alphanumeric",
            ],
        ),
        (
            "namespace may start with a digit (DNS-1123) but not end with '-'",
            named("p", "1ns-"),
            &[
                "1ns-/p: metadata.namespace: \"1ns-\" must be a DNS label: 1-63 lower-case \
               letters, digits and '-', alphanumeric at both ends",
            ],
        ),
        (
            "too long",
            named(&"a".repeat(64), "default"),
            &[&*format!(
                "default/{0}: metadata.name: \"{0}\" must be a DNS-1035 label: 1-63 lower-case \
                 letters, digits and '-', starting with a letter and ending alphanumeric",
                "a".repeat(64)
            )],
        ),
    ]);
}

#[test]
fn ports() {
    check(&[
        (
            "at least one port",
            svc("{clusterIP: 10.96.0.1, ports: []}", ""),
            &["n/s: spec.ports: a service needs at least one port"],
        ),
        (
            "no ports field",
            svc("{clusterIP: 10.96.0.1}", ""),
            &["n/s: spec.ports: a service needs at least one port"],
        ),
        (
            "port range",
            svc(
                "{clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: b, port: 80800}, \
                 {name: c, port: 0}]}",
                "",
            ),
            &[
                "n/s: spec.ports[1].port: must be 1-65535",
                "n/s: spec.ports[2].port: must be 1-65535",
            ],
        ),
        (
            "names required when more than one port, and unique",
            svc(
                "{clusterIP: 10.96.0.1, ports: [{port: 80}, {name: x, port: 81}, \
                 {name: x, port: 82}]}",
                "",
            ),
            &[
                "n/s: spec.ports[0].name: is required when a service has more than one port",
                "n/s: spec.ports[2].name: \"x\" is also the name of spec.ports[1]",
            ],
        ),
        (
            "port names are DNS labels",
            svc(
                "{clusterIP: 10.96.0.1, ports: [{name: Web_1, port: 80}]}",
                "",
            ),
            &[
                "n/s: spec.ports[0].name: \"Web_1\" must be a DNS label: 1-63 lower-case \
               letters, digits and '-', alphanumeric at both ends",
            ],
        ),
        (
            "unique (port, protocol); the same number on another protocol is fine",
            svc(
                "{clusterIP: 10.96.0.1, ports: [{name: a, port: 53, protocol: UDP}, \
                 {name: b, port: 53, protocol: TCP}, {name: c, port: 53, protocol: UDP}]}",
                "",
            ),
            &["n/s: spec.ports[2]: port 53/UDP is also spec.ports[0]'s"],
        ),
        (
            "protocols as Kubernetes spells them",
            svc(
                "{clusterIP: 10.96.0.1, ports: [{port: 80, protocol: tcp}]}",
                "",
            ),
            &["n/s: spec.ports[0].protocol: \"tcp\" is not one of TCP, UDP, SCTP"],
        ),
        (
            "targetPort: a number 1-65535 or a port name",
            svc(
                "{clusterIP: 10.96.0.1, ports: [{name: a, port: 80, targetPort: 0}, \
                 {name: b, port: 81, targetPort: \"8080\"}, {name: c, port: 82, \
                 targetPort: a-very-long-port-name}, {name: d, port: 83, targetPort: web--x}, \
                 {name: e, port: 84, targetPort: 70000}, {name: f, port: 85, targetPort: http}]}",
                "",
            ),
            &[
                "n/s: spec.ports[0].targetPort: must be 1-65535",
                "n/s: spec.ports[1].targetPort: \"8080\" must be a port name: 1-15 lower-case \
                 letters, digits and '-', with a letter, no '-' at either end or twice in a row \
                 (a port number goes unquoted)",
                "n/s: spec.ports[2].targetPort: \"a-very-long-port-name\" must be a port name: \
                 1-15 lower-case letters, digits and '-', with a letter, no '-' at either end or \
                 twice in a row",
                "n/s: spec.ports[3].targetPort: \"web--x\" must be a port name: 1-15 lower-case \
                 letters, digits and '-', with a letter, no '-' at either end or twice in a row",
                "n/s: spec.ports[4].targetPort: must be 1-65535",
            ],
        ),
    ]);
}

#[test]
fn cluster_ips() {
    let ips = |list: &str| {
        svc(
            &format!("{{clusterIPs: {list}, ports: [{{port: 80}}]}}"),
            "",
        )
    };
    check(&[
        ("one", ips("[10.96.0.1]"), &[]),
        ("dual stack", ips("[10.96.0.1, \"fd00::1\"]"), &[]),
        (
            "required",
            svc("{ports: [{port: 80}]}", ""),
            &[
                "n/s: spec.clusterIPs: is required: give the service's address in clusterIP \
               (standalone mode allocates none)",
            ],
        ),
        (
            "two of one family",
            ips("[10.96.0.1, 10.96.0.2]"),
            &[
                "n/s: spec.clusterIPs: two addresses must be of different families (one IPv4, \
               one IPv6), both are IPv4",
            ],
        ),
        (
            "three",
            ips("[10.96.0.1, \"fd00::1\", 10.96.0.3]"),
            &["n/s: spec.clusterIPs: at most 2 addresses (one per family), not 3"],
        ),
        (
            "unusable addresses",
            ips("[0.0.0.0, \"ff02::1\"]"),
            &[
                "n/s: spec.clusterIPs[0]: 0.0.0.0 is unspecified",
                "n/s: spec.clusterIPs[1]: ff02::1 is a multicast address",
            ],
        ),
        (
            "loopback",
            ips("[127.0.0.1]"),
            &["n/s: spec.clusterIPs[0]: 127.0.0.1 is a loopback address"],
        ),
        (
            "not an address",
            ips("[10.96.0.300]"),
            &["n/s: spec.clusterIPs[0]: \"10.96.0.300\" is not an IP address"],
        ),
    ]);
}

#[test]
fn node_ports_and_types() {
    check(&[
        (
            "NodePort with node ports",
            svc(
                "{type: NodePort, clusterIP: 10.96.0.1, ports: [{name: a, port: 80, \
                 nodePort: 30080}, {name: b, port: 80, protocol: UDP, nodePort: 30080}]}",
                "",
            ),
            &[],
        ),
        (
            "range",
            svc(
                "{type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 8080}]}",
                "",
            ),
            &["n/s: spec.ports[0].nodePort: 8080 is outside the node port range 30000-32767"],
        ),
        (
            "only on NodePort and LoadBalancer",
            svc(
                "{clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}",
                "",
            ),
            &[
                "n/s: spec.ports[0].nodePort: only NodePort and LoadBalancer services have node \
               ports (type is ClusterIP)",
            ],
        ),
        (
            "required on NodePort (no allocator), optional on LoadBalancer",
            svc(
                "{type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80}]}",
                "",
            ),
            &[
                "n/s: spec.ports[0].nodePort: is required for a NodePort service (standalone \
               mode allocates none)",
            ],
        ),
        (
            "LoadBalancer without node ports",
            svc(
                "{type: LoadBalancer, clusterIP: 10.96.0.1, loadBalancerIPs: [192.0.2.1], \
                 ports: [{port: 80}]}",
                "",
            ),
            &[],
        ),
        (
            "unique node ports",
            svc(
                "{type: LoadBalancer, clusterIP: 10.96.0.1, ports: [{name: a, port: 80, \
                 nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]}",
                "",
            ),
            &["n/s: spec.ports[1]: nodePort 30080/TCP is also spec.ports[0]'s"],
        ),
        (
            "types",
            svc(
                "{type: Headless, clusterIP: 10.96.0.1, ports: [{port: 80}]}",
                "",
            ),
            &["n/s: spec.type: \"Headless\" is not one of ClusterIP, NodePort, LoadBalancer"],
        ),
        (
            "loadBalancerIPs only on LoadBalancer, no duplicates",
            svc(
                "{clusterIP: 10.96.0.1, externalIPs: [192.0.2.1, 192.0.2.1], \
                 loadBalancerIPs: [198.51.100.1], ports: [{port: 80}]}",
                "",
            ),
            &[
                "n/s: spec.externalIPs[1]: 192.0.2.1 is also spec.externalIPs[0]",
                "n/s: spec.loadBalancerIPs: only a LoadBalancer service has load balancer \
                 addresses (type is ClusterIP)",
            ],
        ),
    ]);
}

#[test]
fn affinity_and_traffic_policy() {
    let affinity = |cfg: &str| {
        svc(
            &format!(
                "{{clusterIP: 10.96.0.1, ports: [{{port: 80}}], sessionAffinity: ClientIP, \
                 sessionAffinityConfig: {cfg}}}"
            ),
            "",
        )
    };
    check(&[
        ("1 s", affinity("{clientIP: {timeoutSeconds: 1}}"), &[]),
        (
            "1 day",
            affinity("{clientIP: {timeoutSeconds: 86400}}"),
            &[],
        ),
        (
            "0",
            affinity("{clientIP: {timeoutSeconds: 0}}"),
            &["n/s: spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be 1-86400, not 0"],
        ),
        (
            "over a day",
            affinity("{clientIP: {timeoutSeconds: 86401}}"),
            &[
                "n/s: spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be 1-86400, not \
               86401",
            ],
        ),
        (
            "config without ClientIP",
            svc(
                "{clusterIP: 10.96.0.1, ports: [{port: 80}], \
                 sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}}",
                "",
            ),
            &["n/s: spec.sessionAffinityConfig: applies only with sessionAffinity: ClientIP"],
        ),
        (
            "Local on a ClusterIP service",
            svc(
                "{clusterIP: 10.96.0.1, ports: [{port: 80}], externalTrafficPolicy: Local}",
                "",
            ),
            &[
                "n/s: spec.externalTrafficPolicy: Local applies only to NodePort and \
               LoadBalancer services and to services with externalIPs",
            ],
        ),
        (
            "Local with externalIPs",
            svc(
                "{clusterIP: 10.96.0.1, externalIPs: [192.0.2.1], ports: [{port: 80}], \
                 externalTrafficPolicy: Local, internalTrafficPolicy: Local}",
                "",
            ),
            &[],
        ),
    ]);
}

#[test]
fn endpoints() {
    let with = |eps: &str| {
        svc(
            "{clusterIP: 10.96.0.1, ports: [{name: http, port: 80, targetPort: web}]}",
            &format!("endpoints: {eps}"),
        )
    };
    check(&[
        (
            "named port declared",
            with("[{addresses: [10.0.0.1], nodeName: node-a.example, ports: [{name: web, port: 8080}]}]"),
            &[],
        ),
        (
            "a family the service has not",
            with("[{addresses: [\"fd00::1\"], ports: [{name: web, port: 8080}]}]"),
            &["n/s: endpoints[0].addresses[0]: fd00::1 is IPv6, and the service has no IPv6 \
               cluster IP"],
        ),
        (
            "address rules and duplicates",
            with(
                "[{addresses: [10.0.0.1, 127.0.0.2], ports: [{name: web, port: 8080}]}, \
                 {addresses: [10.0.0.1], ports: [{name: web, port: 8080}]}, {addresses: [], \
                 ports: [{name: web, port: 8080}]}]",
            ),
            &[
                "n/s: endpoints[0].addresses[1]: 127.0.0.2 is a loopback address",
                "n/s: endpoints[1].addresses[0]: 10.0.0.1 is also endpoints[0].addresses[0]",
                "n/s: endpoints[2].addresses: an endpoint needs an address",
            ],
        ),
        (
            "ports 1-65535, names, unique per protocol",
            with(
                "[{addresses: [10.0.0.1], ports: [{name: web, port: 0}, {name: web, port: 81}, \
                 {name: Bad, port: 82}]}]",
            ),
            &[
                "n/s: endpoints[0].ports[0].port: must be 1-65535",
                "n/s: endpoints[0].ports[1]: a TCP port named \"web\" is also endpoints[0].ports[0]",
                "n/s: endpoints[0].ports[2].name: \"Bad\" must be a DNS label: 1-63 lower-case \
                 letters, digits and '-', alphanumeric at both ends",
            ],
        ),
        (
            "serves no port of the service (named targetPort not declared)",
            with("[{addresses: [10.0.0.1]}, {addresses: [10.0.0.2], ports: [{name: web, port: 8080, protocol: UDP}]}]"),
            &[
                "n/s: endpoints[0].ports: serves none of the service's ports: it declares no \
                 port named \"web\"/TCP",
                "n/s: endpoints[1].ports: serves none of the service's ports: it declares no \
                 port named \"web\"/TCP",
            ],
        ),
        (
            "node names",
            with("[{addresses: [10.0.0.1], nodeName: Node_A, ports: [{name: web, port: 8080}]}]"),
            &["n/s: endpoints[0].nodeName: \"Node_A\" must be a DNS subdomain: lower-case \
               letters, digits, '-' and '.', at most 253 characters"],
        ),
        (
            "terminating is not ready",
            with(
                "[{addresses: [10.0.0.1], conditions: {terminating: true}, \
                 ports: [{name: web, port: 8080}]}, {addresses: [10.0.0.2], conditions: \
                 {ready: false, serving: true, terminating: true}, ports: [{name: web, port: 8080}]}]",
            ),
            &["n/s: endpoints[0].conditions: a terminating endpoint is not ready: give ready: \
               false (and serving: true while it still serves)"],
        ),
    ]);
}

#[test]
fn conflicts_between_services() {
    let two = |a: &str, b: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec: {a}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec: {b}\n"
        )
    };
    check(&[
        (
            "the same cluster IP",
            two(
                "{clusterIP: 10.96.0.1, ports: [{port: 80}]}",
                "{clusterIP: 10.96.0.1, ports: [{port: 81}]}",
            ),
            &["default/b: spec.clusterIPs[0]: 10.96.0.1 is also the cluster IP of default/a"],
        ),
        (
            "the same node port",
            two(
                "{type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}]}",
                "{type: LoadBalancer, clusterIP: 10.96.0.2, ports: [{name: x, port: 81}, \
                 {name: y, port: 80, nodePort: 30080}]}",
            ),
            &["default/b: spec.ports[1].nodePort: *:30080/TCP is also a frontend of default/a"],
        ),
        (
            "an external IP on another's cluster IP and port",
            two(
                "{clusterIP: 10.96.0.1, ports: [{port: 80}]}",
                "{clusterIP: 10.96.0.2, externalIPs: [10.96.0.1], ports: [{port: 80}]}",
            ),
            &["default/b: spec.externalIPs[0]: 10.96.0.1:80/TCP is also a frontend of default/a"],
        ),
        (
            "the same service twice",
            format!(
                "{}---\n{}",
                two("{clusterIP: 10.96.0.1, ports: [{port: 80}]}", "{clusterIP: 10.96.0.2, ports: [{port: 80}]}"),
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n"
            ),
            &["default/a: metadata.name: this service is defined more than once (services 1 and 3)"],
        ),
    ]);
    // Against stored services: the one a new service replaces is left out.
    let stored = parse_documents(&two(
        "{clusterIP: 10.96.0.1, ports: [{port: 80}]}",
        "{clusterIP: 10.96.0.2, ports: [{port: 80}]}",
    ))
    .unwrap();
    let mut new = stored[0].clone();
    new.spec.cluster_ips = vec!["10.96.0.2".parse().unwrap()];
    let e: Vec<String> = conflicts(&[new.clone()], &stored)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        e,
        ["default/a: spec.clusterIPs[0]: 10.96.0.2 is also the cluster IP of default/b"]
    );
    new.spec.cluster_ips = vec!["10.96.0.3".parse().unwrap()];
    assert!(conflicts(&[new], &stored).is_empty());
}

#[test]
fn name_checks() {
    assert!(check_dns1035_label("a").is_ok());
    assert!(check_dns1035_label("a-1").is_ok());
    for bad in ["", "1a", "-a", "a-", "a.b", "A"] {
        assert!(check_dns1035_label(bad).is_err(), "{bad:?}");
    }
    assert!(check_dns1123_label("1a").is_ok());
    assert!(check_dns1123_subdomain("node-1.example.com").is_ok());
    assert!(check_dns1123_subdomain("node..a").is_err());
    for good in ["http", "h2c", "a-b-1", "x"] {
        assert!(check_port_name(good).is_ok(), "{good:?}");
    }
    for bad in ["", "8080", "-a", "a-", "a--b", "abcdefghijklmnop", "Http"] {
        assert!(check_port_name(bad).is_err(), "{bad:?}");
    }
    assert!(check_address("255.255.255.255".parse().unwrap()).is_err());
    assert!(check_address("::1".parse().unwrap()).is_err());
    assert!(check_address("fd00::1".parse().unwrap()).is_ok());
}
