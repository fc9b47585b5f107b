//! `axoneme`: parse, run, print. The commands live in the library.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use axoneme_cli::{error_line, run, Args};

fn main() -> ExitCode {
    // Exits 2 with clap's message on bad flags, 0 on --help/--version.
    let args = Args::parse_env();
    match try_main(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("axoneme: error: {}", error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Runs the command and prints its report; `Ok(false)` when the report says
/// something is wrong (e.g. `status`).
fn try_main(args: Args) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(run(args))?;
    let mut out = std::io::stdout().lock();
    match out
        .write_all(report.text.as_bytes())
        .and_then(|()| out.flush())
    {
        // `axoneme ... | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("writing to stdout")?,
    }
    Ok(report.ok)
}
