//! The L7 proxy's side of the datapath: handing a redirected flow's
//! packets to the node's proxy, and telling the proxy's own upstream
//! packets by their mark (see docs/architecture.md, "L7 proxy: decisions").

use axoneme_bpf_common::{
    direction, drop_reason, tc_action::TC_ACT_SHOT, LOOPBACK_IFINDEX, MARK_MASK, MARK_PROXY,
    MARK_TO_PROXY,
};
use aya_ebpf::{bindings::BPF_F_INGRESS, helpers::bpf_redirect};

use crate::events::drop_event;
use crate::kube_proxy;
use crate::metrics::forwarded;
use crate::At;

/// Hands a packet of a redirected flow to the node's L7 proxy: marked for
/// the node's TPROXY rule, re-entering the stack on the loopback device
/// (whose address, all zeros, becomes the destination MAC so the stack
/// takes it as addressed to the host). The proxy learns the original
/// destination from its accepted socket. Counted as forwarded in `at`'s
/// direction (whose rules redirected it).
#[inline(always)]
pub(crate) fn to_proxy(at: &At) -> i32 {
    let ctx = at.ctx;
    // SAFETY: `skb` points to the program's context, valid for the run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark((mark & !MARK_MASK) | MARK_TO_PROXY);
    if ctx.store(0, &[0u8; 6], 0).is_err() {
        drop_event(at, None, drop_reason::DROP_WRITE_ERROR, 0, 0);
        return TC_ACT_SHOT;
    }
    forwarded(at);
    // SAFETY: a helper call with plain arguments.
    unsafe { bpf_redirect(LOOPBACK_IFINDEX, u64::from(BPF_F_INGRESS)) as i32 }
}

/// [`to_proxy`] for a packet entering a pod (its ingress rules redirected
/// it): beside kube-proxy, first given back the destination its source
/// sent it to ([`kube_proxy::restore`]).
#[inline(always)]
pub(crate) fn to_proxy_entering(at: &At) -> i32 {
    if kube_proxy::beside() && !kube_proxy::restore(at.ctx) {
        drop_event(at, None, drop_reason::DROP_WRITE_ERROR, 0, 0);
        return TC_ACT_SHOT;
    }
    to_proxy(at)
}

/// Whether the packet is one of the L7 proxy's own upstream connections
/// (it carries the proxy's mark): their request was judged at L7 already,
/// and they never go back to the proxy (not even on a flow whose tuple a
/// redirected client used before).
#[inline(always)]
pub(crate) fn from_proxy(at: &At) -> bool {
    // SAFETY: `skb` points to the program's context, valid for the run.
    at.dir == direction::INGRESS && unsafe { (*at.ctx.skb.skb).mark } & MARK_MASK == MARK_PROXY
}
