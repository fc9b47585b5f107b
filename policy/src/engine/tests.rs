use super::*;
use crate::document::parse_documents;
use axoneme_identity::{ReservedIdentity, Source};
use proptest::prelude::*;

fn labels(app: &str, ns: &str) -> LabelSet {
    LabelSet::parse(
        [
            format!("app={app}"),
            format!("io.kubernetes.pod.namespace={ns}"),
        ],
        Source::K8s,
    )
    .unwrap()
}

fn policy(yaml: &str) -> Policy {
    parse_documents(yaml).remove(0).unwrap()
}

fn allow_from(name: &str, to: &str, from: &str, port: u16) -> Policy {
    policy(&format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: {to}}}}}\n  ingress:\n  \
         - fromEndpoints: [{{matchLabels: {{app: {from}}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n"
    ))
}

/// Applies deltas to a copy of an endpoint's maps.
fn apply(maps: &mut BTreeMap<NumericIdentity, EndpointPolicy>, deltas: &[Delta]) {
    for d in deltas {
        match d {
            Delta::Upsert {
                endpoint,
                direction,
                key,
                verdict,
            } => {
                let dp = maps.entry(*endpoint).or_default().direction_mut(*direction);
                dp.entries.insert(*key, verdict.clone());
            }
            Delta::Remove {
                endpoint,
                direction,
                key,
            } => {
                let dp = maps.entry(*endpoint).or_default().direction_mut(*direction);
                dp.entries.remove(key);
            }
            Delta::Enforced {
                endpoint,
                direction,
                enforced,
            } => {
                maps.entry(*endpoint)
                    .or_default()
                    .direction_mut(*direction)
                    .enforced = *enforced;
            }
        }
    }
}

/// A host policy (`nodeSelector`) selects the host endpoint of the
/// nodes whose labels it matches and nothing else; an
/// `endpointSelector`, even `{}`, never selects a host endpoint.
#[test]
fn node_selectors_select_host_endpoints_only() {
    let mut e = Engine::new(EnforcementMode::Default);
    let host = ReservedIdentity::Host.id();
    let web = NumericIdentity(300);
    let host_labels = |env: &str| {
        let mut l = LabelSet::parse(["reserved:host"], Source::Reserved).unwrap();
        l.insert(axoneme_identity::Label::new(Source::K8s, "env", env).unwrap());
        l
    };
    e.set_identity(host, Some(host_labels("prod")));
    e.set_identity(web, Some(labels("web", "default")));
    e.add_endpoint(host);
    e.add_endpoint(web);
    let dev = policy(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: dev}\n\
         spec:\n  nodeSelector: {matchLabels: {env: dev}}\n  ingress:\n  \
         - fromEntities: [world]\n    toPorts: [{ports: [{port: \"22\", protocol: TCP}]}]\n",
    );
    let all = policy(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: all}\n\
         spec:\n  endpointSelector: {}\n  ingress: [{fromEntities: [cluster]}]\n",
    );
    assert!(
        e.set_policy("dev", Some(dev)).is_empty(),
        "no node is dev yet"
    );
    let d = e.set_policy("all", Some(all));
    assert!(d.iter().all(|d| !matches!(d, Delta::Upsert { endpoint, .. } | Delta::Enforced { endpoint, .. } if *endpoint == host)), "{d:?}");
    assert!(e.endpoint_policy(web).unwrap().ingress.enforced);
    // The node gets the label: its host endpoint is now selected.
    e.set_identity(host, Some(host_labels("dev")));
    let p = e.endpoint_policy(host).unwrap();
    assert!(p.ingress.enforced && !p.egress.enforced);
    assert!(p.ingress.entries.keys().all(|k| k.port == 22), "{p:?}");
    assert!(!p.ingress.entries.is_empty());
}

#[test]
fn deltas_are_only_what_changed() {
    let mut e = Engine::new(EnforcementMode::Default);
    let (web, api, db) = (
        NumericIdentity(300),
        NumericIdentity(301),
        NumericIdentity(302),
    );
    e.set_identity(web, Some(labels("web", "default")));
    e.set_identity(db, Some(labels("db", "default")));
    assert!(
        e.add_endpoint(db).is_empty(),
        "no policy: nothing to program"
    );
    let d = e.set_policy("p1", Some(allow_from("p1", "db", "api", 5432)));
    assert_eq!(
        d,
        vec![Delta::Enforced {
            endpoint: db,
            direction: Direction::Ingress,
            enforced: true
        }]
    );
    // A new identity that the policy names: exactly one entry appears.
    let d = e.set_identity(api, Some(labels("api", "default")));
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        matches!(&d[0], Delta::Upsert { endpoint, key, verdict: Verdict::Allow, .. }
        if *endpoint == db && key.identity == api && key.port == 5432)
    );
    // An identity nobody names changes nothing.
    assert!(e
        .set_identity(NumericIdentity(303), Some(labels("other", "default")))
        .is_empty());
    // Removing the identity removes its entry.
    let d = e.set_identity(api, None);
    assert!(matches!(&d[..], [Delta::Remove { key, .. }] if key.identity == api));
    // Deleting the policy lifts enforcement.
    let d = e.set_policy("p1", None);
    assert_eq!(
        d,
        vec![Delta::Enforced {
            endpoint: db,
            direction: Direction::Ingress,
            enforced: false
        }]
    );
}

#[test]
fn named_ports_follow_the_endpoints_declaring_them() {
    use axoneme_identity::{NamedPort, PortProtocol};
    let tcp = |port| -> NamedPorts {
        [(
            "postgres".to_string(),
            NamedPort {
                protocol: PortProtocol::Tcp,
                port,
            },
        )]
        .into()
    };
    let mut e = Engine::new(EnforcementMode::Default);
    let mut maps = BTreeMap::new();
    let (web, db) = (NumericIdentity(300), NumericIdentity(301));
    e.set_identity(web, Some(labels("web", "default")));
    e.set_identity(db, Some(labels("db", "default")));
    apply(&mut maps, &e.add_endpoint(db));
    apply(&mut maps, &e.add_endpoint(web));
    let p = policy(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n\
         specs:\n- endpointSelector: {matchLabels: {app: db}}\n  ingress:\n  \
         - fromEndpoints: [{matchLabels: {app: web}}]\n    toPorts: [{ports: [{port: postgres, protocol: TCP}]}]\n\
         - endpointSelector: {matchLabels: {app: web}}\n  egress:\n  \
         - toEndpoints: [{matchLabels: {app: db}}]\n    toPorts: [{ports: [{port: postgres}]}]\n",
    );
    apply(&mut maps, &e.set_policy("p", Some(p)));
    // No pod declares the name yet: it matches nothing.
    assert!(maps[&db].ingress.entries.is_empty());
    assert_eq!(e.undeclared_named_ports("p").len(), 2);
    // A db pod declares it: db's ingress and web's egress open 5432.
    let d = e.set_endpoint_ports("db-1", Some((db, tcp(5432))));
    apply(&mut maps, &d);
    assert_matches_full(&e, &maps);
    let upserts: Vec<(NumericIdentity, Direction, u16)> = d
        .iter()
        .filter_map(|d| match d {
            Delta::Upsert {
                endpoint,
                direction,
                key,
                ..
            } => Some((*endpoint, *direction, key.port)),
            _ => None,
        })
        .collect();
    assert_eq!(
        upserts,
        vec![
            (db, Direction::Ingress, 5432),
            (web, Direction::Egress, 5432)
        ]
    );
    assert!(e.undeclared_named_ports("p").is_empty());
    // A second db pod names another port: the identity has both.
    apply(
        &mut maps,
        &e.set_endpoint_ports("db-2", Some((db, tcp(6432)))),
    );
    assert_matches_full(&e, &maps);
    assert_eq!(
        e.identity_ports(db)
            .resolve("postgres", 6)
            .collect::<Vec<_>>(),
        vec![5432, 6432]
    );
    // The same report again changes nothing.
    assert!(e
        .set_endpoint_ports("db-2", Some((db, tcp(6432))))
        .is_empty());
    // The first pod goes: only 6432 is left.
    let d = e.set_endpoint_ports("db-1", None);
    apply(&mut maps, &d);
    assert_matches_full(&e, &maps);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d
        .iter()
        .all(|d| matches!(d, Delta::Remove { key, .. } if key.port == 5432)));
    // A pod moving to another identity takes its ports along.
    apply(
        &mut maps,
        &e.set_endpoint_ports("db-2", Some((web, tcp(6432)))),
    );
    assert_matches_full(&e, &maps);
    assert!(maps[&db].ingress.entries.is_empty());
}

/// Checks the engine's maps against a full recomputation.
fn assert_matches_full(e: &Engine, maps: &BTreeMap<NumericIdentity, EndpointPolicy>) {
    let policies = e.policies();
    for (ep, got) in maps {
        let l = e.identities().get(*ep).unwrap();
        let ports = e.identity_ports(*ep);
        let want = compute(
            &policies,
            e.identities(),
            l,
            ports,
            EnforcementMode::Default,
        );
        assert_eq!(got, &want, "endpoint {ep}");
    }
}

#[test]
fn requirements_over_every_peer_follow_cidr_identities() {
    // `all` (or a section with no peers) narrowed by a requirement that
    // CIDR identities meet (they carry `reserved:world`): a CIDR
    // identity another policy brings must get its entry.
    for peers in [
        "fromEntities: [all]",
        "toPorts: [{ports: [{port: \"80\"}]}]",
    ] {
        let mut e = Engine::new(EnforcementMode::Default);
        let mut maps = BTreeMap::new();
        let web = NumericIdentity(300);
        e.set_identity(web, Some(labels("web", "default")));
        e.set_identity(NumericIdentity(301), Some(labels("db", "default")));
        apply(&mut maps, &e.add_endpoint(web));
        let p1 = policy(&format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p1}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  \
             - fromRequires: [{{matchLabels: {{\"reserved:world\": \"\"}}}}]\n  - {peers}\n"
        ));
        apply(&mut maps, &e.set_policy("p1", Some(p1)));
        assert_matches_full(&e, &maps);
        let p2 = policy(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p2}\n\
             spec:\n  endpointSelector: {matchLabels: {app: db}}\n  egress:\n  \
             - toCIDR: [10.0.0.0/8]\n",
        );
        apply(&mut maps, &e.set_policy("p2", Some(p2)));
        assert_matches_full(&e, &maps);
        apply(&mut maps, &e.set_policy("p2", None));
        assert_matches_full(&e, &maps);
    }
}

/// A policy of one of several shapes, to exercise every dependency kind.
fn shaped(i: usize, to: usize, from: usize, port: u16, shape: usize) -> Policy {
    let name = format!("p{i}");
    if shape == 0 {
        return allow_from(&name, APPS[to], APPS[from], port);
    }
    let head = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: {}}}}}\n",
        APPS[to]
    );
    match shape {
        5 => {
            return policy(&format!(
                "{head}  ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{app: {}}}}}]\n",
                APPS[from]
            ))
        }
        6 => {
            return policy(&format!(
                "{head}  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: {}}}}}]\n    \
                 toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}], rules: {{http: [{{method: GET}}]}}}}]\n",
                APPS[from]
            ))
        }
        8 => {
            // One section every variant shares, one that changes.
            return policy(&format!(
                "{head}  egress:\n  - toEntities: [cluster]\n    toPorts: [{{ports: [{{port: \"53\", protocol: UDP}}]}}]\n  \
                 - toEndpoints: [{{matchLabels: {{app: {}}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n",
                APPS[from]
            ));
        }
        9 => {
            // Word for word shape 0's section, but a deny.
            return policy(&format!(
                "{head}  ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{app: {}}}}}]\n    \
                 toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n",
                APPS[from]
            ));
        }
        10 => {
            // Ingress named port: the endpoint's own.
            return policy(&format!(
                "{head}  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: {}}}}}]\n    \
                 toPorts: [{{ports: [{{port: http}}]}}]\n",
                APPS[from]
            ));
        }
        11 => {
            // Egress named ports: to selected peers, and a deny to any.
            return policy(&format!(
                "{head}  egress:\n  - toEndpoints: [{{matchLabels: {{app: {}}}}}]\n    \
                 toPorts: [{{ports: [{{port: http, protocol: TCP}}]}}]\n  egressDeny:\n  \
                 - toPorts: [{{ports: [{{port: dns}}]}}]\n",
                APPS[from]
            ));
        }
        12 => {
            // Egress named port to every peer.
            return policy(&format!(
                "{head}  egress:\n  - toPorts: [{{ports: [{{port: dns, protocol: UDP}}, {{port: \"{port}\"}}]}}]\n"
            ));
        }
        7 => {
            return policy(&format!(
                "{head}  enableDefaultDeny: {{egress: false}}\n  egressDeny:\n  \
                 - toEndpoints: [{{matchLabels: {{app: {}}}}}]\n",
                APPS[from]
            ))
        }
        _ => {}
    }
    let peer = match shape {
        1 => format!("toCIDRSet: [{{cidr: 10.{from}.0.0/16, except: [10.{from}.1.0/24]}}]"),
        2 => "toEntities: [cluster]".to_string(),
        3 => "toEntities: [world]".to_string(),
        _ => format!("toRequires: [{{matchLabels: {{app: {}}}}}]", APPS[from]),
    };
    policy(&format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: {}}}}}\n  egress:\n  - {peer}\n    \
         toPorts: [{{ports: [{{port: \"{port}\"}}]}}]\n",
        APPS[to]
    ))
}

#[derive(Debug, Clone)]
enum Op {
    Identity(u32, Option<(usize, usize)>),
    Policy(usize, Option<(usize, usize, u16, usize)>),
    Endpoint(u32, bool),
    /// Endpoint record `e<i>` gets (or loses) an identity and ports.
    Ports(usize, Option<(u32, usize)>),
}

/// Named ports of a few kinds.
fn port_variant(v: usize) -> NamedPorts {
    use axoneme_identity::{NamedPort, PortProtocol};
    let p = |protocol, port| NamedPort { protocol, port };
    match v {
        0 => [("http".to_string(), p(PortProtocol::Tcp, 80))].into(),
        1 => [
            ("http".to_string(), p(PortProtocol::Tcp, 443)),
            ("dns".to_string(), p(PortProtocol::Udp, 53)),
        ]
        .into(),
        _ => [("DNS".to_string(), p(PortProtocol::Tcp, 53))].into(),
    }
}

const APPS: &[&str] = &["web", "api", "db"];
const NSS: &[&str] = &["default", "other"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (300u32..306, prop::option::of((0..3usize, 0..2usize)))
            .prop_map(|(i, l)| Op::Identity(i, l)),
        (
            0..3usize,
            prop::option::of((
                0..3usize,
                0..3usize,
                prop::sample::select(vec![80u16, 443]),
                0..13usize
            ))
        )
            .prop_map(|(i, p)| Op::Policy(i, p)),
        (300u32..306, any::<bool>()).prop_map(|(i, add)| Op::Endpoint(i, add)),
        (0..4usize, prop::option::of((300u32..306, 0..3usize))).prop_map(|(i, p)| Op::Ports(i, p)),
    ]
}

proptest! {
    /// After any sequence of changes, applying the deltas gives exactly
    /// what a full recomputation gives.
    #[test]
    fn deltas_track_full_recomputation(ops in prop::collection::vec(op(), 1..40)) {
        let mut e = Engine::new(EnforcementMode::Default);
        let mut maps: BTreeMap<NumericIdentity, EndpointPolicy> = BTreeMap::new();
        let mut local: BTreeSet<NumericIdentity> = BTreeSet::new();
        let mut records: BTreeMap<usize, (u32, usize)> = BTreeMap::new();
        for op in ops {
            let d = match op {
                Op::Identity(i, l) => e.set_identity(NumericIdentity(i), l.map(|(a, n)| labels(APPS[a], NSS[n]))),
                Op::Policy(i, p) => e.set_policy(&format!("p{i}"), p.map(|(to, from, port, shape)| shaped(i, to, from, port, shape))),
                Op::Endpoint(i, true) if e.identities().get(NumericIdentity(i)).is_some() => {
                    local.insert(NumericIdentity(i));
                    e.add_endpoint(NumericIdentity(i))
                }
                Op::Endpoint(i, _) => {
                    local.remove(&NumericIdentity(i));
                    maps.remove(&NumericIdentity(i));
                    e.remove_endpoint(NumericIdentity(i))
                }
                Op::Ports(i, p) => {
                    match p {
                        Some(p) => records.insert(i, p),
                        None => records.remove(&i),
                    };
                    e.set_endpoint_ports(&format!("e{i}"), p.map(|(id, v)| (NumericIdentity(id), port_variant(v))))
                }
            };
            // Each identity's named ports are the union over its records.
            for id in 300u32..306 {
                let want: crate::ports::PortNames = records
                    .values()
                    .filter(|(rid, _)| *rid == id)
                    .map(|(_, v)| crate::ports::PortNames::of_endpoint(&port_variant(*v)))
                    .flat_map(|p| p.iter().map(|(n, pr, port)| (n.to_string(), pr, port)).collect::<Vec<_>>())
                    .fold(crate::ports::PortNames::new(), |mut acc, (n, pr, port)| { acc.insert(&n, pr, port); acc });
                prop_assert_eq!(e.identity_ports(NumericIdentity(id)), &want, "identity {}", id);
            }
            apply(&mut maps, &d);
            let policies = e.policies();
            for ep in &local {
                let Some(l) = e.identities().get(*ep).cloned() else { continue };
                let want = compute(&policies, e.identities(), &l, e.identity_ports(*ep), EnforcementMode::Default);
                let got = maps.get(ep).cloned().unwrap_or_default();
                prop_assert_eq!(&got, &want, "endpoint {}", ep);
            }
        }
    }
}
