//! Parsing: what a packet is (family, addresses, protocol, ports, ICMP
//! kind, fragment) into a [`Flow`] on the stack. IPv4 without options,
//! most packets, is one helper copy into [`Head`]; IPv6 (extension headers)
//! and ICMP are out of line. Anything malformed is a [`Drop`] with its
//! reason.

use axoneme_bpf_common::{drop_reason, family};
use aya_ebpf::{
    cty::c_void, helpers::bpf_skb_load_bytes, macros::map, maps::PerCpuArray, programs::TcContext,
};

/// The flow an ICMP error quotes, from the parser to `related`
/// ([`crate::conntrack`]): per CPU, because the stack (512 bytes for the
/// whole call chain) has no room for it beside the packet's own flow.
#[map]
pub(crate) static QUOTED: PerCpuArray<InnerFlow> = PerCpuArray::with_max_entries(1, 0);

pub(crate) const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 extension headers followed before giving up (drop 156).
const MAX_EXT_HEADERS: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Icmp {
    /// Not ICMP, or an ICMP type with nothing to track.
    None,
    /// An echo request (`sport` = id) or reply (`dport` = id).
    Echo,
    /// An error quoting a packet of another flow: the quoted flow.
    Error,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frag {
    None,
    First(u32),
    Later(u32),
}

/// An address as in the maps (IPv4 in the first 4 bytes, the rest zero),
/// aligned so that copying it is two word moves, not sixteen byte moves
/// (the BPF backend copies by the alignment it can prove).
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
pub(crate) struct Addr(pub(crate) [u8; 16]);

impl Addr {
    #[inline(always)]
    pub(crate) fn v4(&self) -> [u8; 4] {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.0[..4]);
        a
    }
}

/// What the program knows about a packet.
pub(crate) struct Flow {
    pub(crate) family: u8,
    pub(crate) protocol: u8,
    pub(crate) saddr: Addr,
    pub(crate) daddr: Addr,
    /// Conntrack ports, network order.
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// Port (or ICMP type) for the policy lookup, host order.
    pub(crate) policy_port: u16,
    pub(crate) tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub(crate) ttl: u8,
    pub(crate) icmp: Icmp,
    pub(crate) frag: Frag,
}

impl Flow {
    /// Nothing known yet.
    pub(crate) const EMPTY: Flow = Flow {
        family: 0,
        protocol: 0,
        saddr: Addr([0; 16]),
        daddr: Addr([0; 16]),
        sport: 0,
        dport: 0,
        policy_port: 0,
        tcp_flags: 0,
        ttl: 0,
        icmp: Icmp::None,
        frag: Frag::None,
    };
}

/// For `Icmp::Error`: the quoted packet's flow, as sent.
#[derive(Clone, Copy, Default)]
pub(crate) struct InnerFlow {
    pub(crate) protocol: u8,
    pub(crate) saddr: Addr,
    pub(crate) daddr: Addr,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
}

/// Why a packet is dropped before a policy decision.
pub(crate) struct Drop(pub(crate) u8);

/// Fills `flow` (empty) from the packet; `Ok(false)` for packets policy does not
/// apply to (ARP, IPv6 neighbour discovery).
#[inline(always)]
pub(crate) fn parse(ctx: &TcContext, flow: &mut Flow) -> Result<bool, Drop> {
    // Most packets are option-less IPv4: one copy holds every header byte
    // they need. Shorter packets take the field-by-field loads below.
    // (Zeroed, not an `Option`: a short packet's undefined header bytes
    // could end up in a register the verifier sees read before written.)
    let mut head = Head::default();
    let whole = read_head(ctx, &mut head);
    if !whole {
        load_into(ctx, 12, &mut head.ethertype)?;
    }
    let l4 = match u16::from_be(head.ethertype) {
        ETH_P_IP => {
            if !whole {
                load_into(ctx, ETH_HLEN, &mut head.ip)?;
            }
            let ip = &head.ip;
            if ip.version_ihl >> 4 != 4 {
                return Err(Drop(drop_reason::DROP_INVALID));
            }
            let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
            let total = usize::from(u16::from_be(ip.total_len));
            if ihl < 20 || total < ihl {
                return Err(Drop(drop_reason::DROP_INVALID));
            }
            flow.family = family::IPV4;
            flow.protocol = ip.protocol;
            flow.ttl = ip.ttl;
            flow.saddr.0[..4].copy_from_slice(&ip.saddr);
            flow.daddr.0[..4].copy_from_slice(&ip.daddr);
            let frag = u16::from_be(ip.frag_off);
            let id = u32::from(u16::from_be(ip.id));
            if frag & 0x1fff != 0 {
                flow.frag = Frag::Later(id);
            } else if frag & 0x2000 != 0 {
                flow.frag = Frag::First(id);
            }
            ETH_HLEN + ihl
        }
        ETH_P_IPV6 => decode(parse_ipv6(ctx, flow))?,
        ETH_P_ARP => return Ok(false),
        _ => return Err(Drop(drop_reason::DROP_UNKNOWN_L3)),
    };
    if let Frag::Later(_) = flow.frag {
        // No L4 header: the ports come from the first fragment.
        return Ok(true);
    }
    // Whether the one copy has the ports.
    let ports_copied = whole && flow.family == family::IPV4 && l4 == ETH_HLEN + 20;
    match flow.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            if ports_copied {
                flow.sport = head.sport;
                flow.dport = head.dport;
            } else {
                let p: [u8; 4] = load(ctx, l4)?;
                flow.sport = u16::from_ne_bytes([p[0], p[1]]);
                flow.dport = u16::from_ne_bytes([p[2], p[3]]);
            }
            if flow.protocol == IPPROTO_TCP {
                // Data offset and flags.
                let h: [u8; 2] = peek(ctx, l4 + 12)?;
                if usize::from(h[0] >> 4) * 4 < 20 {
                    return Err(Drop(drop_reason::DROP_CT_INVALID_HDR));
                }
                flow.tcp_flags = h[1];
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            return decode(parse_icmp(ctx, flow, l4)).map(|applies| applies != 0);
        }
        _ => return Ok(true),
    }
    flow.policy_port = u16::from_be(flow.dport);
    Ok(true)
}

// Out-of-line parse steps return a plain integer, not a `Result` (which
// would be returned through memory: one argument more than BPF calls
// take): >= 0 is the value, < 0 the negated drop reason.
#[inline(always)]
fn encode(r: Result<usize, Drop>) -> i64 {
    match r {
        Ok(v) => v as i64,
        Err(Drop(reason)) => -i64::from(reason),
    }
}

#[inline(always)]
fn decode(v: i64) -> Result<usize, Drop> {
    if v < 0 {
        Err(Drop((-v) as u8))
    } else {
        Ok(v as usize)
    }
}

/// The IPv6 header and its extension headers; the L4 offset.
#[inline(never)]
fn parse_ipv6(ctx: &TcContext, flow: &mut Flow) -> i64 {
    encode((|| {
        let ip: [u8; 40] = load(ctx, ETH_HLEN)?;
        if ip[0] >> 4 != 6 {
            return Err(Drop(drop_reason::DROP_INVALID));
        }
        flow.family = family::IPV6;
        flow.ttl = ip[7];
        flow.saddr.0.copy_from_slice(&ip[8..24]);
        flow.daddr.0.copy_from_slice(&ip[24..40]);
        let (next, off, frag) = ipv6_upper(ctx, ip[6], ETH_HLEN + 40)?;
        flow.frag = frag;
        flow.protocol = next;
        Ok(off)
    })())
}

/// Walks the IPv6 extension headers that start with `next` at `off` (just
/// past the fixed header): the upper-layer protocol, its offset, and which
/// fragment the packet is. More than [`MAX_EXT_HEADERS`] is invalid (156).
#[inline(always)]
pub(crate) fn ipv6_upper(
    ctx: &TcContext,
    mut next: u8,
    mut off: usize,
) -> Result<(u8, usize, Frag), Drop> {
    let mut frag = Frag::None;
    for _ in 0..MAX_EXT_HEADERS {
        if !is_ext_header(next) {
            break;
        }
        let h: [u8; 8] = load(ctx, off)?;
        let len = match next {
            // Authentication header: length in 4-byte units, minus 2.
            51 => (usize::from(h[1]) + 2) * 4,
            // Fragment: fixed size.
            44 => {
                let offset = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if offset & 0xfff8 != 0 {
                    frag = Frag::Later(id);
                } else if offset & 1 != 0 {
                    frag = Frag::First(id);
                }
                8
            }
            // Hop-by-hop, routing, destination options: 8-byte units.
            _ => (usize::from(h[1]) + 1) * 8,
        };
        next = h[0];
        off += len;
    }
    if is_ext_header(next) {
        return Err(Drop(drop_reason::DROP_INVALID_EXTHDR));
    }
    Ok((next, off, frag))
}

/// An ICMP (v4 or v6) header: 1 if policy applies, 0 if not (link
/// control traffic).
#[inline(never)]
fn parse_icmp(ctx: &TcContext, flow: &mut Flow, l4: usize) -> i64 {
    encode((|| {
        let h: [u8; 8] = load(ctx, l4)?;
        let ty = h[0];
        flow.policy_port = u16::from(ty);
        let v6 = flow.protocol == IPPROTO_ICMPV6;
        let id = u16::from_ne_bytes([h[4], h[5]]);
        match (v6, ty) {
            // Echo request: the id is the "source port".
            (false, 8) | (true, 128) => {
                flow.icmp = Icmp::Echo;
                flow.sport = id;
            }
            // Echo reply: the id is the "destination port", so its
            // reverse is the request's key.
            (false, 0) | (true, 129) => {
                flow.icmp = Icmp::Echo;
                flow.dport = id;
            }
            // Neighbour discovery (router/neighbour solicitation and
            // advertisement, redirect) and multicast listener
            // discovery (MLD query/report/done, MLDv2 report): link
            // control traffic from link-local sources that never
            // leaves the link; policy does not apply (as in Cilium
            // for ND).
            (true, 130..=137 | 143) => return Ok(0),
            (false, 3 | 11 | 12) | (true, 1..=4) => {
                flow.icmp = Icmp::Error;
                let Some(inner) = QUOTED.get_ptr_mut(0) else {
                    return Err(Drop(drop_reason::DROP_INVALID));
                };
                // SAFETY: this CPU's slot, used by this run only.
                quoted(ctx, l4 + 8, v6, unsafe { &mut *inner })?;
            }
            _ => {}
        }
        Ok(1)
    })())
}

/// Where [`Head`] starts: two bytes before the ethertype, so that the
/// copy's IPv4 addresses fall on 4-byte boundaries.
const HEAD_OFFSET: usize = 10;

/// The first bytes a packet's verdict needs, copied in one helper call:
/// the ethertype, an option-less IPv4 header and the 4 bytes after it (the
/// ports). Needs a packet of at least 38 bytes. Typed fields at their
/// natural alignment, so each is read with one load.
#[derive(Clone, Copy, Default)]
#[repr(C, align(4))]
struct Head {
    _mac: [u8; 2],
    /// Network order, as are the other multi-byte fields.
    ethertype: u16,
    ip: Ipv4Header,
    sport: u16,
    dport: u16,
}

/// The fixed part of an IPv4 header.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<Head>() == 28);

/// Copies [`Head`] out of the packet: read in place where the packet's
/// linear data holds it (no helper call), else by the helper. Reads only:
/// a direct write would give the device's ingress program the verifier's
/// unclone prologue (docs/architecture.md, "Transparent encryption").
/// False if the packet is too short.
#[inline(always)]
fn read_head(ctx: &TcContext, head: &mut Head) -> bool {
    let start = ctx.data() + HEAD_OFFSET;
    if start + core::mem::size_of::<Head>() <= ctx.data_end() {
        // SAFETY: [start, start + 28) lies within the packet's linear
        // data, valid for the run (checked on the packet pointers, as the
        // verifier wants); read without assuming its alignment.
        *head = unsafe { (start as *const Head).read_unaligned() };
        return true;
    }
    load_into(ctx, HEAD_OFFSET, head).is_ok()
}

/// IPv6 extension headers the parser walks: hop-by-hop, routing,
/// fragment, authentication, destination options.
#[inline(always)]
pub(crate) fn is_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

/// The flow of the packet an ICMP error quotes (its IP header and the first
/// 8 bytes after it).
#[inline(always)]
fn quoted(ctx: &TcContext, off: usize, v6: bool, inner: &mut InnerFlow) -> Result<(), Drop> {
    *inner = InnerFlow::default();
    let l4 = if v6 {
        let ip: [u8; 40] = load(ctx, off)?;
        inner.protocol = ip[6];
        inner.saddr.0.copy_from_slice(&ip[8..24]);
        inner.daddr.0.copy_from_slice(&ip[24..40]);
        off + 40
    } else {
        let ip: [u8; 20] = load(ctx, off)?;
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ihl < 20 {
            return Err(Drop(drop_reason::DROP_INVALID));
        }
        inner.protocol = ip[9];
        inner.saddr.0[..4].copy_from_slice(&ip[12..16]);
        inner.daddr.0[..4].copy_from_slice(&ip[16..20]);
        off + ihl
    };
    let p: [u8; 4] = load(ctx, l4)?;
    match inner.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            inner.sport = u16::from_ne_bytes([p[0], p[1]]);
            inner.dport = u16::from_ne_bytes([p[2], p[3]]);
        }
        _ => {}
    }
    Ok(())
}

/// Copies `size_of::<T>()` packet bytes at `off` into `dst` (which must
/// be plain bytes: every bit pattern valid).
#[inline(always)]
fn load_into<T: Copy>(ctx: &TcContext, off: usize, dst: &mut T) -> Result<(), Drop> {
    // SAFETY: a helper call writing exactly `size_of::<T>()` bytes to `dst`.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            dst as *mut T as *mut c_void,
            core::mem::size_of::<T>() as u32,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Drop(drop_reason::DROP_CT_INVALID_HDR))
    }
}

#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], Drop> {
    let mut bytes = [0u8; N];
    load_into(ctx, off, &mut bytes)?;
    Ok(bytes)
}

/// [`load`] for a few bytes: read in place when they are in the packet's
/// linear data (no helper call), else copied by the helper.
#[inline(always)]
pub(crate) fn peek<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], Drop> {
    let start = ctx.data() + off;
    if start + N <= ctx.data_end() {
        // SAFETY: [start, start + N) lies within the packet's linear data,
        // valid for the run (the bound check above is on the packet
        // pointers, the form the verifier accepts); alignment 1.
        return Ok(unsafe { *(start as *const [u8; N]) });
    }
    load(ctx, off)
}
