//! `axoneme-cni`: Axoneme's CNI plugin (CNI spec 1.0.0, also 0.4.0).
//!
//! The runtime runs it with the CNI_* environment and the network
//! configuration on stdin; the plugin parses both ([`command::parse`],
//! pure), asks the node's agent to do the work ([`agent::run`]) and prints
//! the result, or an error result (exit status 1).

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use axoneme_api::cni_code;

use axoneme_cni::env::CommandKind;
use axoneme_cni::error::CniError;
use axoneme_cni::{agent, command, config, env, install};

fn main() -> ExitCode {
    // Runtimes call the plugin without arguments; `install` is the Helm
    // chart's init container.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("install") {
        return install_main(&args[1..]);
    }
    let env = env::from_os(std::env::vars_os());
    let is_version = env::command(&env) == Ok(CommandKind::Version);

    let stdin = match read_stdin(is_version) {
        Ok(bytes) => bytes,
        // VERSION does not need its stdin; it must not fail for it.
        Err(_) if is_version => Vec::new(),
        Err(e) => {
            let err = CniError::new(
                cni_code::IO_FAILURE,
                "cannot read the network configuration from stdin",
                e.to_string(),
            );
            return fail(&err, config::DEFAULT_VERSION);
        }
    };

    match command::parse(&env, &stdin).and_then(agent::run) {
        Ok(out) => {
            if let Some(v) = out {
                // A runtime that closed stdout cannot be told anything;
                // no panic over it.
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{v}").and_then(|()| stdout.flush());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, config::result_version(&stdin)),
    }
}

/// Reads all of stdin, except for VERSION run from a terminal (nothing is
/// coming; reading would wait for ^D).
fn read_stdin(is_version: bool) -> std::io::Result<Vec<u8>> {
    let mut stdin = std::io::stdin().lock();
    let mut buf = Vec::new();
    if !(is_version && stdin.is_terminal()) {
        stdin.read_to_end(&mut buf)?;
    }
    Ok(buf)
}

/// Prints the error result on stdout (for the runtime) and one line on
/// stderr (for a human), and exits 1.
fn fail(e: &CniError, cni_version: &str) -> ExitCode {
    let _ = writeln!(std::io::stdout().lock(), "{}", e.to_json(cni_version));
    let _ = writeln!(std::io::stderr().lock(), "axoneme-cni: {}", e.one_line());
    ExitCode::FAILURE
}

fn install_main(args: &[String]) -> ExitCode {
    let done = install::parse(args).and_then(|i| {
        let me = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
        install::run(&i, &me)
    });
    match done {
        Ok(paths) => {
            for p in paths {
                println!("axoneme-cni: installed {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("axoneme-cni install: {e}");
            ExitCode::from(2)
        }
    }
}
