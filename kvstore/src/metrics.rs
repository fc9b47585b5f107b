//! The kvstore's calls as a Prometheus family, shared by the agent and the
//! operator: Cilium's `kvstore_operations_duration_seconds`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::KvObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvLabels {
    action: &'static str,
    outcome: &'static str,
}

/// etcd calls by operation and outcome, with their time (retries
/// included). Clones share the counts.
#[derive(Clone, Debug)]
pub struct KvMetrics {
    operations: Family<KvLabels, Histogram, fn() -> Histogram>,
}

impl Default for KvMetrics {
    fn default() -> Self {
        // 0.5 ms to about 33 s: a local etcd answers in well under 1 ms,
        // a call that retries across members lasts up to its deadline.
        fn histogram() -> Histogram {
            Histogram::new(exponential_buckets(0.0005, 2.0, 17))
        }
        KvMetrics {
            operations: Family::new_with_constructor(histogram),
        }
    }
}

impl KvMetrics {
    /// Registers the family (`kvstore_operations_duration_seconds` under
    /// the registry's prefix); `whose` names the caller in its help.
    pub fn register(&self, registry: &mut Registry, whose: &str) {
        registry.register_with_unit(
            "kvstore_operations_duration",
            format!("{whose} etcd calls by operation (action) and outcome (success, fail), retries included"),
            Unit::Seconds,
            self.operations.clone(),
        );
    }
}

impl KvObserver for KvMetrics {
    fn observe(&self, op: &'static str, ok: bool, elapsed: std::time::Duration) {
        let outcome = if ok { "success" } else { "fail" };
        self.operations
            .get_or_create(&KvLabels {
                action: op,
                outcome,
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_action_and_outcome() {
        let m = KvMetrics::default();
        let mut registry = Registry::with_prefix("axoneme");
        m.register(&mut registry, "The test's");
        m.observe("get", true, std::time::Duration::from_millis(1));
        m.observe("get", true, std::time::Duration::from_millis(2));
        m.observe("txn", false, std::time::Duration::from_secs(5));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(
                "# HELP axoneme_kvstore_operations_duration_seconds The test's etcd calls"
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"axoneme_kvstore_operations_duration_seconds_count{action="get",outcome="success"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"axoneme_kvstore_operations_duration_seconds_count{action="txn",outcome="fail"} 1"#),
            "{out}"
        );
    }
}
