//! The host firewall under `BPF_PROG_TEST_RUN` (`bpf/programs/src/host.rs`):
//! the node (192.168.0.1, fd00:77::1) is the host endpoint (identity 1)
//! behind the device, ifindex 1 (test runs come through loopback); its
//! policy allows SSH (TCP 22) from `world` and nothing else. The kvstore
//! member at 192.168.0.9:2379 is a lifeline. Another node (192.168.0.2)
//! is `remote-node` (6) in the ipcache.
//!
//! Only ingress is run here: egress judges packets that left a socket of
//! the node, which a test run's packet has not (the e2e test sends them).

mod support;

use axoneme_agent::datapath::{policy_entry, NODEPORT_INGRESS};
use axoneme_bpf_common::{
    drop_reason, endpoint_flags, event_kind,
    tc_action::{TC_ACT_OK, TC_ACT_SHOT},
    verdict, EndpointInfo, Event, IpcacheValue,
};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Direction, Key, Verdict};
use support::*;

const NODE4: [u8; 4] = [192, 168, 0, 1];
const PEER_NODE: [u8; 4] = [192, 168, 0, 2];
const ETCD: [u8; 4] = [192, 168, 0, 9];
const WORLD: [u8; 4] = [198, 51, 100, 7];
const POD: [u8; 4] = [10, 0, 0, 5];
const HOST: u32 = 1;
const REMOTE_NODE: u32 = 6;
const ESP: u8 = 50;

fn node6() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0xfd, 0, 0, 0x77]);
    a[15] = 1;
    a
}

fn pod6() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&[0xfd, 0]);
    a[15] = 5;
    a
}

fn setup(host_firewall: bool, flags: u8) -> TestDatapath {
    setup_with(
        LoadOptions {
            host_firewall,
            ..LoadOptions::default()
        },
        flags,
    )
}

fn setup_with(options: LoadOptions, flags: u8) -> TestDatapath {
    let mut dp = load_options(options);
    dp.maps.set_event_rate(1_000_000, 1_000_000).unwrap();
    dp.maps
        .set_endpoint(
            1,
            EndpointInfo::new(HOST, HOST, flags, &[NODE4.into(), node6().into()]),
        )
        .unwrap();
    let v = IpcacheValue {
        identity: REMOTE_NODE,
        ..IpcacheValue::default()
    };
    dp.maps
        .set_ipcache(&"192.168.0.2/32".parse().unwrap(), v)
        .unwrap();
    for (protocol, port) in [(IPPROTO_TCP, 22), (IPPROTO_ICMPV6, 128)] {
        let key = Key {
            identity: NumericIdentity(2),
            protocol,
            port,
            prefix: 16,
        };
        let (k, v) = policy_entry(HOST, Direction::Ingress, &key, &Verdict::Allow, 0);
        dp.maps.set_policy(&k, v).unwrap();
    }
    let lifeline = axoneme_agent::host::lifeline_keys(&["192.168.0.9:2379".parse().unwrap()]);
    dp.set_lifelines(&lifeline).unwrap();
    dp
}

fn tcp_to(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv4(src, dst, IPPROTO_TCP, &tcp(sport, dport, flags), 0x4000, 1)
}

fn send(dp: &mut TestDatapath, packet: &[u8]) -> (i32, Vec<Event>) {
    let action = run(dp, NODEPORT_INGRESS, packet);
    (action, dp.maps.drain_events())
}

fn of_kind(events: &[Event], kind: u8) -> Vec<(u8, u8, u32, u32)> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| (e.verdict, e.reason, e.src_identity, e.dst_identity))
        .collect()
}

const ENFORCED: u8 = endpoint_flags::INGRESS_ENFORCED;

#[test]
fn the_nodes_ingress_is_judged_by_its_policy_with_conntrack() {
    let mut dp = setup(true, ENFORCED);
    // SSH from the world: allowed, with the host as the destination.
    let (action, events) = send(&mut dp, &tcp_to(WORLD, NODE4, 40000, 22, TCP_SYN));
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        of_kind(&events, event_kind::POLICY_VERDICT),
        vec![(verdict::ALLOWED, 0, 2, HOST)]
    );
    // The same flow's next packet: conntrack, no verdict.
    let (action, events) = send(&mut dp, &tcp_to(WORLD, NODE4, 40000, 22, TCP_ACK));
    assert_eq!(action, TC_ACT_OK);
    assert!(of_kind(&events, event_kind::POLICY_VERDICT).is_empty());
    // Any other port, from anyone: default deny, 133.
    for (src, id) in [(WORLD, 2), (PEER_NODE, REMOTE_NODE)] {
        let (action, events) = send(&mut dp, &tcp_to(src, NODE4, 40001, 8080, TCP_SYN));
        assert_eq!(action, TC_ACT_SHOT);
        assert_eq!(
            of_kind(&events, event_kind::DROP),
            vec![(verdict::DENIED, drop_reason::DROP_POLICY, id, HOST)]
        );
    }
    // IPv6 too: ICMPv6 echo allowed by its type, UDP not.
    let echo = icmp(128, 0, 7, b"ping");
    let packet = ipv6([0x20; 16], node6(), IPPROTO_ICMPV6, &echo);
    assert_eq!(send(&mut dp, &packet).0, TC_ACT_OK);
    let packet = ipv6([0x20; 16], node6(), IPPROTO_UDP, &udp(5000, 53, b"q"));
    assert_eq!(send(&mut dp, &packet).0, TC_ACT_SHOT);
}

#[test]
fn what_is_not_for_the_node_lifelines_esp_and_neighbour_discovery_pass_unjudged() {
    let mut dp = setup(true, ENFORCED);
    // For a pod behind the node: its own veth judges it.
    let (action, events) = send(&mut dp, &tcp_to(WORLD, POD, 40000, 8080, TCP_SYN));
    assert_eq!((action, events.len()), (TC_ACT_OK, 0));
    // The kvstore member's answers (a connection from before the policy)
    // and connections to it: never judged. Its other ports are.
    let (action, events) = send(&mut dp, &tcp_to(ETCD, NODE4, 2379, 45000, TCP_ACK));
    assert_eq!((action, events.len()), (TC_ACT_OK, 0));
    let (action, _) = send(&mut dp, &tcp_to(ETCD, NODE4, 2380, 45000, TCP_ACK));
    assert_eq!(action, TC_ACT_SHOT);
    // ESP between the nodes, and neighbour solicitations.
    let esp = ipv4(PEER_NODE, NODE4, ESP, &[0; 40], 0, 1);
    assert_eq!(send(&mut dp, &esp), (TC_ACT_OK, Vec::new()));
    let ns = ipv6(
        [0x20; 16],
        node6(),
        IPPROTO_ICMPV6,
        &icmp(135, 0, 0, &[0; 20]),
    );
    assert_eq!(send(&mut dp, &ns).0, TC_ACT_OK);
}

/// With encryption on, what XFRM decrypted comes back through the
/// device's program with the decrypt mark its ESP packet got there, and
/// passes without a second look: the kernel's inbound XFRM policies admit
/// only packets between the nodes' pod networks there (each judged by its
/// pod's program), never one for the node (the packet here, which the
/// host firewall denies when it is not marked).
#[test]
fn decrypted_packets_pass_the_device_once_their_esp_was_marked() {
    let options = LoadOptions {
        host_firewall: true,
        encrypt: true,
        ..LoadOptions::default()
    };
    let mut dp = setup_with(options, ENFORCED);
    let packet = tcp_to(PEER_NODE, NODE4, 40001, 8080, TCP_SYN);
    assert_eq!(send(&mut dp, &packet).0, TC_ACT_SHOT);
    let marked = axoneme_bpf_common::decrypt_mark(7);
    assert_eq!(
        dp.test_run_marked(NODEPORT_INGRESS, &packet, marked)
            .unwrap(),
        TC_ACT_OK
    );
    assert!(dp.maps.drain_events().is_empty(), "not judged, no event");
    // Another mark (the encrypt one, which no packet from the wire has
    // either): judged as any other.
    let other = axoneme_bpf_common::encrypt_mark(3);
    assert_eq!(
        dp.test_run_marked(NODEPORT_INGRESS, &packet, other)
            .unwrap(),
        TC_ACT_SHOT
    );
    // Loaded without encryption, a decrypt mark means nothing.
    let dp = setup(true, ENFORCED);
    assert_eq!(
        dp.test_run_marked(NODEPORT_INGRESS, &packet, marked)
            .unwrap(),
        TC_ACT_SHOT
    );
}

#[test]
fn audit_mode_reports_the_nodes_drops_and_lets_them_pass() {
    let mut dp = setup(true, ENFORCED | endpoint_flags::AUDIT);
    let (action, events) = send(&mut dp, &tcp_to(WORLD, NODE4, 40002, 8080, TCP_SYN));
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        of_kind(&events, event_kind::POLICY_VERDICT),
        vec![(verdict::AUDIT, 0, 2, HOST)]
    );
    assert!(of_kind(&events, event_kind::DROP).is_empty());
}

#[test]
fn loaded_without_the_host_firewall_the_node_is_not_judged() {
    let mut dp = setup(false, ENFORCED);
    let (action, events) = send(&mut dp, &tcp_to(WORLD, NODE4, 40003, 8080, TCP_SYN));
    assert_eq!((action, events.len()), (TC_ACT_OK, 0));
}

/// Pods' packets for the node: the host's ingress, judged in the pod's
/// program where it hands them to the node's stack. The pod (10.0.0.5,
/// identity 1000) is behind ifindex 1 here, the host endpoint at its
/// device's ifindex 7.
#[test]
fn a_pods_packets_for_the_node_are_judged_by_the_host_policy() {
    const DEVICE: u32 = 7;
    const POD_ID: u32 = 1000;
    let mut dp = load_options(LoadOptions {
        host_firewall: true,
        host_ifindex: DEVICE,
        ..LoadOptions::default()
    });
    dp.maps.set_event_rate(1_000_000, 1_000_000).unwrap();
    dp.maps
        .set_endpoint(
            1,
            EndpointInfo::new(POD_ID, POD_ID, 0, &[POD.into(), pod6().into()]),
        )
        .unwrap();
    dp.maps
        .set_endpoint(
            DEVICE,
            EndpointInfo::new(HOST, HOST, ENFORCED, &[NODE4.into(), node6().into()]),
        )
        .unwrap();
    let v = IpcacheValue {
        identity: POD_ID,
        ..IpcacheValue::default()
    };
    dp.maps
        .set_ipcache(&"10.0.0.5/32".parse().unwrap(), v)
        .unwrap();
    let key = Key {
        identity: NumericIdentity(POD_ID),
        protocol: IPPROTO_TCP,
        port: 22,
        prefix: 16,
    };
    let (k, v) = policy_entry(HOST, Direction::Ingress, &key, &Verdict::Allow, 0);
    dp.maps.set_policy(&k, v).unwrap();
    fn from_pod(
        dp: &mut TestDatapath,
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        ttl: u8,
    ) -> (i32, Vec<Event>) {
        let mut packet = tcp_to(POD, dst, sport, dport, TCP_SYN);
        // The TTL, with the header checksum it is part of.
        packet[14 + 8] = ttl;
        packet[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let sum = ipv4_checksum(&packet[14..34]);
        packet[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        let action = run(dp, axoneme_agent::datapath::FROM_CONTAINER, &packet);
        (action, dp.maps.drain_events())
    }
    // Its allowed port: up the stack (not redirected anywhere).
    let (action, events) = from_pod(&mut dp, NODE4, 41000, 22, 64);
    assert_eq!(action, TC_ACT_OK);
    assert!(of_kind(&events, event_kind::POLICY_VERDICT).contains(&(
        verdict::ALLOWED,
        0,
        POD_ID,
        HOST
    )));
    // A kvstore member on the node's address (a lifeline): unjudged.
    let lifeline = axoneme_agent::host::lifeline_keys(&["192.168.0.1:2379".parse().unwrap()]);
    dp.set_lifelines(&lifeline).unwrap();
    // (The pod's own egress is reported; the host judged nothing.)
    let by_host = |events: &[Event]| events.iter().filter(|e| e.endpoint_id == HOST).count();
    let (action, events) = from_pod(&mut dp, NODE4, 41004, 2379, 64);
    assert_eq!((action, by_host(&events)), (TC_ACT_OK, 0), "{events:?}");
    // IPv6 with the gateway: neighbour discovery passes unjudged, TCP is
    // judged.
    let mut gw6 = [0u8; 16];
    gw6[..2].copy_from_slice(&[0xfe, 0x80]);
    gw6[15] = 1;
    let na = ipv6(pod6(), gw6, IPPROTO_ICMPV6, &icmp(136, 0, 0, &[0; 20]));
    assert_eq!(
        run(&dp, axoneme_agent::datapath::FROM_CONTAINER, &na),
        TC_ACT_OK
    );
    assert_eq!(by_host(&dp.maps.drain_events()), 0);
    let syn6 = ipv6(pod6(), gw6, IPPROTO_TCP, &tcp(41005, 8080, TCP_SYN));
    assert_eq!(
        run(&dp, axoneme_agent::datapath::FROM_CONTAINER, &syn6),
        TC_ACT_SHOT
    );
    dp.maps.drain_events();
    // Any other port of the node, by its address or the pods' gateway,
    // whatever the TTL: dropped, 133.
    for (dst, sport, ttl) in [
        (NODE4, 41001, 64),
        ([169, 254, 1, 1], 41002, 64),
        (NODE4, 41003, 1),
    ] {
        let (action, events) = from_pod(&mut dp, dst, sport, 8080, ttl);
        assert_eq!(action, TC_ACT_SHOT, "to {dst:?} ttl {ttl}");
        assert_eq!(
            of_kind(&events, event_kind::DROP),
            vec![(verdict::DENIED, drop_reason::DROP_POLICY, POD_ID, HOST)]
        );
    }
}
