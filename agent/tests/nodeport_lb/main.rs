//! The per-packet LB programs of the node's device under
//! `BPF_PROG_TEST_RUN`: the LB maps written by the services unit's table
//! and sync, packets built here. A NodePort packet from outside to a
//! backend on this node is DNATed with valid checksums, its reply gets the
//! frontend back as its source; a flow keeps its backend; a ClusterIP is
//! not served from outside; a NodePort without backends refuses; IPv4
//! options and IPv6 extension headers are stepped over, and fragments are
//! translated as their datagram; SCTP's ports are rewritten with its
//! CRC32c checksum updated. Maglev: a client gets the same backend through
//! either node address and after its flow is forgotten, and removing one
//! backend of ten moves few other clients. `ClientIP` affinity keeps a
//! client address on one backend across flows (not a client's flows
//! spread by Maglev), moves it when that backend leaves, and lets it go
//! after its timeout. Without socket LB, the pods' veth programs translate
//! their own flows the same way; with it, their SCTP (which socket LB does
//! not see). (SNAT to a backend on another node needs a route and a
//! neighbour: the e2e test `nodeport` covers it with real namespaces.)

#[path = "../support/mod.rs"]
mod support;

mod packets;
mod selection;

use anyhow::Result;
use axoneme_agent::datapath::{LbMaps, NODEPORT_EGRESS, NODEPORT_INGRESS};
use axoneme_agent::services::sync::sync;
use axoneme_agent::services::table::{build, Ids, Maglev, Table};
use axoneme_bpf_common::tc_action::{TC_ACT_OK, TC_ACT_SHOT};
use axoneme_service::{Backend, BackendState, Frontend, FrontendKind, Protocol};
use packets::*;
use support::checked::*;
use support::*;

const NODE: [u8; 4] = [192, 168, 7, 1];
const CLIENT: [u8; 4] = [192, 0, 2, 10];
const BACKEND: [u8; 4] = [10, 200, 0, 5];

fn frontend(
    kind: FrontendKind,
    addr: &str,
    port: u16,
    protocol: Protocol,
    backends: &[[u8; 4]],
) -> Frontend {
    Frontend {
        service: "default/web".into(),
        port_name: String::new(),
        kind,
        addr: addr.parse().unwrap(),
        port,
        protocol,
        backends: backends
            .iter()
            .map(|b| Backend {
                addr: (*b).into(),
                port: 8080,
                node: Some("node-a".into()),
                state: BackendState::Active,
            })
            .collect(),
        affinity_timeout: None,
        local_only: false,
    }
}

/// NodePort 30080/TCP on every node address, to [`BACKEND`].
fn web_nodeport() -> Frontend {
    frontend(
        FrontendKind::NodePort,
        "0.0.0.0",
        30080,
        Protocol::Tcp,
        &[BACKEND],
    )
}

/// NodePort 30053/UDP on every node address, to [`BACKEND`].
fn dns_nodeport() -> Frontend {
    frontend(
        FrontendKind::NodePort,
        "0.0.0.0",
        30053,
        Protocol::Udp,
        &[BACKEND],
    )
}

/// With encryption on, ESP that XFRM made of a pod's packet leaves by the
/// device as it is: the egress program passes a packet carrying the
/// encrypt mark without parsing it (here a local backend's reply, which it
/// translates when unmarked).
#[test]
fn the_device_egress_passes_what_carries_the_encrypt_mark() -> Result<()> {
    let encrypting = LoadOptions {
        encrypt: true,
        ..LoadOptions::default()
    };
    let dp = serving_with(encrypting, &[web_nodeport()])?;
    translated(
        &dp,
        NODEPORT_INGRESS,
        &tcp4(CLIENT, 40000, NODE, 30080),
        (CLIENT, 40000, BACKEND, 8080),
    )?;
    let reply = tcp4(BACKEND, 8080, CLIENT, 40000);
    let sealed = axoneme_bpf_common::encrypt_mark(3);
    assert_eq!(
        dp.test_run_marked_packet(NODEPORT_EGRESS, &reply, sealed)?,
        (TC_ACT_OK, reply.clone()),
        "marked for encryption: left alone"
    );
    translated(&dp, NODEPORT_EGRESS, &reply, (NODE, 30080, CLIENT, 40000))?;
    Ok(())
}

/// A NodePort from outside: DNAT in with the client kept, the frontend
/// back on the reply out, and what is not served or refused.
#[test]
fn nodeport_dnat_reverse_and_refusals() -> Result<()> {
    let mut dp = load();
    dp.set_node_addrs(&[NODE.into()], 0)?;
    let mut lb = dp.take_lb_maps()?;
    let frontends = [
        web_nodeport(),
        dns_nodeport(),
        frontend(FrontendKind::NodePort, "0.0.0.0", 30099, Protocol::Tcp, &[]),
        frontend(
            FrontendKind::ClusterIP,
            "10.96.0.10",
            80,
            Protocol::Tcp,
            &[BACKEND],
        ),
    ];
    let want = build(&frontends, "node-a", &[NODE.into()], &mut Ids::default())?;
    sync(&mut lb, &mut Table::default(), &want)?;

    // In: DNAT to the local backend, the client's address kept.
    translated(
        &dp,
        NODEPORT_INGRESS,
        &tcp4(CLIENT, 40000, NODE, 30080),
        (CLIENT, 40000, BACKEND, 8080),
    )?;

    // Out: the backend's reply shows the frontend as its source.
    let (action, out) = dp.test_run_packet(NODEPORT_EGRESS, &tcp4(BACKEND, 8080, CLIENT, 40000))?;
    assert_eq!(action, TC_ACT_OK);
    let s = check(&out);
    assert_eq!(
        (s.src, s.sport, s.dst, s.dport),
        (NODE, 30080, CLIENT, 40000)
    );
    // Other traffic leaving the node is left alone.
    let other = tcp4(BACKEND, 8080, CLIENT, 40001);
    assert_eq!(
        dp.test_run_packet(NODEPORT_EGRESS, &other)?,
        (TC_ACT_OK, other)
    );

    // UDP without a checksum keeps none; the ports are translated.
    let udp_in = ipv4(CLIENT, NODE, 17, &udp(5000, 30053, b"q"), 0, 2);
    let (action, out) = dp.test_run_packet(NODEPORT_INGRESS, &udp_in)?;
    assert_eq!(action, TC_ACT_OK);
    let s = check(&out);
    assert_eq!((s.dst, s.dport), (BACKEND, 8080));
    assert_eq!(out[34 + 6..34 + 8], [0, 0], "no UDP checksum invented");

    // A ClusterIP is not served from outside; other ports of the node
    // neither; a NodePort without backends refuses.
    for pkt in [
        tcp4(CLIENT, 40000, [10, 96, 0, 10], 80),
        tcp4(CLIENT, 40000, NODE, 22),
    ] {
        assert_eq!(
            dp.test_run_packet(NODEPORT_INGRESS, &pkt)?,
            (TC_ACT_OK, pkt.clone())
        );
    }
    let (action, _) = dp.test_run_packet(NODEPORT_INGRESS, &tcp4(CLIENT, 40000, NODE, 30099))?;
    assert_eq!(action, TC_ACT_SHOT);
    Ok(())
}

const NODE6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
const BACKEND6: [u8; 16] = [0xfd, 0, 0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];

/// `pkt` through `program`: passed, with the addresses and ports `want`
/// (source, source port, destination, destination port), valid
/// checksums and its payload untouched; sent again, the same translation
/// (the flow keeps its backend).
fn translated(
    dp: &TestDatapath,
    program: &'static str,
    pkt: &[u8],
    want: ([u8; 4], u16, [u8; 4], u16),
) -> Result<()> {
    let (action, out) = dp.test_run_packet(program, pkt)?;
    assert_eq!(action, TC_ACT_OK);
    let s = check(&out);
    assert_eq!((s.src, s.sport, s.dst, s.dport), want);
    assert!(out.ends_with(b"hello"), "the payload is untouched");
    let (_, again) = dp.test_run_packet(program, pkt)?;
    assert_eq!(again, out, "the flow keeps its backend");
    Ok(())
}

/// A NodePort on every IPv6 node address, to [`BACKEND6`]:8080.
fn nodeport6(port: u16, protocol: Protocol) -> Frontend {
    let mut f = frontend(FrontendKind::NodePort, "::", port, protocol, &[]);
    f.backends = vec![Backend {
        addr: BACKEND6.into(),
        port: 8080,
        node: Some("node-a".into()),
        state: BackendState::Active,
    }];
    f
}

/// A datapath on a node with addresses [`NODE`] and [`NODE6`], serving
/// `frontends`.
fn serving(frontends: &[Frontend]) -> Result<TestDatapath> {
    serving_with(LoadOptions::default(), frontends)
}

/// [`serving`], the programs loaded with `options`.
fn serving_with(options: LoadOptions, frontends: &[Frontend]) -> Result<TestDatapath> {
    let mut dp = load_options(options);
    dp.set_node_addrs(&[NODE.into(), NODE6.into()], 0)?;
    let mut lb = dp.take_lb_maps()?;
    let want = build(
        frontends,
        "node-a",
        &[NODE.into(), NODE6.into()],
        &mut Ids::default(),
    )?;
    sync(&mut lb, &mut Table::default(), &want)?;
    Ok(dp)
}

/// A datapath serving NodePort 30080/TCP (IPv4 and IPv6) and 30053/UDP
/// (IPv4), each to one backend on this node.
fn dual_stack_nodeport() -> Result<TestDatapath> {
    serving(&[
        web_nodeport(),
        nodeport6(30080, Protocol::Tcp),
        dns_nodeport(),
    ])
}

/// Without socket LB the veth programs translate: a pod's packet to a
/// ClusterIP leaves DNATed to a backend (valid checksums, the same backend
/// for the flow's later packets), the backend's reply enters the pod from
/// the ClusterIP again, other traffic is untouched both ways, and a
/// ClusterIP without backends drops with reason 158. Loaded for socket LB
/// the veth programs translate nothing.
#[test]
fn pod_veths_translate_without_socket_lb() -> Result<()> {
    use axoneme_agent::datapath::{FROM_CONTAINER, TO_CONTAINER};
    use axoneme_bpf_common::{drop_reason, event_kind, EndpointInfo};
    const POD: [u8; 4] = [10, 200, 0, 9];
    const VIP: [u8; 4] = [10, 96, 0, 10];
    let mut dp = load_with(PodLb::All);
    // The pod behind ifindex 1 (test runs come through loopback), no
    // policy enforced.
    dp.maps.set_event_rate(1_000_000, 1_000_000)?;
    dp.maps
        .set_endpoint(1, EndpointInfo::new(1000, 1000, 0, &[POD.into()]))?;
    dp.set_node_addrs(&[NODE.into()], 0)?;
    let mut lb = dp.take_lb_maps()?;
    let frontends = [
        frontend(
            FrontendKind::ClusterIP,
            "10.96.0.10",
            80,
            Protocol::Tcp,
            &[BACKEND],
        ),
        frontend(
            FrontendKind::ClusterIP,
            "10.96.0.10",
            81,
            Protocol::Tcp,
            &[],
        ),
        frontend(
            FrontendKind::ClusterIP,
            "10.96.0.10",
            80,
            Protocol::Sctp,
            &[BACKEND],
        ),
    ];
    let want = build(&frontends, "node-a", &[NODE.into()], &mut Ids::default())?;
    sync(&mut lb, &mut Table::default(), &want)?;

    translated(
        &dp,
        FROM_CONTAINER,
        &tcp4(POD, 40000, VIP, 80),
        (POD, 40000, BACKEND, 8080),
    )?;

    let (action, out) = dp.test_run_packet(TO_CONTAINER, &tcp4(BACKEND, 8080, POD, 40000))?;
    assert_eq!(action, TC_ACT_OK);
    let s = check(&out);
    assert_eq!((s.src, s.sport, s.dst, s.dport), (VIP, 80, POD, 40000));

    // A fragmented datagram and its fragmented reply: every fragment
    // translated (and passed by the policy's own fragment tracking).
    let payload: Vec<u8> = (0..100u8).collect();
    let segment = |src, sport, dst, dport| {
        let mut seg = tcp(sport, dport, 0x18);
        seg.extend_from_slice(&payload);
        let c = l4_csum(src, dst, 6, &seg);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        seg
    };
    for (program, (src, sport, dst, dport), want) in [
        (FROM_CONTAINER, (POD, 40004, VIP, 80), (POD, BACKEND)),
        (TO_CONTAINER, (BACKEND, 8080, POD, 40004), (VIP, POD)),
    ] {
        let mut datagram = Vec::new();
        for frag in fragments4(src, dst, 6, &segment(src, sport, dst, dport), 31) {
            let (action, out) = dp.test_run_packet(program, &frag)?;
            assert_eq!(action, TC_ACT_OK, "{src:?} -> {dst:?}");
            assert_eq!(out[26..34], [want.0, want.1].concat(), "{src:?} -> {dst:?}");
            datagram.extend_from_slice(ip_payload(&out));
        }
        assert_eq!(
            l4_csum(want.0, want.1, 6, &datagram),
            0,
            "{src:?} -> {dst:?}"
        );
    }

    // Not a service's, either way: unchanged.
    for (program, pkt) in [
        (FROM_CONTAINER, tcp4(POD, 40001, BACKEND, 8080)),
        (TO_CONTAINER, tcp4(BACKEND, 8080, POD, 40001)),
    ] {
        assert_eq!(dp.test_run_packet(program, &pkt)?, (TC_ACT_OK, pkt.clone()));
    }
    dp.maps.drain_events();
    let (action, _) = dp.test_run_packet(FROM_CONTAINER, &tcp4(POD, 40002, VIP, 81))?;
    assert_eq!(action, TC_ACT_SHOT);
    let reasons: Vec<u8> = dp
        .maps
        .drain_events()
        .iter()
        .filter(|e| e.kind == event_kind::DROP)
        .map(|e| e.reason)
        .collect();
    assert_eq!(reasons, [drop_reason::DROP_NO_SERVICE]);

    // Loaded for socket LB: the veths leave TCP and UDP to service
    // addresses alone (the same services programmed), and translate SCTP,
    // which socket LB does not see.
    let mut socket_lb = load_with(PodLb::Sctp);
    socket_lb
        .maps
        .set_endpoint(1, EndpointInfo::new(1000, 1000, 0, &[POD.into()]))?;
    sync(&mut socket_lb.take_lb_maps()?, &mut Table::default(), &want)?;
    let pkt = tcp4(POD, 40003, VIP, 80);
    assert_eq!(
        socket_lb.test_run_packet(FROM_CONTAINER, &pkt)?,
        (TC_ACT_OK, pkt.clone())
    );
    let pkt = ipv4(POD, VIP, 132, &sctp(40004, 80, 64, true), 0, 5);
    let (action, out) = socket_lb.test_run_packet(FROM_CONTAINER, &pkt)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(out[26..34], [POD, BACKEND].concat());
    assert_eq!(sctp_seen(&out[34..], true), (40004, 8080));
    let reply = ipv4(BACKEND, POD, 132, &sctp(8080, 40004, 64, true), 0, 6);
    let (action, out) = socket_lb.test_run_packet(TO_CONTAINER, &reply)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(out[26..34], [VIP, POD].concat());
    assert_eq!(sctp_seen(&out[34..], true), (80, 40004));
    Ok(())
}
