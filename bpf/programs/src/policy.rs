//! The verdict on a packet ([`decide`]): anti-spoofing, fragments and
//! conntrack first; a new flow is judged by the policy trie (one trie for
//! every endpoint, Cilium's `{identity, direction, protocol, port}` keys
//! after the endpoint's number), counted, reported, and tracked.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use axoneme_bpf_common::{
    ct_flags, direction, drop_reason, endpoint_flags, family, match_type, trace_point, verdict,
    CtKey, CtKey4, CtValue, PolicyKey, PolicyValue, IDENTITY_HOST, POLICY_MAX,
};
use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{lpm_trie::Key, LpmTrie},
};

use crate::conntrack::{
    ct_insert, ct_update, fragment, lifetime, related, AUDIT_ENDED, TCP_ACK, TCP_SYN,
};
use crate::endpoint::owns;
use crate::events::{drop_flow, trace_flow, verdict_event};
use crate::ipcache::ids;
use crate::metrics::judged;
use crate::parse::{Flow, Frag, Icmp, IPPROTO_TCP};
use crate::proxy::from_proxy;
use crate::{At, NS_PER_S};

#[map]
static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(POLICY_MAX, 0);

/// What [`decide`] returns for a packet that passes (and may be delivered
/// locally); any other value below [`VIA_STACK`] is the proxy port its
/// flow is redirected to.
pub(crate) const PASS: u32 = 0;
/// What [`decide`] returns for an answer to one of the node's L7 proxy's
/// upstream connections ([`ct_flags::PROXY_UPSTREAM`]): it passes, and
/// must go up the node's stack, where the proxy's transparent socket takes
/// it. Local delivery would put it into the pod whose address the proxy
/// borrowed (the client), which has no such socket and resets the flow.
pub(crate) const VIA_STACK: u32 = 1 << 16;

/// What [`decide`] returns, in host routing ([`crate::arrival`]), for a
/// TCP packet of no tracked flow that is not a flow's first (a SYN without
/// ACK): not judged, and left to the stack (an answer to one of the L7
/// proxy's upstream connections, say, which no conntrack entry knows).
pub(crate) const UNJUDGED: u32 = 1 << 17;

/// The verdict on a packet: [`PASS`], [`VIA_STACK`], [`UNJUDGED`], a proxy
/// port, or `Err` when it was dropped (with its events).
#[inline(always)]
pub(crate) fn decide(at: &At, flow: &mut Flow) -> Result<u32, ()> {
    let ep = &at.ep;
    // A pod may only send from its own addresses (anti-spoofing; not even
    // from another address of its identity). The host's egress is what
    // its sockets send (`host`), from any address of the node.
    if at.dir == direction::EGRESS
        && ep.identity != IDENTITY_HOST
        && !owns(ep, flow.family, &flow.saddr)
    {
        drop_flow(at, flow, drop_reason::DROP_INVALID_SIP);
        return Err(());
    }
    if flow.frag != Frag::None && !fragment(at, flow) {
        return Err(());
    }
    // Conntrack lifetimes are in seconds: the coarse clock (the same
    // CLOCK_MONOTONIC, at tick resolution) is precise enough and skips a
    // clock-source read per packet.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if flow.icmp == Icmp::Error {
        if related(flow, ep.endpoint_id, at.dir, now) {
            return Ok(PASS);
        }
    } else if let Some(tracked) = ct_update(at, flow, now) {
        if tracked == AUDIT_ENDED {
            drop_flow(at, flow, drop_reason::DROP_POLICY);
            return Err(());
        }
        return Ok(tracked);
    }
    if at.arriving
        && flow.protocol == IPPROTO_TCP
        && flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN
    {
        return Ok(UNJUDGED);
    }
    let proxy_port = match new_flow(at, flow) {
        Ok(port) => port,
        Err(reason) => {
            drop_flow(at, flow, reason);
            return Err(());
        }
    };
    // Traced and dropped from here, not inside `new_flow`: its frame is
    // the largest, and a call below it would take the chain past the
    // verifier's 512 bytes (6.1 rounds every frame up to 32).
    let point = if proxy_port != 0 {
        trace_point::TO_PROXY
    } else if at.dir == direction::INGRESS {
        trace_point::TO_ENDPOINT
    } else {
        trace_point::FROM_ENDPOINT
    };
    trace_flow(at, flow, point);
    Ok(u32::from(proxy_port))
}

/// A new flow: the policy decides.
#[inline(never)]
fn new_flow(at: &At, flow: &Flow) -> Result<u16, u8> {
    let ep = &at.ep;
    let ctx = at.ctx;
    let dir = at.dir;
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let len = u64::from(ctx.len());
    let from_proxy = from_proxy(at);
    let (peer, src_id, dst_id) = ids(at, flow);
    let enforced = if dir == direction::INGRESS {
        ep.flags & endpoint_flags::INGRESS_ENFORCED != 0
    } else {
        ep.flags & endpoint_flags::EGRESS_ENFORCED != 0
    };
    let entry = if from_proxy {
        None
    } else {
        policy_lookup(ep.endpoint_id, peer, dir, flow.protocol, flow.policy_port)
    };
    let (outcome, proxy_port, matched, reason) = match entry {
        Some(v) => {
            // SAFETY: `v` points into the trie's value, valid during the
            // run; the counters are only touched atomically.
            unsafe {
                add(core::ptr::addr_of!((*v).packets) as *mut u64, 1);
                add(core::ptr::addr_of!((*v).bytes) as *mut u64, len);
            }
            let v = unsafe { *v };
            if v.is_deny() {
                (
                    verdict::DENIED,
                    0,
                    v.match_type,
                    drop_reason::DROP_POLICY_DENY,
                )
            } else if v.proxy_port != 0 {
                (verdict::REDIRECTED, v.proxy_port, v.match_type, 0)
            } else {
                (verdict::ALLOWED, 0, v.match_type, 0)
            }
        }
        None if enforced && !from_proxy => (
            verdict::DENIED,
            0,
            match_type::NONE,
            drop_reason::DROP_POLICY,
        ),
        None => (verdict::ALLOWED, 0, match_type::NONE, 0),
    };
    // Audit mode reports what the policy would drop and lets it pass,
    // remembering in conntrack that only audit let it in.
    let outcome = if outcome == verdict::DENIED && ep.flags & endpoint_flags::AUDIT != 0 {
        verdict::AUDIT
    } else {
        outcome
    };
    judged(at, outcome, matched);
    verdict_event(at, flow, src_id, dst_id, matched, outcome);
    if outcome == verdict::DENIED {
        return Err(reason);
    }
    // ICMP errors are never the start of a flow.
    if flow.icmp != Icmp::Error {
        let value = CtValue {
            expires_ns: now + lifetime(flow, 0) * NS_PER_S,
            packets: 1,
            bytes: len,
            peer_identity: peer,
            proxy_port,
            flags: if from_proxy {
                ct_flags::PROXY_UPSTREAM
            } else if outcome == verdict::AUDIT {
                at.ct_flags | ct_flags::AUDITED
            } else {
                at.ct_flags
            },
            pad: 0,
        };
        let inserted = if flow.family == family::IPV4 {
            ct_insert::<CtKey4>(flow, ep.endpoint_id, dir, &value)
        } else {
            ct_insert::<CtKey>(flow, ep.endpoint_id, dir, &value)
        };
        if !inserted {
            return Err(drop_reason::DROP_CT_CREATE_FAILED);
        }
    }
    Ok(proxy_port)
}

/// The deciding entry: the longest match among the peer's entries, else
/// among ANY's.
#[inline(always)]
fn policy_lookup(
    endpoint_id: u32,
    peer: u32,
    dir: u8,
    protocol: u8,
    port: u16,
) -> Option<*const PolicyValue> {
    let full = PolicyKey::prefix_len(1, 16);
    let key = Key::new(full, PolicyKey::new(endpoint_id, peer, dir, protocol, port));
    if let Some(v) = POLICY.get(&key) {
        return Some(v as *const PolicyValue);
    }
    let key = Key::new(full, PolicyKey::new(endpoint_id, 0, dir, protocol, port));
    POLICY.get(&key).map(|v| v as *const PolicyValue)
}

/// Atomically adds `n` to a counter in a map value (BPF's `lock xadd`;
/// `core`'s atomics are not available for the BPF target).
///
/// # Safety
/// `p` must point to a live, aligned `u64` in a map value.
#[inline(always)]
unsafe fn add(p: *mut u64, n: u64) {
    // SAFETY: per the contract.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n);
    }
}
