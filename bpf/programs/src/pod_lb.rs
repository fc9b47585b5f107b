//! Per-packet service LB at the pods' veths, for what socket LB does not
//! translate: every TCP, UDP and SCTP packet without socket LB
//! (`--socket-lb=false`), SCTP with it (`--enable-sctp`: the kernel runs no
//! socket-LB program for SCTP sockets). The same translation as for
//! traffic from outside ([`crate::nodeport`]), never SNATed: DNAT to the
//! flow's backend leaving the pod ([`pod_egress`], [`pod_rewrite`]), the
//! frontend back as the source of its replies entering it
//! ([`pod_ingress`]).

use axoneme_bpf_common::{
    drop_reason,
    lb::{pod_lb as pod_lb_mode, LbKey, NatRev},
};
use aya_ebpf::{macros::map, maps::PerCpuArray, programs::TcContext};

use crate::lb::LB_SERVICES;
use crate::nodeport::{known, new_flow, FROM_POD, LB_NAT_REV};
use crate::xlate::{parse_into, rewrite_addr, rewrite_ports, Pkt, SCTP};

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
    s.key = p.frontend_key();
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

/// The packet parsed into this CPU's scratch entry, off the stack (the
/// veth programs' chain is near 6.1's limit), for a rewrite as it enters
/// a pod: [`pod_rewrite`], the only other user in a run, is done with it
/// by then. `None`: not a packet to translate.
#[inline(always)]
pub(crate) fn scratch_packet(ctx: &TcContext) -> Option<&'static Pkt> {
    // SAFETY: this CPU's scratch entry, used by this run alone.
    let s = unsafe { POD_SCRATCH.get_ptr_mut(0).map(|s| &mut *s) }?;
    parse_into(ctx, &mut s.p)?;
    Some(&s.p)
}

/// A reply entering a pod, of a flow its veth translated
/// ([`pod_egress`]): from the frontend again. `false` if it could not be
/// rewritten.
#[inline(never)]
pub(crate) fn pod_ingress(ctx: &TcContext) -> bool {
    let Some(p) = scratch_packet(ctx) else {
        return true;
    };
    // SAFETY: read in place (see `ingress`).
    match unsafe { LB_NAT_REV.get(&p.t) } {
        Some(rev) if rev.flags & NatRev::POD != 0 => rewrite_addr(ctx, p, 0, &rev.saddr)
            .and_then(|()| rewrite_ports(ctx, p, rev.sport, p.t.dport))
            .is_ok(),
        _ => true,
    }
}
