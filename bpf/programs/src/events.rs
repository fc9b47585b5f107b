//! Events: policy verdicts, traces of new flows and drops (Cilium's type
//! numbers 5, 4 and 1),
//! written straight into the `EVENTS` ring buffer, at most `rate` per
//! second per CPU with a burst (`EVENT_CONFIG`, per-CPU buckets in
//! `EVENT_RATE`), so a flood costs counter increments (`COUNTERS`).

use axoneme_bpf_common::{
    counter, event_kind, verdict, Event, EventConfig, RateState, EVENTS_BYTES,
};
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};

use crate::ipcache::ids;
use crate::metrics::{dropped, observe};
use crate::parse::{Flow, Icmp};
use crate::{At, NS_PER_S};

#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
#[map]
static EVENT_CONFIG: Array<EventConfig> = Array::pinned(1, 0);
#[map]
static EVENT_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

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
    if !observe() {
        return;
    }
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
pub(crate) fn verdict_event(at: &At, flow: &Flow, src: u32, dst: u32, matched: u8, outcome: u8) {
    emit(|e| {
        fill_flow(e, at, Some(flow));
        e.kind = event_kind::POLICY_VERDICT;
        e.src_identity = src;
        e.dst_identity = dst;
        e.match_type = matched;
        e.verdict = outcome;
    });
}

/// A trace of a new flow allowed on its way, observed at `point`
/// (an `axoneme_bpf_common::trace_point`), the identities looked up.
#[inline(never)]
pub(crate) fn trace_flow(at: &At, flow: &Flow, point: u8) {
    let (_, src, dst) = ids(at, flow);
    trace_event(at, flow, src, dst, point);
}

#[inline(always)]
fn trace_event(at: &At, flow: &Flow, src: u32, dst: u32, point: u8) {
    emit(|e| {
        fill_flow(e, at, Some(flow));
        e.kind = event_kind::TRACE;
        e.reason = point;
        e.verdict = verdict::ALLOWED;
        e.src_identity = src;
        e.dst_identity = dst;
    });
}

/// A drop event for a packet of the endpoint (`flow`: if parsed). Every
/// drop comes through here: it is counted before the rate limit applies.
#[inline(never)]
pub(crate) fn drop_event(at: &At, flow: Option<&Flow>, reason: u8, src: u32, dst: u32) {
    dropped(at, reason);
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
pub(crate) fn drop_flow(at: &At, flow: &Flow, reason: u8) {
    let (_, src, dst) = ids(at, flow);
    drop_event(at, Some(flow), reason, src, dst);
}
