//! The L7 HTTP proxy: the datapath redirects flows whose policy entry
//! carries the proxy port, transparently — the accepted socket's local
//! address is the original destination (TPROXY semantics), its peer the
//! real client. Per request it looks up the L7 rules for (source identity,
//! destination endpoint, port) in the latest policy snapshot, answers
//! `403 Access denied` (as Cilium) or forwards the request to the original
//! destination over a pooled connection whose packets carry
//! [`MARK_PROXY`] (so the datapath does not judge them again), and logs an
//! L7 event. HTTP parsing is hyper's; [`crate::framing`] refuses, before
//! hyper, the heads whose length could be read two ways.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Decision, Direction, EndpointPolicy, Verdict, PROTO_TCP};
use axoneme_policy::l7::{HttpMatcher, HttpRequest};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, CONNECTION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::framing::{FramingGuard, Refused};
use crate::views::{EventRing, HttpEvent};

/// Packets of the proxy's upstream connections carry this mark: the
/// request on them was already judged at L7.
pub const MARK_PROXY: u32 = axoneme_bpf_common::MARK_PROXY;

/// What the proxy needs from the node's state, rebuilt after every
/// reconcile pass and swapped in whole (a policy change applies to the
/// next request, also on an open keep-alive connection).
#[derive(Default)]
pub struct ProxyView {
    /// Every endpoint address and policy CIDR in the cluster.
    pub ipcache: BTreeMap<IpNet, NumericIdentity>,
    /// This node's endpoints' addresses.
    pub local: HashMap<IpAddr, NumericIdentity>,
    /// The policies of local endpoint identities that have L7 rules.
    pub policies: HashMap<NumericIdentity, Arc<EndpointPolicy>>,
    /// Each distinct rule list, compiled once (keyed by its address).
    matchers: HashMap<usize, Arc<HttpMatcher>>,
}

impl ProxyView {
    /// Builds a view; rule lists whose regexes do not compile (validation
    /// rejects them first) deny every request.
    pub fn new(
        ipcache: BTreeMap<IpNet, NumericIdentity>,
        local: HashMap<IpAddr, NumericIdentity>,
        policies: HashMap<NumericIdentity, Arc<EndpointPolicy>>,
    ) -> Self {
        let mut matchers = HashMap::new();
        for p in policies.values() {
            for dir in [Direction::Ingress, Direction::Egress] {
                for v in p.direction(dir).entries.values() {
                    if let Verdict::Redirect(rules) = v {
                        let key = Arc::as_ptr(rules) as usize;
                        if let std::collections::hash_map::Entry::Vacant(e) = matchers.entry(key) {
                            match HttpMatcher::new(rules) {
                                Ok(m) => {
                                    e.insert(Arc::new(m));
                                }
                                Err(err) => {
                                    warn!(error = %err, "L7 rules do not compile; their requests are denied")
                                }
                            }
                        }
                    }
                }
            }
        }
        ProxyView {
            ipcache,
            local,
            policies,
            matchers,
        }
    }

    /// The identity of an address: the longest ipcache prefix, else world.
    pub fn identity(&self, ip: IpAddr) -> NumericIdentity {
        if let Some(id) = self.local.get(&ip) {
            return *id;
        }
        if let Some(id) = self.ipcache.get(&IpNet::from(ip)) {
            return *id;
        }
        self.ipcache
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, id)| *id)
            .unwrap_or(NumericIdentity(axoneme_bpf_common::IDENTITY_WORLD))
    }

    /// Which side's L7 rules refuse the request, of the sides on this node
    /// (the destination's ingress, the source's egress); `None`: it passes.
    pub fn denied_by(
        &self,
        src: (NumericIdentity, bool),
        dst: (NumericIdentity, bool),
        port: u16,
        req: &HttpRequest<'_>,
    ) -> Option<Direction> {
        let side = |local: (NumericIdentity, bool), dir: Direction, peer: NumericIdentity| {
            if !local.1 {
                return true;
            }
            let Some(policy) = self.policies.get(&local.0) else {
                return true;
            };
            match policy.direction(dir).lookup(peer, PROTO_TCP, port) {
                Decision::Allow => true,
                Decision::Deny(_) => false,
                Decision::Redirect(rules) => self
                    .matchers
                    .get(&(Arc::as_ptr(&rules) as usize))
                    .is_some_and(|m| m.allows(req)),
            }
        };
        if !side(dst, Direction::Ingress, src.0) {
            Some(Direction::Ingress)
        } else if !side(src, Direction::Egress, dst.0) {
            Some(Direction::Egress)
        } else {
            None
        }
    }
}

/// The proxy's view of what `want` asks and the engine computed: every
/// address's identity, this node's endpoints, and the policies of local
/// identities that have L7 rules.
pub fn view_of(
    want: &crate::reconcile::Desired,
    engine: &axoneme_policy::engine::Engine,
) -> ProxyView {
    let mut ipcache = want.ipcache.clone();
    for (net, id) in engine.cidr_identities() {
        ipcache.entry(net).or_insert(id);
    }
    let mut local = HashMap::new();
    let mut policies = HashMap::new();
    for ep in &want.local {
        let Some(id) = ep.identity else { continue };
        for a in &ep.addresses {
            local.insert(*a, id);
        }
        if let Some(p) = engine.endpoint_policy(id) {
            let has_l7 = [Direction::Ingress, Direction::Egress].iter().any(|d| {
                p.direction(*d)
                    .entries
                    .values()
                    .any(|v| matches!(v, Verdict::Redirect(_)))
            });
            if has_l7 {
                policies.entry(id).or_insert_with(|| Arc::new(p.clone()));
            }
        }
    }
    ProxyView::new(ipcache, local, policies)
}

/// The node's redirect plumbing for the proxy on `port` (idempotent):
/// packets the datapath marked [`MARK_TO_PROXY`](axoneme_bpf_common::MARK_TO_PROXY)
/// go to the proxy's transparent socket (iptables/ip6tables TPROXY in
/// `mangle PREROUTING`, chain `AXONEME_PROXY`), answers to its upstream
/// connections to it too ([`SOCKET_RULE`]), and what either marks is
/// routed locally (`fwmark 0x1/0x1 → table 100: local default via lo`);
/// early demux is off in the node's namespace.
pub fn install_redirect(
    ns: &crate::netdev::Ns,
    port: u16,
) -> Result<(), crate::netdev::NetdevError> {
    use axoneme_bpf_common::{MARK_MASK, MARK_TO_PROXY};
    let mark = format!("{MARK_TO_PROXY:#x}/{MARK_MASK:#x}");
    // Early demux would attach the proxy's half-open socket to the flow's
    // later packets before routing, and a packet with a socket is never
    // forwarded (ip_forward drops it): they must reach the pod's veth,
    // where the datapath hands them to the proxy.
    ns.run(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_early_demux=0",
        "net.ipv4.tcp_early_demux=0",
    ])?;
    for (ip_family, tool, any) in [("-4", "iptables", "0.0.0.0/0"), ("-6", "ip6tables", "::/0")] {
        // Replace the rule of an earlier run rather than stacking them.
        let rule = [
            "ip", ip_family, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100",
        ];
        let mut del = rule;
        del[3] = "del";
        let _ = ns.run(&del);
        ns.run(&rule)?;
        ns.run(&[
            "ip", ip_family, "route", "replace", "local", any, "dev", "lo", "table", "100",
        ])?;
        // Create the chain and hook it once; then make its one rule current.
        let mangle = |args: &[&str]| {
            let mut all = vec![tool, "-w", "-t", "mangle"];
            all.extend_from_slice(args);
            ns.run(&all)
        };
        let _ = mangle(&["-N", "AXONEME_PROXY"]);
        if mangle(&["-C", "PREROUTING", "-j", "AXONEME_PROXY"]).is_err() {
            mangle(&["-A", "PREROUTING", "-j", "AXONEME_PROXY"])?;
        }
        mangle(&["-F", "AXONEME_PROXY"])?;
        mangle(&[
            "-A",
            "AXONEME_PROXY",
            "-p",
            "tcp",
            "-m",
            "mark",
            "--mark",
            &mark,
            "-j",
            "TPROXY",
            "--on-port",
            &port.to_string(),
            "--tproxy-mark",
            "0x1/0x1",
        ])?;
        mangle(&SOCKET_RULE)?;
    }
    Ok(())
}

/// The rule (in `mangle PREROUTING`) that delivers the answers of the
/// proxy's upstream connections, sent from the client's address, to the
/// proxy's socket rather than forwarding them to the client.
pub const SOCKET_RULE: [&str; 11] = [
    "-A",
    "AXONEME_PROXY",
    "-p",
    "tcp",
    "-m",
    "socket",
    "--transparent",
    "-j",
    "MARK",
    "--set-mark",
    "0x1/0x1",
];

/// Limits and timeouts.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Largest request head (request line and headers) in bytes: 431.
    pub max_header_bytes: usize,
    /// Longest request target in bytes: 414.
    pub max_uri_bytes: usize,
    /// Time to receive a request head (slowloris): the connection closes.
    pub header_timeout: Duration,
    /// Time to connect to the original destination: 503.
    pub connect_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// Makes sockets in the node's network namespace (a socket belongs to the
/// namespace it was created in, whichever thread uses it later).
#[derive(Clone)]
pub struct SocketFactory {
    netns: Option<std::path::PathBuf>,
}

impl SocketFactory {
    pub fn new(netns: Option<std::path::PathBuf>) -> Self {
        SocketFactory { netns }
    }

    fn in_netns<T: Send>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> std::io::Result<T> {
        match &self.netns {
            None => f(),
            Some(path) => std::thread::scope(|s| {
                s.spawn(|| {
                    let file = std::fs::File::open(path)?;
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    f()
                })
                .join()
                .map_err(|_| std::io::Error::other("socket thread panicked"))?
            }),
        }
    }

    /// A transparent dual-stack listener on `[::]:port`.
    pub fn listener(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        self.in_netns(|| {
            use socket2::{Domain, Protocol, Socket, Type};
            let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
            s.set_only_v6(false)?;
            s.set_reuse_address(true)?;
            // Accept connections addressed to other hosts (the pods).
            s.set_ip_transparent_v4(true)?;
            s.set_ip_transparent_v6(true)?;
            s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
            s.listen(1024)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
    }

    /// A marked, non-blocking TCP socket to connect upstream, bound to the
    /// client's address `src` (transparent): the destination's node judges
    /// the request by the client's identity, and the backend sees the
    /// client's address. The replies reach this socket through the node's
    /// `-m socket --transparent` rule.
    fn upstream(&self, src: IpAddr) -> std::io::Result<tokio::net::TcpSocket> {
        let s = self.in_netns(|| {
            use socket2::{Domain, Protocol, Socket, Type};
            let domain = if src.is_ipv6() {
                Domain::IPV6
            } else {
                Domain::IPV4
            };
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.set_mark(MARK_PROXY)?;
            if src.is_ipv6() {
                s.set_ip_transparent_v6(true)?;
            } else {
                s.set_ip_transparent_v4(true)?;
            }
            s.bind(&SocketAddr::new(src, 0).into())?;
            s.set_nonblocking(true)?;
            s.set_tcp_nodelay(true)?;
            Ok(s)
        })?;
        Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, body: &'static str, close: bool) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
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

/// Connects upstream from the node's namespace with the proxy's mark.
#[derive(Clone)]
struct Connector {
    sockets: SocketFactory,
    timeout: Duration,
}

impl Connector {
    async fn connect(
        &self,
        src: IpAddr,
        dst: SocketAddr,
    ) -> std::io::Result<TokioIo<tokio::net::TcpStream>> {
        let socket = self.sockets.upstream(src)?;
        let stream = tokio::time::timeout(self.timeout, socket.connect(dst))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        Ok(TokioIo::new(stream))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream connection: HTTP/1.1 (one request at a time) or HTTP/2
/// (streams side by side, for h2c clients).
enum Upstream {
    H1(hyper::client::conn::http1::SendRequest<Incoming>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

impl Upstream {
    fn is_closed(&self) -> bool {
        match self {
            Upstream::H1(s) => s.is_closed(),
            Upstream::H2(s) => s.is_closed(),
        }
    }
}

/// (client address, client identity, original destination): an upstream
/// connection carries the client's address, and the destination's node
/// judged it by the identity that address had, so only the same client
/// with the same identity may reuse it (not a new pod that got the address).
type UpstreamKey = (IpAddr, NumericIdentity, SocketAddr);

/// Kept-alive upstream connections. A client connection keeps the
/// upstream connection it last used in its own slot (no shared lookup per
/// request: the hot path of keep-alive clients), and hands an HTTP/1 one
/// to the shared idle list when it closes, for the next connection of the
/// same client to the same destination. This costs less than a general
/// pool (hyper-util's: a URI per request, a keyed checkout).
struct Upstreams {
    connector: Connector,
    idle: std::sync::Mutex<HashMap<UpstreamKey, Vec<Upstream>>>,
}

/// Idle upstream connections kept per (client, destination).
const MAX_IDLE_PER_KEY: usize = 64;

/// A client connection's upstream connection, with its key.
type Slot = std::sync::Mutex<Option<(UpstreamKey, Upstream)>>;

impl Upstreams {
    fn take_idle(&self, key: UpstreamKey) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&key)?;
        while let Some(up) = list.pop() {
            if !up.is_closed() {
                return Some(up);
            }
        }
        idle.remove(&key);
        None
    }

    /// When a client connection ends: its HTTP/1 upstream connection goes
    /// to the idle list (an HTTP/2 one closes with its last sender).
    fn give_back(&self, slot: &Slot) {
        let Some((key, up @ Upstream::H1(_))) =
            slot.lock().unwrap_or_else(|e| e.into_inner()).take()
        else {
            return;
        };
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|u| !u.is_closed());
            !list.is_empty()
        });
        let list = idle.entry(key).or_default();
        if !up.is_closed() && list.len() < MAX_IDLE_PER_KEY {
            list.push(up);
        }
    }

    async fn connect(&self, key: UpstreamKey, h2: bool) -> Result<Upstream, BoxError> {
        let (src, _, dst) = key;
        let io = self.connector.connect(src, dst).await?;
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
    async fn send(
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
        let mut reused = kept.or_else(|| if h2 { None } else { self.take_idle(key) });
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

/// Hop-by-hop headers, not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

struct Shared {
    view: watch::Receiver<Arc<ProxyView>>,
    cfg: ProxyConfig,
    upstreams: Upstreams,
    events: EventRing,
}

/// Serves `listener` until `cancel`.
pub async fn serve(
    listener: std::net::TcpListener,
    sockets: SocketFactory,
    view: watch::Receiver<Arc<ProxyView>>,
    cfg: ProxyConfig,
    events: EventRing,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let connector = Connector {
        sockets,
        timeout: cfg.connect_timeout,
    };
    let shared = Arc::new(Shared {
        view,
        cfg,
        upstreams: Upstreams {
            connector,
            idle: Default::default(),
        },
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
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        let orig = SocketAddr::new(canonical(orig.ip()), orig.port());
        let shared = shared.clone();
        tokio::spawn(async move {
            // HTTP/1.1, or cleartext HTTP/2 with prior knowledge (h2c, as
            // gRPC speaks it): every stream is a request checked on its own.
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
                .max_header_list_size(
                    u32::try_from(shared.cfg.max_header_bytes).unwrap_or(u32::MAX),
                );
            // Heads with ambiguous lengths never reach hyper (see framing).
            let refused = {
                let shared = shared.clone();
                Box::new(move |r: Refused| {
                    let view = shared.view.borrow().clone();
                    warn!(%peer, %orig, reason = r.reason, "request refused: ambiguous length");
                    let dst_local = view.local.contains_key(&orig.ip());
                    let seen = Seen {
                        method: &r.method,
                        path: &r.path,
                        host: &r.host,
                        src: (peer, view.identity(peer.ip())),
                        dst: (orig, view.identity(orig.ip())),
                        direction: rules_side(dst_local),
                        started: Instant::now(),
                    };
                    event(&shared.events, &seen, StatusCode::BAD_REQUEST, "malformed");
                })
            };
            let stream = FramingGuard::new(stream, shared.cfg.max_header_bytes, refused);
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
        });
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// What an L7 event says about a request, besides its answer.
struct Seen<'a> {
    method: &'a str,
    path: &'a str,
    host: &'a str,
    src: (SocketAddr, NumericIdentity),
    dst: (SocketAddr, NumericIdentity),
    /// Whose rules: `ingress` (the destination's) or `egress` (the source's).
    direction: &'static str,
    started: Instant,
}

/// One L7 event per request: an `http` event for the API (`axoneme
/// events`), and a debug log line (target `axoneme::l7`; a line per
/// request at info cost a tenth of the proxy's time, docs/benchmarks.md).
fn event(ring: &EventRing, seen: &Seen<'_>, status: StatusCode, verdict: &'static str) {
    let latency_us = u64::try_from(seen.started.elapsed().as_micros()).unwrap_or(u64::MAX);
    debug!(
        target: "axoneme::l7",
        method = seen.method,
        path = seen.path,
        host = seen.host,
        status = status.as_u16(),
        verdict,
        direction = seen.direction,
        src = %seen.src.0,
        src_identity = seen.src.1 .0,
        dst = %seen.dst.0,
        dst_identity = seen.dst.1 .0,
        latency_us,
        "http request"
    );
    ring.push_http(HttpEvent {
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        verdict,
        direction: seen.direction,
        src: (seen.src.0, seen.src.1 .0),
        dst: (seen.dst.0, seen.dst.1 .0),
        method: seen.method.into(),
        path: seen.path.into(),
        host: seen.host.into(),
        status: status.as_u16(),
        latency_us,
    });
}

/// Whose rules sent a request to this proxy: the destination's if it is
/// on this node, else the source's.
fn rules_side(dst_local: bool) -> &'static str {
    direction_name(if dst_local {
        Direction::Ingress
    } else {
        Direction::Egress
    })
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

async fn handle(
    shared: &Shared,
    slot: &Slot,
    peer: SocketAddr,
    orig: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let view = shared.view.borrow().clone();
    let src = (peer, view.identity(peer.ip()));
    let dst = (orig, view.identity(orig.ip()));
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_string();
    let dst_local = view.local.contains_key(&orig.ip());
    let mut seen = Seen {
        method: &method,
        path: &path,
        host: &host,
        src,
        dst,
        direction: rules_side(dst_local),
        started,
    };
    let reject = |seen: &Seen<'_>, status, body, verdict| {
        event(&shared.events, seen, status, verdict);
        text(status, body, true)
    };
    if path.len() > shared.cfg.max_uri_bytes {
        return reject(
            &seen,
            StatusCode::URI_TOO_LONG,
            "URI Too Long\r\n",
            "malformed",
        );
    }
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    let denied = view.denied_by(
        (src.1, view.local.contains_key(&peer.ip())),
        (dst.1, dst_local),
        orig.port(),
        &HttpRequest {
            method: &method,
            path: &path,
            host: &host,
            headers: &headers,
        },
    );
    if let Some(by) = denied {
        seen.direction = direction_name(by);
        event(&shared.events, &seen, StatusCode::FORBIDDEN, "denied");
        return text(StatusCode::FORBIDDEN, "Access denied\r\n", false);
    }
    let (mut parts, body) = req.into_parts();
    let h2 = parts.version == hyper::Version::HTTP_2;
    if h2 {
        // HTTP/2 upstream needs a scheme and an authority: the client's, or
        // the original destination.
        if parts.uri.authority().is_none() {
            let Ok(uri) = format!("http://{orig}{path}").parse::<hyper::Uri>() else {
                return reject(
                    &seen,
                    StatusCode::BAD_REQUEST,
                    "Bad Request\r\n",
                    "malformed",
                );
            };
            parts.uri = uri;
        }
    } else {
        // HTTP/1.1 upstream, origin-form target, a Host for HTTP/1.0 clients.
        if let Some(target) = parts.uri.path_and_query().cloned() {
            parts.uri = target.into();
        }
        parts.version = hyper::Version::HTTP_11;
        if !parts.headers.contains_key(hyper::header::HOST) {
            if let Ok(h) = hyper::header::HeaderValue::from_str(&orig.to_string()) {
                parts.headers.insert(hyper::header::HOST, h);
            }
        }
    }
    let listed: Vec<HeaderName> = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        parts.headers.remove(name);
    }
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let req = Request::from_parts(parts, body);
    match shared
        .upstreams
        .send(slot, (peer.ip(), src.1, orig), req)
        .await
    {
        Ok(resp) => {
            event(&shared.events, &seen, resp.status(), "forwarded");
            resp.map(|b| b.boxed())
        }
        Err(e) => {
            warn!(%orig, error = %crate::error_chain(e.as_ref()), "upstream unreachable");
            event(
                &shared.events,
                &seen,
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-error",
            );
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream unavailable\r\n",
                false,
            )
        }
    }
}
