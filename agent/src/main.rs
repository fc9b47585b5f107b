//! `axoneme-agent`: keeps the node's view of the cluster (identities,
//! endpoints, valid policies) from etcd, programs the eBPF datapath from it
//! and logs the datapath's events, until SIGTERM or SIGINT. On exit the
//! pinned programs and maps keep enforcing; the next run adopts them.

use std::process::ExitCode;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axoneme_agent::datapath::{Datapath, PIN_ROOT};
use axoneme_agent::node::{validate_node_name, NodeState};
use axoneme_agent::reconcile::{Desired, Reconciler};
use axoneme_bpf_common::{event_kind, family, Event};
use axoneme_identity::layout::DEFAULT_ROOT;
use axoneme_identity::Layout;
use axoneme_kvstore::{KvArgs, KvStore};
use axoneme_policy::EnforcementMode;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn, Instrument};

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

    let state = tokio::select! {
        state = NodeState::start(kv, layout, &args.node).instrument(span.clone()) => state,
        signal = &mut shutdown => {
            info!(parent: &span, signal, "shutting down before the caches were ready");
            return Ok(());
        }
    };
    info!(
        parent: &span,
        identities = state.identities().len(),
        endpoints = state.endpoints().len(),
        "node state ready"
    );
    let mut rec = Reconciler::new(dp, args.netns.clone(), args.enforcement, args.proxy_port);
    let mut first = true;
    let mut subs = (
        state.identities().subscribe(),
        state.assignments().subscribe(),
        state.records().subscribe(),
        state.policy_caches().0.subscribe(),
        state.policy_caches().1.subscribe(),
    );
    let mut events = tokio::time::interval(Duration::from_millis(100));
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    let mut dirty = true;
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
                }
                Err(e) => {
                    warn!(parent: &span, error = %axoneme_agent::error_chain(&e), "reconcile failed; keeping the last state and retrying")
                }
            }
            dirty = false;
        }
        tokio::select! {
            _ = subs.0.recv() => dirty = true,
            _ = subs.1.recv() => dirty = true,
            _ = subs.2.recv() => dirty = true,
            _ = subs.3.recv() => dirty = true,
            _ = subs.4.recv() => dirty = true,
            _ = resync.tick() => dirty = true,
            _ = events.tick() => {
                for e in rec.datapath().maps.drain_events() {
                    log_event(&e);
                }
            }
            signal = &mut shutdown => {
                info!(parent: &span, signal, "shutting down; the pinned datapath keeps enforcing");
                break;
            }
        }
    }
    Ok(())
}

fn address(fam: u8, a: &[u8; 16]) -> String {
    if fam == family::IPV4 {
        std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    } else {
        std::net::Ipv6Addr::from(*a).to_string()
    }
}

/// One line per datapath event (target `axoneme::event`).
fn log_event(e: &Event) {
    let kind = match e.kind {
        event_kind::DROP => "drop",
        event_kind::POLICY_VERDICT => "policy-verdict",
        _ => "other",
    };
    info!(
        target: "axoneme::event",
        kind,
        reason = e.reason,
        verdict = e.verdict,
        direction = if e.direction == 0 { "ingress" } else { "egress" },
        src_identity = e.src_identity,
        dst_identity = e.dst_identity,
        src = %address(e.family, &e.saddr),
        dst = %address(e.family, &e.daddr),
        protocol = e.protocol,
        sport = u16::from_be(e.sport),
        dport = u16::from_be(e.dport),
        match_type = e.match_type,
        ifindex = e.ifindex,
        "datapath event"
    );
}
