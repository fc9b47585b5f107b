//! The accept loop: each client connection is served by the proxy's own
//! HTTP/1.1 relay ([`super::h1`]) and, from the first request it does not
//! take, by hyper (HTTP/1.1 or h2c) behind the framing guard, with its own
//! upstream slot.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::event::{self, rules_side, RequestText, Seen, Verdict};
use super::h1;
use super::handler::{handle, Shared};
use super::upstream::{Connector, Slot, Upstreams};
use super::{ProxyConfig, ProxyView, SocketFactory};
use axoneme_httpguard::{FramingGuard, Refused};

/// Serves `listener` until `cancel`.
pub async fn serve(
    listener: std::net::TcpListener,
    sockets: SocketFactory,
    view: watch::Receiver<Arc<ProxyView>>,
    cfg: ProxyConfig,
    events: super::event::L7Sink,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let connector = Connector {
        sockets,
        timeout: cfg.connect_timeout,
    };
    let upstreams = Upstreams::new(connector, cfg.max_idle_upstreams_per_key);
    let shared = Arc::new(Shared {
        view,
        cfg,
        upstreams,
        events,
    });
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "proxy accept failed");
                    continue;
                }
            },
        };
        // The original destination: the socket's local address.
        let Ok(orig) = stream.local_addr() else {
            continue;
        };
        // Answers leave at once, as the upstream requests do (nginx does
        // the same on kept-alive connections).
        let _ = stream.set_nodelay(true);
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let orig = SocketAddr::new(orig.ip().to_canonical(), orig.port());
        tokio::spawn(connection(shared.clone(), stream, peer, orig));
    }
}

/// Serves one client connection `peer` → `orig` (the original
/// destination) until it closes, then hands its upstream connection back.
async fn connection(
    shared: Arc<Shared>,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    orig: SocketAddr,
) {
    let read = match h1::relay(&shared, &mut stream, peer, orig).await {
        h1::End::Closed => return,
        h1::End::Handover(read) => read,
    };
    // HTTP/1.1, or cleartext HTTP/2 with prior knowledge (h2c, as gRPC
    // speaks it): every stream is a request checked on its own.
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.cfg.header_timeout)
        // hyper answers 431 when the head does not fit.
        .max_buf_size(shared.cfg.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(shared.cfg.max_header_bytes).unwrap_or(u32::MAX));
    // Heads with ambiguous lengths never reach hyper (see framing).
    let refused = {
        let shared = shared.clone();
        Box::new(move |r: Refused| {
            let view = shared.view.borrow().clone();
            warn!(%peer, %orig, reason = r.reason, "request refused: ambiguous length");
            let seen = Seen {
                request: RequestText::new(&r.method, &r.path, &r.host),
                src: (peer, view.identity(peer.ip())),
                dst: (orig, view.identity(orig.ip())),
                direction: rules_side(view.is_local(orig.ip())),
                started: Instant::now(),
            };
            event::record(
                &shared.events,
                seen,
                StatusCode::BAD_REQUEST,
                Verdict::Malformed,
            );
        })
    };
    let stream =
        FramingGuard::new(stream, shared.cfg.max_header_bytes, refused).with_read(read.into());
    let slot = Arc::new(Slot::default());
    let service = {
        let (shared, slot) = (shared.clone(), slot.clone());
        hyper::service::service_fn(move |req| {
            let (shared, slot) = (shared.clone(), slot.clone());
            async move { Ok::<_, Infallible>(handle(&shared, &slot, peer, orig, req).await) }
        })
    };
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
    shared.upstreams.give_back(&slot);
}
