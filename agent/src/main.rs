//! `axoneme-agent`: keeps the node's view of the cluster (identities,
//! endpoints, valid policies) from etcd, programs the eBPF datapath from it
//! and logs the datapath's events, until SIGTERM or SIGINT. On exit the
//! pinned programs and maps keep enforcing; the next run adopts them.
//! See `axoneme_agent::run` for the tasks it runs.

use std::process::ExitCode;

use axoneme_agent::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    // Flags first: `--log-format` may come from the config directory.
    let (config, loaded) = axoneme_config::parse::<Config>();
    let format = config.log.log_format;
    axoneme_config::logging::init(format);
    if let Some(line) = loaded.log_line() {
        tracing::info!("{line}");
    }
    match axoneme_agent::run::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            axoneme_config::logging::fatal(format, "axoneme-agent", &format_args!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
