//! The operator's Prometheus metrics and its health endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Labels = Vec<(String, String)>;

/// Every metric the operator exports (prefix `axoneme_`).
pub struct Metrics {
    registry: Registry,
    pub operator_id: String,
    leading: AtomicBool,
    pub is_leader: Gauge,
    pub leader_transitions: Counter,
    pub identities: Gauge,
    pub identity_range_free: Gauge,
    pub identity_allocations: Counter,
    pub identity_allocation_failures: Family<Labels, Counter>,
    pub identity_gc_entries: Family<Labels, Counter>,
    pub identity_gc_runs: Counter,
    pub fenced_writes_rejected: Counter,
    pub endpoint_errors: Family<Labels, Counter>,
    pub assignments_written: Counter,
    /// Seconds from an endpoint record revision seen by the leader to its
    /// assignment written (allocating an identity when it needs one).
    pub identity_assignment_duration: Histogram,
    pub policy_validations: Family<Labels, Counter>,
    /// Kubernetes mode (registered always; zero in standalone mode).
    pub kube: crate::k8s::KubeMetrics,
    /// Every etcd call of this replica, timed.
    pub kvstore: axoneme_kvstore::metrics::KvMetrics,
    kubernetes: AtomicBool,
}

pub fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Metrics {
    pub fn new(operator_id: &str) -> Arc<Self> {
        let mut registry = Registry::with_prefix("axoneme");
        let m = Metrics {
            operator_id: operator_id.to_string(),
            leading: AtomicBool::new(false),
            is_leader: Gauge::default(),
            leader_transitions: Counter::default(),
            identities: Gauge::default(),
            identity_range_free: Gauge::default(),
            identity_allocations: Counter::default(),
            identity_allocation_failures: Family::default(),
            identity_gc_entries: Family::default(),
            identity_gc_runs: Counter::default(),
            fenced_writes_rejected: Counter::default(),
            endpoint_errors: Family::default(),
            assignments_written: Counter::default(),
            identity_assignment_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            policy_validations: Family::default(),
            kube: crate::k8s::KubeMetrics::default(),
            kvstore: Default::default(),
            kubernetes: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "operator_is_leader",
            "1 if this replica leads",
            m.is_leader.clone(),
        );
        registry.register(
            "operator_leader_transitions",
            "Times this replica became leader",
            m.leader_transitions.clone(),
        );
        registry.register(
            "identities",
            "Identities known to the leader",
            m.identities.clone(),
        );
        registry.register(
            "identity_range_free",
            "Free numbers left in the identity range",
            m.identity_range_free.clone(),
        );
        registry.register(
            "identity_allocations",
            "New identities created",
            m.identity_allocations.clone(),
        );
        registry.register(
            "identity_allocation_failures",
            "Endpoints that could not get an identity, by reason",
            m.identity_allocation_failures.clone(),
        );
        registry.register(
            "identity_gc_entries",
            "Identity GC outcomes per entry, by status",
            m.identity_gc_entries.clone(),
        );
        registry.register(
            "identity_gc_runs",
            "Identity GC passes",
            m.identity_gc_runs.clone(),
        );
        registry.register(
            "operator_fenced_writes_rejected",
            "Writes refused by etcd because this replica no longer led",
            m.fenced_writes_rejected.clone(),
        );
        registry.register(
            "operator_endpoint_errors",
            "Endpoint records rejected, by reason",
            m.endpoint_errors.clone(),
        );
        registry.register(
            "operator_assignments_written",
            "Endpoint identity assignments written",
            m.assignments_written.clone(),
        );
        registry.register_with_unit(
            "identity_assignment_duration",
            "Endpoint record revision seen by the leader to its identity assignment written",
            Unit::Seconds,
            m.identity_assignment_duration.clone(),
        );
        registry.register(
            "policy_validations",
            "Policy statuses written, by result",
            m.policy_validations.clone(),
        );
        registry.register(
            "kube_api_errors",
            "Failed Kubernetes API requests, by resource, verb and reason (forbidden: a missing RBAC permission)",
            m.kube.health.errors.clone(),
        );
        registry.register(
            "kube_api_problems",
            "Kubernetes API request kinds failing now (see /healthz)",
            m.kube.health.problem_count.clone(),
        );
        registry.register(
            "kube_policy_validations",
            "Policy objects judged (once per generation), by kind and result",
            m.kube.validations.clone(),
        );
        registry.register(
            "kube_mirror_writes",
            "kvstore writes mirroring the API, by store and op",
            m.kube.mirror_writes.clone(),
        );
        registry.register(
            "kube_object_writes",
            "Kubernetes API writes that succeeded, by resource and op",
            m.kube.object_writes.clone(),
        );
        m.kvstore.register(&mut registry, "The operator's");
        Arc::new(Metrics { registry, ..m })
    }

    /// Marks this replica as running in Kubernetes mode (`/healthz` then
    /// reports the API's health).
    pub fn set_kubernetes(&self) {
        self.kubernetes.store(true, Ordering::Relaxed);
    }

    /// The `/healthz` body: this replica, whether it leads, and in
    /// Kubernetes mode the API's problems (a missing permission is listed
    /// under `kubernetes.forbidden`).
    pub fn health_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"id": self.operator_id, "leader": self.leading()});
        if self.kubernetes.load(Ordering::Relaxed) {
            v["kubernetes"] = self.kube.health.json();
        }
        v
    }

    pub fn set_leader(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
        self.is_leader.set(i64::from(leading));
        if leading {
            self.leader_transitions.inc();
        }
    }

    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// The `/metrics` answer for a scraper whose `Accept` header is
    /// `accept`: its content type and body (see `axoneme_exposition`).
    pub fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        // Expire old API problems so the gauge is current.
        let _ = self.kube.health.problems();
        axoneme_exposition::respond(&self.registry, accept)
    }
}

async fn handle(
    metrics: Arc<Metrics>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (ctype, body) = metrics.render(accept);
            (StatusCode::OK, ctype, body)
        }
        "/healthz" => (
            StatusCode::OK,
            "application/json",
            metrics.health_json().to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response"))
}

/// Serves `/metrics` and `/healthz` until cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    axoneme_exposition::serve(listener, move |req| handle(metrics.clone(), req), cancel).await;
    Ok(())
}
