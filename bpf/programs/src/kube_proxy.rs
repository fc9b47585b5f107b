//! Beside kube-proxy (`--kube-proxy-replacement=false`): kube-proxy
//! translates a Service's address in the node's stack, after the client's
//! veth has seen the packet, and its conntrack entry turns the backend's
//! answers back into the Service's. When the backend's ingress rules send
//! the flow to this node's L7 proxy ([`crate::proxy::to_proxy`]), the
//! packet goes up the stack a second time, where it would start a
//! conntrack entry of its own, and the proxy's answers would come from the
//! backend's address, which the client never addressed.
//!
//! So, in this mode, every TCP connection a pod opens is recorded by its
//! source as it leaves the pod, with where it was sent ([`record`]); a
//! packet for the proxy whose source was recorded with another destination
//! gets that destination back ([`restore`]). In the stack it is then
//! kube-proxy's flow again, translated to the same backend (before the
//! proxy's TPROXY rule, which runs after the stack's DNAT), and the
//! proxy's answers are translated back to the Service's address. A client
//! on another node has no record here and needs none: its node's
//! kube-proxy translates the answers.

use axoneme_bpf_common::lb::{SentKey, SentTo};
use aya_ebpf::{macros::map, maps::LruHashMap, programs::TcContext};

use crate::conntrack::{TCP_ACK, TCP_SYN};
use crate::parse::{Flow, IPPROTO_TCP};
use crate::pod_lb::scratch_packet;
use crate::xlate::{rewrite_addr, rewrite_ports};

/// 1 when kube-proxy translates Services (no kube-proxy replacement). Set
/// by the agent at load; a constant to the verifier, which drops all of
/// this when it is 0.
#[no_mangle]
static AXONEME_KUBE_PROXY: u8 = 0;

/// Sized by the agent at load: as the conntrack maps beside kube-proxy,
/// one entry otherwise.
#[map]
static KUBE_PROXY_SENT: LruHashMap<SentKey, SentTo> = LruHashMap::pinned(1, 0);

/// Whether kube-proxy translates Services.
#[inline(always)]
pub(crate) fn beside() -> bool {
    // SAFETY: a plain read of a static; volatile, so the compiler does not
    // fold the value the loader replaces.
    unsafe { core::ptr::read_volatile(&AXONEME_KUBE_PROXY) != 0 }
}

/// A packet leaving a pod: a connection's first (a SYN) records where it
/// was sent, under its source.
#[inline(always)]
pub(crate) fn record(flow: &Flow) {
    if flow.protocol != IPPROTO_TCP || flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return;
    }
    let key = SentKey {
        addr: flow.saddr.0,
        port: flow.sport,
        family: flow.family,
        pad: 0,
    };
    let to = SentTo {
        addr: flow.daddr.0,
        port: flow.dport,
        pad: [0; 2],
    };
    // A full table evicts its oldest record (LRU): that connection, if the
    // proxy still handles it, is back to how it was without the record.
    let _ = KUBE_PROXY_SENT.insert(&key, &to, 0);
}

/// A packet entering a pod, on its way to the proxy: the destination its
/// source sent it to, if that was another (a Service's address kube-proxy
/// translated). `false` if it could not be rewritten.
#[inline(never)]
pub(crate) fn restore(ctx: &TcContext) -> bool {
    let Some(p) = scratch_packet(ctx) else {
        return true;
    };
    if p.proto != IPPROTO_TCP || p.later {
        return true;
    }
    let key = SentKey {
        addr: p.t.saddr,
        port: p.t.sport,
        family: p.family,
        pad: 0,
    };
    // SAFETY: copied out at once.
    let Some(to) = (unsafe { KUBE_PROXY_SENT.get(&key) }).copied() else {
        return true;
    };
    // Both skip what is unchanged.
    rewrite_addr(ctx, p, 1, &to.addr)
        .and_then(|()| rewrite_ports(ctx, p, p.t.sport, to.port))
        .is_ok()
}
