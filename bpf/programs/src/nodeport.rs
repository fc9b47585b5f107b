//! Per-packet service load balancing on the node's device (Cilium's
//! `nodeport_lb4/6`), for what socket LB cannot see: connections from
//! outside the node to a NodePort, ExternalIP or LoadBalancer frontend
//! (masters flagged [`svc_flags::EXTERNAL`]).
//!
//! At TC ingress of the device, a TCP or UDP packet to such a frontend:
//! - of a flow seen before (`LB_NAT_FWD`, keyed by its tuple) keeps its
//!   backend; a new flow takes its Maglev entry (`LB_MAGLEV`, the master's
//!   row, indexed by a hash of the client's address and port, the protocol
//!   and the frontend's port: the same on every node), or without a row,
//!   one of the master's slots at random; under `sessionAffinity:
//!   ClientIP`, the client address's previous backend while it is fresh
//!   and still a backend of the frontend (`LB_AFFINITY_ADDR`);
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
//! tuple as it arrives.
//!
//! Without socket LB (`--socket-lb=false`) the same translation serves the
//! pods' own connections, per packet at their veths: [`pod_egress`] and
//! [`pod_ingress`].
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
//! SCTP too: its checksum covers no addresses, and a port rewrite updates
//! it by the rewrite's difference ([`crate::sctp`]); a fragment of an SCTP
//! packet whose port changes is refused (its checksum covers a packet
//! whose length the first fragment does not tell). The kernel runs no
//! socket LB program for SCTP sockets, so with socket LB the pods' veths
//! translate SCTP (`--enable-sctp`, [`pod_lb_sctp`]).

use axoneme_bpf_common::{
    drop_reason, family,
    lb::{
        backend_flags, pod_lb as pod_lb_mode, svc_flags, AffinityAddrKey, AffinityMatchKey,
        AffinityValue, LbKey, LbService, NatFwd, NatRev, NatTuple, NodeAddrs, LB_AFFINITY_MAX,
        LB_MAGLEV_MAX, LB_NAT_MAX,
    },
    tc_action::{TC_ACT_OK, TC_ACT_SHOT},
    FragKey, FragValue,
};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect_neigh},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    programs::TcContext,
    EbpfContext,
};

use crate::conntrack::FRAGS;
use crate::lb::{pick, LB_AFFINITY_MATCH, LB_BACKENDS, LB_SERVICES};
use crate::parse::{ipv6_upper, Frag, ETH_HLEN};

#[map]
static LB_NAT_FWD: LruHashMap<NatTuple, NatFwd> = LruHashMap::pinned(LB_NAT_MAX, 0);
#[map]
static LB_NAT_REV: LruHashMap<NatTuple, NatRev> = LruHashMap::pinned(LB_NAT_MAX, 0);
/// This node's addresses, the source of SNATed packets, and the Maglev
/// table size (written by the agent).
#[map]
static LB_NODE: Array<NodeAddrs> = Array::pinned(1, 0);
/// Maglev rows: backend ids (see `LbService`).
#[map]
static LB_MAGLEV: Array<u32> = Array::pinned(LB_MAGLEV_MAX, 0);
/// `ClientIP` affinity by client address (socket LB keys its own by the
/// pod's network namespace, `LB_AFFINITY`).
#[map]
static LB_AFFINITY_ADDR: LruHashMap<AffinityAddrKey, AffinityValue> =
    LruHashMap::pinned(LB_AFFINITY_MAX, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A packet this program may translate.
pub struct Pkt {
    family: u8,
    proto: u8,
    /// Offset of the L4 header.
    l4: usize,
    t: NatTuple,
    /// A later fragment: no L4 header (its ports, in `t`, are its first
    /// fragment's), only the addresses are rewritten.
    later: bool,
    /// The first fragment of a datagram: its L4 header is the datagram's,
    /// its length not.
    first: bool,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Pkt> {
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
fn parse_into(ctx: &TcContext, out: &mut Pkt) -> Option<()> {
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

/// What [`ingress`] returns for a packet that is not for a service from
/// outside (it passes unchanged; no TC action has this value).
pub(crate) const NOT_SERVICE: i32 = i32::MIN;

/// The TC action for a packet for a service from outside, translated, or
/// [`NOT_SERVICE`]. A call of its own: its frame is large, and the host
/// firewall after it needs the stack.
#[inline(never)]
pub(crate) fn ingress(ctx: &TcContext) -> i32 {
    match translate(ctx) {
        Some(action) => action,
        None => NOT_SERVICE,
    }
}

#[inline(always)]
fn translate(ctx: &TcContext) -> Option<i32> {
    let p = parse(ctx)?;
    // (Map values are used in place, not copied: the stack of this program
    // and the functions it calls is 512 bytes.)
    // A reply of a SNATed flow: back to the client, from the frontend.
    // SAFETY: read in place; an entry evicted meanwhile stays readable
    // until the program ends (RCU).
    if let Some(rev) = unsafe { LB_NAT_REV.get(&p.t) } {
        if rev.flags & NatRev::REDIRECT == 0 {
            return None;
        }
        if rewrite(ctx, &p, &rev.saddr, rev.sport, &rev.daddr, rev.dport).is_err() {
            return Some(TC_ACT_SHOT);
        }
        return Some(redirect(ctx, p.family, &rev.daddr));
    }
    let key = LbKey {
        addr: p.t.daddr,
        port: p.t.dport,
        proto: p.proto,
        family: p.family,
        slot: 0,
        pad: [0; 2],
    };
    // SAFETY: as above.
    let svc = unsafe { LB_SERVICES.get(&key) }?;
    if svc.flags & svc_flags::EXTERNAL == 0 {
        return None;
    }
    let fwd = match known(&p.t) {
        Some(f) => f,
        // A later fragment starts nothing: its first was refused.
        None if p.later => return Some(TC_ACT_SHOT),
        None => match new_flow(&p, &key, svc, 0) {
            Some(f) => f,
            // No usable backend (or no port to SNAT from): refused.
            None => return Some(TC_ACT_SHOT),
        },
    };
    let snat = fwd.snat_port != 0;
    let r = if snat {
        rewrite(
            ctx,
            &p,
            &fwd.snat_addr,
            fwd.snat_port,
            &fwd.backend_addr,
            fwd.backend_port,
        )
    } else {
        rewrite(
            ctx,
            &p,
            &p.t.saddr,
            p.t.sport,
            &fwd.backend_addr,
            fwd.backend_port,
        )
    };
    if r.is_err() {
        return Some(TC_ACT_SHOT);
    }
    Some(if snat {
        redirect(ctx, p.family, &fwd.backend_addr)
    } else {
        TC_ACT_OK
    })
}

/// The flow's translation, if it has one whose backend is still there (a
/// port reused after the backend left picks anew).
#[inline(always)]
fn known(t: &NatTuple) -> Option<&'static NatFwd> {
    // SAFETY: read in place (see `ingress`).
    unsafe { LB_NAT_FWD.get(t) }.filter(|f| {
        // SAFETY: only compared.
        unsafe { LB_BACKENDS.get(&f.backend_id) }.is_some_and(|b| b.addr == f.backend_addr)
    })
}

/// [`pod_egress`]'s packet, frontend key and backend, for
/// [`pod_rewrite`]; later in a run, [`pod_ingress`]'s packet.
pub struct PodScratch {
    p: Pkt,
    key: LbKey,
    backend_addr: [u8; 16],
    backend_port: u16,
}

/// [`pod_egress`]'s answer: the packet is for a frontend and its backend
/// is in the scratch entry, for [`pod_rewrite`].
pub(crate) const POD_TRANSLATE: u8 = 1;

#[map]
static POD_SCRATCH: PerCpuArray<PodScratch> = PerCpuArray::with_max_entries(1, 0);

/// `new_flow`'s `flags` bit beside [`svc_flags`]: a pod's flow, translated
/// at its veth (never SNATed: the client is this node's).
const FROM_POD: u8 = 0x80;

/// Which packets the pods' veths translate for services
/// ([`pod_lb_mode`]). Set by the agent when it loads the programs; a
/// constant to the verifier (`.rodata`), which then drops the translation
/// when it is off.
#[no_mangle]
static AXONEME_POD_LB: u8 = 0;

#[inline(always)]
fn pod_lb_value() -> u8 {
    // SAFETY: a plain read of a static; volatile, so the compiler does not
    // fold the value the loader replaces.
    unsafe { core::ptr::read_volatile(&AXONEME_POD_LB) }
}

/// Whether the pods' veths translate every packet (socket LB off): before
/// the policy parses it.
#[inline(always)]
pub(crate) fn pod_lb_all() -> bool {
    pod_lb_value() == pod_lb_mode::ALL
}

/// Whether they translate this SCTP packet the parse found (socket LB on,
/// which does not see SCTP): after the parse, which then reads the
/// translated packet again. No cost to other packets: the protocol is in
/// a register by then.
#[inline(always)]
pub(crate) fn pod_lb_sctp(protocol: u8) -> bool {
    pod_lb_value() == pod_lb_mode::SCTP && protocol == SCTP
}

/// Whether a packet of `protocol` entering a pod may be a reply to
/// translate back.
#[inline(always)]
pub(crate) fn pod_lb_for(protocol: u8) -> bool {
    pod_lb_all() || pod_lb_sctp(protocol)
}

/// Per-packet LB for a packet a pod sends, without socket LB (at TC
/// ingress of its veth, before anything else looks at it, so that policy
/// judges the flow by the backend): to a frontend, DNAT to the flow's
/// backend, picked as for traffic from outside ([`new_flow`]); its replies
/// get the frontend back where they enter the pod ([`pod_ingress`]). 0,
/// [`POD_TRANSLATE`] (then [`pod_rewrite`]), or the drop reason: a
/// frontend without a usable backend.
///
/// Called within the veth programs' call chain, whose stack is nearly
/// spent: the packet, the key and the backend are in a per-CPU scratch
/// entry, and the rewrite is a call of its own.
#[inline(never)]
pub(crate) fn pod_egress(ctx: &TcContext) -> u8 {
    // SAFETY: this CPU's scratch entry, used by this run alone.
    let Some(s) = (unsafe { POD_SCRATCH.get_ptr_mut(0).map(|s| &mut *s) }) else {
        return 0;
    };
    if parse_into(ctx, &mut s.p).is_none() {
        return 0;
    }
    let p = &s.p;
    s.key = LbKey {
        addr: p.t.daddr,
        port: p.t.dport,
        proto: p.proto,
        family: p.family,
        slot: 0,
        pad: [0; 2],
    };
    let key = &s.key;
    // SAFETY: read in place (see `ingress`).
    let Some(svc) = (unsafe { LB_SERVICES.get(key) }) else {
        return 0;
    };
    let fwd = match known(&p.t) {
        Some(f) => f,
        None if p.later => return drop_reason::DROP_FRAG_NOT_FOUND,
        None => match new_flow(p, key, svc, FROM_POD) {
            Some(f) => f,
            None => return drop_reason::DROP_NO_SERVICE,
        },
    };
    s.backend_addr = fwd.backend_addr;
    s.backend_port = fwd.backend_port;
    POD_TRANSLATE
}

/// DNATs the packet [`pod_egress`] found for a frontend to its backend; 0,
/// or the drop reason.
#[inline(never)]
pub(crate) fn pod_rewrite(ctx: &TcContext) -> u8 {
    // SAFETY: this CPU's scratch entry, as `pod_egress` left it.
    let Some(s) = (unsafe { POD_SCRATCH.get_ptr(0).map(|s| &*s) }) else {
        return drop_reason::DROP_WRITE_ERROR;
    };
    match rewrite_addr(ctx, &s.p, 1, &s.backend_addr)
        .and_then(|()| rewrite_ports(ctx, &s.p, s.p.t.sport, s.backend_port))
    {
        Ok(()) => 0,
        Err(_) => drop_reason::DROP_WRITE_ERROR,
    }
}

/// A reply entering a pod, of a flow its veth translated
/// ([`pod_egress`]): from the frontend again. `false` if it could not be
/// rewritten.
#[inline(never)]
pub(crate) fn pod_ingress(ctx: &TcContext) -> bool {
    // The packet in this CPU's scratch entry, off the stack (the veth
    // programs' chain is near 6.1's limit): [`pod_rewrite`], the only
    // other user in a run, is done with it by now.
    // SAFETY: this CPU's scratch entry, used by this run alone.
    let Some(s) = (unsafe { POD_SCRATCH.get_ptr_mut(0).map(|s| &mut *s) }) else {
        return true;
    };
    if parse_into(ctx, &mut s.p).is_none() {
        return true;
    }
    let p = &s.p;
    // SAFETY: read in place (see `ingress`).
    match unsafe { LB_NAT_REV.get(&p.t) } {
        Some(rev) if rev.flags & NatRev::POD != 0 => rewrite_addr(ctx, p, 0, &rev.saddr)
            .and_then(|()| rewrite_ports(ctx, p, rev.sport, p.t.dport))
            .is_ok(),
        _ => true,
    }
}

/// A reply from a local backend of a DNATed flow, leaving by the device:
/// from the frontend again. A call of its own, as [`ingress`].
#[inline(never)]
pub(crate) fn egress(ctx: &TcContext) -> i32 {
    let Some(p) = parse(ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: read in place (see `ingress`).
    if let Some(rev) = unsafe { LB_NAT_REV.get(&p.t) } {
        if rev.flags & NatRev::REDIRECT == 0
            && rewrite(ctx, &p, &rev.saddr, rev.sport, &rev.daddr, rev.dport).is_err()
        {
            return TC_ACT_SHOT;
        }
    }
    TC_ACT_OK
}

/// A new flow's entries, built here rather than on the stack.
#[repr(C)]
pub struct NatScratch {
    fwd: NatFwd,
    rev: NatRev,
    key: NatTuple,
    affinity: AffinityAddrKey,
}

#[map]
static LB_NAT_SCRATCH: PerCpuArray<NatScratch> = PerCpuArray::with_max_entries(1, 0);

/// Picks a backend for a new flow to the frontend `svc` (its master) and
/// records both directions' rewrites; the flow's entry in `LB_NAT_FWD`.
/// `extra`: [`FROM_POD`] or 0.
#[inline(never)]
fn new_flow(p: &Pkt, key: &LbKey, svc: &LbService, extra: u8) -> Option<&'static NatFwd> {
    let flags = svc.flags | extra;
    if svc.count == 0 {
        return None;
    }
    // SAFETY: this CPU's scratch entry, used by this run alone.
    let s = unsafe { &mut *LB_NAT_SCRATCH.get_ptr_mut(0)? };
    let id = match affine(p, svc, &mut s.affinity) {
        Some(id) => id,
        None => {
            let id = choose(p, key, svc)?;
            remember(svc, &s.affinity, id);
            id
        }
    };
    // SAFETY: read in place.
    let backend = unsafe { LB_BACKENDS.get(&id) }?;
    s.fwd.backend_addr = backend.addr;
    s.fwd.backend_port = backend.port;
    s.fwd.backend_id = id;
    s.fwd.snat_addr = [0; 16];
    s.fwd.snat_port = 0;
    s.rev.saddr = p.t.daddr;
    s.rev.sport = p.t.dport;
    s.rev.daddr = p.t.saddr;
    s.rev.dport = p.t.sport;
    s.rev.flags = 0;
    s.rev.pad = [0; 3];
    s.key.sport = backend.port;
    s.key.saddr = backend.addr;
    s.key.proto = p.t.proto;
    s.key.family = p.t.family;
    s.key.pad = [0; 2];
    let snat = flags & FROM_POD == 0
        && backend.flags & backend_flags::LOCAL == 0
        && flags & svc_flags::LOCAL_ONLY == 0;
    if snat {
        let node = LB_NODE.get(0)?;
        s.key.daddr = if p.family == family::IPV4 {
            node.ipv4
        } else {
            node.ipv6
        };
        if s.key.daddr == [0; 16] {
            return None;
        }
        // The client's port, unless another flow has it towards this
        // backend already: then a few others derived from it.
        let mut port = p.t.sport;
        let mut free = false;
        for i in 0..4u16 {
            s.key.dport = port;
            // SAFETY: only compared.
            let taken = unsafe { LB_NAT_REV.get(&s.key) }
                .is_some_and(|r| r.daddr != p.t.saddr || r.dport != p.t.sport);
            if !taken {
                free = true;
                break;
            }
            port = ((u16::from_be(p.t.sport) ^ 0x9e37u16.wrapping_mul(i + 1)) | 0x8000).to_be();
        }
        if !free {
            return None;
        }
        s.fwd.snat_addr = s.key.daddr;
        s.fwd.snat_port = port;
        s.rev.flags = NatRev::REDIRECT;
    } else {
        s.key.daddr = p.t.saddr;
        s.key.dport = p.t.sport;
        if flags & FROM_POD != 0 {
            s.rev.flags = NatRev::POD;
        }
    }
    LB_NAT_REV.insert(&s.key, &s.rev, 0).ok()?;
    LB_NAT_FWD.insert(&p.t, &s.fwd, 0).ok()?;
    // SAFETY: read in place.
    unsafe { LB_NAT_FWD.get(&p.t) }
}

/// A new flow's backend without affinity: its Maglev entry, or a random
/// slot's.
#[inline(always)]
fn choose(p: &Pkt, key: &LbKey, svc: &LbService) -> Option<u32> {
    let m = LB_NODE.get(0).map_or(0, |n| n.maglev_m);
    let row = svc.backend_id;
    Some(if row != 0 && m != 0 {
        // Maglev: the client's address and port, the protocol and the
        // frontend's port pick the entry, so every node picks the same
        // backend for the same client.
        let index = (row - 1).checked_mul(m)?.checked_add(flow_hash(&p.t) % m)?;
        *LB_MAGLEV.get(index)?
    } else {
        let mut key = *key;
        pick(&mut key, svc.count)?
    })
}

/// Under `ClientIP` affinity, the client address's backend for `svc` while
/// it is fresh (used within the timeout) and still one of the frontend's;
/// `aff` is left keyed for [`remember`]. `None` without affinity too.
#[inline(always)]
fn affine(p: &Pkt, svc: &LbService, aff: &mut AffinityAddrKey) -> Option<u32> {
    if svc.affinity_timeout == 0 {
        return None;
    }
    aff.addr = p.t.saddr;
    aff.rev_nat = u32::from(svc.rev_nat);
    aff.family = p.family;
    aff.pad = [0; 3];
    // SAFETY: copied out at once.
    let prev = unsafe { LB_AFFINITY_ADDR.get(&*aff) }.copied()?;
    let live = AffinityMatchKey {
        backend_id: prev.backend_id,
        rev_nat: u32::from(svc.rev_nat),
    };
    let fresh = now_s().wrapping_sub(prev.last_used_s) <= svc.affinity_timeout;
    if !fresh || LB_AFFINITY_MATCH.get_ptr(&live).is_none() {
        return None;
    }
    remember(svc, aff, prev.backend_id);
    Some(prev.backend_id)
}

/// Records `id` as the client's backend for `svc` (with affinity; `aff`
/// as [`affine`] keyed it), used now.
#[inline(always)]
fn remember(svc: &LbService, aff: &AffinityAddrKey, id: u32) {
    if svc.affinity_timeout == 0 {
        return;
    }
    let used = AffinityValue {
        backend_id: id,
        last_used_s: now_s(),
    };
    // Best effort: without it the next flow picks anew.
    let _ = LB_AFFINITY_ADDR.insert(aff, &used, 0);
}

#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_ns() } / crate::NS_PER_S) as u32
}

/// FNV-1a over what is the same on every node for a client's flow (not
/// the frontend's address: a NodePort's differs per node).
#[inline(always)]
fn flow_hash(t: &NatTuple) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mix = |h: u32, b: u8| (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    for b in t.saddr {
        h = mix(h, b);
    }
    // One array, not a chained iterator: the chain compiles to a loop
    // entered in its middle, which 6.1's verifier refuses ("back-edge").
    let [s0, s1] = t.sport.to_ne_bytes();
    let [d0, d1] = t.dport.to_ne_bytes();
    for b in [s0, s1, d0, d1] {
        h = mix(h, b);
    }
    mix(h, t.proto)
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
    rewrite_addr(ctx, p, 0, src)?;
    rewrite_addr(ctx, p, 1, dst)?;
    rewrite_ports(ctx, p, sport, dport)
}

/// Rewrites the ports to `sport` and `dport`, with the L4 checksum (not in
/// a later fragment, which has no L4 header).
#[inline(always)]
fn rewrite_ports(ctx: &TcContext, p: &Pkt, sport: u16, dport: u16) -> Result<(), i64> {
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
fn rewrite_addr(ctx: &TcContext, p: &Pkt, which: usize, new: &[u8; 16]) -> Result<(), i64> {
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

/// Sends the (rewritten) packet out by the route to `dst`, resolving the
/// next hop's MAC address.
#[inline(never)]
fn redirect(ctx: &TcContext, fam: u8, dst: &[u8; 16]) -> i32 {
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    // SAFETY: the context is valid for the run.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    if fam == family::IPV4 {
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
        return TC_ACT_SHOT;
    }
    // The gateway, or the destination itself when on-link.
    // SAFETY: the union's members are plain integers.
    unsafe {
        if fam == family::IPV4 {
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
