//! Host routing of what arrives from other nodes
//! (`bpf/programs/src/arrival.rs`): on the node's device, a packet for pod
//! A is judged by A's ingress rules and put straight into A, or left to
//! the stack. 10.0.1.0/24 (identity 3000) stands for another node's pods.

use axoneme_agent::datapath::NODEPORT_INGRESS;
use axoneme_bpf_common::MARK_TO_PROXY;

use super::*;

/// A's ingress lets identity 3000 in on TCP 80, nothing else.
fn arriving_setup() -> TestDatapath {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(3000, IPPROTO_TCP, 80, 16));
    dp
}

fn syn_ack(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    ipv4(
        src,
        dst,
        IPPROTO_TCP,
        &tcp(sport, dport, TCP_SYN | TCP_ACK),
        0x4000,
        2,
    )
}

#[test]
fn a_packet_from_another_node_is_judged_by_the_pods_ingress_and_put_into_it() {
    let mut dp = arriving_setup();
    let syn = syn_from(NET3, 40000, 80);
    let (action, out) = dp.test_run_packet(NODEPORT_INGRESS, &syn).unwrap();
    assert_eq!(action, TC_ACT_REDIRECT, "straight into the pod");
    // The hop the node's routing would have counted, checksum and all.
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(ipv4_checksum(&out[14..34]), 0, "a valid header checksum");
    let events = dp.maps.drain_events();
    assert_eq!(
        verdicts(&events),
        vec![(ev::ALLOWED, 3000, A_ID, match_type::L3_L4)]
    );
    assert!(
        events
            .iter()
            .all(|e| e.direction == direction::INGRESS && e.ifindex == 1),
        "decided as A's ingress, behind A's interface: {events:?}"
    );
    // Its entry is the one A's own programs use: A's answer passes its
    // enforced egress as a reply, up the node's stack (back to the device,
    // as answers to what came that way go).
    let entry = dp.maps.ct_entries().unwrap();
    assert!(
        entry
            .iter()
            .any(|(k, v)| k.endpoint_id == A_ID && v.flags & ct_flags::VIA_STACK != 0),
        "{entry:?}"
    );
    let answer = syn_ack(A4, NET3, 80, 40000);
    assert_eq!(run(&dp, FROM_CONTAINER, &answer), TC_ACT_OK);
    assert!(drops(&dp.maps.drain_events()).is_empty());
    // Another port, and the world: dropped by A's ingress, right here.
    for (src, port) in [(NET3, 81), (WORLD4, 80)] {
        let (action, events) = send(&mut dp, NODEPORT_INGRESS, &syn_from(src, 40001, port));
        assert_eq!(action, TC_ACT_SHOT);
        assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
    }
}

#[test]
fn what_host_routing_cannot_deliver_goes_up_the_stack_unjudged() {
    let mut dp = arriving_setup();
    // The TTL ends here (the stack sends the ICMP error), no endpoint has
    // the address, or the address is not the endpoint's own.
    let mut last_hop = syn_from(NET3, 40002, 80);
    last_hop[14 + 8] = 1;
    let csum = ipv4_checksum(&{
        let mut h = last_hop[14..34].to_vec();
        h[10..12].fill(0);
        h
    });
    last_hop[24..26].copy_from_slice(&csum.to_be_bytes());
    let elsewhere = ipv4(NET3, [10, 0, 0, 9], IPPROTO_TCP, &tcp(1, 80, TCP_SYN), 0, 3);
    for packet in [last_hop, elsewhere] {
        let (action, events) = send(&mut dp, NODEPORT_INGRESS, &packet);
        assert_eq!(action, TC_ACT_OK);
        assert!(verdicts(&events).is_empty() && drops(&events).is_empty());
    }
}

#[test]
fn ingress_l7_flows_from_another_node_go_to_the_proxy() {
    let mut dp = setup(BOTH);
    redirect(
        &mut dp,
        Direction::Ingress,
        key(3000, IPPROTO_TCP, 8080, 16),
    );
    let (action, mark) = dp
        .test_run_mark_out(NODEPORT_INGRESS, &syn_from(NET3, 40003, 8080))
        .unwrap();
    assert_eq!((action, mark), (TC_ACT_REDIRECT, MARK_TO_PROXY));
}

/// The answers to a flow A's egress rules sent to the proxy belong to the
/// proxy's upstream connection (it borrowed A's address), not to A: up the
/// stack to the proxy's socket, never into A, which would reset the flow.
#[test]
fn answers_to_a_redirected_flow_go_up_the_stack_to_the_proxy() {
    let mut dp = setup(BOTH);
    redirect(&mut dp, Direction::Egress, key(3000, IPPROTO_TCP, 80, 16));
    let syn = ipv4(A4, NET3, IPPROTO_TCP, &tcp(40004, 80, TCP_SYN), 0x4000, 4);
    assert_eq!(run(&dp, FROM_CONTAINER, &syn), TC_ACT_REDIRECT);
    let answer = syn_ack(NET3, A4, 80, 40004);
    assert_eq!(run(&dp, NODEPORT_INGRESS, &answer), TC_ACT_OK);
    // What the proxy itself answers A (from the server's address) enters
    // A as before.
    assert_eq!(run(&dp, TO_CONTAINER, &answer), TC_ACT_OK);
}

/// The L7 proxy's upstream connections borrow a pod's address with a port
/// of their own, so their answers from another node match no conntrack
/// entry: host routing judges a flow from its first packet only (a SYN
/// without ACK) and leaves any other TCP packet of no tracked flow to the
/// stack, unjudged, where the proxy's socket takes it. Were it judged as a
/// new flow for A, A's ingress would drop it or A would reset it.
#[test]
fn tcp_packets_of_no_tracked_flow_but_its_first_go_up_the_stack_unjudged() {
    let mut dp = arriving_setup();
    for flags in [TCP_SYN | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK] {
        let packet = ipv4(NET3, A4, IPPROTO_TCP, &tcp(80, 41000, flags), 0x4000, 6);
        let (action, events) = send(&mut dp, NODEPORT_INGRESS, &packet);
        assert_eq!(action, TC_ACT_OK, "TCP flags {flags:#x}");
        assert!(events.is_empty(), "TCP flags {flags:#x}: {events:?}");
    }
    assert!(dp.maps.ct_entries().unwrap().is_empty());
    // Its pod's own program still judges them as before, should they
    // reach it (a world source on a port A does not let in: dropped).
    let stray = ipv4(WORLD4, A4, IPPROTO_TCP, &tcp(80, 41001, TCP_ACK), 0x4000, 7);
    assert_eq!(run(&dp, TO_CONTAINER, &stray), TC_ACT_SHOT);
}

/// Local delivery finds a pod's address through its slot of
/// `ENDPOINT_ADDR_SLOTS` (`bpf/common/src/slots.rs`), or through the hash
/// when several addresses share it: A (10.0.0.1) and C (10.0.16.1) share
/// one. Each is delivered into its own pod, before and after the other
/// leaves, and an address that left is no longer delivered.
#[test]
fn pods_whose_addresses_share_a_slot_are_each_delivered_into() {
    use axoneme_bpf_common::slot_state;
    const C4: [u8; 4] = [10, 0, 16, 1];
    const C_IFINDEX: u32 = 7;
    let mut dp = arriving_setup();
    let slot = |dp: &TestDatapath| dp.maps.endpoint_address_slot(A4.into()).unwrap();
    assert_eq!((slot(&dp).state, slot(&dp).value), (slot_state::ONE, 1));
    let c = EndpointInfo::new(7000, 7000, 0, &[C4.into()]);
    dp.maps.set_endpoint(C_IFINDEX, c).unwrap();
    assert_eq!(slot(&dp), dp.maps.endpoint_address_slot(C4.into()).unwrap());
    assert_eq!(slot(&dp).state, slot_state::SHARED);
    let into = |dp: &mut TestDatapath, dst: [u8; 4], sport: u16| {
        let packet = ipv4(NET3, dst, IPPROTO_TCP, &tcp(sport, 80, TCP_SYN), 0x4000, 8);
        let (action, events) = send(dp, NODEPORT_INGRESS, &packet);
        let ifindex = events.iter().map(|e| e.ifindex).max();
        (action, ifindex)
    };
    assert_eq!(into(&mut dp, A4, 42000), (TC_ACT_REDIRECT, Some(1)));
    assert_eq!(into(&mut dp, C4, 42001), (TC_ACT_REDIRECT, Some(C_IFINDEX)));
    dp.maps.remove_endpoint(C_IFINDEX).unwrap();
    assert_eq!((slot(&dp).state, slot(&dp).value), (slot_state::ONE, 1));
    assert_eq!(into(&mut dp, A4, 42002), (TC_ACT_REDIRECT, Some(1)));
    // C's address now belongs to no pod here: up the stack, unjudged.
    assert_eq!(into(&mut dp, C4, 42003), (TC_ACT_OK, None));
    dp.maps.remove_endpoint(1).unwrap();
    assert_eq!(slot(&dp).state, slot_state::EMPTY);
    assert_eq!(into(&mut dp, A4, 42004), (TC_ACT_OK, None));
}
