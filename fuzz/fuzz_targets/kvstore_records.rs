//! Records as agents and the operator read them from etcd, where anyone
//! with write access may have put anything. The input is a key line, then
//! the value. Every decoder answers a record or an error, never a panic;
//! a decoded record encodes and decodes back to itself (what one component
//! writes is what the others read); keys are split as the watchers split
//! them; a service record yields its frontends as the agent programs them.

#![no_main]

use axoneme_identity::cidr::parse_cidr_label_key;
use axoneme_identity::{
    Decode, EndpointIdentity, EndpointRecord, IdentityRecord, Layout, NamespaceRecord, NodeCidrs,
    NodeLabels, NodeRecord, NodeStatusRecord, PolicyStatus,
};
use axoneme_kvstore::KeyValue;
use axoneme_service::ServiceRecord;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

fn decoded<T: Decode + Serialize + PartialEq + std::fmt::Debug>(kv: &KeyValue) {
    match T::decode(kv) {
        Ok(record) => {
            let value = serde_json::to_vec(&record).expect("encodes");
            let back = T::decode(&KeyValue {
                value,
                ..kv.clone()
            })
            .unwrap_or_else(|e| panic!("{record:?} encoded does not decode: {e}"));
            assert_eq!(back, record);
        }
        Err(e) => assert!(!e.trim().is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    let (key, value) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let key = String::from_utf8_lossy(key).into_owned();
    let layout = Layout::default();
    let _ = layout.parse_identity_key(&key);
    let _ = layout.split_endpoint_key(&key);
    let _ = layout.split_service_key(&key);
    let _ = layout.status_for_policy_key(&key);
    let _ = layout.assignment_for_endpoint_key(&key);
    let _ = parse_cidr_label_key(&key);
    let kv = KeyValue {
        key,
        value: value.to_vec(),
        create_revision: 1,
        mod_revision: 1,
        version: 1,
        lease: 0,
    };
    decoded::<IdentityRecord>(&kv);
    decoded::<EndpointIdentity>(&kv);
    decoded::<EndpointRecord>(&kv);
    decoded::<PolicyStatus>(&kv);
    decoded::<NodeRecord>(&kv);
    decoded::<NodeCidrs>(&kv);
    decoded::<NodeStatusRecord>(&kv);
    decoded::<NamespaceRecord>(&kv);
    decoded::<NodeLabels>(&kv);
    if let Ok(service) = serde_json::from_slice::<ServiceRecord>(value) {
        let _ = service.frontends();
        let encoded = serde_json::to_vec(&service).expect("encodes");
        let back: ServiceRecord = serde_json::from_slice(&encoded).expect("decodes");
        assert_eq!(back, service);
    }
});
