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

mod support;

use anyhow::Result;
use axoneme_agent::datapath::{LbMaps, NODEPORT_EGRESS, NODEPORT_INGRESS};
use axoneme_agent::services::sync::sync;
use axoneme_agent::services::table::{build, Ids, Maglev, Table};
use axoneme_bpf_common::tc_action::{TC_ACT_OK, TC_ACT_SHOT};
use axoneme_service::{Backend, BackendState, Frontend, FrontendKind, Protocol};
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

/// The Internet checksum of `data`.
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
    let (action, out) = dp.test_run_packet(NODEPORT_INGRESS, &tcp4(CLIENT, 40000, NODE, 30080))?;
    assert_eq!(action, TC_ACT_OK);
    let s = check(&out);
    assert_eq!(
        (s.src, s.sport, s.dst, s.dport),
        (CLIENT, 40000, BACKEND, 8080)
    );
    assert!(out.ends_with(b"hello"), "the payload is untouched");
    // The same flow again: the same translation.
    let (_, again) = dp.test_run_packet(NODEPORT_INGRESS, &tcp4(CLIENT, 40000, NODE, 30080))?;
    assert_eq!(again, out);

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

/// `pkt` (Ethernet + IPv4 without options) with `words` 4-byte words of
/// IPv4 options (NOPs) after its header.
fn with_options(mut pkt: Vec<u8>, words: u8) -> Vec<u8> {
    let len = usize::from(words) * 4;
    pkt.splice(34..34, std::iter::repeat_n(1u8, len));
    pkt[14] = 0x45 + words;
    let total = u16::from_be_bytes([pkt[16], pkt[17]]) + u16::from(words) * 4;
    pkt[16..18].copy_from_slice(&total.to_be_bytes());
    pkt[24..26].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&pkt[14..34 + len]);
    pkt[24..26].copy_from_slice(&c.to_be_bytes());
    pkt
}

/// A TCP segment's checksum over its IPv6 pseudo-header.
fn l4_csum6(src: [u8; 16], dst: [u8; 16], segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&u32::try_from(segment.len()).expect("short").to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 6]);
    pseudo.extend_from_slice(segment);
    csum(&pseudo)
}

const NODE6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
const BACKEND6: [u8; 16] = [0xfd, 0, 0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];

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
    let mut dp = load();
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

/// Packets whose L4 header is not right after a 20- or 40-byte IP header
/// are translated all the same: IPv4 options and IPv6 extension headers
/// are stepped over (the checksums stay valid).
#[test]
fn ip_options_and_extension_headers_are_stepped_over() -> Result<()> {
    let dp = dual_stack_nodeport()?;

    // IPv4 with 12 bytes of options.
    let syn = with_options(tcp4(CLIENT, 40000, NODE, 30080), 3);
    let (action, out) = dp.test_run_packet(NODEPORT_INGRESS, &syn)?;
    assert_eq!(action, TC_ACT_OK);
    let s = check(&out);
    assert_eq!(
        (s.src, s.sport, s.dst, s.dport),
        (CLIENT, 40000, BACKEND, 8080)
    );
    assert_eq!(out[34..46], [1u8; 12], "the options are kept");
    assert!(out.ends_with(b"hello"));

    // IPv6 behind a hop-by-hop and a destination-options header.
    let mut seg = tcp(40001, 30080, 0x02);
    let c = l4_csum6(CLIENT6, NODE6, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    let mut payload = vec![60, 0, 1, 4, 0, 0, 0, 0, 6, 0, 1, 4, 0, 0, 0, 0];
    payload.extend_from_slice(&seg);
    let (action, out) = dp.test_run_packet(NODEPORT_INGRESS, &ipv6(CLIENT6, NODE6, 0, &payload))?;
    assert_eq!(action, TC_ACT_OK);
    let dst: [u8; 16] = out[38..54].try_into().unwrap();
    let seg = &out[14 + 40 + 16..];
    assert_eq!(dst, BACKEND6);
    assert_eq!(u16::from_be_bytes([seg[2], seg[3]]), 8080);
    assert_eq!(l4_csum6(CLIENT6, BACKEND6, seg), 0, "TCP checksum");

    Ok(())
}

/// `pkt`'s IP payload (after the IPv4 header, or after the IPv6 header
/// and its one fragment header), for reassembly.
fn ip_payload(pkt: &[u8]) -> &[u8] {
    if pkt[12..14] == [0x08, 0x00] {
        &pkt[14 + usize::from(pkt[14] & 0x0f) * 4..]
    } else {
        &pkt[14 + 40 + 8..]
    }
}

/// `segment` (a whole TCP or UDP segment) as two IPv4 fragments with the
/// IP id `id`: the first with 48 bytes of it, the rest in the second.
fn fragments4(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8], id: u16) -> [Vec<u8>; 2] {
    [
        ipv4(src, dst, proto, &segment[..48], 0x2000, id),
        ipv4(src, dst, proto, &segment[48..], 48 / 8, id),
    ]
}

/// The same as IPv6 fragments (a fragment header before each part).
fn fragments6(src: [u8; 16], dst: [u8; 16], segment: &[u8], id: u32) -> [Vec<u8>; 2] {
    let part = |offset: u16, more: bool, data: &[u8]| {
        let mut p = vec![6, 0];
        p.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(data);
        ipv6(src, dst, 44, &p)
    };
    [
        part(0, true, &segment[..48]),
        part(48, false, &segment[48..]),
    ]
}

/// Fragments are translated as their datagram: the first (which carries
/// the ports) as any packet, later ones by the first's ports, addresses
/// only, so that the datagram reassembles with a valid checksum; the
/// backend's fragmented reply gets the frontend back in every fragment; a
/// later fragment whose first was never seen passes as it is.
#[test]
fn fragments_are_translated_as_their_datagram() -> Result<()> {
    let dp = dual_stack_nodeport()?;

    // IPv4/UDP with a checksum over the whole datagram.
    let payload: Vec<u8> = (0..200u8).collect();
    let mut seg = udp(5000, 30053, &payload);
    let c = l4_csum(CLIENT, NODE, 17, &seg);
    seg[6..8].copy_from_slice(&c.to_be_bytes());
    let mut datagram = Vec::new();
    for (i, frag) in fragments4(CLIENT, NODE, 17, &seg, 77).iter().enumerate() {
        let (action, out) = dp.test_run_packet(NODEPORT_INGRESS, frag)?;
        assert_eq!(action, TC_ACT_OK, "fragment {i}");
        assert_eq!(csum(&out[14..34]), 0, "fragment {i}: IPv4 header checksum");
        assert_eq!(out[26..34], [CLIENT, BACKEND].concat(), "fragment {i}");
        assert_eq!(
            out[18..22],
            frag[18..22],
            "fragment {i}: id and offset kept"
        );
        datagram.extend_from_slice(ip_payload(&out));
    }
    assert_eq!(
        datagram[..4],
        [5000u16.to_be_bytes(), 8080u16.to_be_bytes()].concat()
    );
    assert_eq!(datagram[8..], payload[..], "the payload is untouched");
    assert_eq!(l4_csum(CLIENT, BACKEND, 17, &datagram), 0, "UDP checksum");

    // The backend's fragmented reply: from the frontend, every fragment.
    let mut reply = udp(8080, 5000, &payload);
    let c = l4_csum(BACKEND, CLIENT, 17, &reply);
    reply[6..8].copy_from_slice(&c.to_be_bytes());
    let mut datagram = Vec::new();
    for (i, frag) in fragments4(BACKEND, CLIENT, 17, &reply, 99)
        .iter()
        .enumerate()
    {
        let (action, out) = dp.test_run_packet(NODEPORT_EGRESS, frag)?;
        assert_eq!(action, TC_ACT_OK, "reply fragment {i}");
        assert_eq!(
            csum(&out[14..34]),
            0,
            "reply fragment {i}: IPv4 header checksum"
        );
        assert_eq!(out[26..34], [NODE, CLIENT].concat(), "reply fragment {i}");
        datagram.extend_from_slice(ip_payload(&out));
    }
    assert_eq!(datagram[..2], 30053u16.to_be_bytes());
    assert_eq!(
        l4_csum(NODE, CLIENT, 17, &datagram),
        0,
        "the reply's UDP checksum"
    );

    // A later fragment without its first: unknown ports, left alone.
    let [_, orphan] = fragments4(CLIENT, NODE, 17, &seg, 55);
    assert_eq!(
        dp.test_run_packet(NODEPORT_INGRESS, &orphan)?,
        (TC_ACT_OK, orphan.clone())
    );

    // IPv6/TCP: the fragment header's id and offset, the same result.
    let mut seg = tcp(40003, 30080, 0x18);
    seg.extend_from_slice(&payload);
    let c = l4_csum6(CLIENT6, NODE6, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    let mut datagram = Vec::new();
    for (i, frag) in fragments6(CLIENT6, NODE6, &seg, 0x0102_0304)
        .iter()
        .enumerate()
    {
        let (action, out) = dp.test_run_packet(NODEPORT_INGRESS, frag)?;
        assert_eq!(action, TC_ACT_OK, "IPv6 fragment {i}");
        assert_eq!(
            out[22..54],
            [CLIENT6, BACKEND6].concat(),
            "IPv6 fragment {i}"
        );
        assert_eq!(
            out[54..62],
            frag[54..62],
            "IPv6 fragment {i}: its header kept"
        );
        datagram.extend_from_slice(ip_payload(&out));
    }
    assert_eq!(datagram[2..4], 8080u16.to_be_bytes());
    assert_eq!(l4_csum6(CLIENT6, BACKEND6, &datagram), 0, "TCP checksum");
    Ok(())
}

/// CRC32c as SCTP computes it (reflected, inverted in and out).
fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// An SCTP packet (common header, then `body` bytes of chunk) with its
/// checksum, or 0 there (`crc` false: the device is to compute it).
fn sctp(sport: u16, dport: u16, body: usize, crc: bool) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
    p.extend((0..body).map(|i| u8::try_from(i % 251).expect("below 251")));
    if crc {
        let c = crc32c(&p);
        p[8..12].copy_from_slice(&c.to_le_bytes());
    }
    p
}

/// An SCTP packet's ports, after checking its checksum (or that it is
/// still 0).
fn sctp_seen(seg: &[u8], crc: bool) -> (u16, u16) {
    let mut zeroed = seg.to_vec();
    zeroed[8..12].fill(0);
    let want = if crc {
        crc32c(&zeroed).to_le_bytes()
    } else {
        [0; 4]
    };
    assert_eq!(seg[8..12], want, "SCTP checksum");
    (
        u16::from_be_bytes([seg[0], seg[1]]),
        u16::from_be_bytes([seg[2], seg[3]]),
    )
}

/// SCTP per packet: the ports rewritten with the checksum updated by
/// their difference (checked against a CRC32c of the whole rewritten
/// packet, for packet lengths that exercise every step of the update),
/// addresses rewritten without touching it, a checksum the device is yet
/// to compute left at 0, IPv6 behind an extension header; a first fragment
/// whose port would change is refused.
#[test]
fn sctp_ports_are_rewritten_with_their_checksum() -> Result<()> {
    assert_eq!(crc32c(b"123456789"), 0xe306_9283, "the reference CRC32c");
    let dp = serving(&[
        frontend(
            FrontendKind::NodePort,
            "0.0.0.0",
            30036,
            Protocol::Sctp,
            &[BACKEND],
        ),
        nodeport6(30036, Protocol::Sctp),
    ])?;

    for (i, body) in [4usize, 16, 333, 1400].into_iter().enumerate() {
        let sport = 5000 + u16::try_from(i)?;
        let pkt = ipv4(CLIENT, NODE, 132, &sctp(sport, 30036, body, true), 0, 1);
        let (action, out) = dp.test_run_packet(NODEPORT_INGRESS, &pkt)?;
        assert_eq!(action, TC_ACT_OK, "{body}");
        assert_eq!(csum(&out[14..34]), 0, "IPv4 header checksum");
        assert_eq!(out[26..34], [CLIENT, BACKEND].concat());
        assert_eq!(sctp_seen(&out[34..], true), (sport, 8080), "{body}");
        // The reply, from the frontend.
        let reply = ipv4(BACKEND, CLIENT, 132, &sctp(8080, sport, body, true), 0, 2);
        let (action, out) = dp.test_run_packet(NODEPORT_EGRESS, &reply)?;
        assert_eq!(action, TC_ACT_OK, "{body}");
        assert_eq!(out[26..34], [NODE, CLIENT].concat());
        assert_eq!(sctp_seen(&out[34..], true), (30036, sport), "{body}");
    }

    // A checksum the device is yet to compute stays 0.
    let pkt = ipv4(CLIENT, NODE, 132, &sctp(5100, 30036, 40, false), 0, 3);
    let (action, out) = dp.test_run_packet(NODEPORT_INGRESS, &pkt)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(sctp_seen(&out[34..], false), (5100, 8080));

    // IPv6 behind a destination-options header.
    let mut payload = vec![132, 0, 1, 4, 0, 0, 0, 0];
    payload.extend_from_slice(&sctp(5200, 30036, 100, true));
    let (action, out) =
        dp.test_run_packet(NODEPORT_INGRESS, &ipv6(CLIENT6, NODE6, 60, &payload))?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(out[38..54], BACKEND6);
    assert_eq!(sctp_seen(&out[14 + 40 + 8..], true), (5200, 8080));

    // A first fragment: the packet's length, which the checksum's update
    // needs, is not known.
    let pkt = ipv4(CLIENT, NODE, 132, &sctp(5300, 30036, 48, true), 0x2000, 4);
    let (action, _) = dp.test_run_packet(NODEPORT_INGRESS, &pkt)?;
    assert_eq!(action, TC_ACT_SHOT);
    Ok(())
}

/// Forgets every translated flow (as if they had all ended).
fn forget_flows(dp: &TestDatapath) -> Result<()> {
    use axoneme_bpf_common::lb::{NatFwd, NatTuple};
    let data = aya::maps::MapData::from_pin(dp.pin(axoneme_bpf_common::map_names::LB_NAT_FWD))?;
    let mut map: aya::maps::HashMap<_, NatTuple, NatFwd> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))?;
    let keys: Vec<NatTuple> = map.keys().collect::<Result<_, _>>()?;
    for k in keys {
        map.remove(&k)?;
    }
    Ok(())
}

/// The backend (last address byte) each client port gets through `node`.
fn picks(dp: &TestDatapath, node: [u8; 4], ports: std::ops::Range<u16>) -> Result<Vec<u8>> {
    ports
        .map(|port| {
            let (action, out) =
                dp.test_run_packet(NODEPORT_INGRESS, &tcp4(CLIENT, port, node, 30080))?;
            anyhow::ensure!(action == TC_ACT_OK, "port {port}: {action}");
            Ok(check(&out).dst[3])
        })
        .collect()
}

/// Ten backends, .1 to .10.
fn ten_backends() -> Vec<[u8; 4]> {
    (1..=10).map(|i| [10, 200, 0, i]).collect()
}

/// The programs with Maglev tables of `M` entries at the node's address,
/// the LB maps, and the services unit's ids and table.
fn with_maglev() -> Result<(TestDatapath, LbMaps, Ids, Table)> {
    let mut dp = load();
    dp.set_node_addrs(&[NODE.into()], M)?;
    let lb = dp.take_lb_maps()?;
    let ids = Ids::default().with_maglev(Maglev { m: M, seed: 7 });
    Ok((dp, lb, ids, Table::default()))
}

/// The Maglev table size of these tests.
const M: u32 = 1021;

#[test]
fn maglev_picks_the_same_backend_on_every_node_and_moves_few() -> Result<()> {
    const NODE2: [u8; 4] = [192, 168, 7, 2];
    let (dp, mut lb, mut ids, mut have) = with_maglev()?;
    let ten = ten_backends();
    // One NodePort, at both of the node's addresses (as two nodes would
    // have it: the same backends, another frontend address).
    let nodes = [NODE.into(), NODE2.into()];
    let f = frontend(
        FrontendKind::NodePort,
        "0.0.0.0",
        30080,
        Protocol::Tcp,
        &ten,
    );
    let want = build(std::slice::from_ref(&f), "node-a", &nodes, &mut ids)?;
    assert_eq!(want.maglev.len(), 2, "a row per frontend address");
    sync(&mut lb, &mut have, &want)?;

    let ports = 20000..21000;
    let first = picks(&dp, NODE, ports.clone())?;
    let mut per = std::collections::BTreeMap::new();
    for b in &first {
        *per.entry(*b).or_insert(0) += 1;
    }
    eprintln!("1,000 clients over 10 backends: {per:?}");
    assert_eq!(per.len(), 10, "{per:?}");
    assert!(per.values().all(|n| (50..=150).contains(n)), "{per:?}");
    // The same clients through the other address: the same backends.
    assert_eq!(picks(&dp, NODE2, ports.clone())?, first);
    // Their flows forgotten, they come back to the same backends.
    forget_flows(&dp)?;
    assert_eq!(picks(&dp, NODE, ports.clone())?, first);

    // Backend .4 leaves: its clients move, few others do.
    let nine: Vec<[u8; 4]> = ten.iter().copied().filter(|b| b[3] != 4).collect();
    let f = frontend(
        FrontendKind::NodePort,
        "0.0.0.0",
        30080,
        Protocol::Tcp,
        &nine,
    );
    let want = build(std::slice::from_ref(&f), "node-a", &nodes, &mut ids)?;
    let changes = sync(&mut lb, &mut have, &want)?;
    forget_flows(&dp)?;
    let after = picks(&dp, NODE, ports)?;
    let moved_others = first
        .iter()
        .zip(&after)
        .filter(|(a, b)| **a != 4 && a != b)
        .count();
    eprintln!(
        "one of 10 removed: {} map writes; {} of {} other clients moved",
        changes.written,
        moved_others,
        first.iter().filter(|b| **b != 4).count()
    );
    assert!(after.iter().all(|b| *b != 4));
    assert!(
        moved_others <= 30,
        "{moved_others} of ~900 moved (Maglev: a few %)"
    );
    Ok(())
}

#[test]
fn client_ip_affinity_holds_a_client_address_until_it_expires() -> Result<()> {
    const TIMEOUT_S: u32 = 1;
    let (dp, mut lb, mut ids, mut have) = with_maglev()?;
    let mut f = frontend(
        FrontendKind::NodePort,
        "0.0.0.0",
        30080,
        Protocol::Tcp,
        &ten_backends(),
    );
    f.affinity_timeout = Some(TIMEOUT_S);
    let want = build(std::slice::from_ref(&f), "node-a", &[NODE.into()], &mut ids)?;
    sync(&mut lb, &mut have, &want)?;

    // 50 flows of one client (Maglev alone spreads such ports over all
    // ten, see above): one backend.
    let first = picks(&dp, NODE, 20000..20050)?;
    let held = first[0];
    assert!(first.iter().all(|b| *b == held), "{first:?}");

    // Its backend leaves: the client moves, to one backend again.
    f.backends
        .retain(|b| b.addr != std::net::IpAddr::from([10, 200, 0, held]));
    let want = build(std::slice::from_ref(&f), "node-a", &[NODE.into()], &mut ids)?;
    sync(&mut lb, &mut have, &want)?;
    forget_flows(&dp)?;
    let moved = picks(&dp, NODE, 20100..20150)?;
    assert!(moved[0] != held, "{moved:?}");
    assert!(moved.iter().all(|b| *b == moved[0]), "{moved:?}");

    // Unused for longer than the timeout, the client picks anew: a flow
    // whose Maglev entry is another backend gets that one (tried port by
    // port: an entry may be the held backend by chance).
    let now_held = moved[0];
    let mut released = false;
    for port in 20200..20203 {
        std::thread::sleep(std::time::Duration::from_millis(
            u64::from(TIMEOUT_S) * 1000 + 1200,
        ));
        if picks(&dp, NODE, port..port + 1)?[0] != now_held {
            released = true;
            break;
        }
    }
    assert!(
        released,
        "the client stayed on backend .{now_held} past its timeout"
    );
    Ok(())
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

    let (action, out) = dp.test_run_packet(FROM_CONTAINER, &tcp4(POD, 40000, VIP, 80))?;
    assert_eq!(action, TC_ACT_OK);
    let s = check(&out);
    assert_eq!(
        (s.src, s.sport, s.dst, s.dport),
        (POD, 40000, BACKEND, 8080)
    );
    assert!(out.ends_with(b"hello"), "the payload is untouched");
    let (_, again) = dp.test_run_packet(FROM_CONTAINER, &tcp4(POD, 40000, VIP, 80))?;
    assert_eq!(again, out, "the flow keeps its backend");

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
