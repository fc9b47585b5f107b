//! Loads the toolchain's smoke-test object (its own, not the datapath's)
//! and runs `axoneme_smoke` with `BPF_PROG_TEST_RUN` on hand-built packets.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN for SCHED_CLS test runs). It does not
//! skip when run unprivileged: CI runs it as root, and a silent skip would hide
//! a broken datapath. It fails with an explanation instead.

mod support;

use axoneme_bpf_common::tc_action::{TC_ACT_OK, TC_ACT_SHOT};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const DENIED_PORT: u16 = 5353;

/// Ethernet + IPv4 (20 bytes, no options) + UDP (8) or TCP (20) header + payload.
fn ipv4_packet(protocol: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let l4_len = match protocol {
        IPPROTO_UDP => 8,
        IPPROTO_TCP => 20,
        other => panic!("unsupported protocol {other}"),
    };
    let ip_total_len = u16::try_from(20 + l4_len + payload.len()).expect("packet too long");

    let mut pkt = Vec::with_capacity(14 + usize::from(ip_total_len));
    // Ethernet: dst, src, ethertype IPv4.
    pkt.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    pkt.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    pkt.extend_from_slice(&0x0800u16.to_be_bytes());

    // IPv4: version 4, IHL 5; DF; TTL 64; 10.0.0.1 -> 10.0.0.2.
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    pkt.extend_from_slice(&ip);

    match protocol {
        IPPROTO_UDP => {
            let udp_len = u16::try_from(8 + payload.len()).expect("packet too long");
            pkt.extend_from_slice(&sport.to_be_bytes());
            pkt.extend_from_slice(&dport.to_be_bytes());
            pkt.extend_from_slice(&udp_len.to_be_bytes());
            pkt.extend_from_slice(&[0, 0]); // checksum optional over IPv4
        }
        _ => {
            let mut tcp = [0u8; 20];
            tcp[0..2].copy_from_slice(&sport.to_be_bytes());
            tcp[2..4].copy_from_slice(&dport.to_be_bytes());
            tcp[12] = 5 << 4; // data offset: 5 words
            tcp[13] = 0x02; // SYN
            tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
            pkt.extend_from_slice(&tcp);
        }
    }
    pkt.extend_from_slice(payload);
    pkt
}

fn ipv4_checksum(header: &[u8; 20]) -> u16 {
    support::ipv4_checksum(header)
}

fn load_smoke() -> support::Smoke {
    support::Smoke::load().unwrap_or_else(|error| panic!("loading the smoke object: {error:#}"))
}

fn run(smoke: &mut support::Smoke, packet: &[u8]) -> i32 {
    smoke
        .run(packet)
        .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN: {error:#}"))
}

#[test]
fn smoke_program_filters_udp_by_denied_port() {
    let mut smoke = load_smoke();

    let udp = ipv4_packet(IPPROTO_UDP, 40000, DENIED_PORT, b"hello");
    let tcp = ipv4_packet(IPPROTO_TCP, 40000, DENIED_PORT, b"hello");
    let udp_other = ipv4_packet(IPPROTO_UDP, 40000, DENIED_PORT + 1, b"hello");

    assert_eq!(run(&mut smoke, &udp), TC_ACT_OK, "UDP, port not denied yet");

    smoke
        .deny_port(DENIED_PORT)
        .unwrap_or_else(|error| panic!("{error:#}"));

    assert_eq!(run(&mut smoke, &udp), TC_ACT_SHOT, "UDP to a denied port");
    assert_eq!(
        run(&mut smoke, &udp_other),
        TC_ACT_OK,
        "UDP to another port"
    );
    assert_eq!(
        run(&mut smoke, &tcp),
        TC_ACT_OK,
        "TCP to the denied UDP port"
    );

    // Packets shorter than their headers are dropped, whatever the port.
    // (The 6.18 kernel's BPF_PROG_TEST_RUN itself refuses, with EINVAL, an
    // IPv4-ethertype input shorter than 14 + 20 bytes, so a cut inside the
    // IPv4 header cannot be fed to the program; the cuts below are after it.)
    let truncated_udp = &udp_other[..14 + 20 + 4];
    assert_eq!(
        run(&mut smoke, truncated_udp),
        TC_ACT_SHOT,
        "cut inside the UDP header"
    );
    let mut options_beyond_end = udp_other.clone();
    options_beyond_end[14] = 0x4f; // IHL 15: 60-byte IPv4 header, UDP would start at 74
    assert_eq!(
        run(&mut smoke, &options_beyond_end),
        TC_ACT_SHOT,
        "IPv4 header length beyond the packet"
    );
    let mut bad_ihl = udp_other.clone();
    bad_ihl[14] = 0x44; // IHL 4: below the 20-byte minimum
    assert_eq!(run(&mut smoke, &bad_ihl), TC_ACT_SHOT, "IPv4 IHL < 5");

    // Not IPv4: passed without parsing further.
    let mut arp = udp.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(run(&mut smoke, &arp), TC_ACT_OK, "non-IPv4 ethertype");
}

#[test]
fn packet_builder_produces_valid_headers() {
    let udp = ipv4_packet(IPPROTO_UDP, 1, 53, b"abc");
    assert_eq!(udp.len(), 14 + 20 + 8 + 3);
    let ip: [u8; 20] = udp[14..34].try_into().expect("20 bytes");
    // The stored checksum is the one computed over the header with a zeroed field.
    let mut check = ip;
    check[10..12].copy_from_slice(&[0, 0]);
    assert_eq!(ipv4_checksum(&check).to_be_bytes(), [ip[10], ip[11]]);
    assert_eq!(&udp[36..38], &53u16.to_be_bytes());

    let tcp = ipv4_packet(IPPROTO_TCP, 1, 80, b"");
    assert_eq!(tcp.len(), 14 + 20 + 20);
    assert_eq!(tcp[14 + 9], IPPROTO_TCP);
}
