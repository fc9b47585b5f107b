//! Policy verdicts: allow, deny, default deny, wildcards and port ranges,
//! connection tracking of replies, audit mode, unenforced directions.

use super::*;

#[test]
fn allowed_flow_passes_with_a_verdict_event_and_counters() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 80, 16));
    let packet = syn_from(B4, 40000, 80);
    let (action, events) = send(&mut dp, TO_CONTAINER, &packet);
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        verdicts(&events),
        vec![(ev::ALLOWED, B_ID, A_ID, match_type::L3_L4)]
    );
    assert!(drops(&events).is_empty());
    let e = &events[0];
    assert_eq!(
        (e.saddr[..4].to_vec(), u16::from_be(e.dport)),
        (B4.to_vec(), 80)
    );
    // The entry counted the packet.
    let (k, _) = policy_entry(
        A_ID,
        Direction::Ingress,
        &key(B_ID, IPPROTO_TCP, 80, 16),
        &Verdict::Allow,
        0,
    );
    let v = dp.maps.policy(&k).unwrap().expect("entry");
    assert_eq!((v.packets, v.bytes), (1, packet.len() as u64));
    // A CT entry now exists.
    assert_eq!(dp.maps.ct_entries().unwrap().len(), 1);
}

/// A full policy trie (`--bpf-policy-max`) refuses a new entry with an
/// error (the agent's policy unit then stops its pass, in an order that
/// fails closed), still takes changes to the entries it holds, and goes on
/// enforcing them: the flow whose entry did not fit is denied (133).
#[test]
fn a_full_policy_trie_refuses_new_entries_and_keeps_enforcing() {
    let sizes = MapSizes {
        policy: 4,
        ..MapSizes::default()
    };
    let mut dp = setup_loaded(load_sized(&sizes, LoadOptions::default()), BOTH);
    for port in 80..84 {
        allow(
            &mut dp,
            Direction::Ingress,
            key(B_ID, IPPROTO_TCP, port, 16),
        );
    }
    let (k, v) = policy_entry(
        A_ID,
        Direction::Ingress,
        &key(B_ID, IPPROTO_TCP, 84, 16),
        &Verdict::Allow,
        0,
    );
    let full = dp.maps.set_policy(&k, v);
    assert!(full.is_err(), "a fifth entry in a trie of 4: {full:?}");
    // An entry it holds can still change: port 83 becomes a deny.
    deny(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 83, 16));
    for (port, want, reason) in [
        (80, TC_ACT_OK, None),
        (83, TC_ACT_SHOT, Some(drop_reason::DROP_POLICY_DENY)),
        (84, TC_ACT_SHOT, Some(drop_reason::DROP_POLICY)),
    ] {
        dp.maps.clear_ct().unwrap();
        let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(B4, 40000, port));
        assert_eq!(action, want, "port {port}");
        assert_eq!(drops(&events).first().copied(), reason, "port {port}");
    }
}

#[test]
fn default_deny_drops_with_reason_133() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 80, 16));
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(B4, 40000, 81));
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
    assert_eq!(
        verdicts(&events),
        vec![(ev::DENIED, B_ID, A_ID, match_type::NONE)]
    );
    assert!(
        dp.maps.ct_entries().unwrap().is_empty(),
        "a denied flow is not tracked"
    );
}

#[test]
fn deny_beats_allow_with_reason_181() {
    let mut dp = setup(BOTH);
    // Any peer may reach TCP/80, but B is denied everything: the engine's
    // closure writes the overlap B/TCP/80 as a deny.
    allow(&mut dp, Direction::Ingress, key(0, IPPROTO_TCP, 80, 16));
    deny(&mut dp, Direction::Ingress, key(B_ID, 0, 0, 0));
    deny(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 80, 16));
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(B4, 40000, 80));
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY_DENY]);
    // Others still get in through the wildcard entry.
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(WORLD4, 40000, 80));
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        verdicts(&events),
        vec![(ev::ALLOWED, 2, A_ID, match_type::L4_ONLY)]
    );
    // B on another port: the L3 deny.
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(B4, 40000, 22));
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY_DENY]);
}

#[test]
fn wildcards_port_ranges_and_any_protocol() {
    let mut dp = setup(BOTH);
    // 8000-8003 from B (a /14 port block); anything from the /24's identity.
    allow(
        &mut dp,
        Direction::Ingress,
        key(B_ID, IPPROTO_TCP, 8000, 14),
    );
    allow(&mut dp, Direction::Ingress, key(3000, 0, 0, 0));
    for (src, port, want) in [
        (B4, 8000, TC_ACT_OK),
        (B4, 8003, TC_ACT_OK),
        (B4, 8004, TC_ACT_SHOT),
        (B4, 7999, TC_ACT_SHOT),
        (NET3, 1, TC_ACT_OK),
        (WORLD4, 8000, TC_ACT_SHOT),
    ] {
        let (action, _) = send(&mut dp, TO_CONTAINER, &syn_from(src, 40000, port));
        assert_eq!(action, want, "{src:?} -> {port}");
    }
    // Protocol ANY covers UDP too, and ICMP.
    let udp_pkt = ipv4(NET3, A4, IPPROTO_UDP, &udp(5000, 53, b"q"), 0, 2);
    let (action, events) = send(&mut dp, TO_CONTAINER, &udp_pkt);
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        verdicts(&events),
        vec![(ev::ALLOWED, 3000, A_ID, match_type::L3_ONLY)]
    );
    // ALL: any peer, any protocol.
    allow(&mut dp, Direction::Ingress, key(0, 0, 0, 0));
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(WORLD4, 40001, 9999));
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        verdicts(&events),
        vec![(ev::ALLOWED, 2, A_ID, match_type::ALL)]
    );
}

#[test]
fn replies_pass_but_a_new_connection_back_is_denied() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 80, 16));
    assert_eq!(
        send(&mut dp, TO_CONTAINER, &syn_from(B4, 40000, 80)).0,
        TC_ACT_OK
    );
    // A answers: egress is enforced with no entry, yet the reply passes
    // without a policy decision (no verdict event).
    let reply = ipv4(
        A4,
        B4,
        IPPROTO_TCP,
        &tcp(80, 40000, TCP_SYN | TCP_ACK),
        0x4000,
        3,
    );
    let (action, events) = send(&mut dp, FROM_CONTAINER, &reply);
    assert_eq!(action, TC_ACT_OK);
    assert!(events.is_empty(), "{events:?}");
    // The rest of the flow both ways.
    let ack = ipv4(B4, A4, IPPROTO_TCP, &tcp(40000, 80, TCP_ACK), 0x4000, 4);
    assert_eq!(send(&mut dp, TO_CONTAINER, &ack).0, TC_ACT_OK);
    // A opening a connection to B is a new flow: denied.
    let syn = ipv4(A4, B4, IPPROTO_TCP, &tcp(40001, 80, TCP_SYN), 0x4000, 5);
    let (action, events) = send(&mut dp, FROM_CONTAINER, &syn);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
    assert_eq!(
        verdicts(&events),
        vec![(ev::DENIED, A_ID, B_ID, match_type::NONE)]
    );
    // The CT entry counts both directions and has seen the reply.
    let ct = dp.maps.ct_entries().unwrap();
    assert_eq!(ct.len(), 1);
    assert_eq!(ct[0].1.packets, 3);
    assert_eq!(ct[0].1.peer_identity, B_ID);
}

#[test]
fn audit_mode_reports_what_policy_would_drop_and_lets_it_pass_until_it_ends() {
    const AUDITED: u8 = BOTH | endpoint_flags::AUDIT;
    let mut dp = setup(AUDITED);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 80, 16));
    deny(&mut dp, Direction::Ingress, key(3000, 0, 0, 0));
    // Default deny and an explicit deny: both audited, both pass, no drop.
    for (src, matched) in [(B4, match_type::NONE), (NET3, match_type::L3_ONLY)] {
        let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(src, 40000, 81));
        assert_eq!(action, TC_ACT_OK, "{src:?}");
        assert!(drops(&events).is_empty(), "{events:?}");
        let id = if src == B4 { B_ID } else { 3000 };
        assert_eq!(verdicts(&events), vec![(ev::AUDIT, id, A_ID, matched)]);
    }
    // An allowed flow is still just allowed.
    let (_, events) = send(&mut dp, TO_CONTAINER, &syn_from(B4, 40001, 80));
    assert_eq!(
        verdicts(&events),
        vec![(ev::ALLOWED, B_ID, A_ID, match_type::L3_L4)]
    );
    // The audited flow is tracked: its reply and next packet pass with no
    // new verdict.
    let reply = ipv4(
        A4,
        B4,
        IPPROTO_TCP,
        &tcp(81, 40000, TCP_SYN | TCP_ACK),
        0x4000,
        3,
    );
    let (action, events) = send(&mut dp, FROM_CONTAINER, &reply);
    assert_eq!((action, events.len()), (TC_ACT_OK, 0), "{events:?}");
    let ack = ipv4(B4, A4, IPPROTO_TCP, &tcp(40000, 81, TCP_ACK), 0x4000, 4);
    assert_eq!(send(&mut dp, TO_CONTAINER, &ack).0, TC_ACT_OK);
    let audited_ct = |dp: &TestDatapath| {
        dp.maps
            .ct_entries()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.flags & ct_flags::AUDITED != 0)
            .count()
    };
    assert_eq!(
        audited_ct(&dp),
        2,
        "both audited flows are marked in conntrack"
    );
    let audits = dp
        .maps
        .verdicts()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.verdict == ev::AUDIT)
        .map(|(_, v)| v.packets)
        .sum::<u64>();
    assert_eq!(audits, 2, "the verdict counters count audited flows");

    // Audit mode ends: the established audited flow is cut both ways at
    // once, the allowed one goes on, and a new attempt is denied.
    dp.maps
        .set_endpoint(
            1,
            EndpointInfo::new(A_ID, A_ID, BOTH, &[A4.into(), a6().into()]),
        )
        .unwrap();
    let (action, events) = send(&mut dp, TO_CONTAINER, &ack);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY]);
    let (action, _) = send(&mut dp, FROM_CONTAINER, &reply);
    assert_eq!(action, TC_ACT_SHOT, "its replies too");
    let ack80 = ipv4(B4, A4, IPPROTO_TCP, &tcp(40001, 80, TCP_ACK), 0x4000, 5);
    assert_eq!(send(&mut dp, TO_CONTAINER, &ack80).0, TC_ACT_OK);
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(B4, 40002, 81));
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(
        verdicts(&events),
        vec![(ev::DENIED, B_ID, A_ID, match_type::NONE)]
    );
}

#[test]
fn unenforced_direction_allows_but_deny_entries_still_deny() {
    let mut dp = setup(endpoint_flags::EGRESS_ENFORCED);
    deny(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 22, 16));
    assert_eq!(
        send(&mut dp, TO_CONTAINER, &syn_from(WORLD4, 1, 22)).0,
        TC_ACT_OK
    );
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(B4, 1, 22));
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_POLICY_DENY]);
}
