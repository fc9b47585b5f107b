//! Conntrack: `CT4` (IPv4) and `CT` (IPv6) LRU hashes keyed by a flow in
//! its original orientation per endpoint and direction; a packet is
//! looked up as is and reversed. Policy is evaluated on new flows only
//! ([`crate::policy`]); ICMP errors quoting a tracked flow pass as
//! related. Also the fragment table (`FRAGS`), which gives later
//! fragments their flow's ports.

use axoneme_bpf_common::{
    ct_flags, drop_reason, endpoint_flags, family, CtKey, CtKey4, CtValue, FragKey, FragValue,
    CT_CLOSE_TIMEOUT_S, CT_LIFETIME_NONTCP_S, CT_LIFETIME_TCP_S, CT_MAX, CT_SYN_TIMEOUT_S,
    FRAGS_MAX,
};
use aya_ebpf::{macros::map, maps::LruHashMap};

use crate::events::drop_flow;
use crate::parse::{Addr, Flow, Frag, IPPROTO_TCP, QUOTED};
use crate::policy::{PASS, VIA_STACK};
use crate::proxy::from_proxy;
use crate::{At, NS_PER_S};

#[map]
static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CT_MAX, 0);
#[map]
static CT4: LruHashMap<CtKey4, CtValue> = LruHashMap::pinned(CT_MAX, 0);
/// Shared with the per-packet LB ([`crate::nodeport`]), which records and
/// reads the datagrams it translates under their addresses as they arrive.
#[map]
pub(crate) static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGS_MAX, 0);

const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

/// How long an entry lives after this packet, in seconds.
#[inline(always)]
pub(crate) fn lifetime(flow: &Flow, flags: u8) -> u64 {
    if flow.protocol != IPPROTO_TCP {
        CT_LIFETIME_NONTCP_S
    } else if flags & ct_flags::CLOSING != 0 {
        CT_CLOSE_TIMEOUT_S
    } else if flags & ct_flags::SEEN_REPLY != 0 {
        CT_LIFETIME_TCP_S
    } else {
        CT_SYN_TIMEOUT_S
    }
}

/// A conntrack key type and the map holding it: [`CtKey4`] in `CT4` for
/// IPv4, [`CtKey`] in `CT` for IPv6.
pub(crate) trait Tuple: Copy + 'static {
    fn map() -> &'static LruHashMap<Self, CtValue>;
    /// The key of a flow (addresses as in [`Flow`]).
    fn of(
        saddr: &Addr,
        daddr: &Addr,
        sport: u16,
        dport: u16,
        endpoint_id: u32,
        protocol: u8,
        direction: u8,
    ) -> Self;
    /// The same flow the other way: addresses, ports and direction swapped.
    fn reversed(&self) -> Self;
}

impl Tuple for CtKey {
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, CtValue> {
        &CT
    }

    #[inline(always)]
    fn of(
        saddr: &Addr,
        daddr: &Addr,
        sport: u16,
        dport: u16,
        endpoint_id: u32,
        protocol: u8,
        direction: u8,
    ) -> Self {
        CtKey {
            saddr: saddr.0,
            daddr: daddr.0,
            sport,
            dport,
            endpoint_id,
            protocol,
            direction,
            family: family::IPV6,
            pad: 0,
        }
    }

    #[inline(always)]
    fn reversed(&self) -> Self {
        CtKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            direction: self.direction ^ 1,
            ..*self
        }
    }
}

impl Tuple for CtKey4 {
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, CtValue> {
        &CT4
    }

    #[inline(always)]
    fn of(
        saddr: &Addr,
        daddr: &Addr,
        sport: u16,
        dport: u16,
        endpoint_id: u32,
        protocol: u8,
        direction: u8,
    ) -> Self {
        CtKey4 {
            saddr: saddr.v4(),
            daddr: daddr.v4(),
            sport,
            dport,
            endpoint_id,
            protocol,
            direction,
            pad: [0; 2],
        }
    }

    #[inline(always)]
    fn reversed(&self) -> Self {
        CtKey4 {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            direction: self.direction ^ 1,
            ..*self
        }
    }
}

/// The packet's own conntrack key (its orientation, `dir`).
#[inline(always)]
fn ct_key<K: Tuple>(flow: &Flow, endpoint_id: u32, dir: u8) -> K {
    K::of(
        &flow.saddr,
        &flow.daddr,
        flow.sport,
        flow.dport,
        endpoint_id,
        flow.protocol,
        dir,
    )
}

/// Records a new flow; false if the map refused.
#[inline(always)]
pub(crate) fn ct_insert<K: Tuple>(flow: &Flow, endpoint_id: u32, dir: u8, value: &CtValue) -> bool {
    K::map()
        .insert(&ct_key::<K>(flow, endpoint_id, dir), value, 0)
        .is_ok()
}

/// Finds the packet's flow (as original or reply) and refreshes it;
/// `None` for a packet of no tracked flow, else its verdict as
/// [`crate::policy::decide`] gives it: the proxy port for packets of a
/// redirected flow in its original direction (unless they come from the
/// proxy), [`VIA_STACK`] for answers to the proxy's upstream connections
/// (and to a redirected flow's: the proxy's too) and to flows that came up
/// the stack or from another node, [`AUDIT_ENDED`] for a flow to drop now,
/// [`PASS`] for the rest.
#[inline(always)]
pub(crate) fn ct_update(at: &At, flow: &Flow, now: u64) -> Option<u32> {
    if flow.family == family::IPV4 {
        ct_update_in::<CtKey4>(at, flow, now)
    } else {
        match ct_update6(at, flow, now) {
            NOT_TRACKED => None,
            tracked => Some(tracked),
        }
    }
}

/// What [`ct_update6`] returns for a packet of no tracked flow.
const NOT_TRACKED: u32 = u32::MAX;
/// What [`ct_update`] returns for a packet of a flow only audit mode let
/// in ([`ct_flags::AUDITED`]) after its endpoint left audit mode: the
/// packet is dropped as the policy says. The entry is left to expire, not
/// refreshed, so both directions stay cut until then (a reply re-judged as
/// a new flow of its own could otherwise reopen the flow).
pub(crate) const AUDIT_ENDED: u32 = u32::MAX - 1;

/// [`ct_update_in`] for IPv6, out of line. Returns a plain integer (the
/// verdict, or [`NOT_TRACKED`]): an `Option` would be returned through
/// memory, one argument more than BPF calls take.
#[inline(never)]
fn ct_update6(at: &At, flow: &Flow, now: u64) -> u32 {
    ct_update_in::<CtKey>(at, flow, now).unwrap_or(NOT_TRACKED)
}

#[inline(always)]
fn ct_update_in<K: Tuple>(at: &At, flow: &Flow, now: u64) -> Option<u32> {
    let (endpoint_id, dir, len) = (at.ep.endpoint_id, at.dir, at.ctx.len());
    let forward = ct_key::<K>(flow, endpoint_id, dir);
    let reverse = forward.reversed();
    // An expired entry counts as none, so it cannot hide a live one of the
    // other orientation (at most one of the two is live: an entry is only
    // created when neither is). A packet from the lower port to the higher
    // is most likely a reply (server port to ephemeral port), so that
    // orientation is tried first: one lookup instead of two for most
    // packets, replies included.
    let live = |key: &K| {
        K::map()
            .get_ptr_mut(key)
            // SAFETY: a pointer into the map's value, valid for this run.
            .filter(|e| unsafe { (**e).expires_ns } > now)
    };
    let likely_reply = u16::from_be(flow.sport) < u16::from_be(flow.dport);
    let (first, second) = if likely_reply {
        (&reverse, &forward)
    } else {
        (&forward, &reverse)
    };
    let (entry, reply) = match live(first) {
        Some(e) => (e, likely_reply),
        None => match live(second) {
            Some(e) => (e, !likely_reply),
            None => return None,
        },
    };
    // SAFETY: `entry` points into the LRU map's value for this run; fields
    // are plain integers, racing writers at worst lose an update.
    unsafe {
        let mut flags = (*entry).flags;
        // A new connection on the tuple of a closing flow (a SYN without
        // ACK in its original direction) is a new flow: the policy judges
        // it again and its entry replaces the old one, as Linux's and
        // Cilium's conntrack reopen it. Else it would pass as the old flow
        // for up to the close timeout, past a policy changed meanwhile.
        if !reply
            && flags & ct_flags::CLOSING != 0
            && flow.protocol == IPPROTO_TCP
            && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        {
            return None;
        }
        if flags & ct_flags::AUDITED != 0 && at.ep.flags & endpoint_flags::AUDIT == 0 {
            return Some(AUDIT_ENDED);
        }
        if reply {
            flags |= ct_flags::SEEN_REPLY;
        }
        if flow.protocol == IPPROTO_TCP && flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            flags |= ct_flags::CLOSING;
        }
        // A closing flow's deadline never moves later.
        if (*entry).flags & ct_flags::CLOSING == 0 {
            (*entry).expires_ns = now + lifetime(flow, flags) * NS_PER_S;
        } else if flags & ct_flags::CLOSING != 0 {
            let close = now + CT_CLOSE_TIMEOUT_S * NS_PER_S;
            if close < (*entry).expires_ns {
                (*entry).expires_ns = close;
            }
        }
        // Whether the flow is the proxy's own follows its original
        // direction's packets (a tuple the proxy reuses after a pod's flow,
        // or the other way round, is judged by its latest user).
        let from_proxy = from_proxy(at);
        if !reply {
            flags &= !ct_flags::PROXY_UPSTREAM;
            if from_proxy {
                flags |= ct_flags::PROXY_UPSTREAM;
            }
        }
        (*entry).flags = flags;
        // Plain adds, not `lock xadd` (a third of a fast path's cost): a
        // flow's packets in one direction are handled one at a time, and a
        // rare race with the other direction's CPU loses one count of a
        // statistic, never a verdict.
        (*entry).packets += 1;
        (*entry).bytes += u64::from(len);
        Some(if reply {
            // A redirected flow's answers are the proxy's (its upstream
            // connection borrowed the client's address), never the pod's.
            if flags & (ct_flags::PROXY_UPSTREAM | ct_flags::VIA_STACK) != 0
                || (*entry).proxy_port != 0
            {
                VIA_STACK
            } else {
                PASS
            }
        } else if from_proxy {
            PASS
        } else {
            u32::from((*entry).proxy_port)
        })
    }
}

/// Whether an ICMP error quotes a packet of a live flow of this endpoint.
#[inline(never)]
pub(crate) fn related(flow: &Flow, endpoint_id: u32, dir: u8, now: u64) -> bool {
    if flow.family == family::IPV4 {
        related_in::<CtKey4>(endpoint_id, dir, now)
    } else {
        related_in::<CtKey>(endpoint_id, dir, now)
    }
}

#[inline(always)]
fn related_in<K: Tuple>(endpoint_id: u32, dir: u8, now: u64) -> bool {
    let Some(inner) = QUOTED.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, written by this run's parser (TC programs
    // do not nest on one CPU).
    let inner = unsafe { &*inner };
    // The quoted packet went the other way: as sent by us (original
    // direction, opposite to the error's), or as a reply we sent.
    let as_sent = K::of(
        &inner.saddr,
        &inner.daddr,
        inner.sport,
        inner.dport,
        endpoint_id,
        inner.protocol,
        dir ^ 1,
    );
    for key in [as_sent, as_sent.reversed()] {
        // SAFETY: copied out at once.
        if let Some(e) = unsafe { K::map().get(&key) } {
            if e.expires_ns > now {
                return true;
            }
        }
    }
    false
}

/// Fragments: the first one records its ports; later ones borrow them (no
/// record: drop, never a bypass). False if the packet was dropped.
#[inline(never)]
pub(crate) fn fragment(at: &At, flow: &mut Flow) -> bool {
    match flow.frag {
        Frag::None => {}
        Frag::First(id) => {
            let key = frag_key(flow, id);
            let ports = FragValue {
                sport: flow.sport,
                dport: flow.dport,
            };
            let _ = FRAGS.insert(&key, &ports, 0);
        }
        Frag::Later(id) => {
            let key = frag_key(flow, id);
            // SAFETY: copied out at once.
            match unsafe { FRAGS.get(&key) } {
                Some(ports) => {
                    flow.sport = ports.sport;
                    flow.dport = ports.dport;
                    flow.policy_port = u16::from_be(ports.dport);
                }
                None => {
                    drop_flow(at, flow, drop_reason::DROP_FRAG_NOT_FOUND);
                    return false;
                }
            }
        }
    }
    true
}

#[inline(always)]
fn frag_key(flow: &Flow, id: u32) -> FragKey {
    FragKey {
        saddr: flow.saddr.0,
        daddr: flow.daddr.0,
        id,
        protocol: flow.protocol,
        family: flow.family,
        pad: [0; 2],
    }
}

/// The proxy port and flags of the TCP flow that started with `first`
/// (a socket's key from the connecting side), as `endpoint_id`'s entry in
/// direction `dir` holds them, zeros without one: for the sockops program,
/// which learns from it whether a connection is one the proxy serves. (Not
/// an `Option`: LLVM then reads the absent value's register anyway, which
/// the verifier refuses.)
#[inline(always)]
pub(crate) fn ct_entry(
    first: &axoneme_bpf_common::SockKey,
    src: &Addr,
    dst: &Addr,
    endpoint_id: u32,
    dir: u8,
) -> (u16, u8) {
    let (sport, dport) = (first.local_port, first.remote_port);
    let entry = if first.family == family::IPV4 {
        let key = CtKey4::of(src, dst, sport, dport, endpoint_id, IPPROTO_TCP, dir);
        CT4.get_ptr(&key)
    } else {
        let key = CtKey::of(src, dst, sport, dport, endpoint_id, IPPROTO_TCP, dir);
        CT.get_ptr(&key)
    };
    match entry {
        // SAFETY: a pointer into the map's value, valid for this run.
        Some(e) => unsafe { ((*e).proxy_port, (*e).flags) },
        None => (0, 0),
    }
}
