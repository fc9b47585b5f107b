//! Compiled policy-map entries, looked up in Cilium's order, against the
//! reference oracle: random identities, policies and flows.

use std::collections::BTreeSet;

use axoneme_identity::{LabelSet, NumericIdentity, Source};
use proptest::prelude::*;

use crate::compile::{compute, Decision, Direction, EnforcementMode, Key, Verdict, PROTO_TCP};
use crate::document::{parse_documents, Policy};
use crate::oracle::{direction_explain, policy_name, Explanation, OracleVerdict};
use crate::ports::NO_PORTS;
use crate::selector::Identities;
use crate::testgen::{identities, policy, setup, PORTS, PROTOS};

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

/// Whether an explanation accounts for its verdict (what `policy explain`
/// prints is never empty or contradictory), naming only the policies given.
fn attributed(e: &Explanation, policies: &[Policy]) -> bool {
    let names: BTreeSet<String> = policies.iter().map(policy_name).collect();
    let known = e
        .selected_by
        .iter()
        .chain(&e.denied_by)
        .chain(&e.allowed_by)
        .chain(e.http.iter().map(|(_, a)| a))
        .chain(&e.unmet_requires)
        .all(|a| {
            names.contains(&a.policy)
                && (a.path.starts_with("spec.") || a.path == "spec" || a.path.starts_with("specs["))
        });
    let accounted = match &e.verdict {
        OracleVerdict::Deny(181) => !e.denied_by.is_empty(),
        OracleVerdict::Deny(_) => {
            e.enforced && e.denied_by.is_empty() && e.allowed_by.is_empty() && e.http.is_empty()
        }
        OracleVerdict::Redirect(rules) => e.allowed_by.is_empty() && rules.len() == e.http.len(),
        OracleVerdict::Allow => !e.enforced || !e.allowed_by.is_empty(),
    };
    known && accounted && (e.selected_by.is_empty() || e.enforced)
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
            let ports = ids.ports(subject);
            let compiled = compute(&policies, &ids, &subject_labels, ports, mode);
            // Per-peer computation (the engine's fast path) gives the same entries.
            for &peer in &peers {
                let partial = crate::compile::compute_for_peer(&policies, &ids, &subject_labels, ports, mode, peer);
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
                            let explained = direction_explain(&policies, &ids, &subject_labels, ports, dir, peer, proto, port, mode);
                            prop_assert!(
                                attributed(&explained, &policies),
                                "{dir:?} peer {peer} proto {proto} port {port}: explanation does not account for its verdict: {explained:#?}"
                            );
                            let want = explained.verdict;
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
    let p = compute(
        &policies,
        &ids,
        &payments,
        &NO_PORTS,
        EnforcementMode::Default,
    );

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
