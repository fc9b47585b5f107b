//! Packets whose layout is not the plain one: IPv4 options, IPv6
//! extension headers, fragments, and SCTP with its CRC32c checksum.

use super::*;

/// `pkt` (Ethernet + IPv4 without options) with `words` 4-byte words of
/// IPv4 options (NOPs) after its header.
pub(super) fn with_options(mut pkt: Vec<u8>, words: u8) -> Vec<u8> {
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
pub(super) fn l4_csum6(src: [u8; 16], dst: [u8; 16], segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&u32::try_from(segment.len()).expect("short").to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 6]);
    pseudo.extend_from_slice(segment);
    csum(&pseudo)
}

/// Packets whose L4 header is not right after a 20- or 40-byte IP header
/// are translated all the same: IPv4 options and IPv6 extension headers
/// are stepped over (the checksums stay valid).
#[test]
pub(super) fn ip_options_and_extension_headers_are_stepped_over() -> Result<()> {
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
pub(super) fn ip_payload(pkt: &[u8]) -> &[u8] {
    if pkt[12..14] == [0x08, 0x00] {
        &pkt[14 + usize::from(pkt[14] & 0x0f) * 4..]
    } else {
        &pkt[14 + 40 + 8..]
    }
}

/// `segment` (a whole TCP or UDP segment) as two IPv4 fragments with the
/// IP id `id`: the first with 48 bytes of it, the rest in the second.
pub(super) fn fragments4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    segment: &[u8],
    id: u16,
) -> [Vec<u8>; 2] {
    [
        ipv4(src, dst, proto, &segment[..48], 0x2000, id),
        ipv4(src, dst, proto, &segment[48..], 48 / 8, id),
    ]
}

/// The same as IPv6 fragments (a fragment header before each part).
pub(super) fn fragments6(src: [u8; 16], dst: [u8; 16], segment: &[u8], id: u32) -> [Vec<u8>; 2] {
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
pub(super) fn fragments_are_translated_as_their_datagram() -> Result<()> {
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
pub(super) fn crc32c(data: &[u8]) -> u32 {
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
pub(super) fn sctp(sport: u16, dport: u16, body: usize, crc: bool) -> Vec<u8> {
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
pub(super) fn sctp_seen(seg: &[u8], crc: bool) -> (u16, u16) {
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
pub(super) fn sctp_ports_are_rewritten_with_their_checksum() -> Result<()> {
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
