//! Packet and byte counters by [`MetricsKey`] (forwarded or dropped, drop
//! reason, direction): Cilium's metrics map, read by the agent at scrape
//! time. Every packet is counted, whatever the event rate limit lets
//! through; a per-CPU array, so each CPU adds to its own slot without
//! atomics.

use axoneme_bpf_common::{MetricsKey, MetricsValue, VerdictKey, METRICS_ENTRIES, VERDICTS_ENTRIES};
use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::At;

#[map]
static METRICS: PerCpuArray<MetricsValue> = PerCpuArray::pinned(METRICS_ENTRIES, 0);

/// New flows' policy verdicts by [`VerdictKey`] (packets: flows; bytes:
/// their first packets').
#[map]
static VERDICTS: PerCpuArray<MetricsValue> = PerCpuArray::pinned(VERDICTS_ENTRIES, 0);

/// Zero: no packet is counted and no event written (the datapath bench's
/// baseline for what observability costs). Set by the agent when it loads
/// the programs; a constant to the verifier (`.rodata`), which then drops
/// the counting.
#[no_mangle]
static AXONEME_OBSERVE: u8 = 1;

/// Whether packets are counted and events written.
#[inline(always)]
pub(crate) fn observe() -> bool {
    // SAFETY: a plain read of a static; volatile, so the compiler does not
    // fold the value the loader replaces.
    unsafe { core::ptr::read_volatile(&AXONEME_OBSERVE) != 0 }
}

#[inline(always)]
fn count(key: MetricsKey, len: u32) {
    add_to(&METRICS, key.index(), len);
}

#[inline(always)]
fn add_to(map: &PerCpuArray<MetricsValue>, index: u32, len: u32) {
    if !observe() {
        return;
    }
    if let Some(v) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; a program does not migrate mid-run and
        // TC programs do not nest on one CPU.
        unsafe {
            (*v).packets += 1;
            (*v).bytes += u64::from(len);
        }
    }
}

/// The packet goes on, in the direction `at` judged it.
#[inline(always)]
pub(crate) fn forwarded(at: &At) {
    count(MetricsKey::forward(at.dir), at.ctx.len());
}

/// The packet is dropped for `reason`.
#[inline(always)]
pub(crate) fn dropped(at: &At, reason: u8) {
    count(MetricsKey::drop(reason, at.dir), at.ctx.len());
}

/// A new flow judged by the policy in the direction `at` judged it:
/// `verdict` after an entry of `match_type` (or none) decided.
#[inline(always)]
pub(crate) fn judged(at: &At, verdict: u8, match_type: u8) {
    let key = VerdictKey {
        direction: at.dir,
        verdict,
        match_type,
    };
    add_to(&VERDICTS, key.index(), at.ctx.len());
}
