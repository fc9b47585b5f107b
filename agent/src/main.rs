//! `axoneme-agent`: keeps the node's view of the cluster (identities,
//! endpoints, valid policies) from etcd, programs the eBPF datapath from it
//! and logs the datapath's events, until SIGTERM or SIGINT. On exit the
//! pinned programs and maps keep enforcing; the next run adopts them.
//! See `axoneme_agent::run` for the tasks it runs.

use std::process::ExitCode;

use axoneme_agent::config::Config;

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
    let (config, loaded) = axoneme_config::parse::<Config>();
    if let Some(line) = loaded.log_line() {
        tracing::info!("{line}");
    }
    match axoneme_agent::run::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axoneme-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
