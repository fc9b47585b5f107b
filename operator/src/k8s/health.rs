//! The Kubernetes API as the operator sees it: every failed request is
//! classified, logged, counted and kept as a *problem* until the same
//! request succeeds (or stops recurring), so a missing RBAC permission is a
//! loud, visible error — in the log, in `axoneme_kube_api_errors_total`, in
//! `axoneme_kube_api_problems` and in `/healthz` — and never a silent stall.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axoneme_crds::kube;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tracing::{error, warn};

type Labels = Vec<(String, String)>;

/// A problem not seen again for this long is no longer reported: every
/// failing request is retried well within it (watches within 5 s, writes
/// within 10 s), and a watch that resumes after an outage may have nothing
/// to report for a long time.
pub const PROBLEM_EXPIRY: Duration = Duration::from_secs(30);

/// A failing request kind is logged on its first failure, then at most
/// this often (it is retried every few seconds).
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// 403: the ServiceAccount lacks an RBAC permission.
    Forbidden,
    /// 401: the credentials are not accepted (expired token?).
    Unauthorized,
    /// 404: e.g. a CRD that is not installed.
    NotFound,
    /// 409.
    Conflict,
    /// 422 / 400: the server refused what was sent.
    Invalid,
    /// No answer: connection refused, timeout, TLS.
    Unreachable,
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Forbidden => "forbidden",
            Reason::Unauthorized => "unauthorized",
            Reason::NotFound => "not-found",
            Reason::Conflict => "conflict",
            Reason::Invalid => "invalid",
            Reason::Unreachable => "unreachable",
            Reason::Other => "other",
        }
    }

    /// Classifies a client error.
    pub fn of(e: &kube::Error) -> Reason {
        match e {
            kube::Error::Api(status) => match status.code {
                403 => Reason::Forbidden,
                401 => Reason::Unauthorized,
                404 => Reason::NotFound,
                409 => Reason::Conflict,
                400 | 422 => Reason::Invalid,
                _ => Reason::Other,
            },
            kube::Error::HyperError(_) | kube::Error::Service(_) => Reason::Unreachable,
            _ => Reason::Other,
        }
    }
}

/// The message of a client error: the API server's own words when it
/// answered (they name the user, verb and resource of an RBAC denial).
pub fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => {
            let mut s = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    }
}

/// One failing request kind.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The resource, e.g. `ciliumnetworkpolicies/status`.
    pub resource: String,
    /// `list`, `watch`, `patch`, `delete`.
    pub verb: String,
    pub reason: Reason,
    /// The last error's message.
    pub message: String,
    /// Failures since the last success.
    pub count: u64,
    /// Unix milliseconds of the first failure since the last success.
    pub since_ms: u64,
    #[serde(skip)]
    last: Instant,
    #[serde(skip)]
    logged: Option<Instant>,
}

/// The health of this replica's use of the Kubernetes API.
pub struct ApiHealth {
    problems: Mutex<BTreeMap<(String, String), Problem>>,
    pub errors: Family<Labels, Counter>,
    pub problem_count: Gauge,
}

impl Default for ApiHealth {
    fn default() -> Self {
        Self::new()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl ApiHealth {
    pub fn new() -> Self {
        ApiHealth {
            problems: Mutex::new(BTreeMap::new()),
            errors: Family::default(),
            problem_count: Gauge::default(),
        }
    }

    /// Records a failed `verb` on `resource`: counted, logged (an error for
    /// a permission problem, naming what to grant), kept as a problem.
    pub fn failed(&self, resource: &str, verb: &str, e: &kube::Error) {
        self.failed_with(resource, verb, Reason::of(e), message(e));
    }

    /// As [`failed`](Self::failed), with the classification done.
    pub fn failed_with(&self, resource: &str, verb: &str, reason: Reason, message: String) {
        self.errors
            .get_or_create(&vec![
                ("resource".to_string(), resource.to_string()),
                ("verb".to_string(), verb.to_string()),
                ("reason".to_string(), reason.as_str().to_string()),
            ])
            .inc();
        let mut problems = self.problems.lock().expect("poisoned");
        let entry = problems
            .entry((resource.to_string(), verb.to_string()))
            .or_insert_with(|| Problem {
                resource: resource.to_string(),
                verb: verb.to_string(),
                reason,
                message: String::new(),
                count: 0,
                since_ms: now_ms(),
                last: Instant::now(),
                logged: None,
            });
        entry.reason = reason;
        entry.count += 1;
        entry.last = Instant::now();
        let count = entry.count;
        if entry.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            entry.logged = Some(Instant::now());
            match reason {
                Reason::Forbidden | Reason::Unauthorized => error!(
                    resource,
                    verb,
                    reason = reason.as_str(),
                    failures = count,
                    message = %message,
                    "Kubernetes API permission denied: the operator's ServiceAccount needs \
                     `{verb}` on `{resource}` (see helm/axoneme/files/rbac/operator.yaml)"
                ),
                _ => warn!(resource, verb, reason = reason.as_str(), failures = count,
                    message = %message, "Kubernetes API request failed; retrying"),
            }
        }
        entry.message = message;
        self.problem_count
            .set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
    }

    /// Records a success of `verb` on `resource`: its problem, if any, is over.
    pub fn succeeded(&self, resource: &str, verb: &str) {
        let mut problems = self.problems.lock().expect("poisoned");
        if problems
            .remove(&(resource.to_string(), verb.to_string()))
            .is_some()
        {
            tracing::info!(resource, verb, "Kubernetes API requests succeed again");
        }
        self.problem_count
            .set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
    }

    /// Current problems (expired ones dropped), sorted by resource and verb.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = self.problems.lock().expect("poisoned");
        problems.retain(|_, p| p.last.elapsed() < PROBLEM_EXPIRY);
        self.problem_count
            .set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
        problems.values().cloned().collect()
    }

    /// The `kubernetes` part of `/healthz`.
    pub fn json(&self) -> serde_json::Value {
        let problems = self.problems();
        let forbidden: Vec<String> = problems
            .iter()
            .filter(|p| matches!(p.reason, Reason::Forbidden | Reason::Unauthorized))
            .map(|p| format!("{} {}", p.verb, p.resource))
            .collect();
        serde_json::json!({
            "healthy": problems.is_empty(),
            "forbidden": forbidden,
            "problems": problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_lasts_until_the_request_succeeds() {
        let h = ApiHealth::new();
        assert_eq!(h.json()["healthy"], true);
        h.failed_with(
            "ciliumidentities",
            "patch",
            Reason::Forbidden,
            "cannot create resource".into(),
        );
        h.failed_with(
            "ciliumidentities",
            "patch",
            Reason::Forbidden,
            "cannot create resource".into(),
        );
        let j = h.json();
        assert_eq!(j["healthy"], false);
        assert_eq!(j["forbidden"][0], "patch ciliumidentities");
        assert_eq!(j["problems"][0]["count"], 2);
        assert_eq!(j["problems"][0]["reason"], "forbidden");
        assert_eq!(h.problem_count.get(), 1);
        h.succeeded("ciliumidentities", "delete");
        assert_eq!(h.problems().len(), 1);
        h.succeeded("ciliumidentities", "patch");
        assert_eq!(h.json()["healthy"], true);
        assert_eq!(h.problem_count.get(), 0);
    }

    #[test]
    fn api_errors_are_classified_by_code() {
        let status = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "m".into(),
                ..Default::default()
            }))
        };
        assert_eq!(Reason::of(&status(403)), Reason::Forbidden);
        assert_eq!(Reason::of(&status(404)), Reason::NotFound);
        assert_eq!(Reason::of(&status(500)), Reason::Other);
        assert_eq!(message(&status(403)), "m");
    }
}
