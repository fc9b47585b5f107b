//! `axoneme-agent`: keeps the node's view of the cluster (identities,
//! endpoints, valid policies) from etcd, programs the eBPF datapath from it
//! and logs the datapath's events, until SIGTERM or SIGINT. On exit the
//! pinned programs and maps keep enforcing; the next run adopts them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axoneme_agent::api::{self, Query};
use axoneme_agent::datapath::{Datapath, PIN_ROOT};
use axoneme_agent::endpoints::{self, Endpoints};
use axoneme_agent::l7proxy::{self, ProxyConfig, ProxyView, SocketFactory};
use axoneme_agent::lease::Leased;
use axoneme_agent::netdev::{self, Ns};
use axoneme_agent::node::{validate_node_name, NodeState};
use axoneme_agent::reconcile::{Desired, Reconciler};
use axoneme_agent::views;
use axoneme_api::EventView;
use axoneme_identity::layout::DEFAULT_ROOT;
use axoneme_identity::{Layout, NodeCidrs, NodeRecord, WatchCache};
use axoneme_kvstore::{KvArgs, KvStore};
use axoneme_policy::EnforcementMode;
use clap::Parser;
use ipnet::IpNet;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

const DEFAULT_SOCKET: &str = "/run/axoneme/agent.sock";

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// axoneme-agent: the node agent of Axoneme.
#[derive(Debug, Clone, Parser)]
#[command(name = "axoneme-agent", version)]
struct Args {
    /// This node's name: the agent serves the endpoints stored under it.
    #[arg(long, env = "AXONEME_NODE_NAME")]
    node: String,
    #[command(flatten)]
    kv: KvArgs,
    /// Root of Axoneme's keys in etcd.
    #[arg(long, env = "AXONEME_KVSTORE_PREFIX", default_value = DEFAULT_ROOT)]
    kvstore_prefix: String,
    /// Where the datapath's maps and links are pinned (default
    /// /sys/fs/bpf/axoneme/<node>).
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// Network namespace (a path such as /run/netns/NAME) holding this
    /// node's endpoint interfaces; default: the agent's own.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Policy enforcement mode: default, always or never.
    #[arg(long, default_value = "default", value_parser = parse_mode)]
    enforcement: EnforcementMode,
    /// The L7 proxy's port on this node; 0 = none (L7 rules are then
    /// enforced at L3/L4 only, with a warning).
    #[arg(long, default_value_t = 0)]
    proxy_port: u16,
    /// Datapath events (drops, verdicts) per second per CPU; 0 = none.
    #[arg(long, default_value_t = 1000)]
    event_rate: u32,
    /// Burst of datapath events per CPU.
    #[arg(long, default_value_t = 2000)]
    event_burst: u32,
    /// Where the agent keeps its endpoints' state (default
    /// /run/axoneme/<node>).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The API's UNIX socket (the CNI plugin's and the CLI's default is
    /// /run/axoneme/agent.sock).
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// This node's underlay addresses (repeatable, one per family): other
    /// nodes route this node's pod CIDRs via them.
    #[arg(long = "node-ip")]
    node_ips: Vec<IpAddr>,
    /// TTL in seconds of the agent's lease, which holds the node record and
    /// the endpoints the agent created: they vanish this long after the
    /// agent dies.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(i64).range(1..=3600))]
    lease_ttl: i64,
    /// How long a CNI ADD waits for the pod's identity and policy by
    /// default, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    endpoint_timeout_ms: u64,
}

fn parse_mode(s: &str) -> Result<EnforcementMode, String> {
    match s {
        "default" => Ok(EnforcementMode::Default),
        "always" => Ok(EnforcementMode::Always),
        "never" => Ok(EnforcementMode::Never),
        other => Err(format!(
            "`{other}` is not an enforcement mode (default, always, never)"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axoneme-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    validate_node_name(&args.node)?;
    // Handlers first, so that a signal during start-up is not lost.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    tokio::pin!(shutdown);

    let config = args.kv.to_config().context("etcd settings")?;
    let kv = KvStore::connect(config)
        .await
        .context("connecting to etcd")?;
    let layout = Layout::new(&args.kvstore_prefix);
    let span = tracing::info_span!("agent", node = %args.node);
    info!(parent: &span, endpoints = ?kv.endpoints(), prefix = %layout.root(), "agent starting");

    let pin_dir = args
        .bpf_pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(PIN_ROOT).join(&args.node));
    if let Some(ns) = &args.netns {
        std::fs::metadata(ns).with_context(|| format!("--netns {}", ns.display()))?;
    }
    let mut dp = Datapath::load(&pin_dir).context("loading the eBPF datapath")?;
    dp.maps
        .set_event_rate(args.event_rate, args.event_burst)
        .context("setting the event rate")?;
    info!(parent: &span, pins = %pin_dir.display(), "datapath loaded");

    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/run/axoneme").join(&args.node));
    let socket = args
        .api_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let node_ns = Ns(args.netns.clone());
    let cancel = CancellationToken::new();

    // The node record and the endpoints of a previous run go on a fresh
    // lease before the caches start, so the first pass already has them.
    let leased = Leased::grant(kv.clone(), args.lease_ttl)
        .await
        .context("granting the agent lease")?;
    let mut record = NodeRecord {
        name: args.node.clone(),
        addresses: args.node_ips.clone(),
        pod_cidrs: Vec::new(),
    };
    leased
        .put(&layout.node(&args.node), serde_json::to_vec(&record)?)
        .await
        .context("announcing the node")?;
    let ep_dir = state_dir.join("endpoints");
    let restored = endpoints::restore(&args.node, &layout, &node_ns, &ep_dir, &leased).await;
    if !restored.is_empty() {
        info!(parent: &span, endpoints = restored.len(), "endpoints of the previous run re-announced");
    }
    let keepalive = tokio::spawn(leased.clone().keep_alive(cancel.clone()));
    let nodes: WatchCache<NodeRecord> = WatchCache::start(kv.clone(), layout.nodes_prefix());

    let state = tokio::select! {
        state = NodeState::start(kv.clone(), layout.clone(), &args.node).instrument(span.clone()) => state,
        signal = &mut shutdown => {
            info!(parent: &span, signal, "shutting down before the caches were ready");
            cancel.cancel();
            return Ok(());
        }
    };
    info!(
        parent: &span,
        identities = state.identities().len(),
        endpoints = state.endpoints().len(),
        "node state ready"
    );
    let (programmed_tx, programmed_rx) = watch::channel(BTreeMap::new());
    let eps = Arc::new(Endpoints::new(
        state.clone(),
        node_ns.clone(),
        ep_dir,
        leased.clone(),
        &restored,
        programmed_rx,
        Duration::from_millis(args.endpoint_timeout_ms),
    ));
    let (query_tx, mut queries) = mpsc::channel::<Query>(16);
    let recent = views::EventRing::default();
    let server = tokio::spawn(api::serve(
        socket.clone(),
        eps.clone(),
        query_tx,
        kv.clone(),
        recent.clone(),
        cancel.clone(),
    ));
    info!(parent: &span, socket = %socket.display(), "API listening");
    let cidr_key = layout.node_cidrs(&args.node);
    let node_key = layout.node(&args.node);

    // The L7 proxy: a transparent listener in the node's namespace, the
    // redirect plumbing, and a policy snapshot after every pass.
    let (proxy_view, proxy_rx) = watch::channel(Arc::new(ProxyView::default()));
    let proxy_task = if args.proxy_port != 0 {
        let sockets = SocketFactory::new(args.netns.clone());
        let listener = sockets
            .listener(args.proxy_port)
            .with_context(|| format!("--proxy-port {}: cannot listen", args.proxy_port))?;
        l7proxy::install_redirect(&node_ns, args.proxy_port)
            .context("installing the proxy redirect (iptables TPROXY, ip rule)")?;
        info!(parent: &span, port = args.proxy_port, "L7 proxy listening");
        let (events, cancel) = (recent.clone(), cancel.clone());
        // One thread of its own: a connection, its upstream and its
        // requests run without cross-thread wake-ups (see docs/benchmarks.md).
        Some(tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(l7proxy::serve(
                    listener,
                    sockets,
                    proxy_rx,
                    ProxyConfig::default(),
                    events,
                    cancel,
                ))
        }))
    } else {
        None
    };

    let mut rec = Reconciler::new(dp, args.netns.clone(), args.enforcement, args.proxy_port);
    let mut first = true;
    let mut last_error: Option<String> = None;
    let mut subs = (
        state.identities().subscribe(),
        state.assignments().subscribe(),
        state.records().subscribe(),
        state.policy_caches().0.subscribe(),
        state.policy_caches().1.subscribe(),
        nodes.subscribe(),
    );
    let mut routes: Vec<(IpNet, IpAddr)> = Vec::new();
    let mut events = tokio::time::interval(Duration::from_millis(100));
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    let mut cidr_poll = tokio::time::interval(Duration::from_millis(500));
    let mut dirty = true;
    let mut routes_dirty = true;
    loop {
        if dirty {
            // Let a burst of changes land before one pass.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let want = Desired::from_state(&state);
            match rec.reconcile(&want) {
                Ok(summary) => {
                    if first {
                        info!(parent: &span, ?summary, endpoints = want.local.len(), "datapath ready");
                        first = false;
                    } else {
                        info!(parent: &span, ?summary, "datapath reconciled");
                    }
                    last_error = None;
                }
                Err(e) => {
                    let e = axoneme_agent::error_chain(&e);
                    warn!(parent: &span, error = %e, "reconcile failed; keeping the last state and retrying");
                    last_error = Some(e);
                }
            }
            if args.proxy_port != 0 {
                proxy_view.send_replace(Arc::new(l7proxy::view_of(&want, rec.engine())));
            }
            programmed_tx.send_replace(
                rec.programmed()
                    .iter()
                    .map(|(name, p)| (name.clone(), p.info.identity))
                    .collect(),
            );
            dirty = false;
        }
        if routes_dirty {
            routes = sync_routes(&node_ns, &args.node, &nodes, routes);
            routes_dirty = false;
        }
        tokio::select! {
            _ = subs.0.recv() => dirty = true,
            _ = subs.1.recv() => dirty = true,
            _ = subs.2.recv() => dirty = true,
            _ = subs.3.recv() => dirty = true,
            _ = subs.4.recv() => dirty = true,
            _ = subs.5.recv() => routes_dirty = true,
            _ = resync.tick() => { dirty = true; routes_dirty = true; }
            _ = events.tick() => {
                let now = unix_ms();
                for e in rec.datapath().maps.drain_events() {
                    let view = views::event(&e, now);
                    log_event(&view);
                    recent.push(view);
                }
            }
            _ = cidr_poll.tick() => {
                // The operator's CIDRs for this node: into IPAM and the
                // node record (so other nodes route them here).
                if let Ok(Some(item)) = kv.get(&cidr_key).await {
                    match serde_json::from_slice::<NodeCidrs>(&item.value) {
                        Ok(c) if c.pod_cidrs != record.pod_cidrs => {
                            info!(parent: &span, cidrs = ?c.pod_cidrs, "pod CIDRs from the operator");
                            eps.set_cidrs(c.pod_cidrs.clone());
                            record.pod_cidrs = c.pod_cidrs;
                            if let Err(e) = leased.put(&node_key, serde_json::to_vec(&record)?).await {
                                warn!(parent: &span, error = %e, "cannot update the node record; retrying");
                                record.pod_cidrs.clear();
                            }
                        }
                        Ok(_) => {}
                        Err(e) => warn!(parent: &span, error = %e, "unreadable node CIDRs"),
                    }
                }
            }
            Some(q) = queries.recv() => answer(q, &mut rec, &state, &eps, last_error.as_deref()),
            signal = &mut shutdown => {
                info!(parent: &span, signal, "shutting down; the pinned datapath keeps enforcing");
                break;
            }
        }
    }
    cancel.cancel();
    let _ = keepalive.await;
    if let Some(task) = proxy_task {
        match task.await {
            Ok(Err(e)) => warn!(error = %e, "L7 proxy failed"),
            Err(e) => warn!(error = %e, "L7 proxy task failed"),
            Ok(Ok(())) => {}
        }
    }
    match server.await {
        Ok(Err(e)) => warn!(error = %e, "API server failed"),
        Err(e) => warn!(error = %e, "API server task failed"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

fn answer(
    q: Query,
    rec: &mut Reconciler,
    state: &NodeState,
    eps: &Endpoints,
    last_error: Option<&str>,
) {
    // A caller that gave up is no error.
    match q {
        Query::Status(tx) => {
            let _ = tx.send(views::status(rec, state, eps, last_error));
        }
        Query::Endpoints(tx) => {
            let _ = tx.send(views::endpoints(rec, state, eps));
        }
        Query::Ipcache(tx) => {
            let _ = tx.send(views::ipcache(rec));
        }
        Query::Policy(ep, tx) => {
            let _ = tx.send(views::policy(rec, &ep));
        }
        Query::Ct(tx) => {
            let _ = tx.send(views::ct(rec));
        }
    }
}

/// Direct routing: every other node's pod CIDRs via its underlay address
/// of the same family. Returns the routes now installed.
fn sync_routes(
    ns: &Ns,
    me: &str,
    nodes: &WatchCache<NodeRecord>,
    have: Vec<(IpNet, IpAddr)>,
) -> Vec<(IpNet, IpAddr)> {
    let mut want = Vec::new();
    for node in nodes.snapshot().values().filter(|n| n.name != me) {
        for cidr in &node.pod_cidrs {
            if let Some(via) = node
                .addresses
                .iter()
                .find(|a| a.is_ipv4() == cidr.addr().is_ipv4())
            {
                want.push((*cidr, *via));
            }
        }
    }
    if want == have {
        return have;
    }
    let gone: Vec<(IpNet, IpAddr)> = have.iter().filter(|r| !want.contains(r)).copied().collect();
    let mut lines = netdev::route_lines(&gone, false);
    lines.extend(netdev::route_lines(&want, true));
    // Forced: a route already gone, or a node not reachable yet, must not
    // keep the others out.
    if let Err(e) = ns.ip_batch(&lines, true) {
        warn!(error = %e, "cannot update node routes");
    }
    info!(routes = want.len(), "node routes updated");
    want
}

/// One line per datapath event (target `axoneme::event`).
fn log_event(e: &EventView) {
    info!(
        target: "axoneme::event",
        kind = %e.kind,
        reason = e.reason,
        reason_text = %e.reason_text,
        verdict = %e.verdict,
        direction = %e.direction,
        src_identity = e.src_identity,
        dst_identity = e.dst_identity,
        src = %e.src,
        dst = %e.dst,
        protocol = %e.protocol,
        sport = e.sport,
        dport = e.dport,
        ifindex = e.ifindex,
        match_type = %e.match_type,
        "datapath event"
    );
}
