//! Parsing: ICMP and its errors, IPv6 extension headers, IPv4 options,
//! short and malformed packets, fragments; conntrack entries' expiry.

use super::*;

#[test]
fn icmp_echo_by_type_and_its_reply() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_ICMP, 8, 16));
    let request = ipv4(B4, A4, IPPROTO_ICMP, &icmp(8, 0, 77, b"ping"), 0, 6);
    assert_eq!(send(&mut dp, TO_CONTAINER, &request).0, TC_ACT_OK);
    let reply = ipv4(A4, B4, IPPROTO_ICMP, &icmp(0, 0, 77, b"ping"), 0, 7);
    assert_eq!(send(&mut dp, FROM_CONTAINER, &reply).0, TC_ACT_OK);
    // A's own echo request to B (same id) is a new flow, not a reply.
    let back = ipv4(A4, B4, IPPROTO_ICMP, &icmp(8, 0, 77, b"ping"), 0, 8);
    let (action, events) = send(&mut dp, FROM_CONTAINER, &back);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
    // Another ICMP type from B is not allowed.
    let ts = ipv4(B4, A4, IPPROTO_ICMP, &icmp(13, 0, 1, &[0; 12]), 0, 9);
    assert_eq!(send(&mut dp, TO_CONTAINER, &ts).0, TC_ACT_SHOT);
}

#[test]
fn icmp_errors_about_a_tracked_flow_are_related() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Egress, key(B_ID, IPPROTO_UDP, 53, 16));
    let query = ipv4(A4, B4, IPPROTO_UDP, &udp(5353, 53, b"query"), 0, 10);
    assert_eq!(send(&mut dp, FROM_CONTAINER, &query).0, TC_ACT_OK);
    // B: port unreachable, quoting the query. Ingress allows no ICMP.
    let unreachable = ipv4(
        B4,
        A4,
        IPPROTO_ICMP,
        &icmp(3, 3, 0, &quote_v4(&query)),
        0,
        11,
    );
    let (action, events) = send(&mut dp, TO_CONTAINER, &unreachable);
    assert_eq!(action, TC_ACT_OK);
    assert!(events.is_empty(), "{events:?}");
    // An error quoting a flow nobody started is judged by policy: denied.
    let other = ipv4(A4, B4, IPPROTO_UDP, &udp(5354, 53, b"query"), 0, 12);
    let forged = ipv4(
        B4,
        A4,
        IPPROTO_ICMP,
        &icmp(3, 3, 0, &quote_v4(&other)),
        0,
        13,
    );
    let (action, events) = send(&mut dp, TO_CONTAINER, &forged);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
}

#[test]
fn an_expired_entry_does_not_hide_a_live_reply_flow() {
    let mut dp = setup(BOTH);
    // What an old flow A:6000 → B:5000 leaves behind: an expired entry.
    let addr = |a: [u8; 4]| {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    };
    let old = CtKey {
        saddr: addr(A4),
        daddr: addr(B4),
        sport: 6000u16.to_be(),
        dport: 5000u16.to_be(),
        endpoint_id: A_ID,
        protocol: IPPROTO_UDP,
        direction: direction::EGRESS,
        family: family::IPV4,
        pad: 0,
    };
    let expired = CtValue {
        expires_ns: 1,
        ..CtValue::default()
    };
    dp.maps.set_ct(&old, expired).unwrap();
    // B now starts the reverse flow, which ingress allows; egress allows
    // nothing, so A's answers pass only as replies of B's flow, even though
    // the expired entry matches them as original-direction packets.
    allow(
        &mut dp,
        Direction::Ingress,
        key(B_ID, IPPROTO_UDP, 6000, 16),
    );
    let from_b = ipv4(B4, A4, IPPROTO_UDP, &udp(5000, 6000, b"hi"), 0, 30);
    assert_eq!(send(&mut dp, TO_CONTAINER, &from_b).0, TC_ACT_OK);
    let answer = ipv4(A4, B4, IPPROTO_UDP, &udp(6000, 5000, b"hello"), 0, 31);
    let (action, events) = send(&mut dp, FROM_CONTAINER, &answer);
    assert_eq!(action, TC_ACT_OK, "{events:?}");
    assert!(events.is_empty(), "a reply is no new flow: {events:?}");
    // The live entry saw the reply; the expired one stayed expired.
    let ct = dp.maps.ct_entries().unwrap();
    let live = ct
        .iter()
        .find(|(k, _)| k.direction == direction::INGRESS)
        .unwrap();
    assert_eq!(live.1.packets, 2);
    assert_ne!(live.1.flags & ct_flags::SEEN_REPLY, 0);
    let stale = ct.iter().find(|(k, _)| *k == old).unwrap();
    assert_eq!(stale.1.expires_ns, 1);
}

#[test]
fn ipv6_with_extension_headers() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 443, 16));
    let syn = tcp(40000, 443, TCP_SYN);
    // Hop-by-hop options (8 bytes: next = TCP, len 0, padding) then TCP.
    let mut payload = vec![IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
    payload.extend_from_slice(&syn);
    let (action, events) = send(&mut dp, TO_CONTAINER, &ipv6(b6(), a6(), 0, &payload));
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        verdicts(&events),
        vec![(ev::ALLOWED, B_ID, A_ID, match_type::L3_L4)]
    );
    assert_eq!(events[0].family, 6);
    // Another port: default deny.
    let (action, events) = send(
        &mut dp,
        TO_CONTAINER,
        &ipv6(b6(), a6(), IPPROTO_TCP, &tcp(40000, 444, TCP_SYN)),
    );
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
    // The reply passes through conntrack.
    let reply = ipv6(a6(), b6(), IPPROTO_TCP, &tcp(443, 40000, TCP_SYN | TCP_ACK));
    assert_eq!(send(&mut dp, FROM_CONTAINER, &reply).0, TC_ACT_OK);
    // Neighbour solicitation is not subject to policy.
    let ns = ipv6(b6(), a6(), IPPROTO_ICMPV6, &icmp(135, 0, 0, &[0; 16]));
    assert_eq!(send(&mut dp, TO_CONTAINER, &ns).0, TC_ACT_OK);
}

/// `packet` (from [`ipv4`]) with 4 bytes of IPv4 options (NOPs).
fn with_ip_options(mut packet: Vec<u8>) -> Vec<u8> {
    packet.splice(34..34, [1u8; 4]);
    packet[14] = 0x46;
    let total = u16::from_be_bytes([packet[16], packet[17]]) + 4;
    packet[16..18].copy_from_slice(&total.to_be_bytes());
    packet
}

/// Option-less IPv4 takes the one-copy header path; options and packets
/// too short for that copy take the field-by-field one. Both find the
/// ports where they are.
#[test]
fn ports_are_found_with_ip_options_and_in_short_packets() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_UDP, 53, 16));
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 80, 16));
    for (what, packet, action) in [
        (
            "UDP with options, allowed port",
            with_ip_options(ipv4(B4, A4, IPPROTO_UDP, &udp(5000, 53, b"q"), 0, 1)),
            TC_ACT_OK,
        ),
        (
            "UDP with options, other port",
            with_ip_options(ipv4(B4, A4, IPPROTO_UDP, &udp(5000, 54, b"q"), 0, 2)),
            TC_ACT_SHOT,
        ),
        (
            "TCP with options, allowed port",
            with_ip_options(syn_from(B4, 5001, 80)),
            TC_ACT_OK,
        ),
        (
            "TCP with options, other port",
            with_ip_options(syn_from(B4, 5002, 81)),
            TC_ACT_SHOT,
        ),
        // 14 + 20 + 2 bytes: shorter than the one copy; a header cut short.
        (
            "a UDP header cut to its source port",
            {
                let mut p = ipv4(B4, A4, IPPROTO_UDP, &udp(5003, 53, b""), 0, 3);
                p.truncate(36);
                p
            },
            TC_ACT_SHOT,
        ),
    ] {
        let (got, events) = send(&mut dp, TO_CONTAINER, &packet);
        assert_eq!(got, action, "{what}: {events:?}");
        if action == TC_ACT_SHOT {
            let want = if packet.len() == 36 {
                drop_reason::DROP_CT_INVALID_HDR
            } else {
                drop_reason::DROP_POLICY
            };
            assert_eq!(drops(&events), vec![want], "{what}");
        }
    }
    // The TCP flow with options is tracked: its reply passes.
    let reply = with_ip_options(ipv4(
        A4,
        B4,
        IPPROTO_TCP,
        &tcp(80, 5001, TCP_SYN | TCP_ACK),
        0,
        4,
    ));
    assert_eq!(send(&mut dp, FROM_CONTAINER, &reply).0, TC_ACT_OK);
}

#[test]
fn malformed_packets_are_dropped_with_a_reason() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(0, 0, 0, 0));
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "TCP header cut short",
            {
                let mut p = syn_from(B4, 1, 80);
                p.truncate(14 + 20 + 10);
                p
            },
            drop_reason::DROP_CT_INVALID_HDR,
        ),
        (
            "IPv4 header length 4 words",
            {
                let mut p = syn_from(B4, 1, 80);
                p[14] = 0x44;
                p
            },
            drop_reason::DROP_INVALID,
        ),
        (
            "IPv4 version 6 in an IPv4 frame",
            {
                let mut p = syn_from(B4, 1, 80);
                p[14] = 0x65;
                p
            },
            drop_reason::DROP_INVALID,
        ),
        (
            "five chained IPv6 extension headers",
            {
                let mut payload = Vec::new();
                for _ in 0..4 {
                    payload.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
                }
                payload.extend_from_slice(&[IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
                payload.extend_from_slice(&tcp(1, 80, TCP_SYN));
                ipv6(b6(), a6(), 60, &payload)
            },
            drop_reason::DROP_INVALID_EXTHDR,
        ),
        (
            "an unknown ethertype",
            {
                let mut p = syn_from(B4, 1, 80);
                p[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
                p
            },
            drop_reason::DROP_UNKNOWN_L3,
        ),
    ];
    for (what, packet, reason) in cases {
        let (action, events) = send(&mut dp, TO_CONTAINER, &packet);
        assert_eq!(action, TC_ACT_SHOT, "{what}");
        assert_eq!(drops(&events), vec![reason], "{what}");
    }
    // ARP passes.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(send(&mut dp, TO_CONTAINER, &arp).0, TC_ACT_OK);
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_UDP, 53, 16));
    // Allowed datagram: first fragment (MF, offset 0) then the rest.
    let first = ipv4(B4, A4, IPPROTO_UDP, &udp(5000, 53, &[0; 24]), 0x2000, 0x100);
    assert_eq!(send(&mut dp, TO_CONTAINER, &first).0, TC_ACT_OK);
    let later = ipv4(B4, A4, IPPROTO_UDP, &[0; 32], 4, 0x100);
    assert_eq!(send(&mut dp, TO_CONTAINER, &later).0, TC_ACT_OK);
    // Denied datagram: its later fragments are denied too.
    let first = ipv4(B4, A4, IPPROTO_UDP, &udp(5000, 54, &[0; 24]), 0x2000, 0x101);
    assert_eq!(send(&mut dp, TO_CONTAINER, &first).0, TC_ACT_SHOT);
    let later = ipv4(B4, A4, IPPROTO_UDP, &[0; 32], 4, 0x101);
    let (action, events) = send(&mut dp, TO_CONTAINER, &later);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
    // A later fragment without its first: dropped, never let through.
    let orphan = ipv4(B4, A4, IPPROTO_UDP, &[0; 32], 4, 0x102);
    let (action, events) = send(&mut dp, TO_CONTAINER, &orphan);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_FRAG_NOT_FOUND]);
}

#[test]
fn a_new_connection_on_a_closing_flow_s_tuple_is_judged_again() {
    let mut dp = setup(BOTH);
    let port = key(B_ID, IPPROTO_TCP, 443, 16);
    allow(&mut dp, Direction::Ingress, port);
    let from_b = |flags| ipv4(B4, A4, IPPROTO_TCP, &tcp(40000, 443, flags), 0x4000, 1);
    let (action, events) = send(&mut dp, TO_CONTAINER, &from_b(TCP_SYN));
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(verdicts(&events).len(), 1);
    let answer = ipv4(
        A4,
        B4,
        IPPROTO_TCP,
        &tcp(443, 40000, TCP_SYN | TCP_ACK),
        0x4000,
        2,
    );
    assert_eq!(send(&mut dp, FROM_CONTAINER, &answer).0, TC_ACT_OK);
    // The flow closes; its entry stays for the close timeout.
    assert_eq!(
        send(&mut dp, TO_CONTAINER, &from_b(TCP_FIN | TCP_ACK)).0,
        TC_ACT_OK
    );
    let closing = |dp: &mut TestDatapath| {
        dp.maps
            .ct_entries()
            .unwrap()
            .iter()
            .any(|(_, v)| v.flags & ct_flags::CLOSING != 0)
    };
    assert!(closing(&mut dp));
    // Late packets of the old flow still pass as the old flow.
    let (action, events) = send(&mut dp, TO_CONTAINER, &from_b(TCP_ACK));
    assert_eq!((action, events.len()), (TC_ACT_OK, 0), "{events:?}");
    // The policy now denies the port: a new connection on the same tuple
    // is judged by it, not passed as the closing flow.
    deny(&mut dp, Direction::Ingress, port);
    let (action, events) = send(&mut dp, TO_CONTAINER, &from_b(TCP_SYN));
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY_DENY]);
    // Allowed again: the new connection is a new flow (its own verdict
    // event) whose entry replaces the closing one.
    allow(&mut dp, Direction::Ingress, port);
    let (action, events) = send(&mut dp, TO_CONTAINER, &from_b(TCP_SYN));
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(verdicts(&events).len(), 1, "{events:?}");
    assert!(!closing(&mut dp), "the new flow kept the old one's close");
}
