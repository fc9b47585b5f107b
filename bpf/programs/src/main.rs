//! Axoneme's datapath: identity-based L3/L4 enforcement on a pod's
//! host-side veth. Built for `bpfel-unknown-none` with Debian's rustc-web
//! and bpf-linker by `cargo xtask build-bpf`; the agent embeds the object.
//! (The toolchain's smoke-test program is its own object: `smoke.rs`.)
//!
//! `axoneme_from_container` runs at TC ingress of the host-side veth (packets
//! the pod sends: the endpoint's egress), `axoneme_to_container` at TC egress
//! (packets delivered to the pod: its ingress). Both:
//!
//! 1. find the endpoint by the veth's ifindex (unknown: drop 152, fail
//!    closed; [`endpoint`]);
//! 2. parse IPv4/IPv6 (extension headers, fragments), TCP/UDP/SCTP ports and
//!    ICMP echo ids / types; anything malformed is dropped with a reason
//!    ([`parse`]);
//! 3. conntrack: a packet of a live flow (either orientation) passes without
//!    a policy lookup; ICMP errors about a tracked flow pass as related;
//!    later fragments take the first one's ports ([`conntrack`]);
//! 4. a new flow: the peer's identity from the ipcache (unknown: world,
//!    identity 2; [`ipcache`]), then the policy trie: first with the peer's
//!    identity, then with ANY (0). The agent closes the entry set under
//!    intersection, so the longest match of the peer's entries, if any, is
//!    the answer, else ANY's (see `policy/src/compile.rs`). Deny: drop 181;
//!    nothing and enforced: drop 133; allowed flows get a CT entry
//!    ([`policy`]);
//! 5. emits policy-verdict and drop events to a ring buffer, rate-limited
//!    per CPU by a token bucket ([`events`]);
//! 6. leaving a pod for another pod of the node (local delivery): judges
//!    it as the destination's ingress too, and puts it straight into the
//!    destination pod ([`deliver`]); except answers to the L7 proxy's
//!    upstream connections, which go up the node's stack to the proxy
//!    (see [`policy::VIA_STACK`]);
//! 7. flows a policy entry redirects go to the node's L7 proxy ([`proxy`];
//!    beside kube-proxy, under the Service address their client sent them
//!    to: [`kube_proxy`]);
//! 8. counts every packet, forwarded or dropped (with its reason), by
//!    direction, in per-CPU counters the agent's `/metrics` reads
//!    ([`metrics`]).
//!
//! What arrives from other nodes for a pod is judged the same way, as the
//! pod's ingress, by the device's ingress program, and put straight into
//! the pod (host routing, [`arrival`]); what it cannot vouch for goes up
//! the node's stack to `axoneme_to_container`.
//!
//! Services: socket LB on the node's cgroup ([`lb`]) and per-packet LB for
//! traffic from outside the node on its device ([`nodeport`]); without
//! socket LB, per-packet LB of the pods' own traffic here, on entering and
//! leaving them.
//!
//! The hot path (a packet of a tracked IPv4 TCP/UDP flow) is inlined into
//! each program; everything else (new flows, drops and their events, IPv6,
//! ICMP, fragments) is in `#[inline(never)]` functions the programs call
//! (BPF subprograms), so the instructions a tracked packet runs through are
//! few and together (`axoneme_to_container`: about 480 instructions instead
//! of 2,250; `axoneme_from_container` about 850, with local delivery
//! inlined: as a subprogram its frame would take the call chain past the
//! 512-byte stack). In place the programs take about twice their time
//! under `BPF_PROG_TEST_RUN`, where everything is in cache.
//! (Not `#[cold]`: LLVM then puts the functions in `.text.unlikely.`, and
//! aya 0.14 relocates calls into that section to the wrong place.)
//!
//! Each map is a static named as in `axoneme_bpf_common::map_names`, in
//! the module of the concern that owns it.
#![no_std]
#![no_main]
// `lock xadd` on map counters: core's atomics are not built for BPF.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod arrival;
mod conntrack;
mod deliver;
mod encrypt;
mod endpoint;
mod events;
mod host;
mod ipcache;
mod kube_proxy;
mod lb;
mod metrics;
mod nodeport;
mod object;
mod parse;
mod pod_lb;
mod policy;
mod proxy;
mod sctp;
mod slots;
mod sockmap;
mod xlate;

use axoneme_bpf_common::{
    direction, drop_reason,
    tc_action::{TC_ACT_OK, TC_ACT_SHOT},
    EndpointInfo,
};
use aya_ebpf::{bindings, macros::classifier, programs::TcContext};

use crate::deliver::deliver;
use crate::endpoint::endpoint;
use crate::events::drop_event;
use crate::metrics::forwarded;
use crate::parse::{parse, Drop, Flow};
use crate::policy::{decide, PASS, VIA_STACK};
use crate::proxy::{to_proxy, to_proxy_entering};

// The shared constants are what userspace tests compare against: keep them
// identical to the kernel's.
const _: () = assert!(TC_ACT_OK == bindings::TC_ACT_OK);
const _: () = assert!(TC_ACT_SHOT == bindings::TC_ACT_SHOT);

const NS_PER_S: u64 = 1_000_000_000;

#[classifier]
pub fn axoneme_from_container(ctx: TcContext) -> i32 {
    handle(&ctx, direction::EGRESS)
}

#[classifier]
pub fn axoneme_to_container(ctx: TcContext) -> i32 {
    handle(&ctx, direction::INGRESS)
}

/// Per-packet service LB at TC ingress of the node's device ([`nodeport`]),
/// ESP's decrypt mark there ([`encrypt`]), the host firewall ([`host`])
/// and host routing of other nodes' packets for its pods ([`arrival`]).
#[classifier]
pub fn axoneme_nodeport_ingress(ctx: TcContext) -> i32 {
    // ESP (marked for its inbound state) is never service traffic and the
    // host firewall does not judge it. What it decrypts to is pod traffic
    // between the nodes' pod networks (the forward XFRM policies admit
    // nothing else: a tunnel-mode packet without one is refused): no
    // service either, and delivered into its pod from here or left to the
    // stack, whose policies check it. Decrypted packets are told first, by
    // one read of their mark (ESP from the wire carries none).
    if encrypt::enabled() {
        if encrypt::decrypted(&ctx) {
            return arrival::from_node(&ctx);
        }
        if encrypt::arriving(&ctx) {
            return TC_ACT_OK;
        }
    }
    match nodeport::ingress(&ctx) {
        // Not service traffic: the node's own, if it is for its address;
        // else perhaps for one of its pods.
        nodeport::NOT_SERVICE => {
            if host::enabled() {
                let action = host::firewall(&ctx, direction::INGRESS);
                if action != TC_ACT_OK {
                    return action;
                }
            }
            arrival::from_node(&ctx)
        }
        action => action,
    }
}

/// ... and at its egress (replies of local backends; the host firewall
/// first, which judges only what the node's sockets send: a backend's
/// reply before its rewrite has the backend's source).
#[classifier]
pub fn axoneme_nodeport_egress(ctx: TcContext) -> i32 {
    // ESP of a pod's packet: never a local backend's reply to rewrite (the
    // LB sees only TCP, UDP and SCTP), and the host firewall does not judge
    // ESP; one read of the mark instead of a parse.
    if encrypt::enabled() && encrypt::sealed(&ctx) {
        return TC_ACT_OK;
    }
    if host::enabled() && host::firewall(&ctx, direction::EGRESS) != TC_ACT_OK {
        return TC_ACT_SHOT;
    }
    nodeport::egress(&ctx)
}

/// What a program run is about: the packet's context, the interface, the
/// direction and (once known) the endpoint. Passed by reference so the
/// out-of-line paths stay within BPF's five call arguments.
struct At<'a> {
    ctx: &'a TcContext,
    ifindex: u32,
    dir: u8,
    /// The conntrack flags a new flow's entry starts with:
    /// [`ct_flags::VIA_STACK`](axoneme_bpf_common::ct_flags::VIA_STACK) when
    /// the endpoint's own program judges its ingress (the packet came up
    /// the node's stack) or host routing does (it came from another node),
    /// none when local delivery does.
    ct_flags: u8,
    /// Host routing ([`arrival`]): a flow not tracked yet is judged from
    /// its first packet only.
    arriving: bool,
    ep: EndpointInfo,
}

/// The per-packet LB of a packet the pod sends to a service: DNAT to the
/// flow's backend ([`pod_lb::pod_egress`]). False if it was dropped (a
/// service without a usable backend, a packet that could not be
/// rewritten).
#[inline(always)]
fn translate_service(at: &At) -> bool {
    let mut reason = pod_lb::pod_egress(at.ctx);
    if reason == pod_lb::POD_TRANSLATE {
        reason = pod_lb::pod_rewrite(at.ctx);
    }
    if reason != 0 {
        drop_event(at, None, reason, 0, 0);
        return false;
    }
    true
}

/// Parses the packet into `flow`: `None` to go on, or the action for a
/// packet policy does not apply to (passed) or cannot parse (dropped).
#[inline(always)]
fn parse_flow(at: &At, flow: &mut Flow) -> Option<i32> {
    match parse(at.ctx, flow) {
        Ok(true) => None,
        Ok(false) => {
            forwarded(at);
            Some(TC_ACT_OK)
        }
        Err(Drop(reason)) => {
            drop_event(at, None, reason, 0, 0);
            Some(TC_ACT_SHOT)
        }
    }
}

/// Both programs, inlined into each (see the crate's documentation).
#[inline(always)]
fn handle(ctx: &TcContext, dir: u8) -> i32 {
    // SAFETY: `skb` points to the program's context, valid for the run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut at = At {
        ctx,
        ifindex,
        dir,
        ct_flags: if dir == direction::INGRESS {
            axoneme_bpf_common::ct_flags::VIA_STACK
        } else {
            0
        },
        arriving: false,
        ep: EndpointInfo::default(),
    };
    if !endpoint(ifindex, &mut at.ep) {
        drop_event(&at, None, drop_reason::DROP_NO_ENDPOINT, 0, 0);
        return TC_ACT_SHOT;
    }
    // Without socket LB, services are translated here, before the flow is
    // parsed and judged (by the backend, then).
    if dir == direction::EGRESS && pod_lb::pod_lb_all() && !translate_service(&at) {
        return TC_ACT_SHOT;
    }
    // On the stack: written on every packet, and the stack's lines are the
    // likeliest to be in cache still (a per-CPU map value's are not).
    let mut flow = Flow::EMPTY;
    let flow = &mut flow;
    if let Some(action) = parse_flow(&at, flow) {
        return action;
    }
    // With socket LB, SCTP (which it does not see) the same way, once the
    // parse has found it; then parsed again.
    if dir == direction::EGRESS && pod_lb::pod_lb_sctp(flow.protocol) {
        if !translate_service(&at) {
            return TC_ACT_SHOT;
        }
        *flow = Flow::EMPTY;
        if let Some(action) = parse_flow(&at, flow) {
            return action;
        }
    }
    // Beside kube-proxy: where the pod sends each connection.
    if dir == direction::EGRESS && kube_proxy::beside() {
        kube_proxy::record(flow);
    }
    // What the node's own sockets send the pod: the host's egress first.
    if dir == direction::INGRESS && host::enabled() && host::egress_to_pod(&mut at, flow).is_err() {
        return TC_ACT_SHOT;
    }
    match decide(&at, flow) {
        Ok(PASS) if dir == direction::EGRESS => {
            forwarded(&at);
            deliver(&mut at, flow)
        }
        Ok(PASS) | Ok(VIA_STACK) => {
            forwarded(&at);
            // Entering the pod: a translated flow's reply from the frontend.
            if dir == direction::INGRESS
                && pod_lb::pod_lb_for(flow.protocol)
                && !pod_lb::pod_ingress(ctx)
            {
                return TC_ACT_SHOT;
            }
            TC_ACT_OK
        }
        // Ingress rules at the destination's veth, egress rules at the
        // source's: either way the node's proxy.
        Ok(_) if dir == direction::INGRESS => to_proxy_entering(&at),
        Ok(_) => to_proxy(&at),
        Err(()) => TC_ACT_SHOT,
    }
}
