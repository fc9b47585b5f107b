//! Cilium-style manifests through the generated schemas: Cilium's field
//! names, the seed policy and the policy corpus are accepted, malformed
//! values and unknown fields are not, and objects round-trip through the
//! Rust types.

mod common;

use std::path::Path;

use axoneme_crds::endpoint::{
    AddressPair, EndpointIdentity, EndpointNetworking, EndpointPolicy, EndpointPolicyDirection,
    EndpointPolicyState, EndpointState,
};
use axoneme_crds::node::{
    AllocationIp, EncryptionSpec, HealthAddressing, IpamSpec, IpamStatus, NodeAddress,
    PodCidrMapEntry, PodCidrStatus,
};
use axoneme_crds::{
    valid_condition, CiliumClusterwideNetworkPolicy, CiliumEndpoint, CiliumIdentity,
    CiliumIdentitySpec, CiliumNetworkPolicy, CiliumNode, EndpointStatus, NodeSpec, NodeStatus,
    PolicyStatus, Time,
};
use common::{assert_accepted, at, load_manifests, schema, unknown_fields, validate};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

fn seed() -> Value {
    let mut docs = load_manifests(Path::new(common::SEED_POLICY));
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

/// The seed policy with `f` applied.
fn seed_with(f: impl FnOnce(&mut Value)) -> Value {
    let mut m = seed();
    f(&mut m);
    m
}

#[test]
fn policy_schemas_use_cilium_field_names() {
    for kind in ["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"] {
        let s = schema(kind);
        let rule = at(&s, &["spec"]);
        assert!(
            at(&s, &["specs", "[]"])["properties"] == rule["properties"],
            "{kind}: spec and specs[] have different rule schemas"
        );
        let ingress = &at(rule, &["ingress", "[]"])["properties"];
        let egress = &at(rule, &["egress", "[]"])["properties"];
        for name in [
            "fromCIDR",
            "fromCIDRSet",
            "fromEndpoints",
            "fromEntities",
            "toPorts",
            "icmps",
        ] {
            assert!(ingress.get(name).is_some(), "{kind}: ingress lacks {name}");
        }
        for name in [
            "toCIDR",
            "toCIDRSet",
            "toFQDNs",
            "toEndpoints",
            "toEntities",
            "toServices",
        ] {
            assert!(egress.get(name).is_some(), "{kind}: egress lacks {name}");
        }
        for name in ["fromCidr", "fromCidrSet", "toCidr", "toCidrSet", "toFqdns"] {
            assert!(
                ingress.get(name).is_none() && egress.get(name).is_none(),
                "{kind}: has {name}"
            );
        }
        at(
            rule,
            &["ingress", "[]", "toPorts", "[]", "ports", "[]", "endPort"],
        );
        at(
            rule,
            &[
                "ingress",
                "[]",
                "toPorts",
                "[]",
                "rules",
                "http",
                "[]",
                "headerMatches",
            ],
        );
        at(rule, &["enableDefaultDeny", "ingress"]);
        at(rule, &["ingressDeny", "[]", "fromCIDRSet", "[]", "except"]);
        at(rule, &["egressDeny", "[]", "toCIDR"]);
        at(rule, &["nodeSelector", "matchLabels"]);
        let port = at(
            rule,
            &["ingress", "[]", "toPorts", "[]", "ports", "[]", "port"],
        );
        assert_eq!(
            port["x-kubernetes-int-or-string"], true,
            "{kind}: port {port}"
        );
        assert!(port.get("type").is_none(), "{kind}: port {port}");
        // The whole schema, spelled out: no camelCase misspelling anywhere.
        let text = s.to_string();
        for bad in ["\"fromCidr", "\"toCidr", "\"toFqdns", "\"enableDefaultdeny"] {
            assert!(!text.contains(bad), "{kind}: schema contains {bad}");
        }
    }
}

#[test]
fn seed_policy_is_accepted() {
    assert_accepted(&seed(), common::SEED_POLICY);
}

#[test]
fn corpus_policies_are_accepted() {
    let policies = common::corpus_policies();
    assert!(policies.len() >= 6, "corpus shrank? {}", policies.len());
    for (file, manifest) in &policies {
        assert_accepted(manifest, &file.display().to_string());
    }
}

#[test]
fn lowercase_protocol_is_rejected() {
    let m =
        seed_with(|m| m["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["protocol"] = json!("tcp"));
    let errors = validate("CiliumNetworkPolicy", &m).expect_err(
        "`protocol: tcp` passed the CiliumNetworkPolicy schema: PortProtocol.protocol in \
         policy/src/api.rs needs an enum (TCP, UDP, SCTP, ICMP, ICMPV6, VRRP, IGMP, ANY)",
    );
    assert!(errors.iter().any(|e| e.contains("/protocol")), "{errors:?}");
    // The upper-case spelling is fine.
    let m =
        seed_with(|m| m["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["protocol"] = json!("UDP"));
    validate("CiliumNetworkPolicy", &m).unwrap();
}

#[test]
fn lowercase_operator_is_rejected() {
    let m = seed_with(|m| {
        m["spec"]["endpointSelector"] =
            json!({"matchExpressions": [{"key": "app", "operator": "in", "values": ["payments"]}]})
    });
    let errors = validate("CiliumNetworkPolicy", &m).expect_err("`operator: in` passed");
    assert!(errors.iter().any(|e| e.contains("/operator")), "{errors:?}");
}

#[test]
fn malformed_values_are_rejected() {
    let cases = [
        (
            "endPort above 65535",
            seed_with(|m| {
                m["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["endPort"] = json!(70000)
            }),
        ),
        (
            "port as a list",
            seed_with(|m| {
                m["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!(["8080"])
            }),
        ),
        (
            "fromCIDR as a string",
            seed_with(|m| m["spec"]["ingress"][0]["fromCIDR"] = json!("10.0.0.0/8")),
        ),
        (
            "selector without key",
            seed_with(|m| {
                m["spec"]["endpointSelector"] =
                    json!({"matchExpressions": [{"operator": "Exists"}]})
            }),
        ),
        (
            "specs not a list",
            seed_with(|m| m["specs"] = json!({"endpointSelector": {}})),
        ),
    ];
    for (what, m) in cases {
        assert!(
            validate("CiliumNetworkPolicy", &m).is_err(),
            "{what} passed the schema"
        );
    }
    // A port given as a number is accepted (int-or-string), as by the parser.
    let m = seed_with(|m| m["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!(8080));
    validate("CiliumNetworkPolicy", &m).unwrap();
}

#[test]
fn unknown_and_misspelled_fields_are_not_in_the_schema() {
    // kube drops `additionalProperties: false`, so the schema does not
    // reject these; a server prunes them (Api::create) or rejects them
    // (strict kubectl, server-side apply) because the schema does not
    // declare them.
    let cases = [
        (
            "fromCidr",
            ".spec.ingress[0].fromCidr",
            seed_with(|m| m["spec"]["ingress"][0]["fromCidr"] = json!(["10.0.0.0/8"])),
        ),
        (
            "toFqdns",
            ".spec.egress[0].toFqdns",
            seed_with(|m| m["spec"]["egress"] = json!([{"toFqdns": [{"matchName": "x.io"}]}])),
        ),
        (
            "typo in a rule",
            ".spec.ingress[0].fromEndpoint",
            seed_with(|m| m["spec"]["ingress"][0]["fromEndpoint"] = json!([{}])),
        ),
        (
            "unknown http field",
            ".spec.ingress[0].toPorts[0].rules.http[0].verb",
            seed_with(|m| {
                m["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"][0]["verb"] = json!("GET")
            }),
        ),
        (
            "unknown top-level field",
            ".rules",
            seed_with(|m| m["rules"] = json!([])),
        ),
    ];
    let s = schema("CiliumNetworkPolicy");
    for (what, path, m) in cases {
        assert_eq!(unknown_fields(&s, &m), vec![path.to_string()], "{what}");
    }
    // Preserved subtrees (features not supported yet) are not pruned.
    let m = seed_with(|m| m["spec"]["egress"] = json!([{"toFQDNs": [{"matchName": "x.io"}]}]));
    assert_accepted(&m, "toFQDNs");
}

/// Deserializes `v` as `K`, serializes it back.
fn round_trip<K: DeserializeOwned + Serialize>(v: &Value) -> Value {
    let k: K = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    serde_json::to_value(&k).unwrap()
}

#[test]
fn seed_policy_round_trips_unchanged() {
    let seed = seed();
    let cnp: CiliumNetworkPolicy = serde_json::from_value(seed.clone()).unwrap();
    let rule = cnp.spec.spec.as_ref().expect("spec parsed");
    assert_eq!(rule.ingress.len(), 1);
    assert_eq!(rule.ingress[0].to_ports[0].ports[0].port.0, "8080");
    assert!(cnp.spec.specs.is_none() && cnp.status.is_none());
    assert_eq!(serde_json::to_value(&cnp).unwrap(), seed);
}

#[test]
fn corpus_policies_round_trip() {
    for (file, manifest) in common::corpus_policies() {
        let once = match manifest["kind"].as_str() {
            Some("CiliumNetworkPolicy") => round_trip::<CiliumNetworkPolicy>(&manifest),
            _ => round_trip::<CiliumClusterwideNetworkPolicy>(&manifest),
        };
        // Numeric ports come back as strings (Cilium's spelling); beyond
        // that nothing changes, and what we write is accepted.
        assert_eq!(
            strip_numbers(&once),
            strip_numbers(&manifest),
            "{}",
            file.display()
        );
        assert_accepted(&once, &format!("{} (reserialized)", file.display()));
    }
}

/// `v` with numbers turned into strings.
fn strip_numbers(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(a) => Value::Array(a.iter().map(strip_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), strip_numbers(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn now() -> Time {
    Time(axoneme_crds::k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
}

/// What the project writes is accepted by its own schemas and reads back.
fn assert_written_object_ok<K>(obj: &K)
where
    K: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let v = serde_json::to_value(obj).unwrap();
    assert_accepted(&v, "written object");
    let back: K = serde_json::from_value(v).unwrap();
    assert_eq!(&back, obj);
}

#[test]
fn policy_with_status_is_accepted() {
    let mut cnp: CiliumNetworkPolicy = serde_json::from_value(seed()).unwrap();
    cnp.status = Some(PolicyStatus {
        conditions: vec![valid_condition(
            false,
            "spec.ingress[0]: bad",
            Some(2),
            now(),
        )],
    });
    assert_written_object_ok(&cnp);
    let v = serde_json::to_value(&cnp).unwrap();
    assert_eq!(v["status"]["conditions"][0]["type"], "Valid");
    assert_eq!(
        v["status"]["conditions"][0]["lastTransitionTime"],
        "2023-11-14T22:13:20Z"
    );
    let s = schema("CiliumNetworkPolicy");
    let conds = at(&s, &["status", "conditions"]);
    assert_eq!(conds["x-kubernetes-list-type"], "map");
    assert_eq!(conds["x-kubernetes-list-map-keys"], json!(["type"]));
}

#[test]
fn identity_has_top_level_security_labels() {
    let manifest = json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumIdentity",
        "metadata": {"name": "12345", "labels": {"io.kubernetes.pod.namespace": "shop"}},
        "security-labels": {"k8s:app": "payments", "k8s:io.kubernetes.pod.namespace": "shop"},
    });
    assert_accepted(&manifest, "CiliumIdentity");
    let id: CiliumIdentity = serde_json::from_value(manifest.clone()).unwrap();
    assert_eq!(id.spec.security_labels["k8s:app"], "payments");
    assert_eq!(serde_json::to_value(&id).unwrap(), manifest);
    let s = schema("CiliumIdentity");
    assert!(s["properties"].get("spec").is_none());
    assert_eq!(s["required"], json!(["security-labels"]));
    let built = CiliumIdentity::new(
        "7",
        CiliumIdentitySpec {
            security_labels: [("k8s:a".into(), "b".into())].into(),
        },
    );
    assert_written_object_ok(&built);
    // Without the labels an identity is meaningless: the schema requires them.
    assert!(validate(
        "CiliumIdentity",
        &json!({"kind": "CiliumIdentity", "metadata": {"name": "1"}})
    )
    .is_err());
}

#[test]
fn endpoint_status_is_cilium_shaped() {
    let status = EndpointStatus {
        id: Some(1234),
        identity: Some(EndpointIdentity {
            id: Some(48861),
            labels: vec!["k8s:app=payments".into()],
        }),
        networking: Some(EndpointNetworking {
            addressing: vec![AddressPair {
                ipv4: Some("10.0.1.200".into()),
                ipv6: None,
            }],
            node: Some("192.168.1.10".into()),
        }),
        encryption: Some(EncryptionSpec { key: Some(3) }),
        policy: Some(EndpointPolicy {
            ingress: Some(EndpointPolicyDirection {
                enforcing: true,
                state: Some(EndpointPolicyState::Enforcing),
            }),
            egress: Some(EndpointPolicyDirection {
                enforcing: false,
                state: Some(EndpointPolicyState::NonEnforcing),
            }),
        }),
        state: Some(EndpointState::WaitingForIdentity),
    };
    let mut cep = CiliumEndpoint::new("payments-0", status);
    cep.metadata.namespace = Some("shop".into());
    assert_written_object_ok(&cep);
    let v = serde_json::to_value(&cep).unwrap();
    assert_eq!(v["apiVersion"], "cilium.io/v2");
    assert_eq!(v["kind"], "CiliumEndpoint");
    assert_eq!(v["status"]["state"], "waiting-for-identity");
    assert_eq!(v["status"]["policy"]["egress"]["state"], "non-enforcing");
    assert_eq!(
        v["status"]["networking"]["addressing"][0]["ipv4"],
        "10.0.1.200"
    );

    // A Cilium-written CEP (fields we do not model are pruned, not errors).
    let cilium = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {"name": "wluo-mvz4t", "namespace": "default"},
        "status": {"id": 371, "identity": {"id": 48861, "labels": ["k8s:app=wluo"]},
                   "networking": {"addressing": [{"ipv4": "10.0.1.200"}], "node": "172.18.0.3"},
                   "encryption": {}, "state": "ready",
                   "external-identifiers": {"pod-name": "default/wluo-mvz4t"}},
    });
    validate("CiliumEndpoint", &cilium).unwrap();
    assert_eq!(
        unknown_fields(&schema("CiliumEndpoint"), &cilium),
        vec![".status.external-identifiers"]
    );
    let parsed: CiliumEndpoint = serde_json::from_value(cilium).unwrap();
    assert_eq!(parsed.status.unwrap().state, Some(EndpointState::Ready));

    let bad_state = json!({"kind": "CiliumEndpoint", "status": {"state": "Ready"}});
    assert!(validate("CiliumEndpoint", &bad_state).is_err());
    let bad_key = json!({"kind": "CiliumEndpoint", "status": {"encryption": {"key": 256}}});
    assert!(validate("CiliumEndpoint", &bad_key).is_err());
}

#[test]
fn node_spec_and_status_are_cilium_shaped() {
    let mut node = CiliumNode::new(
        "worker-1",
        NodeSpec {
            addresses: vec![
                NodeAddress {
                    address_type: "InternalIP".into(),
                    ip: "192.168.1.10".into(),
                },
                NodeAddress {
                    address_type: "CiliumInternalIP".into(),
                    ip: "10.0.1.1".into(),
                },
            ],
            health: Some(HealthAddressing {
                ipv4: Some("10.0.1.5".into()),
                ipv6: None,
            }),
            encryption: Some(EncryptionSpec { key: Some(3) }),
            ipam: Some(IpamSpec {
                pod_cidrs: vec!["10.0.1.0/24".into()],
                pre_allocate: Some(8),
                ..IpamSpec::default()
            }),
            instance_id: Some("i-123".into()),
            node_identity: Some(6),
            boot_id: None,
        },
    );
    node.status = Some(NodeStatus {
        ipam: Some(IpamStatus {
            used: [(
                "10.0.1.7".into(),
                AllocationIp {
                    owner: Some("shop/payments-0".into()),
                    resource: None,
                },
            )]
            .into(),
            pod_cidrs: [(
                "10.0.1.0/24".into(),
                PodCidrMapEntry {
                    status: PodCidrStatus::InUse,
                },
            )]
            .into(),
            operator_status: None,
        }),
        conditions: vec![axoneme_crds::condition(
            axoneme_crds::CONDITION_AGENT_ANNOUNCED,
            true,
            "Announced",
            "the agent's node record is in the kvstore",
            None,
            axoneme_crds::Time(axoneme_crds::k8s_openapi::jiff::Timestamp::from_second(7).unwrap()),
        )],
    });
    assert_written_object_ok(&node);
    let v = serde_json::to_value(&node).unwrap();
    assert_eq!(
        v["spec"]["addresses"][1],
        json!({"type": "CiliumInternalIP", "ip": "10.0.1.1"})
    );
    assert_eq!(v["spec"]["ipam"]["podCIDRs"], json!(["10.0.1.0/24"]));
    assert_eq!(v["spec"]["ipam"]["pre-allocate"], 8);
    assert_eq!(v["spec"]["instance-id"], "i-123");
    assert_eq!(v["spec"]["nodeidentity"], 6);
    assert_eq!(
        v["status"]["ipam"]["pod-cidrs"]["10.0.1.0/24"]["status"],
        "in-use"
    );
    assert_eq!(
        v["status"]["ipam"]["used"]["10.0.1.7"]["owner"],
        "shop/payments-0"
    );

    let bad = json!({"kind": "CiliumNode", "spec": {"ipam": {"pre-allocate": -1}}});
    assert!(validate("CiliumNode", &bad).is_err());
    let bad = json!({"kind": "CiliumNode", "spec": {"addresses": [{"ip": "1.2.3.4"}]}});
    assert!(validate("CiliumNode", &bad).is_err());
}
