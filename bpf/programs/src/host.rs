//! The host firewall: the node's own traffic judged by host policies
//! (`nodeSelector`) at the node's device, as a pod's is at its veth.
//!
//! The node is an endpoint (identity `reserved:host`) whose `ENDPOINTS`
//! entry is keyed by the device's ifindex, with the node's addresses.
//! At the device's TC ingress a packet to one of them (after the
//! per-packet LB, which turns service traffic into a backend's) is the
//! host's ingress; at TC egress a packet from one of them that left a
//! socket of the node is its egress (what the node forwards, or the LB
//! sends on, has no socket). Both go through the same conntrack, policy
//! trie, audit mode, events and counters as the pods' ([`decide`]).
//!
//! A pod's packet for the node (its address, or the pods' gateway
//! address) is the host's ingress too, judged where the pod's program
//! hands it to the node's stack (`deliver`); and what the node's sockets
//! send its own pods is the host's egress, judged in the pod's program
//! before the pod's ingress ([`egress_to_pod`]).
//!
//! Never judged: ESP (transparent IPsec between the nodes; what it
//! carries is judged where it is delivered), IPv6 neighbour discovery
//! (without it IPv6 stops), non-IP frames, and the lifelines
//! (`LIFELINE`: the agent's kvstore members and API server, by address
//! and port, either end).

use axoneme_bpf_common::{
    direction, family, tc_action::TC_ACT_OK, tc_action::TC_ACT_SHOT, EndpointInfo, LifelineKey,
    LIFELINE_MAX,
};
use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::map, maps::HashMap, programs::TcContext};

use crate::endpoint::{endpoint, owns};
use crate::metrics::forwarded;
use crate::parse::{parse, Addr, Flow};
use crate::policy::decide;
use crate::At;

#[map]
static LIFELINE: HashMap<LifelineKey, u8> = HashMap::pinned(LIFELINE_MAX, 0);

/// Non-zero: the host firewall is on (`--enable-host-firewall`). Set by
/// the agent when it loads the programs; a constant to the verifier,
/// which drops this module's code when it is 0.
#[no_mangle]
static AXONEME_HOST_FIREWALL: u8 = 0;

/// The ifindex of the device the host endpoint is keyed by (set with
/// [`AXONEME_HOST_FIREWALL`]).
#[no_mangle]
static AXONEME_HOST_IFINDEX: u32 = 0;

#[inline(always)]
pub(crate) fn enabled() -> bool {
    // SAFETY: a plain read of a static; volatile, so the compiler does not
    // fold the value the loader replaces.
    unsafe { core::ptr::read_volatile(&AXONEME_HOST_FIREWALL) != 0 }
}

/// The host endpoint's key in `ENDPOINTS`.
#[inline(always)]
pub(crate) fn ifindex() -> u32 {
    // SAFETY: as in `enabled`.
    unsafe { core::ptr::read_volatile(&AXONEME_HOST_IFINDEX) }
}

/// Whether a pod's packet is for the node through its gateway address
/// (169.254.1.1, fe80::1: every host-side veth has them), which is the
/// node's as much as its own address is.
#[inline(always)]
pub(crate) fn to_gateway(flow: &Flow) -> bool {
    is_gateway(flow.family, &flow.daddr)
}

#[inline(always)]
fn is_gateway(fam: u8, addr: &Addr) -> bool {
    let a = &addr.0;
    if fam == family::IPV4 {
        a[..4] == [169, 254, 1, 1]
    } else {
        a[0] == 0xfe && a[1] == 0x80 && a[2..15] == [0; 13] && a[15] == 1
    }
}

const ESP: u8 = 50;
const ICMPV6: u8 = 58;
/// Router solicitation to redirect: IPv6's neighbour discovery.
const ND_TYPES: core::ops::RangeInclusive<u16> = 133..=137;

/// The verdict on a packet at the node's device in direction `dir`
/// (ingress: arriving, egress: leaving).
#[inline(never)]
pub(crate) fn firewall(ctx: &TcContext, dir: u8) -> i32 {
    // SAFETY: `skb` points to the program's context, valid for the run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut at = At {
        ctx,
        ifindex,
        dir,
        ct_flags: 0,
        arriving: false,
        ep: EndpointInfo::default(),
    };
    // No host endpoint on this device: nothing selects the node yet.
    if !endpoint(ifindex, &mut at.ep) {
        return TC_ACT_OK;
    }
    let mut flow = Flow::EMPTY;
    // Malformed or not IP: the stack refuses or forwards it; only the
    // node's own traffic is this program's to judge.
    if !matches!(parse(ctx, &mut flow), Ok(true)) {
        return TC_ACT_OK;
    }
    let own = if dir == direction::INGRESS {
        owns(&at.ep, flow.family, &flow.daddr)
    } else {
        owns(&at.ep, flow.family, &flow.saddr) && from_socket(ctx)
    };
    if !own || exempt(&flow) {
        return TC_ACT_OK;
    }
    match decide(&at, &mut flow) {
        Ok(_) => {
            forwarded(&at);
            TC_ACT_OK
        }
        Err(()) => TC_ACT_SHOT,
    }
}

/// A packet the node's own sockets send one of its pods (at TC egress of
/// the pod's veth, from the node's address or the pods' gateway): the
/// host's egress, judged with the host endpoint before the pod's program
/// judges its ingress. `Err`: dropped (with its events). `at` is the
/// pod's, borrowed for the host's verdict and given back as it was.
#[inline(always)]
pub(crate) fn egress_to_pod(at: &mut At, flow: &mut Flow) -> Result<(), ()> {
    if !from_socket(at.ctx) {
        return Ok(());
    }
    let (pod, ifindex, ct_flags) = (at.ep, at.ifindex, at.ct_flags);
    if !endpoint(self::ifindex(), &mut at.ep) {
        at.ep = pod;
        return Ok(());
    }
    if (!owns(&at.ep, flow.family, &flow.saddr) && !from_gateway(flow)) || exempt(flow) {
        at.ep = pod;
        return Ok(());
    }
    at.ifindex = self::ifindex();
    at.dir = direction::EGRESS;
    at.ct_flags = 0;
    let verdict = decide(at, flow);
    if verdict.is_ok() {
        forwarded(at);
    }
    at.ep = pod;
    at.ifindex = ifindex;
    at.dir = direction::INGRESS;
    at.ct_flags = ct_flags;
    verdict.map(|_| ())
}

/// Whether the packet is from the pods' gateway address.
#[inline(always)]
fn from_gateway(flow: &Flow) -> bool {
    is_gateway(flow.family, &flow.saddr)
}

/// Whether the packet left one of the node's sockets (the kernel's own
/// answers, RSTs and ICMP errors included, have one too).
#[inline(always)]
fn from_socket(ctx: &TcContext) -> bool {
    // SAFETY: the helper reads the context's socket, if any.
    unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) != 0 }
}

/// ESP, neighbour discovery and the lifelines pass unjudged (between
/// the node and its pods too: a kvstore member may be a pod, and a pod's
/// neighbour discovery with its gateway is the node's).
#[inline(always)]
pub(crate) fn exempt(flow: &Flow) -> bool {
    if flow.protocol == ESP
        || (flow.protocol == ICMPV6 && ND_TYPES.contains(&flow.policy_port))
    {
        return true;
    }
    lifeline(flow, &flow.saddr, flow.sport) || lifeline(flow, &flow.daddr, flow.dport)
}

#[inline(always)]
fn lifeline(flow: &Flow, addr: &Addr, port: u16) -> bool {
    let key = LifelineKey {
        // IPv4 in the first 4 bytes, the rest zero, as the ipcache keys it.
        addr: addr.0,
        port,
        protocol: flow.protocol,
        family: flow.family,
    };
    // SAFETY: only tested for presence.
    unsafe { LIFELINE.get(&key) }.is_some()
}
