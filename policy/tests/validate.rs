//! Validation against the corpus in tests/corpus: every invalid policy fails
//! with the expected field path and message (first line `# expect: ...`),
//! every valid one parses, and arbitrary input never panics the parser.

use std::path::{Path, PathBuf};

use axoneme_policy::{parse_documents, parse_manifest, Document, PolicyKind};
use proptest::prelude::*;

fn corpus(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn invalid_policies_report_the_field_path() {
    let files = corpus("invalid");
    assert!(files.len() >= 20, "at least 20 invalid policies");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks '# expect:'", file.display()));
        let results = parse_documents(&text);
        assert_eq!(results.len(), 1, "{}", file.display());
        let err = results[0]
            .as_ref()
            .expect_err(&format!("{} must be invalid", file.display()));
        let lines: Vec<String> = err.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            lines.iter().any(|l| l.contains(expect)),
            "{}: expected {expect:?} among {lines:#?}",
            file.display()
        );
        // The policy is named in the error (each file names its policy
        // after itself, except the one testing an invalid name).
        let name = file.file_stem().unwrap().to_str().unwrap();
        if name != "bad-name" {
            assert_eq!(err.policy, name, "{}", file.display());
        }
    }
}

#[test]
fn valid_policies_parse() {
    for file in corpus("valid") {
        let text = std::fs::read_to_string(&file).unwrap();
        for r in parse_documents(&text) {
            if let Err(e) = r {
                panic!("{}:\n{e}", file.display());
            }
        }
    }
}

#[test]
fn seed_policy_validates_unchanged_and_round_trips() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/seed-payments-policy.yaml");
    let text = std::fs::read_to_string(&seed).unwrap_or_else(|e| {
        panic!(
            "the seed policy belongs beside the project ({}): {e}",
            seed.display()
        )
    });
    let results = parse_documents(&text);
    assert_eq!(results.len(), 1);
    let p = results
        .into_iter()
        .next()
        .unwrap()
        .expect("seed policy is valid");
    assert_eq!(p.name, "payments-api");
    assert_eq!(p.kind, PolicyKind::CiliumNetworkPolicy);
    assert_eq!(p.namespace.as_deref(), Some("default"));
    let (path, rule) = &p.rules[0];
    assert_eq!(path, "spec");
    let http = &rule.ingress[0].to_ports[0].rules.as_ref().unwrap().http[0];
    assert_eq!(http.method.as_deref(), Some("POST"));
    assert_eq!(http.path.as_deref(), Some("/v1/charge"));
    // Serializing the rule gives back the document's spec exactly.
    let original: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(serde_json::to_value(rule).unwrap(), original["spec"]);
}

#[test]
fn multiple_errors_are_all_reported() {
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: many}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [moon]
    toPorts: [{ports: [{port: "70000"}, {port: "80", protocol: ICMP}]}]
"#;
    let err = parse_documents(text).remove(0).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("many: spec.ingress[0].fromEntities[0]"),
        "{text}"
    );
    assert!(
        text.contains("many: spec.ingress[0].toPorts[0].ports[0].port: 70000"),
        "{text}"
    );
    assert!(
        text.contains("many: spec.ingress[0].toPorts[0].ports[1].protocol"),
        "{text}"
    );
}

#[test]
fn syntax_errors_and_non_policies_are_named() {
    let r = parse_documents("a: [unclosed");
    assert!(r[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("document 1: not valid YAML"));
    let r = parse_documents("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n");
    assert!(r[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("p: kind: \"Pod\" is not a policy kind"));
    let r = parse_documents("- 1\n- 2\n");
    assert!(r[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("must be a YAML/JSON object"));
    assert!(parse_documents("---\n---\n").is_empty());
}

/// Cilium's own example policies (`../shared/testdata/cilium-examples`,
/// sources in SOURCES.tsv): each file validates, or is rejected naming the
/// feature not built yet (or what is malformed in it). `ACCEPTED` is a
/// figure to raise: lifting a rejection means moving its file out of
/// `REJECTED`, so neither can change silently.
#[test]
fn cilium_examples_validate_or_name_what_is_missing() {
    const ACCEPTED: usize = 47;
    const FQDN: &str = "toFQDNs is not supported yet";
    const DNS: &str = "rules.dns: dns is not supported yet";
    const KAFKA: &str = "rules.kafka: kafka is not supported yet";
    const SERVICES: &str = "toServices is not supported yet";
    const LISTENER: &str = "listener is not supported yet";
    // Malformed examples, rejected as a user's typo would be: the API
    // server would prune these fields, silently changing the policy.
    const NULL_LABELS: &str = "matchLabels: invalid type: null, expected a map";
    const LOWER_OPERATOR: &str = "operator: unknown variant `in`";
    const REJECTED: &[(&str, &str)] = &[
        (
            "auth__auth.yaml",
            "spec.egress[0].auth: unknown field `auth`",
        ),
        ("getting-started__dns-matchname.yaml", FQDN),
        ("getting-started__dns-pattern.yaml", FQDN),
        ("getting-started__dns-port.yaml", FQDN),
        ("getting-started__kafka.yaml", KAFKA),
        (
            "host__allow-extended-protocols.yaml",
            "protocol VRRP is not supported yet",
        ),
        (
            "l3__egress-default-deny__egress-default-deny.yaml",
            "spec.egress: invalid type: null, expected a sequence",
        ),
        // `apiversion`: Kubernetes' field names are case-sensitive.
        ("l3__entities__from_nodes.yaml", "apiversion: unknown field"),
        ("l3__fqdn__fqdn-cascade.yaml", FQDN),
        ("l3__fqdn__fqdn-short.yaml", FQDN),
        ("l3__fqdn__fqdn.yaml", FQDN),
        (
            "l3__ingress-allow-all__ingress-allow-all.yaml",
            "fromEndpoints: invalid type: null, expected a sequence",
        ),
        ("l3__match-expressions__and-statement.yaml", LOWER_OPERATOR),
        ("l3__match-expressions__or-statement.yaml", LOWER_OPERATOR),
        ("l3__service__service-labels.yaml", SERVICES),
        ("l3__service__service.yaml", SERVICES),
        ("l4__envoy_forward_proxy.yaml", LISTENER),
        ("l4__envoy_listener_redirect.yaml", LISTENER),
        ("l4__l3_l4_combined.yaml", NULL_LABELS),
        ("l4__l4_sni.yaml", "serverNames is not supported yet"),
        ("l4__wildcard_port_listener.yaml", LISTENER),
        ("l7__dns__dns-upgrade.yaml", DNS),
        ("l7__dns__dns-visibility.yaml", DNS),
        ("l7__dns__dns.yaml", DNS),
        ("l7__http__http.yaml", "rules.HTTP: unknown field `HTTP`"),
        ("l7__kafka__kafka-Role.yaml", KAFKA),
        ("l7__kafka__kafka-role.yaml", KAFKA),
        ("l7__kafka__kafka.yaml", KAFKA),
        ("multi_rule.yaml", NULL_LABELS),
        ("service-empty.yaml", SERVICES),
        ("service.yaml", SERVICES),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/cilium-examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "the examples belong beside the project ({}): {e}",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut accepted = Vec::new();
    let mut problems = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let docs = parse_manifest(&std::fs::read_to_string(file).unwrap());
        let errors: Vec<String> = docs
            .iter()
            .filter_map(|d| match d {
                Document::Invalid(e) => Some(e.to_string()),
                _ => None,
            })
            .collect();
        let policies = docs
            .iter()
            .filter(|d| matches!(d, Document::Policy(_)))
            .count();
        let expected = REJECTED
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, why)| *why);
        match (errors.is_empty() && policies > 0, expected) {
            (true, None) => accepted.push(name),
            (true, Some(why)) => problems.push(format!(
                "{name} is accepted now: move it out of REJECTED ({why:?}) and raise ACCEPTED"
            )),
            (false, None) => problems.push(format!("{name} is rejected:\n{}", errors.join("\n"))),
            (false, Some(why)) => {
                if !errors.iter().any(|e| e.contains(why)) {
                    problems.push(format!(
                        "{name}: rejected without naming {why:?}:\n{}",
                        errors.join("\n")
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert_eq!(accepted.len(), ACCEPTED, "accepted: {accepted:#?}");
    assert_eq!(files.len(), ACCEPTED + REJECTED.len(), "a file is missing");
}

#[test]
fn manifests_skip_other_objects_and_prune_description() {
    let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec: {replicas: 2}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
description: "L3 rule: allow web"
metadata: {name: allow-web}
spec:
  endpointSelector: {}
  ingress: [{fromEndpoints: [{matchLabels: {app: web}}]}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
---
kind: List
apiVersion: v1
items:
- {apiVersion: v1, kind: Service, metadata: {name: web}}
- {apiVersion: v1, kind: CiliumNetworkPolicy, metadata: {name: old}, spec: {endpointSelector: {}}}
"#;
    let docs = parse_manifest(text);
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| match d {
            Document::Skipped(s) => format!("skipped {s}"),
            Document::Policy(p) => format!("policy {}", p.name),
            Document::Invalid(e) => format!("invalid {e}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "skipped Deployment/web",
            "policy allow-web",
            "skipped Ingress/web",
            "skipped Service/web",
            "invalid old: apiVersion: \"v1\" is not supported (want cilium.io/v2)",
        ]
    );
    // The description is pruned from what is stored, as the API server does.
    let Document::Policy(p) = &docs[1] else {
        unreachable!()
    };
    assert!(p.object.get("description").is_none());
    // Strict parsing (stored policies) still calls other kinds errors.
    let strict = parse_documents(text);
    assert!(strict[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("\"Deployment\" is not a policy kind"));
    // A description must be text.
    let bad = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\ndescription: {a: b}\n\
               metadata: {name: d}\nspec: {endpointSelector: {}}\n";
    let err = parse_documents(bad).remove(0).unwrap_err();
    assert!(
        err.to_string().contains("d: description: must be a string"),
        "{err}"
    );
}

#[test]
fn named_ports_validate_with_a_warning() {
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: np}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: http-80, protocol: TCP}]}]
  egress:
  - toPorts: [{ports: [{port: DNS}]}]
"#;
    let p = parse_documents(text).remove(0).unwrap();
    let w: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w[0].starts_with(
            "spec.ingress[0].toPorts[0].ports[0].port: named port \"http-80\" matches only where \
         the pods the rule selects declare a container port of that name and protocol TCP"
        ),
        "{}",
        w[0]
    );
    assert!(
        w[1].starts_with(
            "spec.egress[0].toPorts[0].ports[0].port: named port \"dns\" matches only where \
         the destination pods declare"
        ),
        "{}",
        w[1]
    );
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-zA-Z0-9:/._ -]{0,12}".prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "TCP",
            "tcp",
            "80",
            "80800",
            "In",
            "Exists",
            "world",
            "10.0.0.0/8",
            "POST",
            "(",
            "fromEndpoints",
            "toPorts",
            "app",
        ])
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop::sample::select(vec![
            "endpointSelector",
            "matchLabels",
            "matchExpressions",
            "key",
            "operator",
            "values",
            "ingress",
            "egress",
            "ingressDeny",
            "egressDeny",
            "fromEndpoints",
            "toEndpoints",
            "fromCIDR",
            "toCIDRSet",
            "cidr",
            "except",
            "fromEntities",
            "toPorts",
            "ports",
            "port",
            "endPort",
            "protocol",
            "rules",
            "http",
            "method",
            "path",
            "headers",
            "icmps",
            "fields",
            "type",
            "family",
            "toFQDNs",
            "app",
            "x",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys, inner, 0..5).prop_map(|m| serde_json::Value::Object(
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Generated documents (policy-shaped and not) never panic the parser
    /// or validator, as JSON or as YAML.
    #[test]
    fn arbitrary_documents_never_panic(spec in json_value()) {
        let doc = serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "fuzz"},
            "spec": spec,
        });
        let json = doc.to_string();
        let _ = parse_documents(&json);
        let yaml = serde_yaml::to_string(&doc).unwrap();
        let _ = parse_documents(&yaml);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_documents(&text);
    }
}
