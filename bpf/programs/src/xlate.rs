//! A packet the per-packet LB ([`crate::nodeport`], [`crate::pod_lb`]) may
//! translate, and its rewrite: addresses and ports with their checksums
//! (IPv4 header; TCP/UDP with the pseudo-header, a UDP checksum of 0 kept;
//! SCTP's CRC32c by [`crate::sctp`]).
//!
//! IPv4 options and IPv6 extension headers are stepped over (the L4
//! header is found after them, as the policy parser finds it). Fragments
//! are translated as their datagram: the first records its ports in the
//! fragment table (`FRAGS`, which the policy keeps too), keyed by the
//! addresses, protocol and IP id it arrived with; a later one (no L4
//! header) takes them from there, finds its flow by them, and gets only
//! its addresses rewritten. A later fragment whose first was not seen
//! passes as it is (it cannot be reassembled with a translated first; a
//! datagram's fragments arrive in order on one path), and one of a flow
//! that has no translation is refused.
//!
//! SCTP's checksum covers no addresses; a port rewrite updates it by the
//! rewrite's difference; a first fragment of an SCTP packet whose port
//! changes is refused (its checksum covers a packet whose length the first
//! fragment does not tell).

use axoneme_bpf_common::{
    family,
    lb::{LbKey, NatTuple},
    FragKey, FragValue,
};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use crate::conntrack::FRAGS;
use crate::parse::{ipv6_upper, Frag, ETH_HLEN};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const UDP: u8 = 17;
pub(crate) const SCTP: u8 = 132;

/// A packet this program may translate.
pub struct Pkt {
    pub(crate) family: u8,
    pub(crate) proto: u8,
    /// Offset of the L4 header.
    pub(crate) l4: usize,
    pub(crate) t: NatTuple,
    /// A later fragment: no L4 header (its ports, in `t`, are its first
    /// fragment's), only the addresses are rewritten.
    pub(crate) later: bool,
    /// The first fragment of a datagram: its L4 header is the datagram's,
    /// its length not.
    pub(crate) first: bool,
}

impl Pkt {
    /// The key of the frontend the packet is for, if it is (its master's,
    /// slot 0).
    #[inline(always)]
    pub(crate) fn frontend_key(&self) -> LbKey {
        LbKey {
            addr: self.t.daddr,
            port: self.t.dport,
            proto: self.proto,
            family: self.family,
            slot: 0,
            pad: [0; 2],
        }
    }
}

#[inline(always)]
pub(crate) fn parse(ctx: &TcContext) -> Option<Pkt> {
    let mut p = Pkt {
        family: 0,
        proto: 0,
        l4: 0,
        t: NatTuple::default(),
        later: false,
        first: false,
    };
    parse_into(ctx, &mut p)?;
    Some(p)
}

/// Copies `len` (at most 16, a constant after inlining) bytes at `off`
/// into the start of `dst`, with one helper call of a fixed size (aya's
/// `load_bytes` clamps the size to the packet, which the verifier reads as
/// possibly zero).
#[inline(always)]
fn load_to(ctx: &TcContext, off: usize, dst: &mut [u8; 16], len: u32) -> Option<()> {
    // SAFETY: `dst` has room for `len` <= 16 bytes; the helper checks the
    // packet's bounds.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            dst.as_mut_ptr() as *mut core::ffi::c_void,
            len.min(16),
        )
    };
    (rc == 0).then_some(())
}

/// [`parse`] into `out` (a per-CPU scratch entry where the stack is
/// short).
#[inline(always)]
pub(crate) fn parse_into(ctx: &TcContext, out: &mut Pkt) -> Option<()> {
    match in_place4(ctx, out) {
        InPlace::Parsed => return Some(()),
        InPlace::NotMine => return None,
        InPlace::Elsewhere => {}
    }
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let t = &mut out.t;
    *t = NatTuple::default();
    let (fam, proto, l4, frag) = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
            // Options make the header longer: the L4 header follows them.
            let ihl = vihl & 0x0f;
            if vihl >> 4 != 4 || ihl < 5 {
                return None;
            }
            let [id, off]: [u16; 2] = ctx.load(ETH_HLEN + 4).ok()?;
            let off = u16::from_be(off);
            let id = u32::from(u16::from_be(id));
            let frag = if off & 0x1fff != 0 {
                Frag::Later(id)
            } else if off & 0x2000 != 0 {
                Frag::First(id)
            } else {
                Frag::None
            };
            let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
            // Straight into `out` (no copy through the stack).
            load_to(ctx, ETH_HLEN + 12, &mut t.saddr, 4)?;
            load_to(ctx, ETH_HLEN + 16, &mut t.daddr, 4)?;
            (family::IPV4, proto, ETH_HLEN + usize::from(ihl) * 4, frag)
        }
        ETH_P_IPV6 => {
            let next: u8 = ctx.load(ETH_HLEN + 6).ok()?;
            load_to(ctx, ETH_HLEN + 8, &mut t.saddr, 16)?;
            load_to(ctx, ETH_HLEN + 24, &mut t.daddr, 16)?;
            // Extension headers walked as the policy parser walks them.
            let (proto, l4, frag) = ipv6_upper(ctx, next, ETH_HLEN + 40).ok()?;
            (family::IPV6, proto, l4, frag)
        }
        _ => return None,
    };
    if proto != TCP && proto != UDP && proto != SCTP {
        return None;
    }
    t.proto = proto;
    t.family = fam;
    out.family = fam;
    out.proto = proto;
    out.l4 = l4;
    out.later = false;
    out.first = false;
    match frag {
        Frag::Later(id) => {
            if !datagram(t, id, true) {
                return None;
            }
            out.later = true;
        }
        _ => {
            let ports: [u16; 2] = ctx.load(l4).ok()?;
            t.sport = ports[0];
            t.dport = ports[1];
            if let Frag::First(id) = frag {
                datagram(t, id, false);
                out.first = true;
            }
        }
    }
    Some(())
}

/// What [`in_place4`] made of a packet.
enum InPlace {
    /// A TCP, UDP or SCTP packet, parsed.
    Parsed,
    /// IPv4 of another protocol: nothing to translate.
    NotMine,
    /// For the helper-based parse: not IPv4, options, a fragment, or
    /// headers beyond the linear data.
    Elsewhere,
}

/// The common case read in place: IPv4 without options, not a fragment,
/// its headers and ports in the linear data. Most packets these programs
/// see are none of theirs (every pod packet between nodes crosses the
/// device's programs), and direct reads cost a fraction of the seven
/// helper calls the general parse makes. Reads only: a direct write would
/// give the device's ingress program the verifier's unclone prologue (see
/// docs/architecture.md, "Transparent encryption").
#[inline(always)]
fn in_place4(ctx: &TcContext, out: &mut Pkt) -> InPlace {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Ethernet, a 20-byte IPv4 header, the two ports.
    if start + ETH_HLEN + 24 > end {
        return InPlace::Elsewhere;
    }
    let at = |off: usize| start + off;
    // SAFETY: every read below is within [start, start + 38), checked
    // against the packet's end above, as the verifier wants.
    unsafe {
        let ethertype = (at(12) as *const u16).read_unaligned();
        let vihl = *(at(ETH_HLEN) as *const u8);
        if u16::from_be(ethertype) != ETH_P_IP || vihl != 0x45 {
            return InPlace::Elsewhere;
        }
        // More fragments, or an offset: the fragment table's business.
        let frag = u16::from_be((at(ETH_HLEN + 6) as *const u16).read_unaligned());
        if frag & 0x3fff != 0 {
            return InPlace::Elsewhere;
        }
        let proto = *(at(ETH_HLEN + 9) as *const u8);
        if proto != TCP && proto != UDP && proto != SCTP {
            return InPlace::NotMine;
        }
        let t = &mut out.t;
        *t = NatTuple::default();
        t.saddr[..4].copy_from_slice(&*(at(ETH_HLEN + 12) as *const [u8; 4]));
        t.daddr[..4].copy_from_slice(&*(at(ETH_HLEN + 16) as *const [u8; 4]));
        t.sport = (at(ETH_HLEN + 20) as *const u16).read_unaligned();
        t.dport = (at(ETH_HLEN + 22) as *const u16).read_unaligned();
        t.proto = proto;
        t.family = family::IPV4;
        out.family = family::IPV4;
        out.proto = proto;
        out.l4 = ETH_HLEN + 20;
        out.later = false;
        out.first = false;
    }
    InPlace::Parsed
}

/// A fragmented datagram's ports: its first fragment records `t`'s
/// (`later` false); a later one gets them into `t`, false if its first was
/// not seen. A call of its own: its key would not fit the callers' stack.
#[inline(never)]
fn datagram(t: &mut NatTuple, id: u32, later: bool) -> bool {
    let key = FragKey {
        saddr: t.saddr,
        daddr: t.daddr,
        id,
        protocol: t.proto,
        family: t.family,
        pad: [0; 2],
    };
    if !later {
        let ports = FragValue {
            sport: t.sport,
            dport: t.dport,
        };
        // Best effort: without it the later fragments pass untranslated.
        let _ = FRAGS.insert(&key, &ports, 0);
        return true;
    }
    // SAFETY: copied out at once.
    match unsafe { FRAGS.get(&key) } {
        Some(ports) => {
            t.sport = ports.sport;
            t.dport = ports.dport;
            true
        }
        None => false,
    }
}

/// Rewrites the packet's addresses and ports, with their checksums.
#[inline(always)]
pub(crate) fn rewrite(
    ctx: &TcContext,
    p: &Pkt,
    src: &[u8; 16],
    sport: u16,
    dst: &[u8; 16],
    dport: u16,
) -> Result<(), i64> {
    rewrite_addr(ctx, p, 0, src)?;
    rewrite_addr(ctx, p, 1, dst)?;
    rewrite_ports(ctx, p, sport, dport)
}

/// Rewrites the ports to `sport` and `dport`, with the L4 checksum (not in
/// a later fragment, which has no L4 header).
#[inline(always)]
pub(crate) fn rewrite_ports(ctx: &TcContext, p: &Pkt, sport: u16, dport: u16) -> Result<(), i64> {
    if p.proto == SCTP {
        return rewrite_sctp_ports(ctx, p, sport, dport);
    }
    rewrite_port(ctx, p, 0, sport)?;
    rewrite_port(ctx, p, 2, dport)
}

/// The L4 checksum's offset, and the flags its updates take.
#[inline(always)]
fn l4_csum(p: &Pkt) -> (usize, u64) {
    let csum = p.l4 + if p.proto == TCP { 16 } else { 6 };
    let flags = if p.proto == UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    (csum, flags)
}

/// Rewrites the source (`which` 0) or destination (1) address to `new`,
/// with the IPv4 header's and the L4 (pseudo-header) checksums.
#[inline(always)]
pub(crate) fn rewrite_addr(
    ctx: &TcContext,
    p: &Pkt,
    which: usize,
    new: &[u8; 16],
) -> Result<(), i64> {
    let (csum, l4_flags) = l4_csum(p);
    let (addr_off, words) = if p.family == family::IPV4 {
        (ETH_HLEN + 12, 1)
    } else {
        (ETH_HLEN + 8, 4)
    };
    let old = if which == 0 { &p.t.saddr } else { &p.t.daddr };
    for w in 0..words {
        let o = u32::from_ne_bytes([old[w * 4], old[w * 4 + 1], old[w * 4 + 2], old[w * 4 + 3]]);
        let n = u32::from_ne_bytes([new[w * 4], new[w * 4 + 1], new[w * 4 + 2], new[w * 4 + 3]]);
        if o == n {
            continue;
        }
        let off = addr_off + which * words * 4 + w * 4;
        ctx.store(off, &n, 0)?;
        // (A later fragment has no L4 checksum: the first's covers the
        // datagram. SCTP's covers no addresses.)
        if !p.later && p.proto != SCTP {
            ctx.l4_csum_replace(
                csum,
                u64::from(o),
                u64::from(n),
                u64::from(BPF_F_PSEUDO_HDR) | l4_flags | 4,
            )?;
        }
        if p.family == family::IPV4 {
            ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(o), u64::from(n), 4)?;
        }
    }
    Ok(())
}

/// Rewrites the source (`off` 0) or destination (2) TCP or UDP port to
/// `new`, with the checksum.
#[inline(always)]
fn rewrite_port(ctx: &TcContext, p: &Pkt, off: usize, new: u16) -> Result<(), i64> {
    let old = if off == 0 { p.t.sport } else { p.t.dport };
    if old == new || p.later {
        return Ok(());
    }
    let (csum, l4_flags) = l4_csum(p);
    ctx.store(p.l4 + off, &new, 0)?;
    ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), l4_flags | 2)
}

/// [`rewrite_ports`] for SCTP: the checksum updated by the rewrite's
/// difference ([`crate::sctp`]), unless it is 0 (to be computed later,
/// over the new ports). Refused for a first fragment (the packet's length
/// is not known). A call of its own: its frame stays off the callers'.
#[inline(never)]
fn rewrite_sctp_ports(ctx: &TcContext, p: &Pkt, sport: u16, dport: u16) -> Result<(), i64> {
    let (old, new) = ([p.t.sport, p.t.dport], [sport, dport]);
    if old == new || p.later {
        return Ok(());
    }
    if p.first {
        return Err(-1);
    }
    let crc_at = p.l4 + 8;
    let crc: u32 = ctx.load(crc_at)?;
    ctx.store(p.l4, &new, 0)?;
    if crc == 0 {
        return Ok(());
    }
    // The SCTP packet's length: the IP payload's, less any IPv4 options or
    // IPv6 extension headers before it. (A length shorter than the headers
    // wraps, and is refused.)
    let (field, fixed) = if p.family == family::IPV4 {
        (ETH_HLEN + 2, 0)
    } else {
        (ETH_HLEN + 4, 40)
    };
    let ip_len = u32::from(u16::from_be(ctx.load::<u16>(field)?)) + fixed;
    let len = ip_len.wrapping_sub((p.l4 - ETH_HLEN) as u32);
    // The four bytes in memory order (little-endian: the first port low).
    let ports = |p: [u16; 2]| u32::from(p[0]) | u32::from(p[1]) << 16;
    match crate::sctp::axoneme_sctp_update(ctx.skb.skb, crc_at as u32, len, ports(old) ^ ports(new))
    {
        0 => Ok(()),
        _ => Err(-1),
    }
}
