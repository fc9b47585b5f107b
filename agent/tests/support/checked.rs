//! Checked packets: TCP/UDP over IPv4 with valid checksums, and the
//! addresses and ports of a packet a program rewrote, after checking that
//! its checksums still hold.

use super::{ipv4, tcp};

pub fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// A TCP or UDP segment's checksum over its IPv4 pseudo-header.
pub fn l4_csum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&u16::try_from(segment.len()).expect("short").to_be_bytes());
    pseudo.extend_from_slice(segment);
    csum(&pseudo)
}

/// Ethernet + IPv4 + TCP with a valid checksum and a payload.
pub fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut seg = tcp(sport, dport, 0x02);
    seg.extend_from_slice(b"hello");
    let c = l4_csum(src, dst, 6, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 6, &seg, 0, 1)
}

pub struct Seen {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
}

/// The packet's addresses and ports, after checking both checksums.
pub fn check(pkt: &[u8]) -> Seen {
    let ihl = usize::from(pkt[14] & 0x0f) * 4;
    let ip = &pkt[14..14 + ihl];
    assert_eq!(csum(ip), 0, "IPv4 header checksum");
    let src: [u8; 4] = ip[12..16].try_into().unwrap();
    let dst: [u8; 4] = ip[16..20].try_into().unwrap();
    let seg = &pkt[14 + ihl..];
    if ip[9] == 6 || seg[6..8] != [0, 0] {
        assert_eq!(l4_csum(src, dst, ip[9], seg), 0, "L4 checksum");
    }
    Seen {
        src,
        dst,
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
    }
}
