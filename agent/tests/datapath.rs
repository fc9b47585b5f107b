//! The enforcement programs under `BPF_PROG_TEST_RUN`, each test a
//! setup / packet / check triple: the TC verdict, and the event the program
//! wrote to the ring buffer (Cilium's drop reasons and verdict events).
//!
//! The endpoint under test is "pod A" (10.0.0.1, fd00::1, identity 1000)
//! behind ifindex 1 (test runs come through loopback). `to_container` sees
//! what A receives (its ingress), `from_container` what A sends (egress).
//! Peer B is 10.0.0.2 / fd00::2, identity 2000; 10.0.1.0/24 has identity
//! 3000; every other address is world (2).

mod support;

use axoneme_agent::datapath::{policy_entry, FROM_CONTAINER, TO_CONTAINER};
use axoneme_bpf_common::{
    ct_flags, direction, drop_reason, endpoint_flags, event_kind, family, match_type,
    tc_action::TC_ACT_OK, tc_action::TC_ACT_REDIRECT, tc_action::TC_ACT_SHOT, trace_point,
    verdict as ev, CtKey, CtValue, EndpointInfo, EndpointSlot, Event, IpcacheValue, MetricsKey,
    MetricsValue, ENDPOINT_SLOTS,
};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Direction, Key, Verdict};
use support::*;

const A4: [u8; 4] = [10, 0, 0, 1];
const B4: [u8; 4] = [10, 0, 0, 2];
const NET3: [u8; 4] = [10, 0, 1, 9];
const WORLD4: [u8; 4] = [192, 0, 2, 50];
const A_ID: u32 = 1000;
const B_ID: u32 = 2000;

fn a6() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = 1;
    a
}

fn b6() -> [u8; 16] {
    let mut a = a6();
    a[15] = 2;
    a
}

fn setup(flags: u8) -> TestDatapath {
    setup_loaded(load(), flags)
}

/// [`setup`] on a datapath loaded by the caller.
fn setup_loaded(mut dp: TestDatapath, flags: u8) -> TestDatapath {
    let m = &mut dp.maps;
    m.set_event_rate(1_000_000, 1_000_000).unwrap();
    m.set_endpoint(
        1,
        EndpointInfo::new(A_ID, A_ID, flags, &[A4.into(), a6().into()]),
    )
    .unwrap();
    let id = |identity| IpcacheValue {
        identity,
        ..IpcacheValue::default()
    };
    for (net, identity) in [
        ("10.0.0.1/32", A_ID),
        ("10.0.0.2/32", B_ID),
        // Another pod of A's identity.
        ("10.0.0.3/32", A_ID),
        ("10.0.1.0/24", 3000),
        ("fd00::1/128", A_ID),
        ("fd00::2/128", B_ID),
    ] {
        m.set_ipcache(&net.parse().unwrap(), id(identity)).unwrap();
    }
    dp
}

const BOTH: u8 = endpoint_flags::INGRESS_ENFORCED | endpoint_flags::EGRESS_ENFORCED;

fn key(identity: u32, protocol: u8, port: u16, prefix: u8) -> Key {
    Key {
        identity: NumericIdentity(identity),
        protocol,
        port,
        prefix,
    }
}

fn allow(dp: &mut TestDatapath, dir: Direction, k: Key) {
    let (k, v) = policy_entry(A_ID, dir, &k, &Verdict::Allow, 0);
    dp.maps.set_policy(&k, v).unwrap();
}

fn deny(dp: &mut TestDatapath, dir: Direction, k: Key) {
    let (k, v) = policy_entry(A_ID, dir, &k, &Verdict::Deny, 0);
    dp.maps.set_policy(&k, v).unwrap();
}

/// An L7 entry: the flow goes to the proxy on port 15001 (any HTTP rule).
fn redirect(dp: &mut TestDatapath, dir: Direction, k: Key) {
    let rules = std::sync::Arc::new(vec![axoneme_policy::api::HttpRule::default()]);
    let (k, v) = policy_entry(A_ID, dir, &k, &Verdict::Redirect(rules), 15001);
    dp.maps.set_policy(&k, v).unwrap();
}

/// Runs a packet and returns the verdict and the events it produced.
fn send(dp: &mut TestDatapath, program: &'static str, packet: &[u8]) -> (i32, Vec<Event>) {
    let action = run(dp, program, packet);
    (action, dp.maps.drain_events())
}

fn drops(events: &[Event]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e.kind == event_kind::DROP)
        .map(|e| e.reason)
        .collect()
}

fn verdicts(events: &[Event]) -> Vec<(u8, u32, u32, u8)> {
    events
        .iter()
        .filter(|e| e.kind == event_kind::POLICY_VERDICT)
        .map(|e| (e.verdict, e.src_identity, e.dst_identity, e.match_type))
        .collect()
}

fn syn_from(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    ipv4(src, A4, IPPROTO_TCP, &tcp(sport, dport, TCP_SYN), 0x4000, 1)
}

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

/// The event ring takes the size it is loaded with; a pinned ring of
/// another size (an agent restarted with other event flags, or on more
/// CPUs) is replaced rather than refused, and the other pins are adopted.
#[test]
fn the_event_ring_is_sized_at_load_and_a_pin_of_another_size_replaced() {
    let options = |bytes| LoadOptions {
        events_bytes: bytes,
        ..LoadOptions::default()
    };
    let dp = setup_loaded(load_options(options(64 << 10)), BOTH);
    let size = || {
        aya::maps::MapInfo::from_pin(dp.pin(axoneme_bpf_common::map_names::EVENTS))
            .unwrap()
            .max_entries()
    };
    assert_eq!(size(), 64 << 10);
    let mut again = axoneme_agent::datapath::Datapath::load_with(
        dp.pin_dir(),
        &MapSizes::default(),
        options(128 << 10),
    )
    .unwrap();
    assert_eq!(size(), 128 << 10);
    // The endpoint and ipcache written before the reload are still there,
    // and the new programs report into the new ring.
    assert_eq!(
        run(&again, TO_CONTAINER, &syn_from(B4, 40000, 81)),
        TC_ACT_SHOT
    );
    assert_eq!(
        drops(&again.maps.drain_events()),
        vec![drop_reason::DROP_POLICY]
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

#[test]
fn an_unknown_interface_fails_closed() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(0, 0, 0, 0));
    dp.maps.remove_endpoint(1).unwrap();
    let (action, events) = send(&mut dp, TO_CONTAINER, &syn_from(B4, 1, 80));
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_NO_ENDPOINT]);
}

/// Another endpoint's info (another address): if the programs used it for
/// pod A, A's packets would be dropped as spoofed.
fn stranger() -> EndpointInfo {
    EndpointInfo::new(7, 7000, BOTH, &[[10, 9, 9, 9].into()])
}

/// Sends A -> B UDP to port 53 (allowed) from A's interface; the drop
/// reasons it produced.
fn a_sends(dp: &mut TestDatapath, sport: u16) -> (i32, Vec<u8>) {
    let packet = ipv4(A4, B4, IPPROTO_UDP, &udp(sport, 53, b"q"), 0, sport);
    let (action, events) = send(dp, FROM_CONTAINER, &packet);
    (action, drops(&events))
}

#[test]
fn an_endpoint_whose_cache_slot_is_taken_is_found_in_the_hash() {
    let mut dp = load();
    dp.maps.set_event_rate(1_000_000, 1_000_000).unwrap();
    let clash = 1 + ENDPOINT_SLOTS;
    dp.maps.set_endpoint(clash, stranger()).unwrap();
    let a = EndpointInfo::new(A_ID, A_ID, BOTH, &[A4.into()]);
    dp.maps.set_endpoint(1, a).unwrap();
    assert_eq!(dp.maps.endpoint_slot(1).unwrap().ifindex, clash);
    let ip = IpcacheValue {
        identity: B_ID,
        ..IpcacheValue::default()
    };
    dp.maps
        .set_ipcache(&"10.0.0.2/32".parse().unwrap(), ip)
        .unwrap();
    allow(&mut dp, Direction::Egress, key(B_ID, IPPROTO_UDP, 53, 16));
    assert_eq!(a_sends(&mut dp, 5000), (TC_ACT_OK, vec![]));
    // The slot's holder goes; A is still found (in the hash).
    dp.maps.remove_endpoint(clash).unwrap();
    assert_eq!(dp.maps.endpoint_slot(1).unwrap().ifindex, 0);
    assert_eq!(a_sends(&mut dp, 5001), (TC_ACT_OK, vec![]));
    // Declared again, A takes the free slot; removed, it is unknown.
    dp.maps.set_endpoint(1, a).unwrap();
    let slot = dp.maps.endpoint_slot(1).unwrap();
    assert_eq!((slot.ifindex, slot.info, slot.seq % 2), (1, a, 0));
    assert_eq!(a_sends(&mut dp, 5002), (TC_ACT_OK, vec![]));
    dp.maps.remove_endpoint(1).unwrap();
    assert_eq!(
        a_sends(&mut dp, 5003),
        (TC_ACT_SHOT, vec![drop_reason::DROP_NO_ENDPOINT])
    );
}

#[test]
fn a_cache_slot_is_used_only_when_whole_and_for_its_interface() {
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Egress, key(B_ID, IPPROTO_UDP, 53, 16));
    let mut cache: aya::maps::Array<_, EndpointSlot> = {
        let pin = dp.pin_dir().join("ENDPOINT_CACHE");
        let map = aya::maps::MapData::from_pin(&pin).unwrap();
        aya::maps::Map::Array(map).try_into().unwrap()
    };
    let seq = dp.maps.endpoint_slot(1).unwrap().seq;
    let mut put = |seq, ifindex| {
        let slot = EndpointSlot {
            seq,
            ifindex,
            info: stranger(),
        };
        cache.set(1, slot, 0).unwrap();
    };
    // A whole slot for interface 1 is what the programs use: the proof
    // that the cache is read at all.
    put(seq + 2, 1);
    assert_eq!(
        a_sends(&mut dp, 6000),
        (TC_ACT_SHOT, vec![drop_reason::DROP_INVALID_SIP])
    );
    // Being rewritten (odd sequence): the hash's entry is used.
    put(seq + 3, 1);
    assert_eq!(a_sends(&mut dp, 6001), (TC_ACT_OK, vec![]));
    // Whole but for another interface: likewise.
    put(seq + 4, 2);
    assert_eq!(a_sends(&mut dp, 6002), (TC_ACT_OK, vec![]));
}

#[test]
fn events_are_rate_limited() {
    let mut dp = setup(BOTH);
    dp.maps.set_event_rate(1, 5).unwrap();
    for port in 0..40 {
        assert_eq!(
            run(&dp, TO_CONTAINER, &syn_from(B4, 1000 + port, 9)),
            TC_ACT_SHOT
        );
    }
    let events = dp.maps.drain_events();
    // 80 events wanted (a verdict and a drop per packet); the bucket holds
    // 5 and refills 1/s, and the test takes well under a second per event.
    assert!((5..=7).contains(&events.len()), "{} events", events.len());
    let c = dp.maps.counters().unwrap();
    assert_eq!(c.events_sent + c.events_rate_limited, 80, "{c:?}");
    // Rate 0: nothing at all, and enforcement goes on.
    dp.maps.set_event_rate(0, 0).unwrap();
    assert_eq!(
        send(&mut dp, TO_CONTAINER, &syn_from(B4, 1, 9)).0,
        TC_ACT_SHOT
    );
    assert!(dp.maps.drain_events().is_empty());
}

/// The traffic counters, as (key, packets, bytes).
fn traffic(dp: &TestDatapath) -> Vec<(MetricsKey, u64, u64)> {
    let mut t: Vec<_> = dp
        .maps
        .traffic()
        .unwrap()
        .into_iter()
        .map(|(k, MetricsValue { packets, bytes })| (k, packets, bytes))
        .collect();
    t.sort();
    t
}

#[test]
fn loaded_without_observability_nothing_is_counted_or_reported_and_policy_holds() {
    let quiet = support::load_options(support::LoadOptions {
        observe: false,
        ..Default::default()
    });
    let mut dp = setup_loaded(quiet, BOTH);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 80, 16));
    for port in 0..3 {
        assert_eq!(
            run(&dp, TO_CONTAINER, &syn_from(B4, 40000 + port, 81)),
            TC_ACT_SHOT
        );
    }
    assert_eq!(run(&dp, TO_CONTAINER, &syn_from(B4, 40010, 80)), TC_ACT_OK);
    assert!(dp.maps.drain_events().is_empty());
    assert_eq!(traffic(&dp), vec![]);
    assert_eq!(dp.maps.counters().unwrap(), Default::default());
    // The same packets through a datapath loaded as the agent loads it
    // are counted and reported: the switch is what made the difference.
    let mut dp = setup(BOTH);
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 80, 16));
    assert_eq!(
        run(&dp, TO_CONTAINER, &syn_from(B4, 40000, 81)),
        TC_ACT_SHOT
    );
    assert!(!dp.maps.drain_events().is_empty());
    assert!(!traffic(&dp).is_empty());
}

#[test]
fn every_packet_is_counted_by_kind_reason_and_direction_even_without_events() {
    let mut dp = setup(BOTH);
    // Events off: the counters do not depend on them.
    dp.maps.set_event_rate(0, 0).unwrap();
    allow(&mut dp, Direction::Ingress, key(B_ID, IPPROTO_TCP, 80, 16));
    assert_eq!(traffic(&dp), vec![]);

    let denied = syn_from(B4, 40000, 81);
    for _ in 0..3 {
        assert_eq!(run(&dp, TO_CONTAINER, &denied), TC_ACT_SHOT);
    }
    let allowed = syn_from(B4, 40001, 80);
    assert_eq!(run(&dp, TO_CONTAINER, &allowed), TC_ACT_OK);
    // A's own egress, to a peer its (enforced) egress does not allow.
    let out = ipv4(A4, B4, IPPROTO_TCP, &tcp(5000, 443, TCP_SYN), 0x4000, 64);
    assert_eq!(run(&dp, FROM_CONTAINER, &out), TC_ACT_SHOT);
    assert!(dp.maps.drain_events().is_empty());

    let (d, a, o) = (denied.len() as u64, allowed.len() as u64, out.len() as u64);
    assert_eq!(
        traffic(&dp),
        vec![
            (MetricsKey::forward(direction::INGRESS), 1, a),
            (
                MetricsKey::drop(drop_reason::DROP_POLICY, direction::INGRESS),
                3,
                3 * d
            ),
            (
                MetricsKey::drop(drop_reason::DROP_POLICY, direction::EGRESS),
                1,
                o
            ),
        ]
    );
    // The allowed flow's next packets are tracked: counted as forwarded.
    let ack = ipv4(B4, A4, IPPROTO_TCP, &tcp(40001, 80, TCP_ACK), 0x4000, 64);
    assert_eq!(run(&dp, TO_CONTAINER, &ack), TC_ACT_OK);
    assert_eq!(
        traffic(&dp)[0],
        (
            MetricsKey::forward(direction::INGRESS),
            2,
            a + ack.len() as u64
        )
    );
}

#[test]
fn a_pod_cannot_send_from_another_address() {
    let mut dp = setup(0);
    // Pod A claiming B's address, an address nobody has, or the address of
    // another pod of its own identity: dropped (132) even with nothing
    // enforced; its own address passes.
    for (src, what) in [
        (B4, "B's address"),
        (WORLD4, "an unknown address"),
        ([10, 0, 0, 3], "a same-identity pod's address"),
    ] {
        let spoofed = ipv4(src, NET3, IPPROTO_TCP, &tcp(1, 80, TCP_SYN), 0x4000, 20);
        let (action, events) = send(&mut dp, FROM_CONTAINER, &spoofed);
        assert_eq!(action, TC_ACT_SHOT, "{what}");
        assert_eq!(
            drops(&events),
            vec![drop_reason::DROP_INVALID_SIP],
            "{what}"
        );
    }
    let own = ipv4(A4, NET3, IPPROTO_TCP, &tcp(1, 80, TCP_SYN), 0x4000, 21);
    assert_eq!(send(&mut dp, FROM_CONTAINER, &own).0, TC_ACT_OK);
    let mut b = b6();
    b[15] = 9;
    let spoofed6 = ipv6(b, b6(), IPPROTO_TCP, &tcp(1, 80, TCP_SYN));
    assert_eq!(send(&mut dp, FROM_CONTAINER, &spoofed6).0, TC_ACT_SHOT);
    let own6 = ipv6(a6(), b6(), IPPROTO_TCP, &tcp(1, 80, TCP_SYN));
    assert_eq!(send(&mut dp, FROM_CONTAINER, &own6).0, TC_ACT_OK);
    // An endpoint without an address of a family owns none of it (not ::).
    dp.maps
        .set_endpoint(1, EndpointInfo::new(A_ID, A_ID, 0, &[A4.into()]))
        .unwrap();
    assert_eq!(send(&mut dp, FROM_CONTAINER, &own6).0, TC_ACT_SHOT);
    let unspecified = ipv6([0; 16], b6(), IPPROTO_TCP, &tcp(1, 80, TCP_SYN));
    assert_eq!(send(&mut dp, FROM_CONTAINER, &unspecified).0, TC_ACT_SHOT);
    dp.maps
        .set_endpoint(
            1,
            EndpointInfo::new(A_ID, A_ID, 0, &[A4.into(), a6().into()]),
        )
        .unwrap();
    dp.maps.drain_events();
    // Link control from the pod's link-local address (not in the ipcache)
    // passes without an event: MLDv2 reports (143) and neighbour
    // solicitations (135). Anything else from it is spoofing.
    let mut link_local = [0u8; 16];
    link_local[..2].copy_from_slice(&[0xfe, 0x80]);
    link_local[15] = 7;
    let mut mld_group = [0u8; 16];
    mld_group[..2].copy_from_slice(&[0xff, 0x02]);
    mld_group[15] = 0x16;
    for ty in [143, 135] {
        let pkt = ipv6(
            link_local,
            mld_group,
            IPPROTO_ICMPV6,
            &icmp(ty, 0, 0, &[0; 16]),
        );
        let (action, events) = send(&mut dp, FROM_CONTAINER, &pkt);
        assert_eq!((action, events.len()), (TC_ACT_OK, 0), "ICMPv6 type {ty}");
    }
    let echo = ipv6(
        link_local,
        mld_group,
        IPPROTO_ICMPV6,
        &icmp(128, 0, 1, &[0; 16]),
    );
    let (action, events) = send(&mut dp, FROM_CONTAINER, &echo);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(drops(&events), vec![drop_reason::DROP_INVALID_SIP]);
}

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

/// The programs copy and clear keys with plain loads and stores: no call to
/// the byte-by-byte `memset`/`memmove`/`memcpy`/`memcmp`/`bcmp` that
/// bpf-linker exports (with LLVM's in-order memcpy expansion they were
/// called on every packet; see docs/architecture.md, "eBPF toolchain").
#[test]
fn programs_call_no_memory_builtins() {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
    let file = object::File::parse(axoneme_agent::datapath::Datapath::object()).unwrap();
    let mut calls = Vec::new();
    let mut programs = 0;
    for section in file.sections() {
        if section.name() != Ok("classifier") {
            continue;
        }
        programs += 1;
        for (_, reloc) in section.relocations() {
            if let RelocationTarget::Symbol(i) = reloc.target() {
                let name = file.symbol_by_index(i).unwrap().name().unwrap();
                if ["memset", "memmove", "memcpy", "memcmp", "bcmp"].contains(&name) {
                    calls.push(name.to_string());
                }
            }
        }
    }
    assert_eq!(programs, 1, "one `classifier` section holds the programs");
    assert!(calls.is_empty(), "calls to memory builtins: {calls:?}");
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
    // An address entry whose endpoint does not own the address (written
    // through the pin, as a stale entry would be): not delivered there.
    let mut addrs: aya::maps::HashMap<_, axoneme_bpf_common::IpcacheKey, u32> = {
        let pin = dp.pin_dir().join("ENDPOINT_ADDRS");
        let map = aya::maps::MapData::from_pin(&pin).unwrap();
        aya::maps::Map::HashMap(map).try_into().unwrap()
    };
    let mut c = axoneme_bpf_common::IpcacheKey {
        family: family::IPV4,
        ..Default::default()
    };
    c.addr[..4].copy_from_slice(&[10, 0, 1, 9]);
    addrs.insert(c, B_IFINDEX, 0).unwrap();
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
