//! Where packets go after the verdict: to the L7 proxy, straight into a
//! local endpoint, or up the stack.

use super::*;

#[test]
fn redirected_flows_go_to_the_proxy_packet_after_packet() {
    let mut dp = setup(BOTH);
    redirect(
        &mut dp,
        Direction::Ingress,
        key(B_ID, IPPROTO_TCP, 8080, 16),
    );
    // The first packet: a redirected verdict, handed to the proxy.
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(B4, 40000, 8080));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(
        verdicts(&events),
        vec![(ev::REDIRECTED, B_ID, A_ID, match_type::L3_L4)]
    );
    // Later packets of the flow follow conntrack to the proxy too.
    let ack = ipv4(B4, A4, IPPROTO_TCP, &tcp(40000, 8080, TCP_ACK), 0x4000, 2);
    assert_eq!(send(&mut dp, TO_CONTAINER, &ack).0, TC_ACT_REDIRECT);
    // The proxy's own upstream packets (its mark) are never sent back to
    // it, even on a tuple a redirected client used.
    let marked = dp
        .test_run_marked(TO_CONTAINER, &ack, axoneme_bpf_common::MARK_PROXY)
        .unwrap();
    assert_eq!(marked, TC_ACT_OK);
    // Another peer is not redirected but denied at L3/L4 (no 403 for it).
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(WORLD4, 40001, 8080));
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
}

#[test]
fn egress_l7_flows_go_to_the_proxy_from_the_source_pod() {
    let mut dp = setup(BOTH);
    redirect(&mut dp, Direction::Egress, key(B_ID, IPPROTO_TCP, 80, 16));
    let syn = ipv4(A4, B4, IPPROTO_TCP, &tcp(40002, 80, TCP_SYN), 0x4000, 9);
    let (action, events) = send(&mut dp, FROM_CONTAINER, &syn);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(
        verdicts(&events),
        vec![(ev::REDIRECTED, A_ID, B_ID, match_type::L3_L4)]
    );
    // The proxy's answers (from B's address) reach A as replies.
    let reply = ipv4(
        B4,
        A4,
        IPPROTO_TCP,
        &tcp(80, 40002, TCP_SYN | TCP_ACK),
        0x4000,
        10,
    );
    assert_eq!(send(&mut dp, TO_CONTAINER, &reply).0, TC_ACT_OK);
    // Another port to B has no entry: denied.
    let other = ipv4(A4, B4, IPPROTO_TCP, &tcp(40003, 81, TCP_SYN), 0x4000, 11);
    let (action, events) = send(&mut dp, FROM_CONTAINER, &other);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
}

/// Pod B as a local endpoint behind ifindex [`B_IFINDEX`], its ingress
/// enforced, letting A in on `protocol`/`port` (none: nothing allowed).
const B_IFINDEX: u32 = 7;

fn local_b(dp: &mut TestDatapath, allowed: Option<(u8, u16)>) {
    let b = EndpointInfo::new(
        B_ID,
        B_ID,
        endpoint_flags::INGRESS_ENFORCED,
        &[B4.into(), b6().into()],
    );
    dp.maps.set_endpoint(B_IFINDEX, b).unwrap();
    if let Some((protocol, port)) = allowed {
        let (k, v) = policy_entry(
            B_ID,
            Direction::Ingress,
            &key(A_ID, protocol, port, 16),
            &Verdict::Allow,
            0,
        );
        dp.maps.set_policy(&k, v).unwrap();
    }
}

/// The events' (kind, verdict or drop reason, direction, ifindex).
fn where_decided(events: &[Event]) -> Vec<(u8, u8, u8, u32)> {
    events
        .iter()
        .map(|e| {
            let what = if e.kind == event_kind::DROP {
                e.reason
            } else {
                e.verdict
            };
            (e.kind, what, e.direction, e.ifindex)
        })
        .collect()
}

#[test]
fn local_delivery_judges_the_destination_and_goes_straight_into_it() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Egress, key(B_ID, IPPROTO_TCP, 80, 16));
    allow(&mut dp, Direction::Egress, key(B_ID, IPPROTO_UDP, 53, 16));
    local_b(&mut dp, None);
    assert_eq!(
        dp.maps.endpoint_address(B4.into()).unwrap(),
        Some(B_IFINDEX)
    );
    // A's two addresses and B's.
    assert_eq!(dp.maps.endpoint_addresses().unwrap(), 4);
    // A may send, but B's ingress lets nothing in: dropped at A's
    // interface, judged as B's ingress (B's ifindex in the events).
    let syn = ipv4(A4, B4, IPPROTO_TCP, &tcp(40000, 80, TCP_SYN), 0x4000, 1);
    let (action, events) = send(&mut dp, FROM_CONTAINER, &syn);
    assert_eq!(action, TC_ACT_SHOT);
    let (verdict, drop) = (event_kind::POLICY_VERDICT, event_kind::DROP);
    assert_eq!(
        where_decided(&events),
        vec![
            (verdict, ev::ALLOWED, direction::EGRESS, 1),
            // A's new flow, traced as it leaves A.
            (event_kind::TRACE, ev::ALLOWED, direction::EGRESS, 1),
            (verdict, ev::DENIED, direction::INGRESS, B_IFINDEX),
            (
                drop,
                drop_reason::DROP_POLICY,
                direction::INGRESS,
                B_IFINDEX
            ),
        ]
    );
    // Allowed in: redirected into B, one hop counted (TTL 64 -> 63, the
    // header checksum still valid), both directions tracked.
    local_b(&mut dp, Some((IPPROTO_TCP, 80)));
    let syn = ipv4(A4, B4, IPPROTO_TCP, &tcp(40001, 80, TCP_SYN), 0x4000, 2);
    let (action, out) = dp.test_run_packet(FROM_CONTAINER, &syn).unwrap();
    assert_eq!(action, TC_ACT_REDIRECT);
    let events = dp.maps.drain_events();
    assert_eq!(
        verdicts(&events),
        vec![
            (ev::ALLOWED, A_ID, B_ID, match_type::L3_L4),
            (ev::ALLOWED, A_ID, B_ID, match_type::L3_L4),
        ]
    );
    // Each new flow traced once: leaving A, then delivered to B.
    let traces: Vec<(u8, u8, u32)> = events
        .iter()
        .filter(|e| e.kind == event_kind::TRACE)
        .map(|e| (e.reason, e.direction, e.ifindex))
        .collect();
    assert_eq!(
        traces,
        vec![
            (trace_point::FROM_ENDPOINT, direction::EGRESS, 1),
            (trace_point::TO_ENDPOINT, direction::INGRESS, B_IFINDEX),
        ]
    );
    assert_eq!(out.len(), syn.len());
    assert_eq!(out[14 + 8], 63);
    assert_eq!(ipv4_checksum(&out[14..34]), 0, "IPv4 header checksum");
    assert_eq!(&out[..22], &syn[..22]);
    assert_eq!(&out[26..], &syn[26..]);
    let ct = dp.maps.ct_entries().unwrap();
    let mut dirs: Vec<(u32, u8, u16)> = ct
        .iter()
        .map(|(k, _)| (k.endpoint_id, k.direction, u16::from_be(k.sport)))
        .collect();
    dirs.sort();
    // (The first SYN's egress entry stays, as it would have when B's
    // interface dropped it.)
    assert_eq!(
        dirs,
        vec![
            (A_ID, direction::EGRESS, 40000),
            (A_ID, direction::EGRESS, 40001),
            (B_ID, direction::INGRESS, 40001)
        ]
    );
    // The next packet of the flow: no decision, straight in.
    let ack = ipv4(A4, B4, IPPROTO_TCP, &tcp(40001, 80, TCP_ACK), 0x4000, 3);
    let (action, events) = send(&mut dp, FROM_CONTAINER, &ack);
    assert_eq!((action, events), (TC_ACT_REDIRECT, vec![]));
    // A TTL that ends here: up the stack, which answers with the ICMP
    // error (B's side untouched: its entry counts 2 packets, not 3).
    let mut last = ipv4(A4, B4, IPPROTO_TCP, &tcp(40001, 80, TCP_ACK), 0x4000, 4);
    last[14 + 8] = 1;
    assert_eq!(send(&mut dp, FROM_CONTAINER, &last).0, TC_ACT_OK);
    let b_packets = |dp: &TestDatapath| {
        let ct = dp.maps.ct_entries().unwrap();
        ct.iter()
            .find(|(k, _)| k.endpoint_id == B_ID)
            .map(|(_, v)| v.packets)
    };
    assert_eq!(b_packets(&dp), Some(2));
    // IPv6: the hop limit counts the hop.
    local_b(&mut dp, Some((IPPROTO_UDP, 53)));
    let dgram = ipv6(a6(), b6(), IPPROTO_UDP, &udp(5353, 53, b"q"));
    let (action, out) = dp.test_run_packet(FROM_CONTAINER, &dgram).unwrap();
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!((dgram[14 + 7], out[14 + 7]), (64, 63));
    dp.maps.drain_events();
}

#[test]
fn what_local_delivery_cannot_vouch_for_goes_up_the_stack() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Egress, key(B_ID, IPPROTO_UDP, 53, 16));
    local_b(&mut dp, Some((IPPROTO_UDP, 53)));
    let query = |sport| ipv4(A4, B4, IPPROTO_UDP, &udp(sport, 53, b"q"), 0, sport);
    assert_eq!(run(&dp, FROM_CONTAINER, &query(1)), TC_ACT_REDIRECT);
    // An address entry whose endpoint does not own the address (as a
    // stale entry would be; written with its slot, so the programs find
    // it): not delivered there.
    let stale = EndpointInfo::new(B_ID, B_ID, 0, &[std::net::IpAddr::from(NET3)]);
    dp.maps.set_endpoint_addresses(B_IFINDEX, &stale).unwrap();
    let slot = dp.maps.endpoint_address_slot(NET3.into()).unwrap();
    assert_eq!(
        (slot.state, slot.value),
        (axoneme_bpf_common::slot_state::ONE, B_IFINDEX)
    );
    let other = ipv4(A4, NET3, IPPROTO_UDP, &udp(2, 53, b"q"), 0, 2);
    allow(&mut dp, Direction::Egress, key(3000, IPPROTO_UDP, 53, 16));
    assert_eq!(run(&dp, FROM_CONTAINER, &other), TC_ACT_OK);
    // B gives up its IPv4 address: the entry goes with it.
    let b = EndpointInfo::new(B_ID, B_ID, 0, &[b6().into()]);
    dp.maps.set_endpoint(B_IFINDEX, b).unwrap();
    assert_eq!(dp.maps.endpoint_address(B4.into()).unwrap(), None);
    assert_eq!(
        dp.maps.endpoint_address(b6().into()).unwrap(),
        Some(B_IFINDEX)
    );
    assert_eq!(run(&dp, FROM_CONTAINER, &query(3)), TC_ACT_OK);
    // Removed: its last address goes too.
    dp.maps.remove_endpoint(B_IFINDEX).unwrap();
    assert_eq!(dp.maps.endpoint_address(b6().into()).unwrap(), None);
    dp.maps.drain_events();
}

/// The L7 proxy's upstream connections borrow the client's address. When
/// the client is a pod of this node, the server's answers are addressed to
/// that pod, yet belong to the proxy's socket in the node's stack: they
/// must go up the stack, not be delivered into the client pod (which has
/// no such socket and resets the flow). Here A is the server and B a local
/// client that would let A in on any TCP port, so a wrong delivery shows.
#[test]
fn answers_to_the_proxys_upstream_connections_go_up_to_the_proxy() {
    let mut dp = setup(BOTH);
    redirect(
        &mut dp,
        Direction::Ingress,
        key(B_ID, IPPROTO_TCP, 8080, 16),
    );
    allow(
        &mut dp,
        Direction::Ingress,
        key(B_ID, IPPROTO_TCP, 8081, 16),
    );
    local_b(&mut dp, None);
    let (k, v) = policy_entry(
        B_ID,
        Direction::Ingress,
        &key(A_ID, IPPROTO_TCP, 0, 0),
        &Verdict::Allow,
        0,
    );
    dp.maps.set_policy(&k, v).unwrap();
    let proxy = axoneme_bpf_common::MARK_PROXY;
    for (b, a, v6) in [
        (B4.to_vec(), A4.to_vec(), false),
        (b6().to_vec(), a6().to_vec(), true),
    ] {
        let packet = |src: &[u8], dst: &[u8], sport, dport, flags| {
            let l4 = tcp(sport, dport, flags);
            if v6 {
                ipv6(
                    src.try_into().unwrap(),
                    dst.try_into().unwrap(),
                    IPPROTO_TCP,
                    &l4,
                )
            } else {
                ipv4(
                    src.try_into().unwrap(),
                    dst.try_into().unwrap(),
                    IPPROTO_TCP,
                    &l4,
                    0x4000,
                    1,
                )
            }
        };
        // B's own connection to 8080 goes to the proxy.
        let syn = packet(&b, &a, 50000, 8080, TCP_SYN);
        assert_eq!(send(&mut dp, TO_CONTAINER, &syn).0, TC_ACT_REDIRECT);
        // The proxy's upstream SYN (its mark, B's address, another port)
        // passes into A, tracked as the proxy's.
        let upstream = packet(&b, &a, 50001, 8080, TCP_SYN);
        assert_eq!(
            dp.test_run_marked(TO_CONTAINER, &upstream, proxy).unwrap(),
            TC_ACT_OK
        );
        let flagged: Vec<u16> = dp
            .maps
            .ct_entries()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.flags & ct_flags::PROXY_UPSTREAM != 0)
            .map(|(k, _)| u16::from_be(k.sport))
            .collect();
        assert_eq!(flagged, vec![50001], "v6: {v6}");
        // A's answer goes up the node's stack (to the proxy's socket), and
        // B's side never sees it: no events, no entry for B.
        dp.maps.drain_events();
        let answer = packet(&a, &b, 8080, 50001, TCP_SYN | TCP_ACK);
        let (action, events) = send(&mut dp, FROM_CONTAINER, &answer);
        assert_eq!((action, events), (TC_ACT_OK, vec![]), "v6: {v6}");
        let b_entries = |dp: &TestDatapath| {
            dp.maps
                .ct_entries()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.endpoint_id == B_ID)
                .count()
        };
        assert_eq!(b_entries(&dp), 0, "v6: {v6}");
        // Later answers too.
        let ack = packet(&a, &b, 8080, 50001, TCP_ACK);
        assert_eq!(send(&mut dp, FROM_CONTAINER, &ack).0, TC_ACT_OK);
        // A flow B opened itself that reached A through the node's stack
        // (not by local delivery at B's device: kube-proxy may have
        // translated it from a Service address): its answers go back up the
        // stack, where that translation is undone, not straight into B.
        let plain = packet(&b, &a, 50002, 8081, TCP_SYN);
        assert_eq!(send(&mut dp, TO_CONTAINER, &plain).0, TC_ACT_OK);
        let mut via_stack: Vec<u16> = dp
            .maps
            .ct_entries()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.flags & ct_flags::VIA_STACK != 0)
            .map(|(k, _)| u16::from_be(k.sport))
            .collect();
        via_stack.sort();
        // (B's first flow, to the proxy, came up the stack too.)
        assert_eq!(via_stack, vec![50000, 50002], "v6: {v6}");
        let answer = packet(&a, &b, 8081, 50002, TCP_SYN | TCP_ACK);
        assert_eq!(
            send(&mut dp, FROM_CONTAINER, &answer).0,
            TC_ACT_OK,
            "v6: {v6}"
        );
        assert_eq!(b_entries(&dp), 0, "v6: {v6}");
        dp.maps.clear_ct().unwrap();
        dp.maps.drain_events();
    }
}
