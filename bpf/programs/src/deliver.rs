//! Local delivery: a packet from a pod to another pod of this node,
//! judged for the destination too and put straight into it; the same
//! delivery ([`into_pod`]) serves what arrives from other nodes
//! ([`crate::arrival`]).

use axoneme_bpf_common::{
    direction, drop_reason, family,
    tc_action::{TC_ACT_OK, TC_ACT_SHOT},
    AddrSlot, EndpointInfo, IpcacheKey, ADDR_SLOTS, ENDPOINT_ADDRS_MAX, IDENTITY_HOST,
};
use aya_ebpf::{
    helpers::bpf_redirect_peer,
    macros::map,
    maps::{Array, HashMap},
    programs::TcContext,
};

use crate::endpoint::{endpoint, owns};
use crate::events::drop_flow;
use crate::host;
use crate::metrics::forwarded;
use crate::parse::{peek, Addr, Flow, ETH_HLEN};
use crate::policy::{decide, PASS, UNJUDGED, VIA_STACK};
use crate::proxy::to_proxy_entering;
use crate::slots;
use crate::At;

/// A local endpoint's addresses (the ipcache key's data, prefix left out)
/// → the ifindex of its host-side veth: where a packet for it is delivered.
/// Only a hint: the endpoint found must own the address.
#[map]
static ENDPOINT_ADDRS: HashMap<IpcacheKey, u32> = HashMap::pinned(ENDPOINT_ADDRS_MAX, 0);
/// `ENDPOINT_ADDRS` read without hashing ([`crate::slots`]).
#[map]
static ENDPOINT_ADDR_SLOTS: Array<AddrSlot> = Array::pinned(ADDR_SLOTS, 0);

/// Whether `addr` (of family `fam`) is a local endpoint's own address;
/// `ep` is then that endpoint.
#[inline(always)]
pub(crate) fn local_endpoint(fam: u8, addr: &Addr, ep: &mut EndpointInfo) -> bool {
    match endpoint_ifindex(fam, addr) {
        Some(i) => endpoint(i, ep) && owns(ep, fam, addr),
        None => false,
    }
}

/// Local delivery (what Cilium calls host routing): a packet a pod sends to
/// another pod of this node is judged by the destination's ingress rules
/// right here and put straight into the destination pod
/// (`bpf_redirect_peer`), skipping the node's routing and the second
/// veth's queue (and so `axoneme_to_container`, whose work this does).
/// What it cannot deliver goes up the node's stack as before, to be judged
/// by `axoneme_to_container`: destinations that are no local endpoint (or
/// whose endpoint does not own the address), and packets whose TTL ends
/// here (the stack sends the ICMP error). The destination MAC is left as
/// the pod sent it: crossing into the pod's namespace makes the packet the
/// host's (`skb_scrub_packet` sets `PACKET_HOST`).
///
/// `at` is the source's, done with: it becomes the destination's (the
/// stack, shared by the whole call chain, has no room for a second).
#[inline(always)]
pub(crate) fn deliver(at: &mut At, flow: &mut Flow) -> i32 {
    let ifindex = match endpoint_ifindex(flow.family, &flow.daddr) {
        Some(i) => i,
        None if host::enabled() && host::to_gateway(flow) => host::ifindex(),
        None => return leave(at, flow),
    };
    if !destined_to(at, ifindex, 0) {
        return TC_ACT_OK;
    }
    // For the node (the host endpoint): judged as its ingress (with the
    // host firewall), then up the stack to its socket, whatever the TTL
    // (the stack delivers it).
    if at.ep.identity == IDENTITY_HOST {
        if !host::enabled() || host::exempt(flow) {
            return TC_ACT_OK;
        }
        return match decide(at, flow) {
            Ok(_) => {
                forwarded(at);
                TC_ACT_OK
            }
            Err(()) => TC_ACT_SHOT,
        };
    }
    into_pod(at, flow)
}

/// The host-side veth of the local endpoint with address `addr`, if one
/// has it (a hint: the endpoint found there must own it).
#[inline(always)]
pub(crate) fn endpoint_ifindex(fam: u8, addr: &Addr) -> Option<u32> {
    slots::lookup(&ENDPOINT_ADDR_SLOTS, &ENDPOINT_ADDRS, fam, addr)
}

/// Makes `at` the ingress of the endpoint behind `ifindex` (a new flow's
/// entry gets `ct_flags`); false if there is none.
#[inline(always)]
pub(crate) fn destined_to(at: &mut At, ifindex: u32, ct_flags: u8) -> bool {
    at.ifindex = ifindex;
    at.dir = direction::INGRESS;
    at.ct_flags = ct_flags;
    endpoint(ifindex, &mut at.ep)
}

/// Delivery into the pod `at` was made the ingress of ([`destined_to`]),
/// by local delivery or by host routing of what arrives from other nodes
/// ([`crate::arrival`]): judged by its ingress rules and put straight into
/// it, or left to the stack when it cannot be.
#[inline(always)]
pub(crate) fn into_pod(at: &mut At, flow: &mut Flow) -> i32 {
    let ctx = at.ctx;
    if flow.ttl <= 1 || !owns(&at.ep, flow.family, &flow.daddr) {
        return TC_ACT_OK;
    }
    // The destination's ingress is counted here when this decides it; a
    // packet left to the stack is counted by `axoneme_to_container`.
    match decide(at, flow) {
        Ok(PASS) => {}
        Ok(VIA_STACK) => {
            forwarded(at);
            return TC_ACT_OK;
        }
        Ok(UNJUDGED) => return TC_ACT_OK,
        Ok(_) => return to_proxy_entering(at),
        Err(()) => return TC_ACT_SHOT,
    }
    // The hop the node's routing would have counted. Should the packet not
    // be writable, the stack takes it (conntrack then counts it twice).
    if hop(ctx, flow).is_err() {
        return TC_ACT_OK;
    }
    forwarded(at);
    // Entering the pod: a translated flow's reply from the frontend.
    if crate::pod_lb::pod_lb_for(flow.protocol) && !crate::pod_lb::pod_ingress(ctx) {
        return TC_ACT_SHOT;
    }
    // No mark of the node's enters the pod (the decrypt mark, say): a
    // redirect into another namespace keeps it, crossing a veth does not.
    ctx.set_mark(0);
    // SAFETY: a helper call with plain arguments.
    unsafe { bpf_redirect_peer(at.ifindex, 0) as i32 }
}

/// A packet for no local endpoint: up the node's stack, marked for
/// encryption when it is for the pods of a node that encrypts (dropped
/// when that node has no key in common with this one yet).
#[inline(always)]
fn leave(at: &At, flow: &Flow) -> i32 {
    if crate::encrypt::enabled() && crate::encrypt::leaving(at.ctx, flow).is_err() {
        drop_flow(at, flow, drop_reason::DROP_UNENCRYPTED);
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}

/// Decrements the TTL (IPv4, with its header checksum, as the kernel's
/// `ip_decrease_ttl` does) or the hop limit, by `bpf_skb_store_bytes`: the
/// TTL, the protocol as it was and the new header checksum in one call
/// (the checksum read in place, or copied, when not in the linear data).
///
/// Never by direct packet access: a direct write anywhere in a program
/// makes the verifier prepend its unclone prologue, which runs on every
/// packet the program sees — a helper makes writable only the packet it
/// writes. On the device's ingress the prologue would run on ESP too and
/// let XFRM decrypt in place, in pages a capture may share
/// (docs/architecture.md, "Transparent encryption"); in the pods' program
/// it would call a helper for every cloned packet a pod sends (every TCP
/// segment), where only those delivered on the node are written.
#[inline(always)]
fn hop(ctx: &TcContext, flow: &Flow) -> Result<(), ()> {
    let ttl = flow.ttl - 1;
    if flow.family == family::IPV4 {
        let check = u16::from_ne_bytes(peek::<2>(ctx, ETH_HLEN + 10).map_err(|_| ())?);
        let [c0, c1] = check_after_hop(check).to_ne_bytes();
        ctx.store(ETH_HLEN + 8, &[ttl, flow.protocol, c0, c1], 0)
            .map_err(|_| ())
    } else {
        ctx.store(ETH_HLEN + 7, &ttl, 0).map_err(|_| ())
    }
}

/// An IPv4 header checksum (as read from the packet) once the TTL is one
/// less: the TTL is the high byte of its 16-bit word, so that is 0x0100
/// more in the one's-complement sum.
#[inline(always)]
fn check_after_hop(check: u16) -> u16 {
    let sum = u32::from(check) + u32::from(0x0100u16.to_be());
    (sum + u32::from(sum >= 0xffff)) as u16
}
