//! The L7 proxy's socket acceleration (see `axoneme_bpf_common::sockmap`
//! and docs/architecture.md, "L7 proxy: socket acceleration").
//!
//! A connection the datapath hands to the node's proxy has two legs on
//! this node: the client pod's socket to the proxy's accepted socket, and
//! the proxy's upstream socket to the server pod's socket when the server
//! is local too. `axoneme_sockops` (on the node's cgroup) puts both ends of
//! such a leg into sock hashes when they become established — the pod's
//! end into `SOCK_PODS`, the proxy's (told by the node's network
//! namespace) into `SOCK_PROXY` — and the `sk_msg` programs attached to
//! those maps hand each message to the other end's receive queue. What a
//! leg is comes from conntrack, which judged its first packet: a flow with
//! a proxy port whose client is local (the first leg), or the proxy's own
//! upstream flow to a local endpoint (the second). Policy is untouched: it
//! is decided on a flow's first packet (conntrack lets later packets pass
//! anyway), and every request still goes through the proxy's L7 rules.
//!
//! Bytes must arrive in order: a receiving socket reads its redirected
//! queue before its TCP queue, so a socket that ever sent a message
//! through TCP (its peer was not in the map yet) keeps doing so
//! (`SOCK_PASSED`).

use axoneme_bpf_common::{
    ct_flags, direction, family, sock_side, sock_stat, EndpointInfo, SockKey, SockSide, SOCK_MAX,
};
use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, BPF_F_INGRESS, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
    },
    helpers::bpf_get_netns_cookie,
    macros::{map, sk_msg, sock_ops},
    maps::{Array, LruHashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockOpsContext},
    EbpfContext,
};

use crate::conntrack::ct_entry;
use crate::deliver::local_endpoint;
use crate::parse::Addr;

#[map]
static SOCK_PODS: SockHash<SockKey> = SockHash::pinned(SOCK_MAX, 0);
#[map]
static SOCK_PROXY: SockHash<SockKey> = SockHash::pinned(SOCK_MAX, 0);
#[map]
static SOCK_NODE: Array<u64> = Array::pinned(1, 0);
#[map]
static SOCK_PASSED: LruHashMap<SockKey, u8> = LruHashMap::pinned(SOCK_MAX, 0);
#[map]
static SOCK_STATS: PerCpuArray<u64> = PerCpuArray::pinned(sock_stat::COUNT, 0);

/// [`key_of`] a context with the socket's fields (`bpf_sock_ops`,
/// `sk_msg_md`), its IPv6 addresses read word by word: the verifier takes
/// only loads at a constant offset from the context itself (a reference to
/// the field is a "modified ctx ptr").
macro_rules! key_of {
    ($c:expr) => {
        key_of(
            $c.family,
            $c.local_ip4,
            $c.remote_ip4,
            [$c.local_ip6[0], $c.local_ip6[1], $c.local_ip6[2], $c.local_ip6[3]],
            [$c.remote_ip6[0], $c.remote_ip6[1], $c.remote_ip6[2], $c.remote_ip6[3]],
            $c.local_port,
            $c.remote_port,
        )
    };
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn axoneme_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    let active = op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB;
    if !active && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return 0;
    }
    let Some(node) = SOCK_NODE.get(0).copied() else {
        return 0;
    };
    if node == 0 {
        return 0;
    }
    // SAFETY: reads of the context's fields, valid for the run.
    let ops = unsafe { &*ctx.ops };
    let Some(key) = key_of!(ops) else {
        return 0;
    };
    // SAFETY: a helper call with the program's context.
    let in_node = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == node;
    // The flow as its first packet went: from the connecting side.
    let first = if active { key } else { key.peer() };
    let (redirected, upstream) = leg(&first);
    let map = match sock_side(in_node, active, redirected, upstream) {
        Some(SockSide::Proxy) => &SOCK_PROXY,
        Some(SockSide::Pod) => &SOCK_PODS,
        None => return 0,
    };
    // Never replaces: a key in use stays with its socket. A socket the map
    // cannot take (full) simply goes through the TCP stack.
    let mut key = key;
    // SAFETY: the program's context, valid for the run.
    let ops = unsafe { &mut *ctx.ops };
    let _ = map.update(&mut key, ops, u64::from(BPF_NOEXIST));
    0
}

/// Whether the flow that started with `first` is (a) redirected to this
/// node's proxy with a client on this node, (b) the proxy's upstream flow
/// to an endpoint of this node: conntrack's entries of the client's
/// egress and of the destination's ingress say.
#[inline(always)]
fn leg(first: &SockKey) -> (bool, bool) {
    let src = Addr(first.local);
    let dst = Addr(first.remote);
    let mut ep = EndpointInfo::default();
    let mut redirected = false;
    let mut upstream = false;
    let client_local = local_endpoint(first.family, &src, &mut ep);
    if client_local {
        let (port, _) = ct_entry(first, &src, &dst, ep.endpoint_id, direction::EGRESS);
        redirected = port != 0;
    }
    if local_endpoint(first.family, &dst, &mut ep) {
        let (port, flags) = ct_entry(first, &src, &dst, ep.endpoint_id, direction::INGRESS);
        redirected |= client_local && port != 0;
        upstream = flags & ct_flags::PROXY_UPSTREAM != 0;
    }
    (redirected, upstream)
}

/// The key of a socket from its context's fields: ports as the kernel
/// gives them (the local one in host order, the remote one in network
/// order in the upper half), IPv4-mapped IPv6 addresses as IPv4.
#[inline(always)]
fn key_of(
    fam: u32,
    local4: u32,
    remote4: u32,
    local6: [u32; 4],
    remote6: [u32; 4],
    local_port: u32,
    remote_port: u32,
) -> Option<SockKey> {
    let mut key = SockKey {
        local_port: (local_port as u16).to_be(),
        remote_port: (remote_port >> 16) as u16,
        ..SockKey::default()
    };
    if fam == AF_INET {
        key.family = family::IPV4;
        key.local[..4].copy_from_slice(&local4.to_ne_bytes());
        key.remote[..4].copy_from_slice(&remote4.to_ne_bytes());
    } else if fam == AF_INET6 {
        if mapped(&local6) && mapped(&remote6) {
            key.family = family::IPV4;
            key.local[..4].copy_from_slice(&local6[3].to_ne_bytes());
            key.remote[..4].copy_from_slice(&remote6[3].to_ne_bytes());
        } else {
            key.family = family::IPV6;
            for i in 0..4 {
                key.local[i * 4..i * 4 + 4].copy_from_slice(&local6[i].to_ne_bytes());
                key.remote[i * 4..i * 4 + 4].copy_from_slice(&remote6[i].to_ne_bytes());
            }
        }
    } else {
        return None;
    }
    Some(key)
}

/// `::ffff:a.b.c.d` (the words as they lie in memory).
#[inline(always)]
fn mapped(a: &[u32; 4]) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// A message of a pod's socket: to the proxy's socket, if it is there.
#[sk_msg]
pub fn axoneme_msg_pod(ctx: SkMsgContext) -> u32 {
    relay(&ctx, &SOCK_PROXY)
}

/// A message of the proxy's socket: to the pod's socket, if it is there.
#[sk_msg]
pub fn axoneme_msg_proxy(ctx: SkMsgContext) -> u32 {
    relay(&ctx, &SOCK_PODS)
}

#[inline(always)]
fn relay(ctx: &SkMsgContext, peers: &SockHash<SockKey>) -> u32 {
    // SAFETY: reads of the context's fields, valid for the run.
    let md = unsafe { &*ctx.msg };
    let Some(key) = key_of!(md) else {
        return SK_PASS;
    };
    if SOCK_PASSED.get_ptr(&key).is_none() {
        let mut peer = key.peer();
        if peers.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
            count(sock_stat::REDIRECTED);
            return SK_PASS;
        }
        let _ = SOCK_PASSED.insert(&key, &1, 0);
    }
    count(sock_stat::PASSED);
    SK_PASS
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = SOCK_STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot.
        unsafe { *c += 1 };
    }
}
