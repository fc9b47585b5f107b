//! The event ring's size: chosen when the programs load, from the CPUs
//! and the event flags (a pinned ring of another size is replaced when
//! the programs load).

use std::time::Duration;

/// The event ring's size for `cpus` CPUs each writing at most `burst`
/// events at once and `rate` per second, drained every `poll`: room for
/// everything every CPU may write between two drains (each record is an
/// [`Event`](axoneme_bpf_common::Event) behind the ring's 8-byte header),
/// rounded up to a power of two, from 64 KiB to 8 MiB. The ring's pages
/// are resident twice in the reader (the kernel maps its data twice, so
/// records wrapping the end read contiguously): a fixed megabyte was too
/// much for 2 CPUs and too little for 64. Past 8 MiB a burst on every CPU
/// at once is counted as lost (`events_ringbuf_full`) rather than paid
/// for in every agent's memory.
pub fn events_ring_bytes(cpus: u32, rate: u32, burst: u32, poll: Duration) -> u32 {
    const RECORD: u64 = core::mem::size_of::<axoneme_bpf_common::Event>() as u64 + 8;
    let poll_ms = u64::try_from(poll.as_millis()).unwrap_or(u64::MAX);
    let per_poll = u64::from(rate).saturating_mul(poll_ms).div_ceil(1000);
    let bytes = u64::from(cpus.max(1))
        .saturating_mul(u64::from(burst).saturating_add(per_poll))
        .saturating_mul(RECORD);
    const MIN: u32 = 64 << 10;
    const MAX: u32 = 8 << 20;
    u32::try_from(bytes).map_or(MAX, |b| b.clamp(MIN, MAX).next_power_of_two())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_ring_holds_what_every_cpu_may_write_between_two_drains() {
        let poll = std::time::Duration::from_millis(100);
        // The agent's defaults (1,000 events/s, bursts of 2,000): 72-byte
        // records, 2 CPUs × 2,100 = 302,400 bytes.
        assert_eq!(events_ring_bytes(2, 1000, 2000, poll), 512 << 10);
        assert_eq!(events_ring_bytes(1, 1000, 2000, poll), 256 << 10);
        assert_eq!(events_ring_bytes(16, 1000, 2000, poll), 4 << 20);
        // Events off, or a large machine: the bounds.
        assert_eq!(events_ring_bytes(2, 0, 0, poll), 64 << 10);
        assert_eq!(events_ring_bytes(64, 1000, 2000, poll), 8 << 20);
        // A slower drain needs room for the rate over the longer wait.
        assert_eq!(
            events_ring_bytes(2, 10_000, 2000, std::time::Duration::from_secs(1)),
            2 << 20
        );
    }
}
