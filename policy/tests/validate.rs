//! Validation against the corpus in tests/corpus: every invalid policy fails
//! with the expected field path and message (first line `# expect: ...`),
//! every valid one parses, and arbitrary input never panics the parser.

use std::path::{Path, PathBuf};

use axoneme_policy::{parse_documents, PolicyKind};
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
