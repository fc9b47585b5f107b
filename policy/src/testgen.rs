//! Random identities and `cilium.io/v2` policies (proptest strategies), for
//! property tests here and in other crates (the datapath's differential
//! test): feature `testgen`.

use axoneme_identity::numeric::NODE_SCOPE;
use axoneme_identity::{LabelSet, NumericIdentity, Source};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::compile::{add_cidr_identities, cidr_identities};
use crate::document::{parse_object, Policy};
use crate::ports::PortNames;
use crate::selector::Identities;

const APPS: &[&str] = &["a", "b", "c"];
const ENVS: &[&str] = &["prod", "dev"];
const NAMESPACES: &[&str] = &["default", "other"];
pub const PORTS: &[u16] = &[8, 53, 79, 80, 81, 443, 8080, 8099, 8100, 9000];
pub const PROTOS: &[u8] = &[1, 6, 17, 132];

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

/// Node selectors (`fromNodes`, `toNodes`): the generated nodes are
/// `env=dev` (this one, `host`, and one other) and `env=prod` (another).
fn node_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(ENVS).prop_map(|e| json!({"matchLabels": {"env": e}})),
        Just(json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]})),
    ]
}

/// Port names the generated identities declare (see `named_ports`), and
/// one none does.
const PORT_NAMES: &[&str] = &["http", "dns", "metrics", "nope"];

fn ports() -> impl Strategy<Value = Value> {
    let port = (
        prop::sample::select(PORTS),
        prop::option::of(0u16..40),
        prop::sample::select(vec![None, Some("TCP"), Some("UDP"), Some("ANY")]),
        prop::option::weighted(0.25, prop::sample::select(PORT_NAMES)),
        prop::sample::select(vec![None, None, None, None, None, Some("0"), Some("")]),
    )
        .prop_map(|(p, end, proto, name, every)| {
            let mut v = json!({"port": p.to_string()});
            if let Some(n) = name {
                v["port"] = json!(n);
            } else if let Some(every) = every {
                // Every port: "0", or no port at all.
                if every.is_empty() {
                    v = json!({});
                } else {
                    v["port"] = json!(every);
                }
            } else if let Some(e) = end {
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
        prop::option::weighted(0.2, prop::collection::vec(node_selector(), 1..3)),
    )
        .prop_map(move |(eps, ents, cidr, req, to_ports, icmp, nodes)| {
            let mut v = json!({});
            if let Some(eps) = eps {
                v[format!("{dir}Endpoints")] = json!(eps);
            }
            if let Some(nodes) = nodes {
                v[format!("{dir}Nodes")] = json!(nodes);
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
                        // HTTP rules need TCP ports without ranges (a name
                        // is one port); `icmp` picks which.
                        let port = if icmp { "http" } else { "80" };
                        pr = json!({"ports": [{"port": port, "protocol": "TCP"}], "rules": {"http": h}});
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

/// Policy number `i`: a CNP in a random namespace or a CCNP.
pub fn policy(i: usize) -> impl Strategy<Value = Value> {
    (prop::option::of(prop::sample::select(NAMESPACES)), prop::collection::vec(rule(), 1..3)).prop_map(
        move |(ns, specs)| match ns {
            Some(ns) => json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                               "metadata": {"name": format!("p{i}"), "namespace": ns}, "specs": specs}),
            None => json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                           "metadata": {"name": format!("p{i}")}, "specs": specs}),
        },
    )
}

/// One to six distinct workload label sets.
pub fn identities() -> impl Strategy<Value = Vec<LabelSet>> {
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

/// The named ports a generated workload declares, from its labels: app
/// `a` names 80 "http", `b` names 8080 "http" and UDP 53 "dns", `c` none;
/// `env=prod` adds 9000 "metrics", namespace `other` TCP 53 "dns".
pub fn named_ports(labels: &LabelSet) -> PortNames {
    let value = |k: &str| labels.get(k).map(|l| l.value);
    let mut p = PortNames::new();
    match value("app") {
        Some("a") => p.insert("http", 6, 80),
        Some("b") => {
            p.insert("http", 6, 8080);
            p.insert("dns", 17, 53);
        }
        _ => {}
    }
    if value("env") == Some("prod") {
        p.insert("metrics", 6, 9000);
    }
    if value("io.kubernetes.pod.namespace") == Some("other") {
        p.insert("dns", 6, 53);
    }
    p
}

/// Parses the generated documents and numbers the identities (workloads
/// from 256, with their `named_ports`, then the policies' CIDR identities).
pub fn setup(
    labels: &[LabelSet],
    docs: &[Value],
) -> (Vec<Policy>, Identities, Vec<NumericIdentity>) {
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
        ids.set_ports(id, named_ports(l));
        endpoints.push(id);
    }
    add_cidr_identities(&mut ids, &cidr_identities(&policies));
    // The nodes: this one (`host`) and two others, as the agent numbers
    // and labels them.
    for (id, labels) in [
        (1, "reserved:host,k8s:env=dev"),
        (NODE_SCOPE | 5, "reserved:remote-node,k8s:env=dev"),
        (NODE_SCOPE | 9, "reserved:remote-node,k8s:env=prod"),
    ] {
        let labels = LabelSet::parse(labels.split(','), Source::Unspec).unwrap();
        ids.insert(NumericIdentity(id), labels);
    }
    (policies, ids, endpoints)
}
