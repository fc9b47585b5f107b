//! Giving freed heap memory back to the kernel.
//!
//! glibc's malloc returns memory to the kernel by itself only from the top
//! of its heap; what is freed below live allocations stays resident. The
//! agent's work comes in bursts (the first list of ten thousand records, a
//! policy import, a reconcile pass over every identity), each leaving freed
//! memory among what it keeps. Once a second this task asks the allocator
//! how much of its heap is free and, past the threshold, has it release
//! the whole free pages (`malloc_trim`: the chunks stay, their pages are
//! handed back and faulted in again when used). One arena
//! (`M_ARENA_MAX`, set in `main`) keeps the walk short.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the allocator is asked.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What the allocator holds: bytes in use and bytes free in its heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    pub in_use: usize,
    /// Free, excluding what sits at the heap's top (`free` returns that
    /// itself past `M_TRIM_THRESHOLD`).
    pub free: usize,
}

/// Whether `stats` hold enough free memory below the top to trim.
pub fn should_trim(stats: HeapStats, threshold: usize) -> bool {
    threshold > 0 && stats.free > threshold
}

/// The allocator's figures, where the allocator can tell (glibc).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn stats() -> Option<HeapStats> {
    // SAFETY: mallinfo2 only reads the allocator's state under its lock.
    let m = unsafe { nix::libc::mallinfo2() };
    Some(HeapStats {
        in_use: m.uordblks,
        free: m.fordblks.saturating_sub(m.keepcost),
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn stats() -> Option<HeapStats> {
    None
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only returns free pages under the allocator's lock.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Trims the heap whenever more than `threshold` bytes of it are free
/// (0: never), until `cancel`.
pub async fn run(threshold: usize, cancel: CancellationToken) -> anyhow::Result<()> {
    if threshold == 0 || stats().is_none() {
        cancel.cancelled().await;
        return Ok(());
    }
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let Some(before) = stats() else { continue };
        if should_trim(before, threshold) {
            trim();
            debug!(
                in_use = before.in_use,
                free = before.free,
                "heap trimmed: its free pages returned to the kernel"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_past_the_threshold_and_never_when_off() {
        let stats = |free| HeapStats {
            in_use: 1 << 20,
            free,
        };
        assert!(!should_trim(stats(1 << 20), 2 << 20));
        assert!(!should_trim(stats(2 << 20), 2 << 20));
        assert!(should_trim(stats((2 << 20) + 1), 2 << 20));
        assert!(!should_trim(stats(1 << 30), 0));
    }

    /// The real allocator: memory freed below live allocations shows as
    /// free, and a trim leaves what is in use as it was.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_allocator_reports_freed_memory_below_live_allocations() {
        let before = stats().expect("glibc reports its heap");
        // Interleave keepers with 4 KiB blocks that are then freed: the
        // freed blocks cannot be returned from the top.
        let mut keep = Vec::new();
        let mut drop_ = Vec::new();
        for _ in 0..1024 {
            drop_.push(vec![1u8; 4096]);
            keep.push(vec![2u8; 64]);
        }
        drop(drop_);
        let freed = stats().unwrap();
        assert!(
            freed.free >= before.free + (2 << 20),
            "4 MiB freed among live blocks: {before:?} -> {freed:?}"
        );
        trim();
        assert!(keep.iter().all(|k| k.iter().all(|b| *b == 2)));
    }
}
