//! The agent's Prometheus metrics (`--prometheus-serve-addr`, `:9962` by
//! default, inside the node's network namespace): families named and
//! labelled as Cilium's where Cilium has the same one (`axoneme_` for
//! `cilium_`), listed in docs/metrics.md.
//!
//! Three kinds of sources, each with one writer:
//! - read at scrape time ([`collector`]): the datapath's per-CPU traffic
//!   counters (summed over CPUs), map use, conntrack entries, endpoints,
//!   identities and enforced policies, from read-only map handles and the
//!   tasks' publications; nothing here writes a map;
//! - counted where they happen: L7 requests by the proxy ([`L7Metrics`]);
//! - latencies measured by the [`slo`] task from the caches' changes and
//!   the reconciler's publications.

mod collector;
pub mod server;
pub mod slo;

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub use collector::Sources;

use crate::l7proxy::Verdict;
pub use axoneme_kvstore::metrics::KvMetrics;
use axoneme_policy::compile::Direction;

/// Latency buckets in seconds: 1 ms to about 33 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
    proxy_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status_class: &'static str,
    verdict: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    protocol_l7: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct NodeLabel {
    node: String,
}

fn make_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// What the L7 proxy counts, per request (clones share the counts).
#[derive(Clone, Debug)]
pub struct L7Metrics {
    policy_l7: Family<RuleLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    upstream: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    /// The series a request counts in, by index once made: a request
    /// costs atomic increments, not a hash of its labels and a lock per
    /// family (a series appears on first use, as with `get_or_create`).
    made: Arc<Made>,
}

#[derive(Debug)]
struct Made {
    rules: [OnceLock<Counter>; RULES.len()],
    requests: Box<[OnceLock<Counter>]>,
    upstream: OnceLock<Histogram>,
}

/// `policy_l7_total`'s rules.
const RULES: [&str; 4] = ["received", "forwarded", "denied", "parse_errors"];
/// Methods as labels: the standard ones, anything else `OTHER` (a client
/// must not be able to create series at will).
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
const VERDICTS: usize = 4;
const DIRECTIONS: usize = 2;

impl Default for L7Metrics {
    fn default() -> Self {
        let series = METHODS.len() * STATUS_CLASSES.len() * VERDICTS * DIRECTIONS;
        L7Metrics {
            policy_l7: Family::default(),
            requests: Family::default(),
            upstream: Family::new_with_constructor(make_histogram),
            made: Arc::new(Made {
                rules: Default::default(),
                requests: (0..series).map(|_| OnceLock::new()).collect(),
                upstream: OnceLock::new(),
            }),
        }
    }
}

impl L7Metrics {
    fn rule(&self, i: usize) -> &Counter {
        self.made.rules[i].get_or_init(|| {
            self.policy_l7
                .get_or_create(&RuleLabels {
                    rule: RULES[i],
                    proxy_type: "http",
                })
                .clone()
        })
    }

    /// One request the proxy judged: its method, answer, verdict, whose
    /// rules, and the time from its arrival to the answer.
    pub fn request(
        &self,
        method: &str,
        status: u16,
        verdict: Verdict,
        direction: Direction,
        latency: std::time::Duration,
    ) {
        // Cilium's `policy_l7_total` rules: every request is received, then
        // forwarded, denied or a parse error.
        self.rule(0).inc();
        match verdict {
            Verdict::Forwarded => self.rule(1).inc(),
            Verdict::Denied => self.rule(2).inc(),
            Verdict::Malformed => self.rule(3).inc(),
            Verdict::UpstreamError => 0,
        };
        let (m, s) = (method_index(method), status_index(status));
        let v = match verdict {
            Verdict::Forwarded => 0,
            Verdict::Denied => 1,
            Verdict::Malformed => 2,
            Verdict::UpstreamError => 3,
        };
        let d = match direction {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        };
        let i = ((m * STATUS_CLASSES.len() + s) * VERDICTS + v) * DIRECTIONS + d;
        self.made.requests[i]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        method: METHODS[m],
                        status_class: STATUS_CLASSES[s],
                        verdict: verdict.as_str(),
                        direction: crate::l7proxy::event::direction_name(direction),
                    })
                    .clone()
            })
            .inc();
        if verdict == Verdict::Forwarded {
            self.made
                .upstream
                .get_or_init(|| {
                    self.upstream
                        .get_or_create(&UpstreamLabels {
                            protocol_l7: "http",
                        })
                        .clone()
                })
                .observe(latency.as_secs_f64());
        }
    }
}

fn method_index(method: &str) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

fn status_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => STATUS_CLASSES.len() - 1,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    r#type: &'static str,
    subtype: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LostLabels {
    source: &'static str,
}

/// What the flow pipeline counts (Hubble's `hubble_flows_processed_total`
/// and `hubble_lost_events_total`); clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct FlowMetrics {
    processed: Family<FlowLabels, Counter>,
    lost: Family<LostLabels, Counter>,
}

impl FlowMetrics {
    /// One flow into the ring: `L3_L4` or `L7`, the event it came from
    /// (`drop`, `policy-verdict`, `http`) and its verdict's name.
    pub fn processed(&self, r#type: &'static str, subtype: &'static str, verdict: &'static str) {
        self.processed
            .get_or_create(&FlowLabels {
                r#type,
                subtype,
                verdict,
            })
            .inc();
    }

    /// `n` events lost at `source` (`observer_events_queue`: the queue was
    /// full; `hubble_ring_buffer`: a follower fell behind).
    pub fn lost(&self, source: &'static str, n: u64) {
        self.lost.get_or_create(&LostLabels { source }).inc_by(n);
    }
}

/// Latencies the [`slo`] task observes.
#[derive(Clone, Debug)]
pub struct Latencies {
    node: NodeLabel,
    /// Cilium's `policy_implementation_delay`: a policy revision seen by
    /// this agent → enforced in this node's maps.
    pub(crate) policy_implementation_delay: Histogram,
    policy_propagation: Family<NodeLabel, Histogram, fn() -> Histogram>,
    identity_ready: Family<NodeLabel, Histogram, fn() -> Histogram>,
}

impl Latencies {
    fn new(node: &str) -> Self {
        Latencies {
            node: NodeLabel {
                node: node.to_string(),
            },
            policy_implementation_delay: make_histogram(),
            policy_propagation: Family::new_with_constructor(make_histogram),
            identity_ready: Family::new_with_constructor(make_histogram),
        }
    }

    /// A policy revision took `seconds` from stored to enforced here.
    pub fn policy_enforced(&self, seconds: f64) {
        self.policy_implementation_delay.observe(seconds);
        self.policy_propagation
            .get_or_create(&self.node)
            .observe(seconds);
    }

    /// A new local endpoint took `seconds` from its record to its identity
    /// in the maps.
    pub fn identity_ready(&self, seconds: f64) {
        self.identity_ready
            .get_or_create(&self.node)
            .observe(seconds);
    }
}

/// The agent's registry and the handles its tasks count with.
pub struct Metrics {
    registry: Registry,
    pub l7: L7Metrics,
    pub latencies: Latencies,
    pub flows: FlowMetrics,
    pub kvstore: KvMetrics,
    pub regenerations: Regenerations,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

/// Cilium's `endpoint_regeneration_time_stats_seconds`: one observation
/// per scope for every reconcile pass that changed the datapath (a pass
/// regenerates every endpoint a change touches at once). Clones share the
/// counts.
#[derive(Clone, Debug)]
pub struct Regenerations {
    by_scope: Family<ScopeLabel, Histogram, fn() -> Histogram>,
}

impl Default for Regenerations {
    fn default() -> Self {
        // 50 µs to about 3 s.
        fn histogram() -> Histogram {
            Histogram::new(exponential_buckets(0.00005, 2.0, 16))
        }
        Regenerations {
            by_scope: Family::new_with_constructor(histogram),
        }
    }
}

impl crate::reconcile::Regenerations for Regenerations {
    fn observe(&self, t: &crate::reconcile::PassTiming) {
        for (scope, d) in [
            ("policyCalculation", t.policy_calculation),
            ("mapSync", t.map_sync),
            ("total", t.total),
        ] {
            self.by_scope
                .get_or_create(&ScopeLabel { scope })
                .observe(d.as_secs_f64());
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every family, the scrape-time ones read from `sources`.
    pub fn new(node: &str, sources: Sources) -> Arc<Self> {
        let mut registry = Registry::with_prefix("axoneme");
        let l7 = L7Metrics::default();
        let latencies = Latencies::new(node);
        let flows = FlowMetrics::default();
        let kvstore = KvMetrics::default();
        kvstore.register(&mut registry, "The agent's");
        let regenerations = Regenerations::default();
        registry.register_with_unit(
            "endpoint_regeneration_time_stats",
            "Reconcile passes that changed the datapath, by scope (policyCalculation, mapSync, total)",
            Unit::Seconds,
            regenerations.by_scope.clone(),
        );
        registry.register(
            "hubble_flows_processed",
            "Flows the observer put in its ring, by type, subtype (the event) and verdict",
            flows.processed.clone(),
        );
        registry.register(
            "hubble_lost_events",
            "Events lost before becoming flows (observer_events_queue) or flows a follower missed (hubble_ring_buffer)",
            flows.lost.clone(),
        );
        registry.register(
            "policy_l7",
            "L7 requests the proxy judged, by rule (received, forwarded, denied, parse_errors)",
            l7.policy_l7.clone(),
        );
        registry.register(
            "proxy_http_requests",
            "HTTP requests through the L7 proxy by method, status class, verdict and whose rules",
            l7.requests.clone(),
        );
        registry.register_with_unit(
            "proxy_upstream_reply",
            "Time from a forwarded request's arrival to its upstream's answer",
            Unit::Seconds,
            l7.upstream.clone(),
        );
        registry.register(
            "policy_implementation_delay",
            "Seconds from a policy revision reaching this agent to its enforcement in the datapath",
            latencies.policy_implementation_delay.clone(),
        );
        registry.register_with_unit(
            "slo_policy_propagation",
            "Policy propagation SLO: a policy revision reaching this node to enforced, by node",
            Unit::Seconds,
            latencies.policy_propagation.clone(),
        );
        registry.register_with_unit(
            "slo_identity_ready",
            "Identity-ready SLO: a local endpoint record written to its identity in the maps, by node",
            Unit::Seconds,
            latencies.identity_ready.clone(),
        );
        let version = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        version
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("version", "The agent's version (value 1)", version);
        let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        registry.register_with_unit(
            "process_start_time",
            "When the agent started, in seconds since the Unix epoch",
            Unit::Seconds,
            start,
        );
        registry.register_collector(Box::new(sources));
        Arc::new(Metrics {
            registry,
            l7,
            latencies,
            flows,
            kvstore,
            regenerations,
        })
    }

    /// The `/metrics` answer for a scraper whose `Accept` is `accept`.
    pub fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        axoneme_exposition::respond(&self.registry, accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_in_its_series_and_clones_share_them() {
        let m = L7Metrics::default();
        let other = m.clone();
        let ms = std::time::Duration::from_millis(1);
        m.request("GET", 200, Verdict::Forwarded, Direction::Ingress, ms);
        other.request("GET", 200, Verdict::Forwarded, Direction::Ingress, ms);
        m.request("BREW", 403, Verdict::Denied, Direction::Egress, ms);
        let requests = |method, status_class, verdict, direction| {
            m.requests
                .get_or_create(&RequestLabels {
                    method,
                    status_class,
                    verdict,
                    direction,
                })
                .get()
        };
        assert_eq!(requests("GET", "2xx", "forwarded", "ingress"), 2);
        assert_eq!(requests("OTHER", "4xx", "denied", "egress"), 1);
        assert_eq!(requests("GET", "2xx", "forwarded", "egress"), 0);
        let rule = |rule| {
            m.policy_l7
                .get_or_create(&RuleLabels {
                    rule,
                    proxy_type: "http",
                })
                .get()
        };
        assert_eq!(
            (rule("received"), rule("forwarded"), rule("denied")),
            (3, 2, 1)
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &{
            let mut r = Registry::default();
            r.register("up", "", m.upstream.clone());
            r
        })
        .unwrap();
        assert!(text.contains("up_count{protocol_l7=\"http\"} 2"), "{text}");
    }

    #[test]
    fn request_labels_are_bounded() {
        let method = |m| METHODS[method_index(m)];
        assert_eq!(method("POST"), "POST");
        assert_eq!(method("BREW"), "OTHER");
        assert_eq!(method("post"), "OTHER");
        assert_eq!(method("OTHER"), "OTHER");
        let class = |s| STATUS_CLASSES[status_index(s)];
        assert_eq!(class(403), "4xx");
        assert_eq!(class(200), "2xx");
        assert_eq!(class(100), "1xx");
        assert_eq!(class(599), "5xx");
        assert_eq!(class(999), "other");
        assert_eq!(class(99), "other");
    }
}
