//! Per-packet service load balancing on the node's device (Cilium's
//! `nodeport_lb4/6`), for what socket LB cannot see: connections from
//! outside the node to a NodePort, ExternalIP or LoadBalancer frontend
//! (masters flagged [`svc_flags::EXTERNAL`]).
//!
//! At TC ingress of the device, a TCP or UDP packet to such a frontend:
//! - of a flow seen before (`LB_NAT_FWD`, keyed by its tuple) keeps its
//!   backend; a new flow picks one of the master's slots at random;
//! - backend on this node, or `externalTrafficPolicy: Local`: DNAT only.
//!   The packet goes up the node's stack to the pod's veth, where policy
//!   judges it by the client's identity (the source is kept); the reply
//!   leaving by the device (egress program) gets the frontend back as its
//!   source;
//! - backend on another node: DNAT and SNAT to this node's address (the
//!   reply must come back here), and out again by a FIB lookup and
//!   `bpf_redirect_neigh` — not through the stack, which refuses a packet
//!   arriving from outside with one of its own addresses as the source. The
//!   reply (ingress, `LB_NAT_REV`) gets the client back as its destination
//!   and the frontend as its source, and leaves the same way.
//!
//! Both directions' rewrites are in `LB_NAT_REV`, keyed by the reply's
//! tuple as it arrives. Fragments, IPv4 options' packets and IPv6 packets
//! with extension headers are not translated (they pass unchanged); SCTP
//! (whose checksum is a CRC) is left to socket LB.

use axoneme_bpf_common::{
    family,
    lb::{
        backend_flags, svc_flags, LbKey, NatFwd, NatRev, NatTuple, NodeAddrs, LB_NAT_MAX,
    },
    tc_action::TC_ACT_OK,
};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    macros::map,
    maps::{Array, LruHashMap},
    programs::TcContext,
    EbpfContext,
};

use crate::lb::{pick, LB_BACKENDS, LB_SERVICES};
use crate::parse::ETH_HLEN;

#[map]
static LB_NAT_FWD: LruHashMap<NatTuple, NatFwd> = LruHashMap::pinned(LB_NAT_MAX, 0);
#[map]
static LB_NAT_REV: LruHashMap<NatTuple, NatRev> = LruHashMap::pinned(LB_NAT_MAX, 0);
/// This node's addresses, the source of SNATed packets (written by the agent).
#[map]
static LB_NODE: Array<NodeAddrs> = Array::pinned(1, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const UDP: u8 = 17;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A packet this program may translate.
struct Pkt {
    family: u8,
    proto: u8,
    /// Offset of the L4 header.
    l4: usize,
    t: NatTuple,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Pkt> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let mut t = NatTuple::default();
    let (fam, proto, l4) = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
            if vihl != 0x45 {
                return None;
            }
            let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
            if frag & 0x3fff != 0 {
                return None;
            }
            let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
            let s: [u8; 4] = ctx.load(ETH_HLEN + 12).ok()?;
            let d: [u8; 4] = ctx.load(ETH_HLEN + 16).ok()?;
            t.saddr[..4].copy_from_slice(&s);
            t.daddr[..4].copy_from_slice(&d);
            (family::IPV4, proto, ETH_HLEN + 20)
        }
        ETH_P_IPV6 => {
            let proto: u8 = ctx.load(ETH_HLEN + 6).ok()?;
            t.saddr = ctx.load(ETH_HLEN + 8).ok()?;
            t.daddr = ctx.load(ETH_HLEN + 24).ok()?;
            (family::IPV6, proto, ETH_HLEN + 40)
        }
        _ => return None,
    };
    if proto != TCP && proto != UDP {
        return None;
    }
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    t.sport = ports[0];
    t.dport = ports[1];
    t.proto = proto;
    t.family = fam;
    Some(Pkt {
        family: fam,
        proto,
        l4,
        t,
    })
}

/// The tuple of the reply to `t` after translation to `src` → `dst`.
#[inline(always)]
fn reply(src: &[u8; 16], sport: u16, dst: &[u8; 16], dport: u16, t: &NatTuple) -> NatTuple {
    NatTuple {
        saddr: *dst,
        daddr: *src,
        sport: dport,
        dport: sport,
        proto: t.proto,
        family: t.family,
        pad: [0; 2],
    }
}

#[inline(always)]
pub(crate) fn ingress(ctx: &TcContext) -> i32 {
    let Some(p) = parse(ctx) else {
        return TC_ACT_OK;
    };
    // A reply of a SNATed flow: back to the client, from the frontend.
    // SAFETY: copied out at once.
    if let Some(rev) = unsafe { LB_NAT_REV.get(&p.t) }.copied() {
        if rev.flags & NatRev::REDIRECT == 0 {
            return TC_ACT_OK;
        }
        if rewrite(ctx, &p, &rev.saddr, rev.sport, &rev.daddr, rev.dport).is_err() {
            return TC_ACT_SHOT as i32;
        }
        return redirect(ctx, &p, &rev.daddr);
    }
    let key = LbKey {
        addr: p.t.daddr,
        port: p.t.dport,
        proto: p.proto,
        family: p.family,
        slot: 0,
        pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(svc) = unsafe { LB_SERVICES.get(&key) }.copied() else {
        return TC_ACT_OK;
    };
    if svc.flags & svc_flags::EXTERNAL == 0 {
        return TC_ACT_OK;
    }
    // SAFETY: copied out at once.
    let fwd = match unsafe { LB_NAT_FWD.get(&p.t) }.copied() {
        Some(f) => f,
        None => match new_flow(&p, key, svc.count, svc.flags) {
            Some(f) => f,
            // No usable backend (or no port to SNAT from): refused.
            None => return TC_ACT_SHOT as i32,
        },
    };
    let (src, sport) = if fwd.snat_port != 0 {
        (&fwd.snat_addr, fwd.snat_port)
    } else {
        (&p.t.saddr, p.t.sport)
    };
    if rewrite(ctx, &p, src, sport, &fwd.backend_addr, fwd.backend_port).is_err() {
        return TC_ACT_SHOT as i32;
    }
    if fwd.snat_port != 0 {
        redirect(ctx, &p, &fwd.backend_addr)
    } else {
        TC_ACT_OK
    }
}

/// A reply from a local backend of a DNATed flow, leaving by the device:
/// from the frontend again.
#[inline(always)]
pub(crate) fn egress(ctx: &TcContext) -> i32 {
    let Some(p) = parse(ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: copied out at once.
    if let Some(rev) = unsafe { LB_NAT_REV.get(&p.t) }.copied() {
        if rev.flags & NatRev::REDIRECT == 0
            && rewrite(ctx, &p, &rev.saddr, rev.sport, &rev.daddr, rev.dport).is_err()
        {
            return TC_ACT_SHOT as i32;
        }
    }
    TC_ACT_OK
}

/// Picks a backend for a new flow and records both directions' rewrites.
#[inline(never)]
fn new_flow(p: &Pkt, mut key: LbKey, count: u16, flags: u8) -> Option<NatFwd> {
    if count == 0 {
        return None;
    }
    let id = pick(&mut key, count)?;
    // SAFETY: copied out at once.
    let backend = unsafe { LB_BACKENDS.get(&id) }.copied()?;
    let snat = backend.flags & backend_flags::LOCAL == 0 && flags & svc_flags::LOCAL_ONLY == 0;
    let mut fwd = NatFwd {
        backend_addr: backend.addr,
        backend_port: backend.port,
        ..NatFwd::default()
    };
    let mut rev = NatRev {
        saddr: p.t.daddr,
        sport: p.t.dport,
        daddr: p.t.saddr,
        dport: p.t.sport,
        ..NatRev::default()
    };
    let rkey = if snat {
        let node = LB_NODE.get(0)?;
        let addr = if p.family == family::IPV4 {
            node.ipv4
        } else {
            node.ipv6
        };
        if addr == [0; 16] {
            return None;
        }
        // The client's port, unless another flow has it towards this
        // backend already: then a few others derived from it.
        let mut found = None;
        let mut port = p.t.sport;
        for i in 0..4u16 {
            let k = reply(&addr, port, &backend.addr, backend.port, &p.t);
            // SAFETY: only tested for presence.
            let taken = unsafe { LB_NAT_REV.get(&k) }
                .is_some_and(|r| r.daddr != p.t.saddr || r.dport != p.t.sport);
            if !taken {
                found = Some((port, k));
                break;
            }
            port = (u16::from_be(p.t.sport) ^ (0x9e37u16.wrapping_mul(i + 1)) | 0x8000).to_be();
        }
        let (port, k) = found?;
        fwd.snat_addr = addr;
        fwd.snat_port = port;
        rev.flags = NatRev::REDIRECT;
        k
    } else {
        reply(&p.t.saddr, p.t.sport, &backend.addr, backend.port, &p.t)
    };
    LB_NAT_REV.insert(&rkey, &rev, 0).ok()?;
    LB_NAT_FWD.insert(&p.t, &fwd, 0).ok()?;
    Some(fwd)
}

/// Rewrites the packet's addresses and ports, with their checksums.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    p: &Pkt,
    src: &[u8; 16],
    sport: u16,
    dst: &[u8; 16],
    dport: u16,
) -> Result<(), i64> {
    let csum = p.l4 + if p.proto == TCP { 16 } else { 6 };
    let l4_flags = if p.proto == UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let (addr_off, words) = if p.family == family::IPV4 {
        (ETH_HLEN + 12, 1)
    } else {
        (ETH_HLEN + 8, 4)
    };
    for (which, new) in [(0usize, src), (1, dst)] {
        let old = if which == 0 { &p.t.saddr } else { &p.t.daddr };
        for w in 0..words {
            let o = u32::from_ne_bytes([old[w * 4], old[w * 4 + 1], old[w * 4 + 2], old[w * 4 + 3]]);
            let n = u32::from_ne_bytes([new[w * 4], new[w * 4 + 1], new[w * 4 + 2], new[w * 4 + 3]]);
            if o == n {
                continue;
            }
            let off = addr_off + which * words * 4 + w * 4;
            ctx.store(off, &n, 0)?;
            ctx.l4_csum_replace(
                csum,
                u64::from(o),
                u64::from(n),
                u64::from(BPF_F_PSEUDO_HDR) | l4_flags | 4,
            )?;
            if p.family == family::IPV4 {
                ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(o), u64::from(n), 4)?;
            }
        }
    }
    for (off, old, new) in [(0usize, p.t.sport, sport), (2, p.t.dport, dport)] {
        if old != new {
            ctx.store(p.l4 + off, &new, 0)?;
            ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), l4_flags | 2)?;
        }
    }
    Ok(())
}

/// Sends the (rewritten) packet out by the route to `dst`, resolving the
/// next hop's MAC address.
#[inline(never)]
fn redirect(ctx: &TcContext, p: &Pkt, dst: &[u8; 16]) -> i32 {
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    // SAFETY: the context is valid for the run.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    if p.family == family::IPV4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        fib.family = AF_INET6;
        let mut d = [0u32; 4];
        for (i, w) in d.iter_mut().enumerate() {
            *w = u32::from_ne_bytes([dst[i * 4], dst[i * 4 + 1], dst[i * 4 + 2], dst[i * 4 + 3]]);
        }
        fib.__bindgen_anon_4.ipv6_dst = d;
    }
    // SAFETY: `fib` is a valid, sized lookup on the program's context.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return TC_ACT_SHOT as i32;
    }
    // The gateway, or the destination itself when on-link.
    // SAFETY: the union's members are plain integers.
    unsafe {
        if p.family == family::IPV4 {
            nh.nh_family = u32::from(AF_INET);
            nh.__bindgen_anon_1.ipv4_nh = fib.__bindgen_anon_4.ipv4_dst;
        } else {
            nh.nh_family = u32::from(AF_INET6);
            nh.__bindgen_anon_1.ipv6_nh = fib.__bindgen_anon_4.ipv6_dst;
        }
    }
    // SAFETY: `nh` is a valid, sized next hop.
    unsafe {
        bpf_redirect_neigh(
            fib.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}
