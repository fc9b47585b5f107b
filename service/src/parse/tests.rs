use std::net::IpAddr;

use super::read::SPEC_FIELDS;
use super::*;
use crate::model::{FrontendKind, TargetPort};

fn errors(text: &str) -> Vec<String> {
    match parse_documents(text) {
        Ok(r) => panic!("valid: {r:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

const PAYMENTS: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: payments
  labels: {app: payments}
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    targetPort: 8080
endpoints:
- addresses: [10.200.0.11]
  nodeName: node-a
- addresses: [10.200.0.12]
  nodeName: node-b
  conditions: {ready: false, serving: true, terminating: true}
";

#[test]
fn a_kubernetes_service_with_endpoints() {
    let r = parse_documents(PAYMENTS).unwrap();
    assert_eq!(r.len(), 1);
    let r = &r[0];
    assert_eq!(r.id(), "default/payments");
    assert_eq!(
        r.spec.cluster_ips,
        ["10.96.0.10".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(r.spec.ports[0].target_port, Some(TargetPort::Number(8080)));
    assert_eq!(r.spec.session_affinity_timeout_seconds, None);
    assert_eq!(r.endpoints.len(), 2);
    assert!(r.endpoints[1].conditions.terminating);
    let f = r.frontends();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].kind, FrontendKind::ClusterIP);
    assert_eq!(f[0].backends.len(), 2);
    // The stored form reads back to the same record.
    let json = serde_json::to_string(r).unwrap();
    assert_eq!(&serde_json::from_str::<ServiceRecord>(&json).unwrap(), r);
}

#[test]
fn the_example_file_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/services/payments.yaml"
    ))
    .unwrap();
    let r = parse_documents(&text).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].id(), "default/payments");
    let f = &r[0].frontends()[0];
    assert_eq!(f.display_addr(), "10.96.0.10:80/TCP");
    assert_eq!(f.backends.len(), 3);
    assert!(f.backends.iter().all(|b| b.port == 8080));
}

#[test]
fn several_documents_json_and_lists() {
    let json = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b", "namespace": "x"},
                   "spec": {"clusterIPs": ["10.96.0.2"], "ports": [{"port": 53, "protocol": "UDP"}]}}"#;
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  \
                metadata: {name: c}\n  spec: {clusterIP: 10.96.0.3, ports: [{port: 1}]}\n";
    let text = format!("{PAYMENTS}---\n{json}\n---\n{list}---\n");
    let ids: Vec<String> = parse_documents(&text)
        .unwrap()
        .iter()
        .map(ServiceRecord::id)
        .collect();
    assert_eq!(ids, ["default/payments", "x/b", "default/c"]);
    assert_eq!(parse_documents("").unwrap(), []);
    // A key with nothing after it is an empty list, as in Kubernetes.
    let bare = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
                spec: {clusterIP: 10.96.0.1, ports: [{port: 80}], externalIPs: }\nendpoints:\n";
    assert!(parse_documents(bare).unwrap()[0].endpoints.is_empty());
    assert_eq!(parse_documents("---\n---\n").unwrap(), []);
}

#[test]
fn unknown_and_unsupported_fields_are_errors() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: s, uid: x}
spec:
  clusterIP: 10.96.0.1
  selector: {app: s}
  sesionAffinity: ClientIP
  ports:
  - {port: 80, targetport: 8080}
endpoints:
- {addresses: [10.0.0.1], hostname: a}
status: {}
extra: 1
";
    assert_eq!(
        errors(text),
        [
            "default/s: extra: unknown field (known here: apiVersion, kind, metadata, spec, \
             endpoints)",
            "default/s: status: is not supported: give load balancer addresses in \
             spec.loadBalancerIPs",
            "default/s: metadata.uid: unknown field (known here: name, namespace, labels, \
             annotations)",
            "default/s: spec.selector: is not supported: standalone mode selects no pods; list \
             the backends under `endpoints` (beside `spec`)",
            &format!(
                "default/s: spec.sesionAffinity: unknown field (known here: {})",
                SPEC_FIELDS.join(", ")
            ),
            "default/s: spec.ports[0].targetport: unknown field (did you mean targetPort?)",
            "default/s: endpoints[0].hostname: unknown field (known here: addresses, nodeName, \
             conditions, ports)",
        ]
    );
}

#[test]
fn shapes_and_types() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  type: ExternalName
  clusterIP: None
  ports:
  - {name: a, port: http}
  - {name: b, port: 81, protocol: udp}
  - {name: c, port: 81}
  - {name: d}
  - 8080
  externalIPs: 192.0.2.1
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: -1}}
endpoints:
- addresses: [10.0.0.1, nope]
  conditions: {ready: yes}
  ports: [{name: a, port: 1, protocol: ICMP}]
";
    assert_eq!(
        errors(text),
        [
            "default/s: spec.type: ExternalName services are not supported",
            "default/s: spec.clusterIP: headless services (clusterIP: None) are not supported",
            "default/s: spec.ports[0].port: must be a port number 1-65535",
            "default/s: spec.ports[1].protocol: \"udp\" is not one of TCP, UDP, SCTP",
            "default/s: spec.ports[3].port: is required",
            "default/s: spec.ports[4]: must be an object",
            "default/s: spec.externalIPs: must be a list",
            "default/s: spec.sessionAffinityConfig.clientIP.timeoutSeconds: -1 is out of range",
            "default/s: endpoints[0].addresses[1]: \"nope\" is not an IP address",
            "default/s: endpoints[0].conditions.ready: must be true or false",
            "default/s: endpoints[0].ports[0].protocol: \"ICMP\" is not one of TCP, UDP, SCTP",
            // Validation still runs on what could be read; what it would say
            // about the fields above (a missing cluster IP aside) is left out:
            // not "port 81/TCP is also spec.ports[1]'s" for the bad protocol.
            "default/s: spec.clusterIPs: is required: give the service's address in clusterIP \
             (standalone mode allocates none)",
        ]
    );
}

#[test]
fn documents_that_are_not_services() {
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
kind: Service
metadata: {namespace: x}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v2
kind: Service
metadata: {name: ok}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
- just a list
";
    assert_eq!(
        errors(text),
        [
            "document 1: kind: \"Deployment\" is not a Service",
            "document 2: apiVersion: is required (v1)",
            "document 2: metadata.name: is required",
            "default/ok: apiVersion: \"v2\" is not supported (want v1)",
            "document 4: must be an object",
        ]
    );
    let e = errors("apiVersion: v1\nkind: Service\nmetadata: {name: a\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("document 1: not valid YAML or JSON: "),
        "{e:?}"
    );
}

#[test]
fn cluster_ip_forms_and_families() {
    let spec =
        |s: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {s}\n");
    let ips = |s: &str| -> Vec<String> {
        parse_documents(&spec(s)).unwrap()[0]
            .spec
            .cluster_ips
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        ips("{clusterIP: 10.96.0.1, ports: [{port: 80}]}"),
        ["10.96.0.1"]
    );
    assert_eq!(
        ips(
            "{clusterIP: \"fd00::1\", clusterIPs: [\"fd00::1\", 10.96.0.1], \
             ipFamilies: [IPv6, IPv4], ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}"
        ),
        ["fd00::1", "10.96.0.1"]
    );
    assert_eq!(
        ips("{clusterIP: \"\", clusterIPs: [10.96.0.1], ports: [{port: 80}]}"),
        ["10.96.0.1"]
    );
    assert_eq!(
        errors(&spec(
            "{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2], ipFamilies: [IPv6, IPv4, IPv4], \
             ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}"
        )),
        [
            "default/s: spec.clusterIPs[0]: 10.96.0.2 must be the same as spec.clusterIP \
             (10.96.0.1)",
            "default/s: spec.ipFamilies: at most 2 (IPv4, IPv6)",
            "default/s: spec.ipFamilies[0]: does not match spec.clusterIPs[0] (10.96.0.2)",
            "default/s: spec.ipFamilies[1]: has no cluster IP of this family (standalone mode \
             allocates none)",
            "default/s: spec.ipFamilies[2]: has no cluster IP of this family (standalone mode \
             allocates none)",
            "default/s: spec.ipFamilyPolicy: RequireDualStack, but there is 1 cluster IP (give \
             one per family)",
        ]
    );
    assert_eq!(
        errors(&spec(
            "{clusterIPs: [10.96.0.1, \"fd00::1\"], ipFamilyPolicy: SingleStack, \
             ports: [{port: 80}]}"
        )),
        ["default/s: spec.ipFamilyPolicy: SingleStack, but there are 2 cluster IPs"]
    );
}

#[test]
fn session_affinity_defaults_like_kubernetes() {
    let timeout = |s: &str| {
        parse_documents(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n\
             spec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}], {s}}}\n"
        ))
        .unwrap()[0]
            .spec
            .session_affinity_timeout_seconds
    };
    assert_eq!(timeout("sessionAffinity: None"), None);
    assert_eq!(timeout("sessionAffinity: ClientIP"), Some(10_800));
    assert_eq!(
        timeout("sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {}}"),
        Some(10_800)
    );
    assert_eq!(
        timeout(
            "sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}"
        ),
        Some(30)
    );
}

#[test]
fn every_document_s_errors_are_reported() {
    let bad = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec: {{clusterIP: 10.96.0.1, ports: [{{name: a, port: 80}}, {{name: b, port: 0}}]}}\n"
        )
    };
    let text = format!("{}---\n{PAYMENTS}---\n{}", bad("one"), bad("two"));
    assert_eq!(
        errors(&text),
        [
            "default/one: spec.ports[1].port: must be 1-65535",
            "default/two: spec.ports[1].port: must be 1-65535",
        ]
    );
}

#[test]
fn related_paths() {
    assert!(related("spec.ports[1]", "spec.ports[1].protocol"));
    assert!(related("spec.ports[1].port", "spec.ports[1].port"));
    assert!(related("spec.clusterIPs", "spec.clusterIPs[0]"));
    assert!(!related("spec.ports[1]", "spec.ports[10]"));
    assert!(!related("spec.ports[1].port", "spec.ports[1].protocol"));
    assert!(!related("metadata.name", "metadata.namespace"));
    let named: Vec<&str> =
        mentioned_paths("port 81/TCP is also spec.ports[1]'s, and endpoints[0].addresses[2].")
            .collect();
    assert_eq!(named, ["spec.ports[1]", "endpoints[0].addresses[2]"]);
}
