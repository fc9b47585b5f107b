//! `axoneme-agent`: keeps the node's view of the cluster (identities,
//! endpoints, valid policies) from etcd, programs the eBPF datapath from it
//! and logs the datapath's events, until SIGTERM or SIGINT. On exit the
//! pinned programs and maps keep enforcing; the next run adopts them.
//! See `axoneme_agent::run` for the tasks it runs.

use std::process::ExitCode;

use axoneme_agent::config::Config;

fn main() -> ExitCode {
    one_malloc_arena();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(agent()),
        Err(e) => {
            eprintln!("axoneme-agent: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that meets a locked arena an arena of its own,
/// and memory freed in one is not reused by the others: for the agent's
/// long-lived caches that was a tenth of its resident memory. Its threads
/// seldom allocate at the same time (the L7 proxy has a thread of its
/// own); `bench l7` measured no difference against glibc's default (see
/// docs/benchmarks.md, "Agent memory"). Set before any thread starts. One
/// of the agent's two `unsafe` blocks, each a libc call that has no safe
/// wrapper (the other reads a socket's network namespace cookie).
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // glibc's own setting, when given, wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no other thread
    // exists yet.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

async fn agent() -> ExitCode {
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
