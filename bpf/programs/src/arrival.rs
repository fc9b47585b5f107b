//! Host routing of what arrives from other nodes: a packet on the node's
//! device for one of its pods is judged by that pod's ingress rules right
//! there and put straight into the pod ([`deliver::into_pod`], as local
//! delivery does), skipping the node's forwarding path (routing,
//! netfilter, the XFRM forward policy, the veth's queue) and so
//! `axoneme_to_container`, whose work this does.
//!
//! Taken only where the stack would add nothing the datapath does not:
//! - not beside kube-proxy (whose translations only the stack undoes);
//! - encryption off: a packet no IPsec decrypted (someone else's XFRM
//!   policies are the stack's to check);
//! - encryption on: only a packet Axoneme's XFRM decrypted whose source is
//!   a pod of the node that sent it ([`encrypt::from_sender`]), which is
//!   what the forward policy the stack would check asks for; anything in
//!   clear goes up the stack, where that policy requires ESP (strict) or
//!   lets it pass.
//!
//! A flow not tracked yet is judged here only from its first packet (TCP:
//! a SYN without ACK; [`crate::policy::UNJUDGED`]): any other TCP packet
//! of no tracked flow goes up the stack unjudged. Those are, above all,
//! the answers to the L7 proxy's upstream connections, which borrow a
//! pod's address with a port of their own and reach the proxy's socket by
//! the node's `socket transparent` rule; put into the pod, they would meet
//! no socket there and be reset.
//!
//! Anything else, and anything [`deliver::into_pod`] cannot deliver (TTL,
//! an address the endpoint does not own), goes up the stack as before.

use axoneme_bpf_common::{ct_flags, direction, tc_action::TC_ACT_OK, EndpointInfo, IDENTITY_HOST};
use aya_ebpf::{
    bindings::{__sk_buff, bpf_xfrm_state},
    helpers::bpf_skb_get_xfrm_state,
    programs::TcContext,
};

use crate::deliver::{self, endpoint_ifindex};
use crate::encrypt;
use crate::kube_proxy;
use crate::parse::{parse, Flow};
use crate::At;

/// The TC action for a packet on the node's device that is not for a
/// service: delivered into a local pod, dropped by its policy, or passed
/// up the stack. Out of line: its frame is the size of a pod program's.
#[inline(never)]
pub(crate) fn from_node(ctx: &TcContext) -> i32 {
    // Beside kube-proxy a reply for a pod may be one whose request the
    // stack translated (a Service's address DNATed on the way out): only
    // the stack's conntrack gives it back its source.
    if kube_proxy::beside() {
        return TC_ACT_OK;
    }
    if encrypt::enabled() {
        if !encrypt::decrypted(ctx) {
            return TC_ACT_OK;
        }
    } else if decrypted_by_anyone(ctx) {
        return TC_ACT_OK;
    }
    let mut flow = Flow::EMPTY;
    // Malformed, or not IP: the stack's, as before.
    if !matches!(parse(ctx, &mut flow), Ok(true)) {
        return TC_ACT_OK;
    }
    let Some(ifindex) = endpoint_ifindex(flow.family, &flow.daddr) else {
        return TC_ACT_OK;
    };
    if encrypt::enabled() && !encrypt::from_sender(ctx, &flow) {
        return TC_ACT_OK;
    }
    let mut at = At {
        ctx,
        ifindex,
        dir: direction::INGRESS,
        ct_flags: 0,
        arriving: true,
        ep: EndpointInfo::default(),
    };
    // Replies go back up the stack (to the node's routing and, encrypted,
    // its fallback XFRM policy) as they do for flows that came that way.
    // The node itself (the host endpoint) is the host firewall's, which
    // has judged what is for it.
    if !deliver::destined_to(&mut at, ifindex, ct_flags::VIA_STACK)
        || at.ep.identity == IDENTITY_HOST
    {
        return TC_ACT_OK;
    }
    deliver::into_pod(&mut at, &mut flow)
}

/// Whether some IPsec decrypted the packet (it has a security path).
#[inline(always)]
fn decrypted_by_anyone(ctx: &TcContext) -> bool {
    // SAFETY: all-zero is a valid `bpf_xfrm_state`, filled by the helper.
    let mut state: bpf_xfrm_state = unsafe { core::mem::zeroed() };
    // SAFETY: the context is valid for the run; `state` is sized as given.
    let rc = unsafe {
        bpf_skb_get_xfrm_state(
            ctx.skb.skb as *mut __sk_buff,
            0,
            &mut state,
            core::mem::size_of::<bpf_xfrm_state>() as u32,
            0,
        )
    };
    rc == 0
}
