//! The agent API's request bodies (`POST /v1/cni/add|del|check`), decoded
//! as the agent decodes them (JSON into the API types), then the checks
//! the agent makes before touching anything: names and labels. A decoded
//! request encodes and decodes back to itself (the CNI plugin encodes what
//! the agent decodes).

#![no_main]

use axoneme_api::names::{check_container_id, check_interface_name};
use axoneme_api::{AddRequest, CheckRequest, DelRequest};
use axoneme_identity::labels::check_dns_label;
use axoneme_identity::{Label, Source};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    data: &[u8],
) -> Option<T> {
    match serde_json::from_slice::<T>(data) {
        Ok(req) => {
            let encoded = serde_json::to_vec(&req).expect("encodes");
            let back: T = serde_json::from_slice(&encoded).expect("decodes what it encoded");
            assert_eq!(back, req);
            Some(req)
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

fn names(container_id: &str, ifname: &str) {
    if check_container_id(container_id).is_ok() {
        assert!(!container_id.is_empty() && container_id.len() <= 253);
    }
    if check_interface_name(ifname).is_ok() {
        assert!(!ifname.is_empty() && ifname.len() <= 15 && !ifname.contains('/'));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(add) = round_trip::<AddRequest>(data) {
        names(&add.container_id, &add.ifname);
        if let Some(ns) = &add.namespace {
            let _ = check_dns_label(ns);
        }
        for l in &add.labels {
            if let Ok(label) = Label::parse_with_source(l, Source::K8s) {
                // What the agent keeps parses back to itself.
                let again = Label::parse_with_source(&label.to_string(), Source::K8s)
                    .unwrap_or_else(|e| {
                        panic!("{l:?} parsed as {label}, which does not parse: {e}")
                    });
                assert_eq!(again, label, "{l:?}");
            }
        }
    }
    if let Some(del) = round_trip::<DelRequest>(data) {
        names(&del.container_id, &del.ifname);
    }
    if let Some(check) = round_trip::<CheckRequest>(data) {
        names(&check.container_id, &check.ifname);
    }
});
