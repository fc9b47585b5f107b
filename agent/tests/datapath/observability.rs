//! Events and counters: the event ring's size, rate limiting, traffic
//! counters with and without observability.

use super::*;

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
fn events_are_rate_limited() {
    let mut dp = setup(BOTH);
    dp.maps.set_event_rate(1, 5).unwrap();
    // The bucket is per CPU, and a test run runs on the caller's: moved
    // between CPUs mid-loop, the thread would draw on two full buckets.
    let mut one = nix::sched::CpuSet::new();
    one.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
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
