//! Endpoint lookup (the interface cache and the hash behind it) and
//! source address checks.

use super::*;

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
