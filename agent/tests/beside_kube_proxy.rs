//! Beside kube-proxy (`LoadOptions::kube_proxy`), under
//! `BPF_PROG_TEST_RUN`: a connection a pod opens to a Service's address is
//! recorded as it leaves the pod; when kube-proxy's DNAT brings it to a
//! pod of the node whose ingress rules send it to the L7 proxy, the packet
//! handed to the proxy has the Service's address and port back (so that
//! kube-proxy's conntrack entry in the node's stack translates the
//! proxy's answers); the datapath's default leaves it as it came.
//!
//! One endpoint, "pod A" (10.0.0.1, identity 1000) behind ifindex 1: the
//! client and, through the Service, its own backend (test runs come
//! through loopback, so both veth programs run on ifindex 1).

mod support;

use axoneme_agent::datapath::{policy_entry, FROM_CONTAINER, NODEPORT_INGRESS, TO_CONTAINER};
use axoneme_bpf_common::{
    endpoint_flags, tc_action::TC_ACT_OK, tc_action::TC_ACT_REDIRECT, tc_action::TC_ACT_SHOT,
    EndpointInfo, IpcacheValue,
};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Direction, Key, Verdict};
use support::checked::*;
use support::*;

const A4: [u8; 4] = [10, 0, 0, 1];
const B4: [u8; 4] = [10, 0, 0, 2];
const VIP: [u8; 4] = [10, 96, 0, 50];
const A_ID: u32 = 1000;

/// `net`'s addresses have A's identity.
fn of_identity_a(dp: &mut TestDatapath, net: &str) {
    let id = IpcacheValue {
        identity: A_ID,
        ..IpcacheValue::default()
    };
    dp.maps.set_ipcache(&net.parse().unwrap(), id).unwrap();
}

/// A, its ingress enforced: TCP 8080 from A itself goes to the proxy.
fn setup(kube_proxy: bool) -> TestDatapath {
    let mut dp = load_options(LoadOptions {
        kube_proxy,
        ..LoadOptions::default()
    });
    dp.maps
        .set_endpoint(
            1,
            EndpointInfo::new(A_ID, A_ID, endpoint_flags::INGRESS_ENFORCED, &[A4.into()]),
        )
        .unwrap();
    of_identity_a(&mut dp, "10.0.0.1/32");
    let rules = std::sync::Arc::new(vec![axoneme_policy::api::HttpRule::default()]);
    let key = Key {
        identity: NumericIdentity(A_ID),
        protocol: IPPROTO_TCP,
        port: 8080,
        prefix: 16,
    };
    let (k, v) = policy_entry(
        A_ID,
        Direction::Ingress,
        &key,
        &Verdict::Redirect(rules),
        15001,
    );
    dp.maps.set_policy(&k, v).unwrap();
    dp
}

/// A packet of A's connection from `sport`, as kube-proxy delivers it
/// (to A:8080), run through `to_container`: the action and where the
/// packet handed on is addressed.
fn arrives(dp: &TestDatapath, src: [u8; 4], sport: u16) -> (i32, ([u8; 4], u16)) {
    let (action, out) = dp
        .test_run_packet(TO_CONTAINER, &tcp4(src, sport, A4, 8080))
        .unwrap();
    let seen = check(&out);
    assert_eq!((seen.src, seen.sport), (src, sport), "the source is kept");
    (action, (seen.dst, seen.dport))
}

#[test]
fn the_proxy_gets_a_service_flow_under_the_service_address_kube_proxy_translated() {
    let dp = setup(true);
    // A connects to the Service: its SYN leaves A for the node's stack.
    let (action, out) = dp
        .test_run_packet(FROM_CONTAINER, &tcp4(A4, 40000, VIP, 80))
        .unwrap();
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        check(&out).dst,
        VIP,
        "leaving the pod, nothing is rewritten"
    );
    // kube-proxy picked A itself: the SYN goes to the proxy as sent, to the
    // Service (checksums checked).
    assert_eq!(arrives(&dp, A4, 40000), (TC_ACT_REDIRECT, (VIP, 80)));
    // And so does every later packet of the flow (conntrack keeps the
    // proxy's verdict).
    assert_eq!(arrives(&dp, A4, 40000), (TC_ACT_REDIRECT, (VIP, 80)));
    // A connection A made straight to its own address is left alone.
    dp.test_run_packet(FROM_CONTAINER, &tcp4(A4, 40001, A4, 8080))
        .unwrap();
    assert_eq!(arrives(&dp, A4, 40001), (TC_ACT_REDIRECT, (A4, 8080)));
}

#[test]
fn a_flow_from_elsewhere_or_without_kube_proxy_reaches_the_proxy_as_it_came() {
    // A client on another node left no record here (its node's kube-proxy
    // translates the proxy's answers).
    let mut dp = setup(true);
    of_identity_a(&mut dp, "10.0.0.2/32");
    assert_eq!(arrives(&dp, B4, 40000), (TC_ACT_REDIRECT, (A4, 8080)));
    // The default (kube-proxy replacement) records nothing.
    let dp = setup(false);
    dp.test_run_packet(FROM_CONTAINER, &tcp4(A4, 40000, VIP, 80))
        .unwrap();
    assert_eq!(arrives(&dp, A4, 40000), (TC_ACT_REDIRECT, (A4, 8080)));
}

/// Host routing stays off beside kube-proxy: a pod's answer from another
/// node may belong to a connection kube-proxy DNATed on its way out, which
/// only the stack's conntrack translates back. On the device, what is for
/// A goes up the stack unjudged; with kube-proxy replaced the device's
/// program judges it as A's ingress (here: denied, B is not let in).
#[test]
fn beside_kube_proxy_what_arrives_for_a_pod_goes_up_the_stack() {
    let packet = tcp4(B4, 40000, A4, 8080);
    assert_eq!(run(&setup(true), NODEPORT_INGRESS, &packet), TC_ACT_OK);
    assert_eq!(run(&setup(false), NODEPORT_INGRESS, &packet), TC_ACT_SHOT);
}
