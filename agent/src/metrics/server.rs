//! `GET /metrics` over HTTP/1.1, on a listener made inside the node's
//! network namespace (where a DaemonSet pod on the host network would
//! listen), answered in the format the scraper negotiates.

use std::convert::Infallible;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::netdev::Ns;

/// Where `/metrics` is served: `--prometheus-serve-addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeAddr(pub Option<SocketAddr>);

impl ServeAddr {
    /// `:PORT` (every address of the node, both families), `HOST:PORT`
    /// (`[::1]:PORT` for IPv6), or empty for none.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(ServeAddr(None));
        }
        let bad = || {
            format!(
                "`{s}` is not an address to serve on; give :PORT, HOST:PORT \
                 ([ADDR]:PORT for IPv6), or an empty value to serve none"
            )
        };
        if let Some(port) = s.strip_prefix(':') {
            let port: u16 = port.parse().map_err(|_| bad())?;
            return Ok(ServeAddr(Some(SocketAddr::from((
                Ipv6Addr::UNSPECIFIED,
                port,
            )))));
        }
        s.parse().map(|a| ServeAddr(Some(a))).map_err(|_| bad())
    }
}

/// Binds `addr` inside `ns`. `[::]` takes IPv4 too; where IPv6 is off it
/// falls back to `0.0.0.0`.
pub fn listen(ns: &Ns, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let bind = move |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            s.set_only_v6(false)?;
        }
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(128)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    ns.run(move || match bind(addr) {
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
            bind(SocketAddr::from(([0, 0, 0, 0], addr.port()))).map_err(|_| e)
        }
        r => r,
    })
    .map_err(std::io::Error::other)?
}

async fn handle(
    metrics: Arc<Metrics>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = Response::builder();
    if req.uri().path() != "/metrics" {
        return Ok(response
            .status(StatusCode::NOT_FOUND)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
            .expect("valid response"));
    }
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Reading the maps is blocking syscalls (conntrack can be large).
    let rendered = tokio::task::spawn_blocking(move || metrics.render(accept.as_deref())).await;
    Ok(match rendered {
        Ok((ctype, body)) => response
            .status(StatusCode::OK)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body))),
        Err(e) => response
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(format!("rendering failed: {e}\n")))),
    }
    .expect("valid response"))
}

/// Serves `/metrics` on `listener` until cancelled.
pub async fn serve(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axoneme_exposition::serve(listener, move |req| handle(metrics.clone(), req), cancel).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_addresses() {
        let p = |s| ServeAddr::parse(s).map(|a| a.0);
        assert_eq!(p(""), Ok(None));
        assert_eq!(p(":9962"), Ok(Some("[::]:9962".parse().unwrap())));
        assert_eq!(p("127.0.0.1:9"), Ok(Some("127.0.0.1:9".parse().unwrap())));
        assert_eq!(
            p("[fd77::1]:9962"),
            Ok(Some("[fd77::1]:9962".parse().unwrap()))
        );
        for bad in [":", ":99999", "9962", "localhost:9962", "fd77::1:9962"] {
            let e = p(bad).unwrap_err();
            assert!(
                e.contains(&format!("`{bad}`")) && e.contains(":PORT"),
                "{e}"
            );
        }
    }
}
