//! `axoneme-agent`: for now, the consumer of the watch-fed caches. It keeps
//! the node's view (every identity, its endpoints' assignments) and logs
//! every change, until SIGTERM or SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use axoneme_agent::node::{validate_node_name, NodeState};
use axoneme_identity::layout::DEFAULT_ROOT;
use axoneme_identity::Layout;
use axoneme_kvstore::{KvArgs, KvStore};
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
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
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
        endpoints = state.assignments().len(),
        "node state ready"
    );
    tokio::select! {
        () = state.log_changes().instrument(span.clone()) => {
            warn!(parent: &span, "change logger stopped");
        }
        signal = &mut shutdown => info!(parent: &span, signal, "shutting down"),
    }
    Ok(())
}
