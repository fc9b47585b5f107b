//! The event task: the one reader of the datapath's event ring. It drains
//! the ring every poll interval into the agent's recent-events ring (what
//! `axoneme events` shows, and from it the flow pipeline) and the log
//! (target `axoneme::event`).

use std::time::Duration;

use axoneme_api::EventView;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::datapath::EventReader;
use crate::views::{self, EventRing};

pub async fn run(
    mut reader: EventReader,
    recent: EventRing,
    poll: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(poll);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        let now = unix_ms();
        for e in reader.drain() {
            let view = views::event(&e, now);
            log_event(&view);
            recent.push(&e, view);
            // A flood's drain is long (a log line per event): the
            // runtime's other tasks (the API, metrics) get their turn
            // when this task's budget runs out, not after the whole ring.
            tokio::task::coop::consume_budget().await;
        }
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One line per datapath event (target `axoneme::event`).
fn log_event(e: &EventView) {
    info!(
        target: "axoneme::event",
        kind = %e.kind,
        reason = e.reason,
        reason_text = %e.reason_text,
        verdict = %e.verdict,
        direction = %e.direction,
        src_identity = e.src_identity,
        dst_identity = e.dst_identity,
        src = %e.src,
        dst = %e.dst,
        protocol = %e.protocol,
        sport = e.sport,
        dport = e.dport,
        ifindex = e.ifindex,
        match_type = %e.match_type,
        "datapath event"
    );
}
