//! `axoneme`: parse, run, print. The commands live in the library.
//!
//! Exit codes: 0 success; 1 the command found something wrong (a failing
//! `status`, an invalid policy, not found); 2 invalid input (flags, labels,
//! names, files); 3 etcd or the agent unavailable or too slow
//! (`--timeout`).

use std::io::Write;
use std::process::ExitCode;

use axoneme_cli::error::exit;
use axoneme_cli::{error_line, run, Args};

fn main() -> ExitCode {
    // Exits 2 with clap's message on bad flags, 0 on --help/--version.
    let args = Args::parse_env();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("axoneme: error: starting the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let result = runtime.block_on(run(args));
    // Tasks still waiting on a member that does not answer must not hold
    // up the exit.
    runtime.shutdown_background();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("axoneme: error: {}", error_line(&e));
            return ExitCode::from(e.exit_code());
        }
    };
    let mut out = std::io::stdout().lock();
    match out
        .write_all(report.text.as_bytes())
        .and_then(|()| out.flush())
    {
        // `axoneme ... | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("axoneme: error: writing to stdout: {e}");
            return ExitCode::from(exit::FAILED);
        }
        Ok(()) => {}
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAILED)
    }
}
