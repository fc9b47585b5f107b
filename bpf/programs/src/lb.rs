//! Socket-level service load balancing (Cilium's `bpf_sock.c`): cgroup
//! `sock_addr` programs on the node's cgroup translate a service address to
//! a backend's when a pod's socket connects or sends, before any packet
//! exists. The packets then carry the backend's address from the start, so
//! the TC programs judge them by the backend's identity exactly as if the
//! pod had addressed the backend: a service address never bypasses policy.
//!
//! - `connect4/6`, `sendmsg4/6`: a destination that is a frontend in
//!   `LB_SERVICES` becomes one of its backends (chosen at random among the
//!   master's `count` slots, or the client's previous one under `ClientIP`
//!   affinity). A frontend with no usable backend refuses the connect
//!   (`EPERM`), as Kubernetes rejects connections to a service without
//!   endpoints. The socket and the backend are remembered in
//!   `LB_SOCK_REVNAT`.
//! - `recvmsg4/6`, `getpeername4/6`: a peer address the socket was sent to
//!   by translation shows as the service's again (UDP replies come "from"
//!   the service; `getpeername` names it), as long as the frontend still
//!   exists (`LB_REVNAT`).
//!
//! Only IPv4 sockets for IPv4 services and IPv6 sockets for IPv6 ones
//! (an IPv6 socket's IPv4-mapped destination is left alone).

use axoneme_bpf_common::{
    family,
    lb::{
        AffinityKey, AffinityMatchKey, AffinityValue, LbBackend, LbKey, LbRevNat, LbService,
        SockRevKey, SockRevValue, LB_AFFINITY_MAX, LB_BACKENDS_MAX, LB_REVNAT_MAX,
        LB_SERVICES_MAX, LB_SOCK_REVNAT_MAX,
    },
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
    EbpfContext,
};

use crate::NS_PER_S;

#[map]
pub(crate) static LB_SERVICES: HashMap<LbKey, LbService> = HashMap::pinned(LB_SERVICES_MAX, 0);
#[map]
pub(crate) static LB_BACKENDS: HashMap<u32, LbBackend> = HashMap::pinned(LB_BACKENDS_MAX, 0);
#[map]
static LB_REVNAT: HashMap<u32, LbRevNat> = HashMap::pinned(LB_REVNAT_MAX, 0);
#[map]
static LB_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(LB_SOCK_REVNAT_MAX, 0);
#[map]
static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(LB_AFFINITY_MAX, 0);
#[map]
pub(crate) static LB_AFFINITY_MATCH: HashMap<AffinityMatchKey, u32> =
    HashMap::pinned(LB_BACKENDS_MAX, 0);

/// What a `sock_addr` program returns to let the call go on.
const ALLOW: i32 = 1;
/// ... and to fail it with `EPERM` (`connect`/`sendmsg` only).
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn axoneme_sock4_connect(ctx: SockAddrContext) -> i32 {
    forward(&ctx, family::IPV4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn axoneme_sock4_sendmsg(ctx: SockAddrContext) -> i32 {
    forward(&ctx, family::IPV4)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn axoneme_sock4_recvmsg(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, family::IPV4)
}

#[cgroup_sock_addr(getpeername4)]
pub fn axoneme_sock4_getpeername(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, family::IPV4)
}

#[cgroup_sock_addr(connect6)]
pub fn axoneme_sock6_connect(ctx: SockAddrContext) -> i32 {
    forward(&ctx, family::IPV6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn axoneme_sock6_sendmsg(ctx: SockAddrContext) -> i32 {
    forward(&ctx, family::IPV6)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn axoneme_sock6_recvmsg(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, family::IPV6)
}

#[cgroup_sock_addr(getpeername6)]
pub fn axoneme_sock6_getpeername(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, family::IPV6)
}

/// The socket's destination (`connect`/`sendmsg`) or peer
/// (`recvmsg`/`getpeername`), as the maps key it.
struct Dest {
    addr: [u8; 16],
    port: u16,
}

/// Reads the context's user address. Every access is a 4-byte one (the
/// verifier allows nothing wider on `user_ip6`, and only 4-byte writes),
/// hence the volatile accesses LLVM may not merge.
#[inline(always)]
fn read_dest(sa: *mut bpf_sock_addr, fam: u8) -> Dest {
    let mut addr = [0u8; 16];
    // SAFETY: `sa` is the program's context, valid for the run.
    unsafe {
        if fam == family::IPV4 {
            let ip = core::ptr::read_volatile(&(*sa).user_ip4);
            addr[..4].copy_from_slice(&ip.to_ne_bytes());
        } else {
            for i in 0..4 {
                let w = core::ptr::read_volatile(&(*sa).user_ip6[i]);
                addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
        }
        let port = core::ptr::read_volatile(&(*sa).user_port) as u16;
        Dest { addr, port }
    }
}

/// Rewrites the context's user address (see [`read_dest`]).
#[inline(always)]
fn write_dest(sa: *mut bpf_sock_addr, fam: u8, addr: &[u8; 16], port: u16) {
    // SAFETY: as in `read_dest`; the fields are writable for these hooks.
    unsafe {
        if fam == family::IPV4 {
            let ip = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
            core::ptr::write_volatile(&mut (*sa).user_ip4, ip);
        } else {
            for i in 0..4 {
                let w = u32::from_ne_bytes([
                    addr[i * 4],
                    addr[i * 4 + 1],
                    addr[i * 4 + 2],
                    addr[i * 4 + 3],
                ]);
                core::ptr::write_volatile(&mut (*sa).user_ip6[i], w);
            }
        }
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(port));
    }
}

#[inline(always)]
fn forward(ctx: &SockAddrContext, fam: u8) -> i32 {
    let sa = ctx.sock_addr;
    let dest = read_dest(sa, fam);
    // SAFETY: the context is valid for the run.
    let proto = unsafe { core::ptr::read_volatile(&(*sa).protocol) } as u8;
    let mut key = LbKey {
        addr: dest.addr,
        port: dest.port,
        proto,
        family: fam,
        slot: 0,
        pad: [0; 2],
    };
    // SAFETY: the value is copied out before any other map call.
    let svc = match unsafe { LB_SERVICES.get(&key) } {
        Some(s) => *s,
        None => return ALLOW,
    };
    let Some(backend_id) = select(ctx, &mut key, &svc) else {
        return REFUSE;
    };
    // SAFETY: as above.
    let backend = match unsafe { LB_BACKENDS.get(&backend_id) } {
        Some(b) => *b,
        None => return REFUSE,
    };
    // SAFETY: a helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = SockRevKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        family: fam,
        pad: [0; 5],
    };
    let rev = SockRevValue {
        addr: dest.addr,
        port: dest.port,
        rev_nat: svc.rev_nat,
        pad: [0; 4],
    };
    // Best effort: without it a UDP reply shows the backend's address.
    let _ = LB_SOCK_REVNAT.insert(&rev_key, &rev, 0);
    write_dest(sa, fam, &backend.addr, backend.port);
    ALLOW
}

/// The backend a new connection of this client gets: its affine one while
/// that is fresh and still a backend of the frontend, else a random slot's.
#[inline(always)]
fn select(ctx: &SockAddrContext, key: &mut LbKey, svc: &LbService) -> Option<u32> {
    if svc.count == 0 {
        return None;
    }
    if svc.affinity_timeout == 0 {
        return pick(key, svc.count);
    }
    // SAFETY: helpers without memory arguments, or on the program's context.
    let (now, netns_cookie) = unsafe {
        (
            (bpf_ktime_get_ns() / NS_PER_S) as u32,
            bpf_get_netns_cookie(ctx.as_ptr()),
        )
    };
    let akey = AffinityKey {
        netns_cookie,
        rev_nat: u32::from(svc.rev_nat),
        pad: [0; 4],
    };
    // SAFETY: copied out before other map calls.
    if let Some(prev) = unsafe { LB_AFFINITY.get(&akey) }.copied() {
        let live = AffinityMatchKey {
            backend_id: prev.backend_id,
            rev_nat: u32::from(svc.rev_nat),
        };
        if now.wrapping_sub(prev.last_used_s) <= svc.affinity_timeout
            && LB_AFFINITY_MATCH.get_ptr(&live).is_some()
        {
            let fresh = AffinityValue {
                backend_id: prev.backend_id,
                last_used_s: now,
            };
            let _ = LB_AFFINITY.insert(&akey, &fresh, 0);
            return Some(prev.backend_id);
        }
    }
    let id = pick(key, svc.count)?;
    let fresh = AffinityValue {
        backend_id: id,
        last_used_s: now,
    };
    let _ = LB_AFFINITY.insert(&akey, &fresh, 0);
    Some(id)
}

/// A random one of slots `1..=count`.
#[inline(always)]
pub(crate) fn pick(key: &mut LbKey, count: u16) -> Option<u32> {
    // SAFETY: a helper without arguments.
    let r = unsafe { bpf_get_prandom_u32() };
    key.slot = (r % u32::from(count)) as u16 + 1;
    // SAFETY: copied out at once.
    unsafe { LB_SERVICES.get(&*key) }.map(|s| s.backend_id)
}

#[inline(always)]
fn reverse(ctx: &SockAddrContext, fam: u8) -> i32 {
    let sa = ctx.sock_addr;
    let peer = read_dest(sa, fam);
    // SAFETY: a helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey {
        cookie,
        addr: peer.addr,
        port: peer.port,
        family: fam,
        pad: [0; 5],
    };
    // SAFETY: copied out before other map calls.
    let Some(rev) = (unsafe { LB_SOCK_REVNAT.get(&key) }).copied() else {
        return ALLOW;
    };
    // The frontend may have gone since: then the peer is shown as it is.
    // SAFETY: as above.
    match unsafe { LB_REVNAT.get(&u32::from(rev.rev_nat)) } {
        Some(f) if f.addr == rev.addr && f.port == rev.port => {
            write_dest(sa, fam, &rev.addr, rev.port);
        }
        _ => {
            let _ = LB_SOCK_REVNAT.remove(&key);
        }
    }
    ALLOW
}
