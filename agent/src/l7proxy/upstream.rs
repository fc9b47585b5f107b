//! Kept-alive upstream connections to the original destinations, made
//! from the client's address with the proxy's mark (see [`super::sockets`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axoneme_identity::NumericIdentity;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::debug;

use super::sockets::SocketFactory;

/// Connects upstream from the node's namespace with the proxy's mark.
#[derive(Clone)]
pub(super) struct Connector {
    pub(super) sockets: SocketFactory,
    pub(super) timeout: Duration,
}

impl Connector {
    async fn connect(&self, src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = self.sockets.upstream(src)?;
        tokio::time::timeout(self.timeout, socket.connect(dst))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream connection: HTTP/1.1 through hyper (one request at a
/// time), HTTP/2 (streams side by side, for h2c clients), or the socket
/// itself for the proxy's own HTTP/1.1 relay ([`super::h1`]).
pub(super) enum Upstream {
    H1(hyper::client::conn::http1::SendRequest<Incoming>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
    Raw(TcpStream),
}

impl Upstream {
    fn is_closed(&self) -> bool {
        match self {
            Upstream::H1(s) => s.is_closed(),
            Upstream::H2(s) => s.is_closed(),
            Upstream::Raw(s) => raw_closed(s),
        }
    }
}

/// Whether an idle upstream socket is of no more use: closed by the
/// server, or with bytes nobody asked for. The reactor's last readiness
/// answers without a system call while nothing arrived.
pub(super) fn raw_closed(s: &TcpStream) -> bool {
    !matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// (client address, client identity, original destination): an upstream
/// connection carries the client's address, and the destination's node
/// judged it by the identity that address had, so only the same client
/// with the same identity may reuse it (not a new pod that got the address).
pub(super) type UpstreamKey = (IpAddr, NumericIdentity, SocketAddr);

/// Kept-alive upstream connections. A client connection keeps the
/// upstream connection it last used in its own slot (no shared lookup per
/// request: the hot path of keep-alive clients), and hands an HTTP/1 one
/// to the shared idle list when it closes, for the next connection of the
/// same client to the same destination. This costs less than a general
/// pool (hyper-util's: a URI per request, a keyed checkout).
pub(super) struct Upstreams {
    connector: Connector,
    max_idle_per_key: usize,
    idle: std::sync::Mutex<HashMap<UpstreamKey, Vec<Upstream>>>,
}

/// A client connection's upstream connection, with its key.
pub(super) type Slot = std::sync::Mutex<Option<(UpstreamKey, Upstream)>>;

impl Upstreams {
    /// Keeps at most `max_idle_per_key` idle connections per (client,
    /// destination).
    pub(super) fn new(connector: Connector, max_idle_per_key: usize) -> Self {
        Upstreams {
            connector,
            max_idle_per_key,
            idle: Default::default(),
        }
    }

    /// An idle connection for `key`: a socket (`raw`) or a hyper one.
    fn take_idle(&self, key: UpstreamKey, raw: bool) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&key)?;
        list.retain(|u| !u.is_closed());
        let found = list
            .iter()
            .rposition(|u| matches!(u, Upstream::Raw(_)) == raw)
            .map(|i| list.swap_remove(i));
        if list.is_empty() {
            idle.remove(&key);
        }
        found
    }

    /// An idle socket for `key`, for the proxy's own relay.
    pub(super) fn take_idle_raw(&self, key: UpstreamKey) -> Option<TcpStream> {
        match self.take_idle(key, true) {
            Some(Upstream::Raw(s)) => Some(s),
            _ => None,
        }
    }

    /// A new socket for `key`, for the proxy's own relay.
    pub(super) async fn connect_raw(&self, key: UpstreamKey) -> std::io::Result<TcpStream> {
        let (src, _, dst) = key;
        self.connector.connect(src, dst).await
    }

    /// When a client connection ends: its HTTP/1 upstream connection goes
    /// to the idle list (an HTTP/2 one closes with its last sender).
    pub(super) fn give_back(&self, slot: &Slot) {
        let Some((key, up @ Upstream::H1(_))) =
            slot.lock().unwrap_or_else(|e| e.into_inner()).take()
        else {
            return;
        };
        self.park(key, up);
    }

    /// When a client connection of the proxy's own relay ends between two
    /// requests: its upstream socket goes to the idle list.
    pub(super) fn give_back_raw(&self, key: UpstreamKey, stream: TcpStream) {
        self.park(key, Upstream::Raw(stream));
    }

    fn park(&self, key: UpstreamKey, up: Upstream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|u| !u.is_closed());
            !list.is_empty()
        });
        let list = idle.entry(key).or_default();
        if !up.is_closed() && list.len() < self.max_idle_per_key {
            list.push(up);
        }
    }

    async fn connect(&self, key: UpstreamKey, h2: bool) -> Result<Upstream, BoxError> {
        self.handshake(self.connect_raw(key).await?, key.2, h2)
            .await
    }

    /// Puts hyper's client on a connected socket to `dst`.
    async fn handshake(
        &self,
        stream: TcpStream,
        dst: SocketAddr,
        h2: bool,
    ) -> Result<Upstream, BoxError> {
        let io = TokioIo::new(stream);
        let ended = move |e: hyper::Error| debug!(%dst, error = %e, "upstream connection ended");
        Ok(if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move { conn.await.map_err(ended) });
            Upstream::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move { conn.await.map_err(ended) });
            Upstream::H1(sender)
        })
    }

    /// Sends `req` on the slot's connection, an idle one, or a new one. A
    /// request a kept connection closed before taking is sent once more on
    /// a new connection (it was not written, so this is safe).
    pub(super) async fn send(
        &self,
        slot: &Slot,
        key: UpstreamKey,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, BoxError> {
        let h2 = req.version() == hyper::Version::HTTP_2;
        let kept = {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                Some((k, _)) if *k != key => None,
                // HTTP/2 streams share the connection: a clone per stream.
                Some((_, Upstream::H2(s))) if h2 && !s.is_closed() => Some(Upstream::H2(s.clone())),
                Some((_, Upstream::H2(_))) if h2 => None,
                _ => slot.take().map(|(_, up)| up),
            }
        };
        let mut reused = kept.or_else(|| if h2 { None } else { self.take_idle(key, false) });
        loop {
            let retry = reused.is_some();
            let up = match reused.take() {
                Some(up) => up,
                None => self.connect(key, h2).await?,
            };
            let (sent, up) = match up {
                Upstream::H1(mut s) => {
                    if s.ready().await.is_err() && retry {
                        continue;
                    }
                    (s.try_send_request(req).await, Upstream::H1(s))
                }
                Upstream::H2(mut s) => {
                    if s.ready().await.is_err() && retry {
                        continue;
                    }
                    (s.try_send_request(req).await, Upstream::H2(s))
                }
                // Only the relay's own sockets are raw; hyper takes one
                // over as it would a new connection.
                Upstream::Raw(s) => {
                    reused = Some(self.handshake(s, key.2, h2).await?);
                    continue;
                }
            };
            match sent {
                Ok(resp) => {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, up));
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(again) if retry => req = again,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}
