//! Hubble's `Observer` gRPC API over the observer's ring, on a UNIX socket
//! (mode 0600, as the agent's API) and, when asked, on TCP with TLS
//! (mutual with client CAs), as Hubble's `--hubble-listen-address`: `GetFlows` with Hubble's semantics
//! (`number` with `first`, `since`/`until`, `follow`, whitelist and
//! blacklist filters), `ServerStatus` and `GetNodes`, beside gRPC's standard
//! health service. A follower that
//! falls behind is sent a `LostEvent` saying how many flows it missed.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axoneme_hubble::filter::Filters;
use axoneme_hubble::flow::{LostEvent, LostEventSource};
use axoneme_hubble::observer::get_flows_response::ResponseTypes;
use axoneme_hubble::observer::observer_server::{Observer as ObserverApi, ObserverServer};
use axoneme_hubble::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse, Node,
    ServerStatusRequest, ServerStatusResponse,
};
use axoneme_hubble::{timestamp_to_ms, UInt32Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use super::{Entry, Observer, Published};

/// The service name Hubble's server reports health under.
const HEALTH_NAME: &str = "hubble.server.Observer";

/// Responses buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 256;

#[derive(Clone)]
struct Service {
    observer: Arc<Observer>,
    metrics: crate::metrics::FlowMetrics,
    cancel: CancellationToken,
}

fn flow_response(node: &str, e: &Entry) -> GetFlowsResponse {
    let flow = e.flow();
    GetFlowsResponse {
        time: flow.time,
        response_types: Some(ResponseTypes::Flow(flow.clone())),
        node_name: node.to_string(),
    }
}

fn lost_response(node: &str, source: LostEventSource, n: u64) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::LostEvents(LostEvent {
            source: source as i32,
            num_events_lost: n,
            cpu: None,
        })),
        node_name: node.to_string(),
        time: Some(axoneme_hubble::timestamp_ms(crate::events::unix_ms())),
    }
}

/// A request, checked and compiled.
struct Query {
    filters: Filters,
    since: Option<u64>,
    until: Option<u64>,
    number: usize,
    first: bool,
    follow: bool,
}

impl Query {
    fn new(r: &GetFlowsRequest) -> Result<Self, Status> {
        if r.first && r.follow {
            return Err(Status::invalid_argument(
                "first cannot be combined with follow",
            ));
        }
        let filters = Filters::new(&r.whitelist, &r.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Query {
            filters,
            since: r.since.as_ref().map(timestamp_to_ms),
            until: r.until.as_ref().map(timestamp_to_ms),
            number: usize::try_from(r.number).unwrap_or(usize::MAX),
            first: r.first,
            follow: r.follow,
        })
    }

    fn time_ms(e: &Entry) -> u64 {
        e.record.time_ms()
    }

    fn in_window(&self, e: &Entry) -> bool {
        let t = Self::time_ms(e);
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    fn past_until(&self, e: &Entry) -> bool {
        self.until.is_some_and(|u| Self::time_ms(e) > u)
    }

    /// The past flows to send, oldest first: all in the window, or the
    /// last (or first) `number` of them; none when only following new
    /// flows (`follow` without `number` or `since`, as Hubble does).
    fn history(&self, ring: Vec<Entry>) -> Vec<Entry> {
        if self.follow && self.number == 0 && self.since.is_none() {
            return Vec::new();
        }
        let mut picked: Vec<Entry> = ring
            .into_iter()
            .filter(|e| self.in_window(e) && self.filters.matches(e.flow()))
            .collect();
        if self.number > 0 && picked.len() > self.number {
            if self.first {
                picked.truncate(self.number);
            } else {
                picked.drain(..picked.len() - self.number);
            }
        }
        picked
    }
}

impl Service {
    async fn stream(
        self,
        query: Query,
        history: Vec<Entry>,
        last_seq: Option<u64>,
        mut live: broadcast::Receiver<Published>,
        tx: mpsc::Sender<Result<GetFlowsResponse, Status>>,
    ) {
        let node = self.observer.node().to_string();
        for e in &history {
            if tx.send(Ok(flow_response(&node, e))).await.is_err() {
                return;
            }
        }
        if !query.follow {
            return;
        }
        loop {
            let item = tokio::select! {
                item = live.recv() => item,
                _ = tx.closed() => return,
                _ = self.cancel.cancelled() => return,
            };
            let resp = match item {
                Ok(Published::Flow(e)) => {
                    if last_seq.is_some_and(|s| e.seq <= s) {
                        continue;
                    }
                    if query.past_until(&e) {
                        return;
                    }
                    if !query.filters.matches(e.flow()) {
                        continue;
                    }
                    flow_response(&node, &e)
                }
                Ok(Published::QueueLost(n)) => {
                    lost_response(&node, LostEventSource::ObserverEventsQueue, n)
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.metrics.lost("hubble_ring_buffer", n);
                    lost_response(&node, LostEventSource::HubbleRingBuffer, n)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl ObserverApi for Service {
    type GetFlowsStream = ReceiverStream<Result<GetFlowsResponse, Status>>;

    async fn get_flows(
        &self,
        req: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let query = Query::new(req.get_ref())?;
        let (ring, live) = self.observer.subscribe_with_history();
        let last_seq = ring.last().map(|e| e.seq);
        let history = query.history(ring);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(self.clone().stream(query, history, last_seq, live, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_nodes(
        &self,
        _: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let (num, seen) = self.observer.counts();
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.observer.node().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                address: String::new(),
                tls: None,
                uptime_ns: uptime_ns(&self.observer),
                num_flows: num,
                max_flows: self.observer.capacity() as u64,
                seen_flows: seen,
            }],
        }))
    }

    async fn server_status(
        &self,
        _: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let (num, seen) = self.observer.counts();
        Ok(Response::new(ServerStatusResponse {
            num_flows: num,
            max_flows: self.observer.capacity() as u64,
            seen_flows: seen,
            uptime_ns: uptime_ns(&self.observer),
            num_connected_nodes: Some(UInt32Value { value: 1 }),
            num_unavailable_nodes: Some(UInt32Value { value: 0 }),
            unavailable_nodes: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}

fn uptime_ns(o: &Observer) -> u64 {
    u64::try_from(o.uptime().as_nanos()).unwrap_or(u64::MAX)
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn listen(path: &PathBuf) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the API on the UNIX socket until cancelled; follow streams end
/// with it.
pub async fn serve(
    listener: tokio::net::UnixListener,
    observer: Arc<Observer>,
    metrics: crate::metrics::FlowMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    serve_on(
        UnixListenerStream::new(listener),
        None,
        observer,
        metrics,
        cancel,
    )
    .await
}

/// The TCP API's TLS from its files (read at start: a file that cannot
/// be read stops the start, naming the flag and the path, never the
/// content).
pub fn tls_config(files: &crate::config::HubbleTls) -> anyhow::Result<ServerTlsConfig> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))
    };
    let cert = read("--hubble-tls-cert-file", &files.cert)?;
    let key = read("--hubble-tls-key-file", &files.key)?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if !files.client_cas.is_empty() {
        let mut cas = Vec::new();
        for ca in &files.client_cas {
            cas.extend(read("--hubble-tls-client-ca-files", ca)?);
            cas.push(b'\n');
        }
        config = config.client_ca_root(Certificate::from_pem(cas));
    }
    Ok(config)
}

/// Serves the API on TCP (with TLS unless `tls` is `None`) until
/// cancelled.
pub async fn serve_tcp(
    listener: std::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    observer: Arc<Observer>,
    metrics: crate::metrics::FlowMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    serve_on(
        TcpListenerStream::new(listener),
        tls,
        observer,
        metrics,
        cancel,
    )
    .await
}

async fn serve_on<I, IO, IE>(
    incoming: I,
    tls: Option<ServerTlsConfig>,
    observer: Arc<Observer>,
    metrics: crate::metrics::FlowMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<()>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let svc = Service {
        observer,
        metrics,
        cancel: cancel.clone(),
    };
    // `hubble status` asks the standard health service first, by the name
    // Hubble's server registers.
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", HEALTH_NAME] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).context("the Hubble API's TLS")?;
    }
    server
        .add_service(health_service)
        .add_service(ObserverServer::new(svc))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled())
        .await
        .context("serving the Hubble API")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_hubble::flow::{Flow, FlowFilter, Verdict};
    use axoneme_hubble::Timestamp;

    fn entry(seq: u64, ms: u64, verdict: Verdict) -> Entry {
        Entry {
            seq,
            record: Arc::new(crate::observe::enrich::Record::built(Flow {
                time: Some(axoneme_hubble::timestamp_ms(ms)),
                verdict: verdict as i32,
                ..Default::default()
            })),
        }
    }

    fn ring() -> Vec<Entry> {
        (0..6)
            .map(|i| {
                let v = if i % 2 == 0 {
                    Verdict::Dropped
                } else {
                    Verdict::Forwarded
                };
                entry(i, 1000 * (i + 1), v)
            })
            .collect()
    }

    fn seqs(q: &GetFlowsRequest) -> Vec<u64> {
        Query::new(q)
            .unwrap()
            .history(ring())
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn history_follows_hubbles_number_first_since_and_until() {
        let all = GetFlowsRequest::default();
        assert_eq!(seqs(&all), vec![0, 1, 2, 3, 4, 5]);
        let last2 = GetFlowsRequest {
            number: 2,
            ..Default::default()
        };
        assert_eq!(seqs(&last2), vec![4, 5]);
        let first2 = GetFlowsRequest {
            number: 2,
            first: true,
            ..Default::default()
        };
        assert_eq!(seqs(&first2), vec![0, 1]);
        let window = GetFlowsRequest {
            since: Some(Timestamp {
                seconds: 2,
                nanos: 0,
            }),
            until: Some(Timestamp {
                seconds: 4,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(seqs(&window), vec![1, 2, 3]);
        let dropped = GetFlowsRequest {
            whitelist: vec![FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            }],
            number: 2,
            ..Default::default()
        };
        assert_eq!(seqs(&dropped), vec![2, 4]);
        let follow_only = GetFlowsRequest {
            follow: true,
            ..Default::default()
        };
        assert!(seqs(&follow_only).is_empty());
        let follow_last = GetFlowsRequest {
            follow: true,
            number: 1,
            ..Default::default()
        };
        assert_eq!(seqs(&follow_last), vec![5]);
    }

    #[test]
    fn bad_requests_are_invalid_arguments_naming_the_fault() {
        let both = GetFlowsRequest {
            first: true,
            follow: true,
            ..Default::default()
        };
        let e = Query::new(&both).err().unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let bad_ip = GetFlowsRequest {
            whitelist: vec![FlowFilter {
                source_ip: vec!["nope".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = Query::new(&bad_ip).err().unwrap();
        assert!(
            e.message().contains("source_ip \"nope\""),
            "{}",
            e.message()
        );
    }
}
