//! The flow pipeline (Hubble's observer, in the agent): datapath events
//! and the L7 proxy's requests arrive through a bounded queue
//! ([`FlowSink`]), the observer task turns each into a Hubble [`Flow`]
//! enriched with both ends' identities, labels, pods and namespaces
//! ([`enrich`]), keeps the newest in a bounded ring and streams them to
//! followers; [`server`] serves Hubble's `Observer` gRPC API over them.
//!
//! Nothing here can slow the datapath or the proxy: producers never wait
//! (a full queue counts the event as lost), and a follower that lags
//! behind the ring is told how many flows it missed.

pub mod enrich;
pub mod server;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axoneme_bpf_common::Event;
use axoneme_hubble::flow::Flow;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::node::NodeState;
use crate::views::HttpEvent;

/// What the producers hand the observer.
pub enum FlowEvent {
    Datapath { event: Event, time_ms: u64 },
    Http(HttpEvent),
}

/// The producers' end of the observer's queue: never blocks.
#[derive(Clone, Default)]
pub struct FlowSink {
    tx: Option<mpsc::Sender<FlowEvent>>,
    lost: Arc<AtomicU64>,
}

impl FlowSink {
    /// A sink that drops everything (Hubble disabled).
    pub fn disabled() -> Self {
        FlowSink::default()
    }

    pub fn send(&self, e: FlowEvent) {
        if let Some(tx) = &self.tx {
            if tx.try_send(e).is_err() {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One flow in the ring, numbered in arrival order.
#[derive(Clone)]
pub struct Entry {
    pub seq: u64,
    pub flow: Arc<Flow>,
}

/// What followers receive: flows, and reports of lost events.
#[derive(Clone)]
pub enum Published {
    Flow(Entry),
    /// Events the observer's queue dropped (it was full).
    QueueLost(u64),
}

struct Ring {
    flows: VecDeque<Entry>,
    next_seq: u64,
}

/// The observer's state, shared by its task (the one writer) and the
/// gRPC server (readers).
pub struct Observer {
    node: String,
    capacity: usize,
    ring: Mutex<Ring>,
    published: broadcast::Sender<Published>,
    started: Instant,
    /// Events the queue could not take (also in `axoneme_hubble_lost_events_total`).
    queue_lost: Arc<AtomicU64>,
}

/// Sizes of the pipeline's buffers.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Flows kept for requests of past flows.
    pub ring: usize,
    /// Events waiting for the observer task.
    pub queue: usize,
}

impl Observer {
    /// The observer and the sink its producers write to.
    pub fn new(node: &str, sizes: Sizes) -> (Arc<Self>, FlowSink, mpsc::Receiver<FlowEvent>) {
        let (tx, rx) = mpsc::channel(sizes.queue.max(1));
        let lost = Arc::new(AtomicU64::new(0));
        let (published, _) = broadcast::channel(sizes.ring.clamp(16, 8192));
        let observer = Arc::new(Observer {
            node: node.to_string(),
            capacity: sizes.ring.max(1),
            ring: Mutex::new(Ring {
                flows: VecDeque::with_capacity(sizes.ring.min(65_536)),
                next_seq: 0,
            }),
            published,
            started: Instant::now(),
            queue_lost: lost.clone(),
        });
        let sink = FlowSink { tx: Some(tx), lost };
        (observer, sink, rx)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Flows in the ring now and flows seen since start.
    pub fn counts(&self) -> (u64, u64) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (ring.flows.len() as u64, ring.next_seq)
    }

    pub fn queue_lost(&self) -> u64 {
        self.queue_lost.load(Ordering::Relaxed)
    }

    /// Subscribes to what is published from now on, and takes the ring's
    /// flows (oldest first) in the same critical section, so a follower
    /// neither misses nor repeats a flow between the two.
    pub fn subscribe_with_history(&self) -> (Vec<Entry>, broadcast::Receiver<Published>) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.published.subscribe();
        (ring.flows.iter().cloned().collect(), rx)
    }

    /// Adds a flow: the oldest goes when the ring is full.
    pub fn push(&self, flow: Flow) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let entry = Entry {
            seq: ring.next_seq,
            flow: Arc::new(flow),
        };
        ring.next_seq += 1;
        if ring.flows.len() == self.capacity {
            ring.flows.pop_front();
        }
        ring.flows.push_back(entry.clone());
        // No follower: nothing to do.
        let _ = self.published.send(Published::Flow(entry));
    }
}

/// The observer task: the one writer of the ring.
pub async fn run(
    observer: Arc<Observer>,
    mut rx: mpsc::Receiver<FlowEvent>,
    state: NodeState,
    metrics: crate::metrics::FlowMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut enricher = enrich::Enricher::new(state);
    let mut records = enricher.subscribe();
    let mut reported_lost = 0;
    loop {
        tokio::select! {
            e = rx.recv() => {
                let Some(e) = e else { return Ok(()) };
                let flow = enricher.flow(&e);
                let (kind, subtype) = enrich::kind(&flow);
                metrics.processed(kind, subtype, enrich::verdict_name(&flow));
                observer.push(flow);
            }
            _ = records.recv() => enricher.invalidate(),
            _ = cancel.cancelled() => return Ok(()),
        }
        let lost = observer.queue_lost();
        if lost > reported_lost {
            metrics.lost("observer_events_queue", lost - reported_lost);
            let _ = observer
                .published
                .send(Published::QueueLost(lost - reported_lost));
            reported_lost = lost;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(uuid: &str) -> Flow {
        Flow {
            uuid: uuid.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_counts_every_flow() {
        let (obs, _sink, _rx) = Observer::new("n", Sizes { ring: 3, queue: 4 });
        for i in 0..5 {
            obs.push(flow(&i.to_string()));
        }
        let (history, _) = obs.subscribe_with_history();
        let kept: Vec<(u64, &str)> = history
            .iter()
            .map(|e| (e.seq, e.flow.uuid.as_str()))
            .collect();
        assert_eq!(kept, vec![(2, "2"), (3, "3"), (4, "4")]);
        assert_eq!(obs.counts(), (3, 5));
    }

    #[tokio::test]
    async fn followers_get_what_comes_after_their_history() {
        let (obs, _sink, _rx) = Observer::new("n", Sizes { ring: 8, queue: 4 });
        obs.push(flow("old"));
        let (history, mut rx) = obs.subscribe_with_history();
        obs.push(flow("new"));
        assert_eq!(history.len(), 1);
        match rx.recv().await.unwrap() {
            Published::Flow(e) => assert_eq!((e.seq, e.flow.uuid.as_str()), (1, "new")),
            Published::QueueLost(_) => panic!("no loss"),
        }
    }

    #[test]
    fn a_full_queue_counts_lost_events_and_never_blocks() {
        let (obs, sink, _rx) = Observer::new("n", Sizes { ring: 8, queue: 2 });
        for _ in 0..5 {
            sink.send(FlowEvent::Datapath {
                event: Event::default(),
                time_ms: 0,
            });
        }
        assert_eq!(obs.queue_lost(), 3);
        FlowSink::disabled().send(FlowEvent::Datapath {
            event: Event::default(),
            time_ms: 0,
        });
    }
}
