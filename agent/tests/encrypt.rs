//! Transparent IPsec's marks under `BPF_PROG_TEST_RUN`
//! (`bpf/programs/src/encrypt.rs`): pod A (10.0.0.1, ifindex 1) sends to
//! pods of another node (10.0.2.0/24) that encrypts; the node at
//! 192.168.0.2 is its underlay address.

mod support;

use axoneme_agent::datapath::{FROM_CONTAINER, NODEPORT_INGRESS};
use axoneme_agent::encrypt::sync::EncryptWriter;
use axoneme_bpf_common::{
    drop_reason, event_kind,
    tc_action::{TC_ACT_OK, TC_ACT_SHOT},
    EndpointInfo, IpcacheValue,
};
use support::*;

const A4: [u8; 4] = [10, 0, 0, 1];
const REMOTE_POD: [u8; 4] = [10, 0, 2, 5];
const OTHER_POD: [u8; 4] = [10, 0, 3, 5];
const PEER_NODE: [u8; 4] = [192, 168, 0, 2];
const UNKNOWN_NODE: [u8; 4] = [192, 168, 0, 9];
const ESP: u8 = 50;

fn setup(encrypt: bool) -> (TestDatapath, axoneme_agent::datapath::EncryptMaps) {
    let mut dp = load_options(LoadOptions {
        encrypt,
        ..LoadOptions::default()
    });
    dp.maps.set_event_rate(1_000_000, 1_000_000).unwrap();
    dp.maps
        .set_endpoint(1, EndpointInfo::new(1000, 1000, 0, &[A4.into()]))
        .unwrap();
    for (net, identity) in [("10.0.0.1/32", 1000), ("10.0.2.0/24", 2000)] {
        let v = IpcacheValue {
            identity,
            ..IpcacheValue::default()
        };
        dp.maps.set_ipcache(&net.parse().unwrap(), v).unwrap();
    }
    let mut maps = dp.take_encrypt_maps().unwrap();
    maps.set_prefix("10.0.2.0/24".parse().unwrap(), 3).unwrap();
    maps.set_node(PEER_NODE.into(), 7).unwrap();
    (dp, maps)
}

fn syn(dst: [u8; 4], sport: u16) -> Vec<u8> {
    ipv4(A4, dst, IPPROTO_TCP, &tcp(sport, 80, TCP_SYN), 0, 1)
}

fn esp(src: [u8; 4]) -> Vec<u8> {
    let mut payload = 0x0000_0003u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&1u32.to_be_bytes());
    payload.extend_from_slice(&[0xab; 32]);
    ipv4(src, [192, 168, 0, 1], ESP, &payload, 0, 1)
}

#[test]
fn pod_traffic_to_a_node_that_encrypts_is_marked_with_the_keys_spi() {
    let (dp, _maps) = setup(true);
    let (action, mark) = dp
        .test_run_mark_out(FROM_CONTAINER, &syn(REMOTE_POD, 40000))
        .unwrap();
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(mark, 0x3e00, "encrypt magic 0x0e00, SPI 3 in bits 12-15");
    // Pods of nodes that do not encrypt: unmarked, in clear.
    let (action, mark) = dp
        .test_run_mark_out(FROM_CONTAINER, &syn(OTHER_POD, 40001))
        .unwrap();
    assert_eq!((action, mark), (TC_ACT_OK, 0));
}

#[test]
fn without_a_key_in_common_the_flow_is_dropped_even_when_tracked() {
    let (mut dp, mut maps) = setup(true);
    let packet = syn(REMOTE_POD, 40002);
    assert_eq!(run(&dp, FROM_CONTAINER, &packet), TC_ACT_OK);
    dp.maps.drain_events();
    // The peer's key went (strict): the same flow is dropped, never sent
    // in clear.
    maps.set_prefix("10.0.2.0/24".parse().unwrap(), 0).unwrap();
    let (action, mark) = dp.test_run_mark_out(FROM_CONTAINER, &packet).unwrap();
    assert_eq!((action, mark), (TC_ACT_SHOT, 0));
    let drops: Vec<u8> = dp
        .maps
        .drain_events()
        .iter()
        .filter(|e| e.kind == event_kind::DROP)
        .map(|e| e.reason)
        .collect();
    assert_eq!(drops, vec![drop_reason::DROP_UNENCRYPTED]);
}

#[test]
fn esp_from_a_known_node_gets_its_decrypt_mark_and_nothing_else_does() {
    let (dp, _maps) = setup(true);
    let (action, mark) = dp
        .test_run_mark_out(NODEPORT_INGRESS, &esp(PEER_NODE))
        .unwrap();
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        mark, 0x0007_0d00,
        "decrypt magic 0x0d00, node index 7 in bits 16-31"
    );
    // An unknown node's ESP: no mark, so no inbound state matches it.
    let (_, mark) = dp
        .test_run_mark_out(NODEPORT_INGRESS, &esp(UNKNOWN_NODE))
        .unwrap();
    assert_eq!(mark, 0);
    let udp_packet = ipv4(
        PEER_NODE,
        [192, 168, 0, 1],
        IPPROTO_UDP,
        &udp(1, 2, b"x"),
        0,
        1,
    );
    let (_, mark) = dp.test_run_mark_out(NODEPORT_INGRESS, &udp_packet).unwrap();
    assert_eq!(mark, 0, "only ESP is marked");
}

#[test]
fn loaded_without_encryption_nothing_is_marked() {
    let (dp, _maps) = setup(false);
    let (_, mark) = dp
        .test_run_mark_out(FROM_CONTAINER, &syn(REMOTE_POD, 40003))
        .unwrap();
    assert_eq!(mark, 0);
    let (_, mark) = dp
        .test_run_mark_out(NODEPORT_INGRESS, &esp(PEER_NODE))
        .unwrap();
    assert_eq!(mark, 0);
}
