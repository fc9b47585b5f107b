//! Identity-based L3/L4 enforcement on a pod's host-side veth.
//!
//! `axoneme_from_container` runs at TC ingress of the host-side veth (packets
//! the pod sends: the endpoint's egress), `axoneme_to_container` at TC egress
//! (packets delivered to the pod: its ingress). Both:
//!
//! 1. find the endpoint by the veth's ifindex (unknown: drop 152, fail closed);
//! 2. parse IPv4/IPv6 (extension headers, fragments), TCP/UDP/SCTP ports and
//!    ICMP echo ids / types; anything malformed is dropped with a reason;
//! 3. look the peer address up in the ipcache (unknown: world, identity 2);
//! 4. conntrack: a packet of a live flow (either orientation) passes without
//!    a policy lookup; ICMP errors about a tracked flow pass as related;
//! 5. a new flow is looked up in the policy trie: first with the peer's
//!    identity, then with ANY (0). The agent closes the entry set under
//!    intersection, so the longest match of the peer's entries, if any, is
//!    the answer, else ANY's (see `policy/src/compile.rs`). Deny: drop 181;
//!    nothing and enforced: drop 133; allowed flows get a CT entry;
//! 6. emits policy-verdict and drop events to a ring buffer, rate-limited
//!    per CPU by a token bucket;
//! 7. leaving a pod for another pod of the node (local delivery): judges
//!    it as the destination's ingress too, and puts it straight into the
//!    destination pod (see [`deliver`]); except answers to the L7 proxy's
//!    upstream connections, which go up the node's stack to the proxy
//!    (see [`VIA_STACK`]).

use core::intrinsics::{atomic_xadd, AtomicOrdering};
use core::ptr::{addr_of, read_volatile};
use core::sync::atomic::{compiler_fence, Ordering};

use axoneme_bpf_common::{
    counter, ct_flags, direction, drop_reason, endpoint_flags, event_kind, family, match_type,
    tc_action::{TC_ACT_OK, TC_ACT_SHOT},
    verdict, CtKey, CtKey4, CtValue, EndpointInfo, EndpointSlot, Event, EventConfig, FragKey,
    FragValue, IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, RateState, CT_CLOSE_TIMEOUT_S,
    CT_LIFETIME_NONTCP_S, CT_LIFETIME_TCP_S, CT_MAX, CT_SYN_TIMEOUT_S, ENDPOINTS_MAX,
    ENDPOINT_ADDRS_MAX, ENDPOINT_SLOTS, EVENTS_BYTES, FRAGS_MAX, IDENTITY_WORLD, IPCACHE_MAX,
    LOOPBACK_IFINDEX, MARK_MASK, MARK_PROXY, MARK_TO_PROXY, POLICY_MAX,
};
use aya_ebpf::{
    bindings::BPF_F_INGRESS,
    cty::c_void,
    helpers::{
        bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_peer,
        bpf_skb_load_bytes,
    },
    macros::{classifier, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};

#[map]
static IPCACHE: LpmTrie<IpcacheKey, IpcacheValue> = LpmTrie::pinned(IPCACHE_MAX, 0);
#[map]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(ENDPOINTS_MAX, 0);
/// A copy of `ENDPOINTS` read without hashing (see [`EndpointSlot`]).
#[map]
static ENDPOINT_CACHE: Array<EndpointSlot> = Array::pinned(ENDPOINT_SLOTS, 0);
/// A local endpoint's addresses (the ipcache key's data, prefix left out)
/// → the ifindex of its host-side veth: where a packet for it is delivered.
/// Only a hint: the endpoint found must own the address.
#[map]
static ENDPOINT_ADDRS: HashMap<IpcacheKey, u32> = HashMap::pinned(ENDPOINT_ADDRS_MAX, 0);
#[map]
static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(POLICY_MAX, 0);
#[map]
static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CT_MAX, 0);
#[map]
static CT4: LruHashMap<CtKey4, CtValue> = LruHashMap::pinned(CT_MAX, 0);
#[map]
static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGS_MAX, 0);
#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
#[map]
static EVENT_CONFIG: Array<EventConfig> = Array::pinned(1, 0);
#[map]
static EVENT_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);
/// The flow an ICMP error quotes, from the parser to `related`: per CPU,
/// because the stack (512 bytes for the whole call chain) has no room for
/// it beside the packet's own flow.
#[map]
static QUOTED: PerCpuArray<InnerFlow> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const NS_PER_S: u64 = 1_000_000_000;
/// IPv6 extension headers followed before giving up (drop 156).
const MAX_EXT_HEADERS: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Icmp {
    /// Not ICMP, or an ICMP type with nothing to track.
    None,
    /// An echo request (`sport` = id) or reply (`dport` = id).
    Echo,
    /// An error quoting a packet of another flow: the quoted flow.
    Error,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frag {
    None,
    First(u32),
    Later(u32),
}

/// An address as in the maps (IPv4 in the first 4 bytes, the rest zero),
/// aligned so that copying it is two word moves, not sixteen byte moves
/// (the BPF backend copies by the alignment it can prove).
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
struct Addr([u8; 16]);

impl Addr {
    #[inline(always)]
    fn v4(&self) -> [u8; 4] {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.0[..4]);
        a
    }
}

/// What the program knows about a packet.
struct Flow {
    family: u8,
    protocol: u8,
    saddr: Addr,
    daddr: Addr,
    /// Conntrack ports, network order.
    sport: u16,
    dport: u16,
    /// Port (or ICMP type) for the policy lookup, host order.
    policy_port: u16,
    tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    ttl: u8,
    icmp: Icmp,
    frag: Frag,
}

impl Flow {
    /// Nothing known yet.
    const EMPTY: Flow = Flow {
        family: 0,
        protocol: 0,
        saddr: Addr([0; 16]),
        daddr: Addr([0; 16]),
        sport: 0,
        dport: 0,
        policy_port: 0,
        tcp_flags: 0,
        ttl: 0,
        icmp: Icmp::None,
        frag: Frag::None,
    };
}

/// For `Icmp::Error`: the quoted packet's flow, as sent.
#[derive(Clone, Copy, Default)]
struct InnerFlow {
    protocol: u8,
    saddr: Addr,
    daddr: Addr,
    sport: u16,
    dport: u16,
}

/// Why a packet is dropped before a policy decision.
struct Drop(u8);

#[classifier]
pub fn axoneme_from_container(ctx: TcContext) -> i32 {
    handle(&ctx, direction::EGRESS)
}

#[classifier]
pub fn axoneme_to_container(ctx: TcContext) -> i32 {
    handle(&ctx, direction::INGRESS)
}

/// What a program run is about: the packet's context, the interface, the
/// direction and (once known) the endpoint. Passed by reference so the
/// out-of-line paths below stay within BPF's five call arguments.
struct At<'a> {
    ctx: &'a TcContext,
    ifindex: u32,
    dir: u8,
    ep: EndpointInfo,
}

// The hot path (a packet of a tracked IPv4 TCP/UDP flow) is inlined into
// each program; everything else (new flows, drops and their events, IPv6,
// ICMP, fragments) is in `#[inline(never)]` functions the programs call
// (BPF subprograms), so the instructions a tracked packet runs through are
// few and together (`axoneme_to_container`: about 460 instructions instead
// of 2,250; `axoneme_from_container` about 830, with local delivery
// inlined: as a subprogram its frame would take the call chain past the
// 512-byte stack). In place the programs take about twice their time
// under `BPF_PROG_TEST_RUN`, where everything is in cache.
// (Not `#[cold]`: LLVM then puts the functions in `.text.unlikely.`, and
// aya 0.14 relocates calls into that section to the wrong place.)
#[inline(always)]
fn handle(ctx: &TcContext, dir: u8) -> i32 {
    // SAFETY: `skb` points to the program's context, valid for the run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut at = At {
        ctx,
        ifindex,
        dir,
        ep: EndpointInfo::default(),
    };
    if !endpoint(ifindex, &mut at.ep) {
        drop_event(&at, None, drop_reason::DROP_NO_ENDPOINT, 0, 0);
        return TC_ACT_SHOT;
    }
    // On the stack: written on every packet, and the stack's lines are the
    // likeliest to be in cache still (a per-CPU map value's are not).
    let mut flow = Flow::EMPTY;
    let flow = &mut flow;
    match parse(ctx, flow) {
        Ok(true) => {}
        Ok(false) => return TC_ACT_OK,
        Err(Drop(reason)) => {
            drop_event(&at, None, reason, 0, 0);
            return TC_ACT_SHOT;
        }
    }
    match decide(&at, flow) {
        Ok(PASS) if dir == direction::EGRESS => deliver(&mut at, flow),
        Ok(PASS) | Ok(VIA_STACK) => TC_ACT_OK,
        // Ingress rules at the destination's veth, egress rules at the
        // source's: either way the node's proxy.
        Ok(_) => to_proxy(ctx),
        Err(()) => TC_ACT_SHOT,
    }
}

/// What [`decide`] returns for a packet that passes (and may be delivered
/// locally); any other value below [`VIA_STACK`] is the proxy port its
/// flow is redirected to.
const PASS: u32 = 0;
/// What [`decide`] returns for an answer to one of the node's L7 proxy's
/// upstream connections ([`ct_flags::PROXY_UPSTREAM`]): it passes, and
/// must go up the node's stack, where the proxy's transparent socket takes
/// it. Local delivery would put it into the pod whose address the proxy
/// borrowed (the client), which has no such socket and resets the flow.
const VIA_STACK: u32 = 1 << 16;

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
fn deliver(at: &mut At, flow: &mut Flow) -> i32 {
    let ctx = at.ctx;
    let key = addr_key(flow.family, &flow.daddr);
    // SAFETY: copied out at once.
    let Some(ifindex) = (unsafe { ENDPOINT_ADDRS.get(&key) }).copied() else {
        return TC_ACT_OK;
    };
    if flow.ttl <= 1 {
        return TC_ACT_OK;
    }
    at.ifindex = ifindex;
    at.dir = direction::INGRESS;
    if !endpoint(ifindex, &mut at.ep) || !owns(&at.ep, flow.family, &flow.daddr) {
        return TC_ACT_OK;
    }
    match decide(at, flow) {
        Ok(PASS) => {}
        Ok(VIA_STACK) => return TC_ACT_OK,
        Ok(_) => return to_proxy(ctx),
        Err(()) => return TC_ACT_SHOT,
    }
    // The hop the node's routing would have counted. Should the packet not
    // be writable, the stack takes it (conntrack then counts it twice).
    if hop(ctx, flow).is_err() {
        return TC_ACT_OK;
    }
    // SAFETY: a helper call with plain arguments.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}

/// Decrements the TTL (IPv4, with its header checksum, as the kernel's
/// `ip_decrease_ttl` does) or the hop limit, in place: direct packet
/// access (the verifier's prologue makes a cloned packet writable once per
/// run), not two helper calls that each check for it.
#[inline(always)]
fn hop(ctx: &TcContext, flow: &Flow) -> Result<(), ()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if flow.family == family::IPV4 {
        if start + ETH_HLEN + 12 > end {
            return Err(());
        }
        // SAFETY: bytes [14, 26) are within the packet's linear data
        // (checked on the packet pointers, as the verifier wants).
        unsafe {
            let ttl = (start + ETH_HLEN + 8) as *mut u8;
            let check = (start + ETH_HLEN + 10) as *mut u16;
            // The TTL is the high byte of its 16-bit word: one less TTL is
            // 0x0100 more in the one's-complement checksum.
            let sum = u32::from(check.read_unaligned()) + u32::from(0x0100u16.to_be());
            check.write_unaligned((sum + u32::from(sum >= 0xffff)) as u16);
            *ttl = flow.ttl - 1;
        }
    } else {
        if start + ETH_HLEN + 8 > end {
            return Err(());
        }
        // SAFETY: byte 21 is within the packet's linear data (as above).
        unsafe { *((start + ETH_HLEN + 7) as *mut u8) = flow.ttl - 1 };
    }
    Ok(())
}

/// Copies the endpoint behind `ifindex` into `out`: from its cache slot
/// when that holds it and was not being rewritten meanwhile, else from the
/// `ENDPOINTS` hash (the truth; the cache only saves hashing the key).
/// False if neither has it.
#[inline(always)]
fn endpoint(ifindex: u32, out: &mut EndpointInfo) -> bool {
    if let Some(slot) = ENDPOINT_CACHE.get_ptr(EndpointSlot::index(ifindex)) {
        // SAFETY: `slot` points into the array's value, valid for the run.
        // The agent may rewrite it meanwhile: the sequence read before and
        // after tells (volatile reads, with compiler fences keeping the
        // content's reads between them; x86-64 keeps loads in order).
        unsafe {
            let seq = read_volatile(addr_of!((*slot).seq));
            compiler_fence(Ordering::SeqCst);
            let owner = (*slot).ifindex;
            copy_endpoint(addr_of!((*slot).info), out);
            compiler_fence(Ordering::SeqCst);
            if seq & 1 == 0 && owner == ifindex && read_volatile(addr_of!((*slot).seq)) == seq {
                return true;
            }
        }
    }
    match ENDPOINTS.get_ptr(ifindex) {
        // SAFETY: a pointer into the hash's value, valid for the run; the
        // agent replaces entries whole, never in place.
        Some(info) => {
            unsafe { copy_endpoint(info, out) };
            true
        }
        None => false,
    }
}

/// Copies an `EndpointInfo` as eight 4-byte words. A plain copy returned
/// by value is split into its fields and its address arrays into bytes: a
/// hundred instructions and as many stack slots.
///
/// # Safety
/// `src` must point to a readable `EndpointInfo`.
#[inline(always)]
unsafe fn copy_endpoint(src: *const EndpointInfo, dst: &mut EndpointInfo) {
    const WORDS: usize = core::mem::size_of::<EndpointInfo>() / 4;
    let src = src as *const u32;
    let dst = dst as *mut EndpointInfo as *mut u32;
    for i in 0..WORDS {
        // SAFETY: both are `EndpointInfo`s (align 4, size 32) by the
        // contract and the types.
        unsafe { dst.add(i).write(src.add(i).read()) };
    }
}

/// Hands a packet of a redirected flow to the node's L7 proxy: marked for
/// the node's TPROXY rule, re-entering the stack on the loopback device
/// (whose address, all zeros, becomes the destination MAC so the stack
/// takes it as addressed to the host). The proxy learns the original
/// destination from its accepted socket.
#[inline(always)]
fn to_proxy(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` points to the program's context, valid for the run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark((mark & !MARK_MASK) | MARK_TO_PROXY);
    if ctx.store(0, &[0u8; 6], 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: a helper call with plain arguments.
    unsafe { bpf_redirect(LOOPBACK_IFINDEX, u64::from(BPF_F_INGRESS)) as i32 }
}

/// The verdict on a packet: [`PASS`], [`VIA_STACK`], a proxy port, or
/// `Err` when it was dropped (with its events).
#[inline(always)]
fn decide(at: &At, flow: &mut Flow) -> Result<u32, ()> {
    let ep = &at.ep;
    // A pod may only send from its own addresses (anti-spoofing; not even
    // from another address of its identity).
    if at.dir == direction::EGRESS && !owns(ep, flow.family, &flow.saddr) {
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
        return Ok(tracked);
    }
    new_flow(at, flow).map(u32::from)
}

/// Whether the packet is one of the L7 proxy's own upstream connections
/// (it carries the proxy's mark): their request was judged at L7 already,
/// and they never go back to the proxy (not even on a flow whose tuple a
/// redirected client used before).
#[inline(always)]
fn from_proxy(at: &At) -> bool {
    // SAFETY: `skb` points to the program's context, valid for the run.
    at.dir == direction::INGRESS && unsafe { (*at.ctx.skb.skb).mark } & MARK_MASK == MARK_PROXY
}

/// The peer's identity (an LPM lookup, so only for packets that are not
/// part of a tracked flow, or are dropped), and the source's and
/// destination's.
#[inline(always)]
fn ids(at: &At, flow: &Flow) -> (u32, u32, u32) {
    let peer_addr = if at.dir == direction::INGRESS {
        &flow.saddr
    } else {
        &flow.daddr
    };
    let peer = ipcache_identity(flow.family, peer_addr);
    if at.dir == direction::INGRESS {
        (peer, peer, at.ep.identity)
    } else {
        (peer, at.ep.identity, peer)
    }
}

/// Fragments: the first one records its ports; later ones borrow them (no
/// record: drop, never a bypass). False if the packet was dropped.
#[inline(never)]
fn fragment(at: &At, flow: &mut Flow) -> bool {
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

/// A new flow: the policy decides.
#[inline(never)]
fn new_flow(at: &At, flow: &Flow) -> Result<u16, ()> {
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
    let (allowed, proxy_port, matched, reason) = match entry {
        Some(v) => {
            // SAFETY: `v` points into the trie's value, valid during the
            // run; the counters are only touched atomically.
            unsafe {
                add(core::ptr::addr_of!((*v).packets) as *mut u64, 1);
                add(core::ptr::addr_of!((*v).bytes) as *mut u64, len);
            }
            let v = unsafe { *v };
            if v.is_deny() {
                (false, 0, v.match_type, drop_reason::DROP_POLICY_DENY)
            } else {
                (true, v.proxy_port, v.match_type, 0)
            }
        }
        None if enforced && !from_proxy => (false, 0, match_type::NONE, drop_reason::DROP_POLICY),
        None => (true, 0, match_type::NONE, 0),
    };
    let outcome = if !allowed {
        verdict::DENIED
    } else if proxy_port != 0 {
        verdict::REDIRECTED
    } else {
        verdict::ALLOWED
    };
    verdict_event(at, flow, src_id, dst_id, matched, outcome);
    if !allowed {
        drop_event(at, Some(flow), reason, src_id, dst_id);
        return Err(());
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
            } else {
                0
            },
            pad: 0,
        };
        let inserted = if flow.family == family::IPV4 {
            ct_insert::<CtKey4>(flow, ep.endpoint_id, dir, &value)
        } else {
            ct_insert::<CtKey>(flow, ep.endpoint_id, dir, &value)
        };
        if !inserted {
            drop_event(
                at,
                Some(flow),
                drop_reason::DROP_CT_CREATE_FAILED,
                src_id,
                dst_id,
            );
            return Err(());
        }
    }
    Ok(proxy_port)
}

/// How long an entry lives after this packet, in seconds.
#[inline(always)]
fn lifetime(flow: &Flow, flags: u8) -> u64 {
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
trait Tuple: Copy + 'static {
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
fn ct_insert<K: Tuple>(flow: &Flow, endpoint_id: u32, dir: u8, value: &CtValue) -> bool {
    K::map()
        .insert(&ct_key::<K>(flow, endpoint_id, dir), value, 0)
        .is_ok()
}

/// Finds the packet's flow (as original or reply) and refreshes it;
/// `None` for a packet of no tracked flow, else its verdict as [`decide`]
/// gives it: the proxy port for packets of a redirected flow in its
/// original direction (unless they come from the proxy), [`VIA_STACK`] for
/// answers to the proxy's upstream connections, [`PASS`] for the rest.
#[inline(always)]
fn ct_update(at: &At, flow: &Flow, now: u64) -> Option<u32> {
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
            if flags & ct_flags::PROXY_UPSTREAM != 0 {
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
fn related(flow: &Flow, endpoint_id: u32, dir: u8, now: u64) -> bool {
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

/// Whether `addr` is the endpoint's own address of family `fam` (an
/// endpoint without one owns none).
#[inline(always)]
fn owns(ep: &EndpointInfo, fam: u8, addr: &Addr) -> bool {
    if fam == family::IPV4 {
        ep.ipv4 != [0; 4] && addr.v4() == ep.ipv4
    } else {
        ep.ipv6 != [0; 16] && addr.0 == ep.ipv6
    }
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

/// An address as the maps key it (`IPCACHE`'s key data, `ENDPOINT_ADDRS`'
/// key).
#[inline(always)]
fn addr_key(fam: u8, addr: &Addr) -> IpcacheKey {
    IpcacheKey {
        pad: [0; 3],
        family: fam,
        addr: addr.0,
    }
}

#[inline(always)]
fn ipcache_identity(fam: u8, addr: &Addr) -> u32 {
    let bits = if fam == family::IPV4 { 32 } else { 128 };
    let key = Key::new(IpcacheKey::prefix_len(bits), addr_key(fam, addr));
    match IPCACHE.get(&key) {
        Some(v) => v.identity,
        None => IDENTITY_WORLD,
    }
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

/// Fills `flow` (empty) from the packet; `Ok(false)` for packets policy does not
/// apply to (ARP, IPv6 neighbour discovery).
#[inline(always)]
fn parse(ctx: &TcContext, flow: &mut Flow) -> Result<bool, Drop> {
    // Most packets are option-less IPv4: one copy holds every header byte
    // they need. Shorter packets take the field-by-field loads below.
    // (Zeroed, not an `Option`: a short packet's undefined header bytes
    // could end up in a register the verifier sees read before written.)
    let mut head = Head::default();
    let whole = load_into(ctx, HEAD_OFFSET, &mut head).is_ok();
    if !whole {
        load_into(ctx, 12, &mut head.ethertype)?;
    }
    let l4 = match u16::from_be(head.ethertype) {
        ETH_P_IP => {
            if !whole {
                load_into(ctx, ETH_HLEN, &mut head.ip)?;
            }
            let ip = &head.ip;
            if ip.version_ihl >> 4 != 4 {
                return Err(Drop(drop_reason::DROP_INVALID));
            }
            let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
            let total = usize::from(u16::from_be(ip.total_len));
            if ihl < 20 || total < ihl {
                return Err(Drop(drop_reason::DROP_INVALID));
            }
            flow.family = family::IPV4;
            flow.protocol = ip.protocol;
            flow.ttl = ip.ttl;
            flow.saddr.0[..4].copy_from_slice(&ip.saddr);
            flow.daddr.0[..4].copy_from_slice(&ip.daddr);
            let frag = u16::from_be(ip.frag_off);
            let id = u32::from(u16::from_be(ip.id));
            if frag & 0x1fff != 0 {
                flow.frag = Frag::Later(id);
            } else if frag & 0x2000 != 0 {
                flow.frag = Frag::First(id);
            }
            ETH_HLEN + ihl
        }
        ETH_P_IPV6 => decode(parse_ipv6(ctx, flow))?,
        ETH_P_ARP => return Ok(false),
        _ => return Err(Drop(drop_reason::DROP_UNKNOWN_L3)),
    };
    if let Frag::Later(_) = flow.frag {
        // No L4 header: the ports come from the first fragment.
        return Ok(true);
    }
    // Whether the one copy has the ports.
    let ports_copied = whole && flow.family == family::IPV4 && l4 == ETH_HLEN + 20;
    match flow.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            if ports_copied {
                flow.sport = head.sport;
                flow.dport = head.dport;
            } else {
                let p: [u8; 4] = load(ctx, l4)?;
                flow.sport = u16::from_ne_bytes([p[0], p[1]]);
                flow.dport = u16::from_ne_bytes([p[2], p[3]]);
            }
            if flow.protocol == IPPROTO_TCP {
                // Data offset and flags.
                let h: [u8; 2] = peek(ctx, l4 + 12)?;
                if usize::from(h[0] >> 4) * 4 < 20 {
                    return Err(Drop(drop_reason::DROP_CT_INVALID_HDR));
                }
                flow.tcp_flags = h[1];
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            return decode(parse_icmp(ctx, flow, l4)).map(|applies| applies != 0);
        }
        _ => return Ok(true),
    }
    flow.policy_port = u16::from_be(flow.dport);
    Ok(true)
}

// Out-of-line parse steps return a plain integer, not a `Result` (which
// would be returned through memory: one argument more than BPF calls
// take): >= 0 is the value, < 0 the negated drop reason.
#[inline(always)]
fn encode(r: Result<usize, Drop>) -> i64 {
    match r {
        Ok(v) => v as i64,
        Err(Drop(reason)) => -i64::from(reason),
    }
}

#[inline(always)]
fn decode(v: i64) -> Result<usize, Drop> {
    if v < 0 {
        Err(Drop((-v) as u8))
    } else {
        Ok(v as usize)
    }
}

/// The IPv6 header and its extension headers; the L4 offset.
#[inline(never)]
fn parse_ipv6(ctx: &TcContext, flow: &mut Flow) -> i64 {
    encode((|| {
        let ip: [u8; 40] = load(ctx, ETH_HLEN)?;
        if ip[0] >> 4 != 6 {
            return Err(Drop(drop_reason::DROP_INVALID));
        }
        flow.family = family::IPV6;
        flow.ttl = ip[7];
        flow.saddr.0.copy_from_slice(&ip[8..24]);
        flow.daddr.0.copy_from_slice(&ip[24..40]);
        let mut next = ip[6];
        let mut off = ETH_HLEN + 40;
        for _ in 0..MAX_EXT_HEADERS {
            if !is_ext_header(next) {
                break;
            }
            let h: [u8; 8] = load(ctx, off)?;
            let len = match next {
                // Authentication header: length in 4-byte units, minus 2.
                51 => (usize::from(h[1]) + 2) * 4,
                // Fragment: fixed size.
                44 => {
                    let offset = u16::from_be_bytes([h[2], h[3]]);
                    let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                    if offset & 0xfff8 != 0 {
                        flow.frag = Frag::Later(id);
                    } else if offset & 1 != 0 {
                        flow.frag = Frag::First(id);
                    }
                    8
                }
                // Hop-by-hop, routing, destination options: 8-byte units.
                _ => (usize::from(h[1]) + 1) * 8,
            };
            next = h[0];
            off += len;
        }
        if is_ext_header(next) {
            return Err(Drop(drop_reason::DROP_INVALID_EXTHDR));
        }
        flow.protocol = next;
        Ok(off)
    })())
}

/// An ICMP (v4 or v6) header: 1 if policy applies, 0 if not (link
/// control traffic).
#[inline(never)]
fn parse_icmp(ctx: &TcContext, flow: &mut Flow, l4: usize) -> i64 {
    encode((|| {
        let h: [u8; 8] = load(ctx, l4)?;
        let ty = h[0];
        flow.policy_port = u16::from(ty);
        let v6 = flow.protocol == IPPROTO_ICMPV6;
        let id = u16::from_ne_bytes([h[4], h[5]]);
        match (v6, ty) {
            // Echo request: the id is the "source port".
            (false, 8) | (true, 128) => {
                flow.icmp = Icmp::Echo;
                flow.sport = id;
            }
            // Echo reply: the id is the "destination port", so its
            // reverse is the request's key.
            (false, 0) | (true, 129) => {
                flow.icmp = Icmp::Echo;
                flow.dport = id;
            }
            // Neighbour discovery (router/neighbour solicitation and
            // advertisement, redirect) and multicast listener
            // discovery (MLD query/report/done, MLDv2 report): link
            // control traffic from link-local sources that never
            // leaves the link; policy does not apply (as in Cilium
            // for ND).
            (true, 130..=137 | 143) => return Ok(0),
            (false, 3 | 11 | 12) | (true, 1..=4) => {
                flow.icmp = Icmp::Error;
                let Some(inner) = QUOTED.get_ptr_mut(0) else {
                    return Err(Drop(drop_reason::DROP_INVALID));
                };
                // SAFETY: this CPU's slot, used by this run only.
                quoted(ctx, l4 + 8, v6, unsafe { &mut *inner })?;
            }
            _ => {}
        }
        Ok(1)
    })())
}

/// Where [`Head`] starts: two bytes before the ethertype, so that the
/// copy's IPv4 addresses fall on 4-byte boundaries.
const HEAD_OFFSET: usize = 10;

/// The first bytes a packet's verdict needs, copied in one helper call:
/// the ethertype, an option-less IPv4 header and the 4 bytes after it (the
/// ports). Needs a packet of at least 38 bytes. Typed fields at their
/// natural alignment, so each is read with one load.
#[derive(Clone, Copy, Default)]
#[repr(C, align(4))]
struct Head {
    _mac: [u8; 2],
    /// Network order, as are the other multi-byte fields.
    ethertype: u16,
    ip: Ipv4Header,
    sport: u16,
    dport: u16,
}

/// The fixed part of an IPv4 header.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<Head>() == 28);

/// IPv6 extension headers the parser walks: hop-by-hop, routing,
/// fragment, authentication, destination options.
#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

/// The flow of the packet an ICMP error quotes (its IP header and the first
/// 8 bytes after it).
#[inline(always)]
fn quoted(ctx: &TcContext, off: usize, v6: bool, inner: &mut InnerFlow) -> Result<(), Drop> {
    *inner = InnerFlow::default();
    let l4 = if v6 {
        let ip: [u8; 40] = load(ctx, off)?;
        inner.protocol = ip[6];
        inner.saddr.0.copy_from_slice(&ip[8..24]);
        inner.daddr.0.copy_from_slice(&ip[24..40]);
        off + 40
    } else {
        let ip: [u8; 20] = load(ctx, off)?;
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ihl < 20 {
            return Err(Drop(drop_reason::DROP_INVALID));
        }
        inner.protocol = ip[9];
        inner.saddr.0[..4].copy_from_slice(&ip[12..16]);
        inner.daddr.0[..4].copy_from_slice(&ip[16..20]);
        off + ihl
    };
    let p: [u8; 4] = load(ctx, l4)?;
    match inner.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            inner.sport = u16::from_ne_bytes([p[0], p[1]]);
            inner.dport = u16::from_ne_bytes([p[2], p[3]]);
        }
        _ => {}
    }
    Ok(())
}

/// Copies `size_of::<T>()` packet bytes at `off` into `dst` (which must
/// be plain bytes: every bit pattern valid).
#[inline(always)]
fn load_into<T: Copy>(ctx: &TcContext, off: usize, dst: &mut T) -> Result<(), Drop> {
    // SAFETY: a helper call writing exactly `size_of::<T>()` bytes to `dst`.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            dst as *mut T as *mut c_void,
            core::mem::size_of::<T>() as u32,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Drop(drop_reason::DROP_CT_INVALID_HDR))
    }
}

#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], Drop> {
    let mut bytes = [0u8; N];
    load_into(ctx, off, &mut bytes)?;
    Ok(bytes)
}

/// [`load`] for a few bytes: read in place when they are in the packet's
/// linear data (no helper call), else copied by the helper.
#[inline(always)]
fn peek<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], Drop> {
    let start = ctx.data() + off;
    if start + N <= ctx.data_end() {
        // SAFETY: [start, start + N) lies within the packet's linear data,
        // valid for the run (the bound check above is on the packet
        // pointers, the form the verifier accepts); alignment 1.
        return Ok(unsafe { *(start as *const [u8; N]) });
    }
    load(ctx, off)
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

fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate mid-run.
        unsafe { *c += 1 };
    }
}

/// Takes one token from this CPU's bucket.
fn rate_allows() -> bool {
    let Some(cfg) = EVENT_CONFIG.get(0) else {
        return false;
    };
    if cfg.rate == 0 {
        return false;
    }
    let Some(state) = EVENT_RATE.get_ptr_mut(0) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // Tokens are counted in billionths so that refills need no division.
    let cap = u64::from(cfg.burst.max(1)) * NS_PER_S;
    // SAFETY: this CPU's slot.
    unsafe {
        // Refill at most to the cap: elapsed * rate <= cap <= 2^32 * 1e9,
        // so nothing overflows (a saturating multiply would need 128-bit
        // helpers BPF lacks).
        let rate = u64::from(cfg.rate);
        let elapsed = now.saturating_sub((*state).last_ns).min(cap / rate);
        let tokens = ((*state).tokens + elapsed * rate).min(cap);
        (*state).last_ns = now;
        if tokens < NS_PER_S {
            (*state).tokens = tokens;
            return false;
        }
        (*state).tokens = tokens - NS_PER_S;
    }
    true
}

/// Writes an event straight into the ring buffer (no copy on the stack,
/// whose 512 bytes the call chain shares): zeroed, then filled by `fill`.
#[inline(always)]
fn emit(fill: impl FnOnce(&mut Event)) {
    if !rate_allows() {
        count(counter::EVENTS_RATE_LIMITED);
        return;
    }
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            let e = entry.as_mut_ptr();
            // SAFETY: `e` is the reserved record, ours until submitted;
            // every bit pattern is a valid `Event`.
            unsafe {
                core::ptr::write_bytes(e, 0, 1);
                fill(&mut *e);
            }
            entry.submit(0);
            count(counter::EVENTS_SENT);
        }
        None => count(counter::EVENTS_RINGBUF_FULL),
    }
}

/// The fields every event of a packet has.
#[inline(always)]
fn fill_flow(e: &mut Event, at: &At, flow: Option<&Flow>) {
    e.direction = at.dir;
    e.ifindex = at.ifindex;
    e.len = at.ctx.len();
    e.endpoint_id = at.ep.endpoint_id;
    if let Some(f) = flow {
        e.family = f.family;
        e.protocol = f.protocol;
        e.sport = f.sport;
        e.dport = if f.icmp == Icmp::None {
            f.dport
        } else {
            f.policy_port.to_be()
        };
        e.saddr = f.saddr.0;
        e.daddr = f.daddr.0;
    }
}

#[inline(always)]
fn verdict_event(at: &At, flow: &Flow, src: u32, dst: u32, matched: u8, outcome: u8) {
    emit(|e| {
        fill_flow(e, at, Some(flow));
        e.kind = event_kind::POLICY_VERDICT;
        e.src_identity = src;
        e.dst_identity = dst;
        e.match_type = matched;
        e.verdict = outcome;
    });
}

/// A drop event for a packet of the endpoint (`flow`: if parsed).
#[inline(never)]
fn drop_event(at: &At, flow: Option<&Flow>, reason: u8, src: u32, dst: u32) {
    emit(|e| {
        fill_flow(e, at, flow);
        e.kind = event_kind::DROP;
        e.reason = reason;
        e.verdict = verdict::DENIED;
        e.src_identity = src;
        e.dst_identity = dst;
    });
}

/// [`drop_event`] with the identities looked up.
#[inline(never)]
fn drop_flow(at: &At, flow: &Flow, reason: u8) {
    let (_, src, dst) = ids(at, flow);
    drop_event(at, Some(flow), reason, src, dst);
}
