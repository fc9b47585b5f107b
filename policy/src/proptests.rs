//! Compiled policy-map entries, looked up in Cilium's order, against the
//! reference oracle: random identities, policies and flows.

use std::collections::BTreeSet;

use axoneme_identity::{LabelSet, NumericIdentity, Source};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::compile::{
    add_cidr_identities, cidr_identities, compute, Decision, Direction, EnforcementMode, Key,
    Verdict, PROTO_TCP,
};
use crate::document::{parse_documents, parse_object, Policy};
use crate::oracle::{direction_verdict, OracleVerdict};
use crate::selector::Identities;

const APPS: &[&str] = &["a", "b", "c"];
const ENVS: &[&str] = &["prod", "dev"];
const NAMESPACES: &[&str] = &["default", "other"];
const PORTS: &[u16] = &[8, 53, 79, 80, 81, 443, 8080, 8099, 8100, 9000];
const PROTOS: &[u8] = &[1, 6, 17, 132];

fn selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(APPS).prop_map(|a| json!({"matchLabels": {"app": a}})),
        (prop::sample::select(APPS), prop::sample::select(ENVS))
            .prop_map(|(a, e)| json!({"matchLabels": {"k8s:app": a, "env": e}})),
        prop::sample::select(ENVS).prop_map(
            |e| json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": [e]}]})
        ),
        prop::sample::select(APPS).prop_map(
            |a| json!({"matchExpressions": [{"key": "app", "operator": "In", "values": [a, "zz"]}]})
        ),
        Just(json!({"matchExpressions": [{"key": "env", "operator": "Exists"}]})),
        Just(json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})),
        prop::sample::select(NAMESPACES)
            .prop_map(|n| json!({"matchLabels": {"io.kubernetes.pod.namespace": n}})),
        Just(json!({"matchLabels": {"reserved:host": ""}})),
    ]
}

fn ports() -> impl Strategy<Value = Value> {
    let port = (
        prop::sample::select(PORTS),
        prop::option::of(0u16..40),
        prop::sample::select(vec![None, Some("TCP"), Some("UDP"), Some("ANY")]),
    )
        .prop_map(|(p, end, proto)| {
            let mut v = json!({"port": p.to_string()});
            if let Some(e) = end {
                v["endPort"] = json!(i32::from(p) + i32::from(e));
            }
            if let Some(proto) = proto {
                v["protocol"] = json!(proto);
            }
            v
        });
    prop::collection::vec(port, 1..3).prop_map(Value::from)
}

fn http() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop_oneof![
        Just(json!([{"method": "GET"}])),
        Just(json!([{"method": "POST", "path": "/v1/charge"}])),
        Just(json!([{"path": "/x/.*"}, {"method": "PUT"}])),
    ])
}

/// One allow or deny item for direction `dir` ("from" or "to").
fn item(dir: &'static str, deny: bool) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(selector(), 1..3)),
        prop::option::of(prop::sample::subsequence(vec!["world", "cluster", "host", "all", "remote-node"], 1..3)),
        prop::option::of(prop::sample::select(vec!["10.0.0.0/8", "10.1.0.0/16", "192.168.1.0/24"])),
        prop::option::of(selector()),
        prop::option::of((ports(), http())),
        any::<bool>(),
    )
        .prop_map(move |(eps, ents, cidr, req, to_ports, icmp)| {
            let mut v = json!({});
            if let Some(eps) = eps {
                v[format!("{dir}Endpoints")] = json!(eps);
            }
            if let Some(ents) = ents {
                v[format!("{dir}Entities")] = json!(ents);
            }
            if let Some(c) = cidr {
                if c == "10.0.0.0/8" {
                    v[format!("{dir}CIDRSet")] = json!([{"cidr": c, "except": ["10.1.0.0/16"]}]);
                } else {
                    v[format!("{dir}CIDR")] = json!([c]);
                }
            }
            if let (Some(r), false) = (req, deny) {
                v[format!("{dir}Requires")] = json!([r]);
            }
            match to_ports {
                Some((ports, http)) => {
                    let mut pr = json!({"ports": ports});
                    if let (Some(h), false) = (http, deny) {
                        // HTTP rules need TCP ports without ranges.
                        pr = json!({"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": h}});
                    }
                    v["toPorts"] = json!([pr]);
                }
                None if icmp => v["icmps"] = json!([{"fields": [{"type": 8}]}]),
                None => {}
            }
            v
        })
}

fn rule() -> impl Strategy<Value = Value> {
    (
        selector(),
        prop::collection::vec(item("from", false), 0..3),
        prop::collection::vec(item("from", true), 0..2),
        prop::collection::vec(item("to", false), 0..3),
        prop::collection::vec(item("to", true), 0..2),
        prop::option::of((any::<bool>(), any::<bool>())),
    )
        .prop_map(|(sel, ing, ing_deny, eg, eg_deny, dd)| {
            let mut r = json!({"endpointSelector": sel});
            for (k, v) in [
                ("ingress", ing),
                ("ingressDeny", ing_deny),
                ("egress", eg),
                ("egressDeny", eg_deny),
            ] {
                if !v.is_empty() {
                    r[k] = json!(v);
                }
            }
            if let Some((i, e)) = dd {
                r["enableDefaultDeny"] = json!({"ingress": i, "egress": e});
            }
            r
        })
}

fn policy(i: usize) -> impl Strategy<Value = Value> {
    (prop::option::of(prop::sample::select(NAMESPACES)), prop::collection::vec(rule(), 1..3)).prop_map(
        move |(ns, specs)| match ns {
            Some(ns) => json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                               "metadata": {"name": format!("p{i}"), "namespace": ns}, "specs": specs}),
            None => json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                           "metadata": {"name": format!("p{i}")}, "specs": specs}),
        },
    )
}

fn identities() -> impl Strategy<Value = Vec<LabelSet>> {
    let one = (
        prop::sample::select(APPS),
        prop::option::of(prop::sample::select(ENVS)),
        prop::sample::select(NAMESPACES),
    )
        .prop_map(|(a, e, n)| {
            let mut l = vec![
                format!("app={a}"),
                format!("io.kubernetes.pod.namespace={n}"),
            ];
            if let Some(e) = e {
                l.push(format!("env={e}"));
            }
            LabelSet::parse(l, Source::K8s).unwrap()
        });
    prop::collection::btree_set(one, 1..7).prop_map(|s| s.into_iter().collect())
}

fn setup(labels: &[LabelSet], docs: &[Value]) -> (Vec<Policy>, Identities, Vec<NumericIdentity>) {
    let policies: Vec<Policy> = docs
        .iter()
        .map(|d| {
            parse_object(d, "generated")
                .unwrap_or_else(|e| panic!("generator made an invalid policy:\n{e}\n{d:#}"))
        })
        .collect();
    let mut ids = Identities::with_reserved();
    let mut endpoints = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        let id = NumericIdentity(256 + u32::try_from(i).unwrap());
        ids.insert(id, l.clone());
        endpoints.push(id);
    }
    add_cidr_identities(&mut ids, &cidr_identities(&policies));
    (policies, ids, endpoints)
}

fn same(d: &Decision, o: &OracleVerdict) -> bool {
    match (d, o) {
        (Decision::Allow, OracleVerdict::Allow) => true,
        (Decision::Deny(r), OracleVerdict::Deny(c)) => r.code() == *c,
        (Decision::Redirect(a), OracleVerdict::Redirect(b)) => {
            let a: BTreeSet<String> = a.iter().map(|r| format!("{r:?}")).collect();
            let b: BTreeSet<String> = b.iter().map(|r| format!("{r:?}")).collect();
            a == b
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn compiled_entries_agree_with_the_oracle(
        labels in identities(),
        docs in (0usize..3).prop_flat_map(|n| (0..n + 1).map(policy).collect::<Vec<_>>()),
        mode in prop::sample::select(vec![EnforcementMode::Default, EnforcementMode::Default, EnforcementMode::Always, EnforcementMode::Never]),
    ) {
        let (policies, ids, endpoints) = setup(&labels, &docs);
        let peers: Vec<NumericIdentity> = ids.iter().map(|(id, _)| id).collect();
        for &subject in &endpoints {
            let subject_labels = ids.get(subject).unwrap().clone();
            let compiled = compute(&policies, &ids, &subject_labels, mode);
            // Per-peer computation (the engine's fast path) gives the same entries.
            for &peer in &peers {
                let partial = crate::compile::compute_for_peer(&policies, &ids, &subject_labels, mode, peer);
                for dir in [Direction::Ingress, Direction::Egress] {
                    let only = |p: &crate::compile::EndpointPolicy| -> Vec<(Key, Verdict)> {
                        p.direction(dir).entries.iter().filter(|(k, _)| k.identity == peer).map(|(k, v)| (*k, v.clone())).collect()
                    };
                    prop_assert_eq!(only(&partial), only(&compiled), "per-peer entries for {} {:?}", peer, dir);
                }
            }
            for dir in [Direction::Ingress, Direction::Egress] {
                for &peer in &peers {
                    for &proto in PROTOS {
                        for &port in PORTS {
                            let got = compiled.direction(dir).lookup(peer, proto, port);
                            let want = direction_verdict(&policies, &ids, &subject_labels, dir, peer, proto, port, mode);
                            prop_assert!(
                                same(&got, &want),
                                "subject {subject} {dir:?} peer {peer} proto {proto} port {port}: compiled {got:?}, oracle {want:?}\nentries: {:#?}\npolicies: {}",
                                compiled.direction(dir).entries,
                                serde_json::to_string_pretty(&docs).unwrap()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn seed_policy_compiles_to_exactly_the_expected_entries() {
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/seed-payments-policy.yaml"
    ))
    .expect("seed policy beside the project");
    let policies: Vec<Policy> = parse_documents(&seed)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let mut ids = Identities::with_reserved();
    let ns = "io.kubernetes.pod.namespace=default";
    let payments = LabelSet::parse(["app=payments", ns], Source::K8s).unwrap();
    let checkout = LabelSet::parse(["app=checkout", ns], Source::K8s).unwrap();
    let intruder = LabelSet::parse(["app=intruder", ns], Source::K8s).unwrap();
    ids.insert(NumericIdentity(300), payments.clone());
    ids.insert(NumericIdentity(301), checkout);
    ids.insert(NumericIdentity(302), intruder);
    let p = compute(&policies, &ids, &payments, EnforcementMode::Default);

    assert!(p.ingress.enforced, "ingress is default-deny");
    let entries: Vec<(Key, Verdict)> = p.ingress.entries.clone().into_iter().collect();
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let (key, verdict) = &entries[0];
    assert_eq!(
        *key,
        Key {
            identity: NumericIdentity(301),
            protocol: PROTO_TCP,
            port: 8080,
            prefix: 16
        }
    );
    let Verdict::Redirect(rules) = verdict else {
        panic!("expected a redirect, got {verdict:?}")
    };
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].method.as_deref(), Some("POST"));
    assert_eq!(rules[0].path.as_deref(), Some("/v1/charge"));
    // Everything else into payments is denied; egress is unrestricted.
    assert!(
        matches!(p.ingress.lookup(NumericIdentity(302), PROTO_TCP, 8080), Decision::Deny(r) if r.code() == 133)
    );
    assert!(matches!(
        p.ingress.lookup(NumericIdentity(301), PROTO_TCP, 8081),
        Decision::Deny(_)
    ));
    assert!(matches!(
        p.ingress.lookup(NumericIdentity(2), PROTO_TCP, 8080),
        Decision::Deny(_)
    ));
    assert!(!p.egress.enforced);
    assert!(p.egress.entries.is_empty());
    assert_eq!(
        p.egress.lookup(NumericIdentity(2), PROTO_TCP, 443),
        Decision::Allow
    );
}
