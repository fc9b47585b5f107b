//! Per-packet service load balancing on the node's device (Cilium's
//! `nodeport_lb4/6`), for what socket LB cannot see: connections from
//! outside the node to a NodePort, ExternalIP or LoadBalancer frontend
//! (masters flagged [`svc_flags::EXTERNAL`]).
//!
//! At TC ingress of the device, a TCP, UDP or SCTP packet to such a
//! frontend:
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
//! The same translation serves the pods' own connections per packet at
//! their veths where socket LB does not ([`crate::pod_lb`]). The packet and
//! its rewrite (IP options, extension headers, fragments, SCTP's
//! checksum): [`crate::xlate`].

use axoneme_bpf_common::{
    family,
    lb::{
        backend_flags, svc_flags, AffinityAddrKey, AffinityMatchKey, AffinityValue, LbKey,
        LbService, NatFwd, NatRev, NatTuple, NodeAddrs, LB_AFFINITY_MAX, LB_MAGLEV_MAX, LB_NAT_MAX,
    },
    tc_action::{TC_ACT_OK, TC_ACT_SHOT},
};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect_neigh},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    programs::TcContext,
    EbpfContext,
};

use crate::lb::{pick, LB_AFFINITY_MATCH, LB_BACKENDS, LB_SERVICES};
use crate::xlate::{parse, rewrite, Pkt};

#[map]
static LB_NAT_FWD: LruHashMap<NatTuple, NatFwd> = LruHashMap::pinned(LB_NAT_MAX, 0);
#[map]
pub(crate) static LB_NAT_REV: LruHashMap<NatTuple, NatRev> = LruHashMap::pinned(LB_NAT_MAX, 0);
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

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

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
    // Only this node's SNAT address receives those ([`new_flow`] keys them
    // by it), so every other packet, the pods' traffic between nodes above
    // all, is spared the NAT table's lookup.
    // SAFETY: read in place; an entry evicted meanwhile stays readable
    // until the program ends (RCU).
    if let Some(rev) = to_snat_addr(&p).then(|| unsafe { LB_NAT_REV.get(&p.t) }).flatten() {
        if rev.flags & NatRev::REDIRECT == 0 {
            return None;
        }
        if rewrite(ctx, &p, &rev.saddr, rev.sport, &rev.daddr, rev.dport).is_err() {
            return Some(TC_ACT_SHOT);
        }
        return Some(redirect(ctx, p.family, &rev.daddr));
    }
    let key = p.frontend_key();
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

/// Whether the packet is for the address this node SNATs from (none set:
/// nothing is SNATed, so no).
#[inline(always)]
fn to_snat_addr(p: &Pkt) -> bool {
    let Some(node) = LB_NODE.get(0) else {
        return false;
    };
    let own = if p.family == family::IPV4 {
        &node.ipv4
    } else {
        &node.ipv6
    };
    *own != [0; 16] && p.t.daddr == *own
}

/// The flow's translation, if it has one whose backend is still there (a
/// port reused after the backend left picks anew).
#[inline(always)]
pub(crate) fn known(t: &NatTuple) -> Option<&'static NatFwd> {
    // SAFETY: read in place (see `ingress`).
    unsafe { LB_NAT_FWD.get(t) }.filter(|f| {
        // SAFETY: only compared.
        unsafe { LB_BACKENDS.get(&f.backend_id) }.is_some_and(|b| b.addr == f.backend_addr)
    })
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

/// `new_flow`'s `flags` bit beside [`svc_flags`]: a pod's flow, translated
/// at its veth (never SNATed: the client is this node's).
pub(crate) const FROM_POD: u8 = 0x80;

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
pub(crate) fn new_flow(
    p: &Pkt,
    key: &LbKey,
    svc: &LbService,
    extra: u8,
) -> Option<&'static NatFwd> {
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
