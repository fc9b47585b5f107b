use axoneme_identity::{LabelSet, NumericIdentity, Source};

use super::*;
use crate::compile::{
    add_cidr_identities, cidr_identities, compute, Decision, DenyReason, Direction,
    EnforcementMode, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use crate::document::parse_documents;
use crate::oracle::{direction_verdict, OracleVerdict};
use crate::ports::NO_PORTS;
use crate::selector::Identities;

fn parse(yaml: &str) -> Result<Policy, PolicyErrors> {
    let mut docs = parse_documents(yaml);
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

fn labels(items: &[&str]) -> LabelSet {
    LabelSet::parse(items, Source::K8s).unwrap()
}

#[test]
fn translates_like_cilium() {
    let p = parse(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: api}}
    - namespaceSelector: {matchLabels: {team: ops}}
      podSelector: {matchExpressions: [{key: role, operator: In, values: [backup]}]}
    - namespaceSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - port: 5432
    - {protocol: UDP, port: 9000, endPort: 9010}
  egress:
  - ports: [{protocol: SCTP}]
"#,
    )
    .unwrap();
    assert_eq!(p.kind, PolicyKind::NetworkPolicy);
    assert_eq!(p.kind.short_name(), "knp");
    assert_eq!(p.namespace.as_deref(), Some("shop"));
    let (path, rule) = &p.rules[0];
    assert_eq!(path, "spec");
    let got = serde_json::to_value(rule).unwrap();
    let ports = serde_json::json!([
        {"ports": [{"port": "5432", "protocol": "TCP"}]},
        {"ports": [{"port": "9000", "endPort": 9010, "protocol": "UDP"}]},
    ]);
    let want = serde_json::json!({
        "endpointSelector": {"matchLabels": {"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": "shop"}},
        "ingress": [
            {"fromEndpoints": [{"matchLabels": {"k8s:app": "api", "k8s:io.kubernetes.pod.namespace": "shop"}}],
             "toPorts": ports},
            {"fromEndpoints": [{
                "matchLabels": {"k8s:io.cilium.k8s.namespace.labels.team": "ops"},
                "matchExpressions": [
                    {"key": "k8s:role", "operator": "In", "values": ["backup"]},
                    {"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"},
                ]}],
             "toPorts": ports},
            {"fromEndpoints": [{"matchExpressions": [
                {"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}]}],
             "toPorts": ports},
            {"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}], "toPorts": ports},
        ],
        "egress": [
            {"toEntities": ["all"], "toPorts": [{"ports": [{"port": "1", "endPort": 65535, "protocol": "SCTP"}]}]},
        ],
        "labels": [
            {"key": "io.cilium.k8s.policy.derived-from", "value": "NetworkPolicy", "source": "k8s"},
            {"key": "io.cilium.k8s.policy.name", "value": "db", "source": "k8s"},
            {"key": "io.cilium.k8s.policy.namespace", "value": "shop", "source": "k8s"},
        ],
    });
    assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
}

#[test]
fn policy_types_default_and_default_deny() {
    let rule = |spec: &str| {
        let text = format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np}}\nspec: {spec}\n"
            );
        parse(&text).unwrap().rules.remove(0).1
    };
    // No types, no rules: ingress default-deny only.
    let r = rule("{podSelector: {}}");
    assert_eq!(r.ingress.len(), 1);
    assert_eq!(r.ingress[0].from_entities, ["none"]);
    assert!(r.egress.is_empty());
    // Egress rules without types: egress too, ingress still default-deny.
    let r = rule("{podSelector: {}, egress: [{}]}");
    assert_eq!(r.ingress[0].from_entities, ["none"]);
    assert_eq!(r.egress[0].to_entities, ["all"]);
    // Egress only.
    let r = rule("{podSelector: {}, policyTypes: [Egress]}");
    assert!(r.ingress.is_empty());
    assert_eq!(r.egress[0].to_entities, ["none"]);
    // Both.
    let r = rule("{podSelector: {}, policyTypes: [Ingress, Egress]}");
    assert_eq!(r.ingress[0].from_entities, ["none"]);
    assert_eq!(r.egress[0].to_entities, ["none"]);
    // Empty `from` allows every peer.
    let r = rule("{podSelector: {}, ingress: [{}]}");
    assert_eq!(r.ingress[0].from_entities, ["all"]);
}

/// A listed direction without rules denies everything for the selected
/// pods (compiled entries and oracle alike), and nothing for others.
#[test]
fn default_deny_denies_everything() {
    let p = parse(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: lockdown, namespace: shop}
spec:
  podSelector: {matchLabels: {app: vault}}
  policyTypes: [Ingress, Egress]
"#,
    )
    .unwrap();
    // A CIDR peer too, from another policy.
    let cidr = parse(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other, namespace: elsewhere}
spec:
  endpointSelector: {}
  egress: [{toCIDR: [192.0.2.0/24]}]
"#,
    )
    .unwrap();
    let policies = vec![p, cidr];
    let mut ids = Identities::with_reserved();
    let vault = labels(&["app=vault", "io.kubernetes.pod.namespace=shop"]);
    let web = labels(&["app=web", "io.kubernetes.pod.namespace=shop"]);
    let far = labels(&["app=vault", "io.kubernetes.pod.namespace=other"]);
    ids.insert(NumericIdentity(300), vault.clone());
    ids.insert(NumericIdentity(301), web.clone());
    ids.insert(NumericIdentity(302), far.clone());
    add_cidr_identities(&mut ids, &cidr_identities(&policies));
    let peers: Vec<NumericIdentity> = ids.iter().map(|(id, _)| id).collect();
    assert!(peers.iter().any(|id| id.is_local_scope()));
    let flows = [
        (PROTO_TCP, 80),
        (PROTO_TCP, 65535),
        (PROTO_UDP, 53),
        (PROTO_SCTP, 9),
        (PROTO_ICMP, 8),
    ];

    let compiled = compute(&policies, &ids, &vault, &NO_PORTS, EnforcementMode::Default);
    for dir in [Direction::Ingress, Direction::Egress] {
        let d = compiled.direction(dir);
        assert!(d.enforced, "{dir:?}");
        assert!(d.entries.is_empty(), "{dir:?}: {:?}", d.entries);
        for &peer in &peers {
            for (proto, port) in flows {
                assert_eq!(
                    d.lookup(peer, proto, port),
                    Decision::Deny(DenyReason::PolicyDenied),
                    "{dir:?} {peer} {proto}/{port}"
                );
                assert_eq!(
                    direction_verdict(
                        &policies,
                        &ids,
                        &vault,
                        &NO_PORTS,
                        dir,
                        peer,
                        proto,
                        port,
                        EnforcementMode::Default
                    ),
                    OracleVerdict::Deny(133)
                );
            }
        }
    }
    // Pods the policy does not select are unaffected.
    for subject in [&web, &far] {
        let c = compute(
            &policies,
            &ids,
            subject,
            &NO_PORTS,
            EnforcementMode::Default,
        );
        assert!(!c.ingress.enforced && !c.egress.enforced);
        assert_eq!(
            c.ingress.lookup(NumericIdentity(2), PROTO_TCP, 80),
            Decision::Allow
        );
    }
}

#[test]
fn errors_carry_network_policy_paths() {
    let e = parse(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: my-np}
spec:
  podSelector: {}
  policyTypes: [Ingress, Sideways]
  ingress:
  - from:
    - {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}
      podSelector: {}
    ports:
    - port: 70000
    - {port: http, endPort: 81}
    - {port: 80, endPort: 79}
    - {protocol: ICMP, port: 1}
    - endPort: 90
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: In}]}
  egress:
  - to: [{podSelector: {matchLabels: {"bad key": x}}}]
"#,
    )
    .unwrap_err();
    let text = e.to_string();
    for want in [
            "my-np: spec.policyTypes[1]: \"Sideways\" is not a policy type",
            "my-np: spec.egress: policyTypes does not list Egress",
            "my-np: spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock",
            "my-np: spec.ingress[0].from[1].ipBlock: ipBlock cannot be combined",
            "my-np: spec.ingress[0].from[1].ipBlock.except[0]: 11.0.0.0/8 is not strictly inside 10.0.0.0/8",
            "my-np: spec.ingress[0].ports[0].port: 70000 is not a valid port (1-65535)",
            "my-np: spec.ingress[0].ports[1].endPort: 81: a range needs a numeric port, not the named port \"http\"",
            "my-np: spec.ingress[0].ports[2].endPort: 79 must be between port (80) and 65535",
            "my-np: spec.ingress[0].ports[3].protocol: \"ICMP\" is not one of TCP, UDP, SCTP",
            "my-np: spec.ingress[0].ports[4].endPort: 90: endPort needs a port",
            "my-np: spec.ingress[1].from[0].namespaceSelector.matchExpressions[0].values: operator In needs at least one value",
            "my-np: spec.egress[0].to[0].podSelector.matchLabels.bad key:",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    assert!(!text.contains("translated rule is invalid"), "{text}");
}

#[test]
fn object_level_errors() {
    let e = parse("apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {podSelector: {}}\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("a: apiVersion: \"networking.k8s.io/v1beta1\" is not supported"),
        "{e}"
    );
    let e = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {podSelector: {}, ingress: [{form: []}]}\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("a: spec.ingress[0].form: unknown field `form`"),
        "{e}"
    );
    let e = parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {}\n",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("a: spec.podSelector: is required"),
        "{e}"
    );
    let e =
        parse("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a}\nspec: {}\n")
            .unwrap_err();
    assert!(
        e.to_string()
            .contains("a: kind: \"Ingress\" is not a policy kind"),
        "{e}"
    );
}

fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "TCP",
            "UDP",
            "ICMP",
            "80",
            "http",
            "70000",
            "Ingress",
            "Egress",
            "In",
            "Exists",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "::/0",
            "app",
            "",
        ])
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop::sample::select(vec![
            "podSelector",
            "namespaceSelector",
            "matchLabels",
            "matchExpressions",
            "key",
            "operator",
            "values",
            "policyTypes",
            "ingress",
            "egress",
            "from",
            "to",
            "ipBlock",
            "cidr",
            "except",
            "ports",
            "port",
            "endPort",
            "protocol",
            "app",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys, inner, 0..5).prop_map(|m| {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 1000, ..Default::default() })]

    /// Arbitrary specs never panic the translator; what it accepts is a
    /// valid cilium.io/v2 rule.
    #[test]
    fn arbitrary_specs_never_panic(spec in json_value()) {
        let doc = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": "fuzz", "namespace": "ns"},
            "spec": spec,
        });
        if let Ok(p) = crate::document::parse_object(&doc, "fuzz") {
            let mut errors = Vec::new();
            validate::rule(&p.rules[0].1, PolicyKind::NetworkPolicy, "spec", &mut errors, &mut Vec::new());
            proptest::prop_assert!(errors.is_empty(), "{errors:?}");
        }
    }
}
