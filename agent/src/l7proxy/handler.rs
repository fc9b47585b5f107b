//! One request: identify both ends, judge it against the L7 rules of the
//! sides on this node, answer 403 or forward it upstream, record the event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::Direction;
use axoneme_policy::l7::HttpRequest;
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, CONNECTION};
use hyper::{Request, Response, StatusCode};
use tokio::sync::watch;
use tracing::warn;

use super::event::{self, rules_side, RequestText, Seen, Verdict};
use super::upstream::{Slot, Upstreams};
use super::{ProxyConfig, ProxyView};

/// What the proxy answers: the upstream's body as it comes, or its own
/// short text (no box per response).
pub(super) type Body = Either<Incoming, Full<Bytes>>;

/// What every connection of the proxy shares.
pub(super) struct Shared {
    pub view: watch::Receiver<Arc<ProxyView>>,
    pub cfg: ProxyConfig,
    pub upstreams: Upstreams,
    pub events: super::event::L7Sink,
}

fn text(status: StatusCode, body: &'static str, close: bool) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    if close {
        r.headers_mut()
            .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
    }
    r
}

/// Hop-by-hop headers, not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Removes the hop-by-hop headers and those `Connection` names. Most
/// requests have none: one pass over the names finds that out.
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// A request as the proxy's view sees it: its event so far (the rules'
/// side is the one that sent it here), the client's identity, and whose
/// rules refuse it (`None`: it passes).
pub(super) struct Judged {
    pub seen: Seen,
    pub src_identity: NumericIdentity,
    pub denied: Option<Direction>,
}

/// Judges `req` from `peer` to `orig` (the original destination) against
/// the L7 rules of the sides on this node. Both of the proxy's paths
/// (its own HTTP/1.1 relay and hyper's) judge by this.
pub(super) fn judge(
    view: &ProxyView,
    peer: SocketAddr,
    orig: SocketAddr,
    req: &HttpRequest<'_>,
    started: Instant,
) -> Judged {
    let src = view.peer(peer.ip());
    let dst = view.peer(orig.ip());
    Judged {
        seen: Seen {
            request: RequestText::new(req.method, req.path, req.host),
            src: (peer, src.identity),
            dst: (orig, dst.identity),
            direction: rules_side(dst.local),
            started,
        },
        src_identity: src.identity,
        denied: view.denied_by(src, dst, orig.port(), req),
    }
}

/// Answers one request of the client connection `peer` → `orig` (the
/// original destination), whose upstream connection is kept in `slot`.
pub(super) async fn handle(
    shared: &Shared,
    slot: &Slot,
    peer: SocketAddr,
    orig: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let view = shared.view.borrow().clone();
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut headers = Vec::with_capacity(req.headers().len());
    headers.extend(
        req.headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))),
    );
    let judged = judge(
        &view,
        peer,
        orig,
        &HttpRequest {
            method: req.method().as_str(),
            path,
            host,
            headers: &headers,
        },
        started,
    );
    drop(headers);
    let mut seen = judged.seen;
    let reject = |seen: Seen, status, body, verdict| {
        event::record(&shared.events, seen, status, verdict);
        text(status, body, true)
    };
    if seen.request.path().len() > shared.cfg.max_uri_bytes {
        return reject(
            seen,
            StatusCode::URI_TOO_LONG,
            "URI Too Long\r\n",
            Verdict::Malformed,
        );
    }
    if let Some(by) = judged.denied {
        seen.direction = by;
        event::record(&shared.events, seen, StatusCode::FORBIDDEN, Verdict::Denied);
        return text(StatusCode::FORBIDDEN, "Access denied\r\n", false);
    }
    let (mut parts, body) = req.into_parts();
    let h2 = parts.version == hyper::Version::HTTP_2;
    if h2 {
        // HTTP/2 upstream needs a scheme and an authority: the client's, or
        // the original destination.
        if parts.uri.authority().is_none() {
            let Ok(uri) = format!("http://{orig}{}", seen.request.path()).parse::<hyper::Uri>()
            else {
                return reject(
                    seen,
                    StatusCode::BAD_REQUEST,
                    "Bad Request\r\n",
                    Verdict::Malformed,
                );
            };
            parts.uri = uri;
        }
    } else {
        // HTTP/1.1 upstream, origin-form target, a Host for HTTP/1.0 clients.
        if parts.uri.authority().is_some() {
            if let Some(target) = parts.uri.path_and_query().cloned() {
                parts.uri = target.into();
            }
        }
        parts.version = hyper::Version::HTTP_11;
        if !parts.headers.contains_key(hyper::header::HOST) {
            if let Ok(h) = hyper::header::HeaderValue::from_str(&orig.to_string()) {
                parts.headers.insert(hyper::header::HOST, h);
            }
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    let req = Request::from_parts(parts, body);
    match shared
        .upstreams
        .send(slot, (peer.ip(), judged.src_identity, orig), req)
        .await
    {
        Ok(resp) => {
            event::record(&shared.events, seen, resp.status(), Verdict::Forwarded);
            resp.map(Either::Left)
        }
        Err(e) => {
            warn!(%orig, error = %crate::error_chain(e.as_ref()), "upstream unreachable");
            event::record(
                &shared.events,
                seen,
                StatusCode::SERVICE_UNAVAILABLE,
                Verdict::UpstreamError,
            );
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream unavailable\r\n",
                false,
            )
        }
    }
}
