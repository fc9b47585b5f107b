//! The pause between retries of a failed list or watch, shared by the
//! operator's watches and the agent's Pod watch: doubling from
//! [`WATCH_BACKOFF_MIN`] to [`WATCH_BACKOFF_MAX`], back to the minimum after
//! any success. kube-runtime's default grows to 30 s, so after an API
//! server outage a watch could stay idle that long; capped at 2 s, an API
//! server that comes back is seen within 2 s at the cost of a few requests
//! a second per watcher while it is down.

use std::time::Duration;

/// First retry of a failed list or watch.
pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between retries.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Exponential backoff for a watch, reset by any successful event.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchBackoff {
    pub fn new() -> Self {
        WatchBackoff {
            next: WATCH_BACKOFF_MIN,
        }
    }

    /// The pause before the next retry (each one twice the last, capped).
    pub fn next_pause(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(WATCH_BACKOFF_MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = WATCH_BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = WatchBackoff::new();
        let pauses: Vec<u128> = (0..6).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_pause(), WATCH_BACKOFF_MIN);
    }
}
