//! The flow pipeline (Hubble's observer, in the agent): datapath events
//! and the L7 proxy's requests arrive through a bounded queue
//! ([`FlowSink`]), the observer task enriches each with both ends'
//! identities, labels, pods and namespaces ([`enrich`]) and keeps the
//! newest in a bounded ring, streaming them to followers; each one's Hubble
//! [`Flow`] is built when first read. [`server`] serves Hubble's
//! `Observer` gRPC API over them.
//!
//! Nothing here can slow the datapath or the proxy: producers never wait
//! (a full queue counts the event as lost), and a follower that lags
//! behind the ring is told how many flows it missed. Producers wake the
//! observer only when the queue goes from empty to not empty, and the
//! observer lets a batch gather ([`BATCH_WINDOW`]) before it drains: one
//! wake per batch, not a thread wake-up and context switch per L7 request.

pub mod enrich;
pub mod server;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axoneme_bpf_common::Event;
use axoneme_hubble::flow::Flow;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use crate::node::NodeState;
use crate::views::HttpEvent;

/// What the producers hand the observer.
pub enum FlowEvent {
    Datapath { event: Event, time_ms: u64 },
    Http(HttpEvent),
}

/// How long the observer lets events gather after a wake before it
/// drains them: the delay a follower sees, bought against wakes. Under a
/// steady stream of L7 requests every window is a wake of a runtime
/// worker, which takes a core from the requests' own chain of processes
/// (docs/benchmarks.md, "L7 proxy"); a window's events must still fit in
/// the queue (`--hubble-event-queue-size`) at the proxy's rates.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// Events' room kept between batches.
const BATCH_KEPT: usize = 1024;

/// The bounded queue between the producers and the observer task.
struct Queue {
    events: Mutex<Vec<FlowEvent>>,
    capacity: usize,
    /// Signalled when the queue stops being empty.
    ready: Notify,
    lost: AtomicU64,
}

/// The producers' end of the observer's queue: never blocks.
#[derive(Clone, Default)]
pub struct FlowSink {
    queue: Option<Arc<Queue>>,
}

impl FlowSink {
    /// A sink that drops everything (Hubble disabled).
    pub fn disabled() -> Self {
        FlowSink::default()
    }

    pub fn send(&self, e: FlowEvent) {
        let Some(q) = &self.queue else { return };
        let mut events = q.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() >= q.capacity {
            drop(events);
            q.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        events.push(e);
        let first = events.len() == 1;
        drop(events);
        if first {
            q.ready.notify_one();
        }
    }
}

/// The observer's end of the queue.
pub struct FlowQueue(Arc<Queue>);

impl FlowQueue {
    /// Waits until events are queued, lets more gather for `window`, and
    /// takes them all (oldest first) into `batch`. Cancel-safe: events a
    /// cancelled call leaves behind are taken by the next.
    async fn next_batch(&self, window: Duration, batch: &mut Vec<FlowEvent>) {
        let empty = self
            .0
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if empty {
            // A producer that queues in between leaves a permit.
            self.0.ready.notified().await;
        }
        tokio::time::sleep(window).await;
        let mut events = self.0.events.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *events, batch);
    }
}

/// One flow in the ring, numbered in arrival order.
#[derive(Clone)]
pub struct Entry {
    pub seq: u64,
    pub record: Arc<enrich::Record>,
}

impl Entry {
    /// Its Hubble flow (built by the first reader).
    pub fn flow(&self) -> &Flow {
        self.record.flow()
    }
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
    /// The producers' queue: its count of events it could not take is
    /// also in `axoneme_hubble_lost_events_total`.
    queue: Arc<Queue>,
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
    pub fn new(node: &str, sizes: Sizes) -> (Arc<Self>, FlowSink, FlowQueue) {
        let queue = Arc::new(Queue {
            events: Mutex::new(Vec::new()),
            capacity: sizes.queue.max(1),
            ready: Notify::new(),
            lost: AtomicU64::new(0),
        });
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
            queue: queue.clone(),
        });
        let sink = FlowSink {
            queue: Some(queue.clone()),
        };
        (observer, sink, FlowQueue(queue))
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
        self.queue.lost.load(Ordering::Relaxed)
    }

    /// Subscribes to what is published from now on, and takes the ring's
    /// flows (oldest first) in the same critical section, so a follower
    /// neither misses nor repeats a flow between the two.
    pub fn subscribe_with_history(&self) -> (Vec<Entry>, broadcast::Receiver<Published>) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.published.subscribe();
        (ring.flows.iter().cloned().collect(), rx)
    }

    /// Adds records, under one lock: the oldest go when the ring is full.
    /// `records` is iterated under the lock: pass records already built.
    pub fn push(&self, records: impl IntoIterator<Item = enrich::Record>) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            let entry = Entry {
                seq: ring.next_seq,
                record: Arc::new(record),
            };
            ring.next_seq += 1;
            if ring.flows.len() == self.capacity {
                ring.flows.pop_front();
            }
            if self.published.receiver_count() > 0 {
                let _ = self.published.send(Published::Flow(entry.clone()));
            }
            ring.flows.push_back(entry);
        }
    }
}

/// The observer task: the one writer of the ring.
pub async fn run(
    observer: Arc<Observer>,
    queue: FlowQueue,
    state: NodeState,
    metrics: crate::metrics::FlowMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut enricher = enrich::Enricher::new(state);
    let mut changes = enricher.subscribe();
    let mut reported_lost = 0;
    let (mut batch, mut records) = (Vec::new(), Vec::new());
    loop {
        tokio::select! {
            _ = queue.next_batch(BATCH_WINDOW, &mut batch) => {
                // Enriched before the ring's lock is taken: readers wait
                // only for the insertion.
                records.extend(batch.drain(..).map(|e| {
                    let record = enricher.record(e);
                    let (kind, subtype, verdict) = record.labels();
                    metrics.processed(kind, subtype, verdict);
                    record
                }));
                observer.push(records.drain(..));
                // The queue and the batch trade vectors: neither keeps a
                // burst's capacity.
                batch.shrink_to(BATCH_KEPT);
                records.shrink_to(BATCH_KEPT);
            }
            _ = changes.changed() => enricher.invalidate(),
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

    fn flow(uuid: &str) -> enrich::Record {
        enrich::Record::built(Flow {
            uuid: uuid.into(),
            ..Default::default()
        })
    }

    #[test]
    fn the_ring_keeps_the_newest_and_counts_every_flow() {
        let (obs, _sink, _rx) = Observer::new("n", Sizes { ring: 3, queue: 4 });
        obs.push((0..5).map(|i| flow(&i.to_string())));
        let (history, _) = obs.subscribe_with_history();
        let kept: Vec<(u64, &str)> = history
            .iter()
            .map(|e| (e.seq, e.flow().uuid.as_str()))
            .collect();
        assert_eq!(kept, vec![(2, "2"), (3, "3"), (4, "4")]);
        assert_eq!(obs.counts(), (3, 5));
    }

    #[tokio::test]
    async fn followers_get_what_comes_after_their_history() {
        let (obs, _sink, _rx) = Observer::new("n", Sizes { ring: 8, queue: 4 });
        obs.push([flow("old")]);
        let (history, mut rx) = obs.subscribe_with_history();
        obs.push([flow("new")]);
        assert_eq!(history.len(), 1);
        match rx.recv().await.unwrap() {
            Published::Flow(e) => assert_eq!((e.seq, e.flow().uuid.as_str()), (1, "new")),
            Published::QueueLost(_) => panic!("no loss"),
        }
    }

    fn event(time_ms: u64) -> FlowEvent {
        FlowEvent::Datapath {
            event: Event::default(),
            time_ms,
        }
    }

    fn times(batch: &[FlowEvent]) -> Vec<u64> {
        batch
            .iter()
            .map(|e| match e {
                FlowEvent::Datapath { time_ms, .. } => *time_ms,
                FlowEvent::Http(_) => u64::MAX,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_takes_what_gathered_in_one_batch_in_order() {
        let (_obs, sink, queue) = Observer::new("n", Sizes { ring: 8, queue: 8 });
        let mut batch = Vec::new();
        let producer = sink.clone();
        tokio::spawn(async move {
            for t in 0..3 {
                producer.send(event(t));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        queue.next_batch(BATCH_WINDOW, &mut batch).await;
        assert_eq!(times(&batch), vec![0, 1, 2]);
        batch.clear();
        // Nothing queued: the next call waits for a producer.
        let waiting = tokio::time::timeout(
            Duration::from_secs(1),
            queue.next_batch(BATCH_WINDOW, &mut batch),
        );
        assert!(waiting.await.is_err(), "a batch with nothing queued");
        sink.send(event(7));
        queue.next_batch(BATCH_WINDOW, &mut batch).await;
        assert_eq!(times(&batch), vec![7]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_leaves_its_events_to_the_next() {
        let (_obs, sink, queue) = Observer::new("n", Sizes { ring: 8, queue: 8 });
        let mut batch = Vec::new();
        sink.send(event(1));
        // Cancelled during its window, after the producer's wake was taken.
        let cut =
            tokio::time::timeout(BATCH_WINDOW / 2, queue.next_batch(BATCH_WINDOW, &mut batch));
        assert!(cut.await.is_err());
        assert!(batch.is_empty());
        sink.send(event(2));
        tokio::time::timeout(
            Duration::from_secs(1),
            queue.next_batch(BATCH_WINDOW, &mut batch),
        )
        .await
        .expect("the events left behind are taken");
        assert_eq!(times(&batch), vec![1, 2]);
    }

    #[test]
    fn a_full_queue_counts_lost_events_and_never_blocks() {
        let (obs, sink, _queue) = Observer::new("n", Sizes { ring: 8, queue: 2 });
        for t in 0..5 {
            sink.send(event(t));
        }
        assert_eq!(obs.queue_lost(), 3);
        FlowSink::disabled().send(event(0));
    }
}
