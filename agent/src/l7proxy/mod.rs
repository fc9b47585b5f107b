//! The L7 HTTP proxy: the datapath redirects flows whose policy entry
//! carries the proxy port, transparently — the accepted socket's local
//! address is the original destination (TPROXY semantics), its peer the
//! real client. Per request it looks up the L7 rules for (source identity,
//! destination endpoint, port) in the latest policy snapshot, answers
//! `403 Access denied` (as Cilium) or forwards the request to the original
//! destination over a pooled connection whose packets carry
//! [`MARK_PROXY`] (so the datapath does not judge them again), and logs an
//! L7 event. Plain HTTP/1.1 requests are parsed, judged and relayed by the
//! proxy's own path, in the client connection's task; everything else
//! (h2c, chunked or ambiguous bodies, malformed heads) by hyper, behind the
//! framing guard (crate `axoneme-httpguard`), which refuses the heads whose
//! length could be read two ways.
//!
//! - [`view`]: the policy snapshot the proxy reads (identities by
//!   longest-prefix match, local endpoints, compiled L7 rules);
//! - [`redirect`]: the node's plumbing that brings redirected flows here;
//! - [`sockets`]: the listener and upstream sockets, in the node's namespace;
//! - [`upstream`]: kept-alive upstream connections;
//! - [`server`]: the accept loop, one task per client connection;
//! - [`h1`]: the proxy's own HTTP/1.1 relay, which serves a connection
//!   until a request it does not take, then hands it to hyper;
//! - [`handler`]: one request: judge, answer or forward, record the event;
//! - [`event`]: the L7 event and its typed verdict.

pub mod event;
mod h1;
mod handler;
pub mod redirect;
mod server;
pub mod sockets;
mod upstream;
pub mod view;

use std::time::Duration;

pub use event::{L7Sink, Verdict};
pub use redirect::install_redirect;
pub use server::serve;
pub use sockets::SocketFactory;
pub use view::{view_of, Peer, ProxyView};

/// Packets of the proxy's upstream connections carry this mark: the
/// request on them was already judged at L7.
pub const MARK_PROXY: u32 = axoneme_bpf_common::MARK_PROXY;

/// Every limit and timeout of the proxy. The defaults are what the agent
/// runs with unless told otherwise.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Largest request head (request line and headers) in bytes; a larger
    /// one is answered 431 and the connection closes. For HTTP/2, the
    /// largest header list. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Longest request target (path and query) in bytes; a longer one is
    /// answered 414 and the connection closes. Default 8 KiB.
    pub max_uri_bytes: usize,
    /// Time to receive a request head, from its first byte (slowloris);
    /// then the connection closes. Default 10 s.
    pub header_timeout: Duration,
    /// Time to connect to the original destination; then the request is
    /// answered 503. Default 3 s.
    pub connect_timeout: Duration,
    /// Idle HTTP/1 upstream connections kept per (client address, client
    /// identity, destination) once their client connections closed, for
    /// the client's next connections. Default 64.
    pub max_idle_upstreams_per_key: usize,
    /// Connections the kernel queues for the proxy before it accepts them
    /// (the listener's backlog, [`SocketFactory::listener_with_backlog`]).
    /// Default 1024.
    pub listen_backlog: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_idle_upstreams_per_key: 64,
            listen_backlog: 1024,
        }
    }
}
