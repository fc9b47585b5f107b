//! The L7 event of every request the proxy judged: an `http` event in the
//! agent's event ring (`axoneme events --type http`) and a debug log line
//! (target `axoneme::l7`).

use std::net::SocketAddr;
use std::time::Instant;

use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::Direction;
use hyper::StatusCode;
use tracing::debug;

use crate::views::{EventRing, HttpEvent};

/// What the proxy did with a request. Serialized (and shown by the API) as
/// `forwarded`, `denied`, `malformed`, `upstream-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Allowed and sent upstream; the status is the upstream's.
    Forwarded,
    /// Refused by an L7 rule: 403.
    Denied,
    /// Not a request the proxy forwards (ambiguous length, target too
    /// long, no usable authority): 400 or 414, and the connection closes.
    Malformed,
    /// Allowed, but the original destination could not be reached: 503.
    UpstreamError,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Forwarded => "forwarded",
            Verdict::Denied => "denied",
            Verdict::Malformed => "malformed",
            Verdict::UpstreamError => "upstream-error",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a direction in L7 events: `ingress` (the destination's
/// rules) or `egress` (the source's).
pub const fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// Whose rules sent a request to this proxy: the destination's if it is
/// on this node, else the source's.
pub(super) fn rules_side(dst_local: bool) -> Direction {
    if dst_local {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

/// A request's method, path (with query) and host, in one allocation:
/// the event ring keeps one per request.
#[derive(Debug, Clone)]
pub struct RequestText {
    text: Box<str>,
    method_end: usize,
    path_end: usize,
}

impl RequestText {
    pub fn new(method: &str, path: &str, host: &str) -> Self {
        let mut text = String::with_capacity(method.len() + path.len() + host.len());
        text.push_str(method);
        text.push_str(path);
        text.push_str(host);
        RequestText {
            text: text.into_boxed_str(),
            method_end: method.len(),
            path_end: method.len() + path.len(),
        }
    }

    pub fn method(&self) -> &str {
        &self.text[..self.method_end]
    }

    pub fn path(&self) -> &str {
        &self.text[self.method_end..self.path_end]
    }

    pub fn host(&self) -> &str {
        &self.text[self.path_end..]
    }
}

/// What an L7 event says about a request, besides its answer.
pub(super) struct Seen {
    pub request: RequestText,
    pub src: (SocketAddr, NumericIdentity),
    pub dst: (SocketAddr, NumericIdentity),
    /// Whose rules: the destination's (ingress) or the source's (egress).
    pub direction: Direction,
    pub started: Instant,
}

/// Where the proxy's L7 events go: the API's recent events and the
/// metrics.
#[derive(Clone, Default)]
pub struct L7Sink {
    pub ring: EventRing,
    pub metrics: crate::metrics::L7Metrics,
}

impl From<EventRing> for L7Sink {
    fn from(ring: EventRing) -> Self {
        L7Sink {
            ring,
            metrics: Default::default(),
        }
    }
}

/// Records one L7 event: an `http` event for the API, its counts in the
/// metrics, and a debug log line (a line per request at info cost a tenth
/// of the proxy's time, docs/benchmarks.md).
pub(super) fn record(sink: &L7Sink, seen: Seen, status: StatusCode, verdict: Verdict) {
    let elapsed = seen.started.elapsed();
    let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    sink.metrics.request(
        seen.request.method(),
        status.as_u16(),
        verdict,
        seen.direction,
        elapsed,
    );
    debug!(
        target: "axoneme::l7",
        method = seen.request.method(),
        path = seen.request.path(),
        host = seen.request.host(),
        status = status.as_u16(),
        verdict = verdict.as_str(),
        direction = direction_name(seen.direction),
        src = %seen.src.0,
        src_identity = seen.src.1 .0,
        dst = %seen.dst.0,
        dst_identity = seen.dst.1 .0,
        latency_us,
        "http request"
    );
    sink.ring.push_http(HttpEvent {
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        verdict,
        direction: seen.direction,
        src: (seen.src.0, seen.src.1 .0),
        dst: (seen.dst.0, seen.dst.1 .0),
        request: seen.request,
        status: status.as_u16(),
        latency_us,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_serialize_to_the_api_strings() {
        for (v, s) in [
            (Verdict::Forwarded, "forwarded"),
            (Verdict::Denied, "denied"),
            (Verdict::Malformed, "malformed"),
            (Verdict::UpstreamError, "upstream-error"),
        ] {
            assert_eq!(v.as_str(), s);
            assert_eq!(v.to_string(), s);
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(s));
            assert_eq!(serde_json::from_value::<Verdict>(s.into()).unwrap(), v);
        }
    }

    #[test]
    fn request_text_keeps_its_parts() {
        let r = RequestText::new("GET", "/v1/é?x=1", "payments:8080");
        assert_eq!(
            (r.method(), r.path(), r.host()),
            ("GET", "/v1/é?x=1", "payments:8080")
        );
        let r = RequestText::new("", "", "");
        assert_eq!((r.method(), r.path(), r.host()), ("", "", ""));
    }
}
