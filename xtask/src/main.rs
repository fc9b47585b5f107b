//! `cargo xtask`: the project's one entry point for setup, tests, the demo
//! and benchmarks. Run as root on a fresh machine; every step installs or
//! starts what it needs.

mod bench;
mod bpf;
mod demo;
mod digest;
mod fuzz;
mod go;
mod helm;
mod hubble;
mod image;
mod kube;
mod lanes;
mod setup;
mod sweep;
mod targets;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install apt packages and bpf-linker, mount bpffs/cgroup2 (idempotent; root).
    Setup,
    /// Write helm/axoneme/README.md from the comments of values.yaml.
    HelmDocs,
    /// Build the release binaries, then the agent's and the operator's
    /// images as OCI archives in target/images/ (no container engine needed).
    Image,
    /// Build the eBPF programs with Debian's rustc-web (needs setup).
    BuildBpf,
    /// Setup, build, then run every test suite (what CI runs).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Bring up a local cluster and show Axoneme at work.
    Demo(demo::DemoArgs),
    /// Run the fuzz targets (cargo-fuzz, libFuzzer) from their seeds in
    /// fuzz/corpus/; writes target/bench/fuzz.json.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1440))]
        minutes: u64,
        /// How long each target runs, in seconds instead (the test
        /// command's short run takes 30).
        #[arg(long, conflicts_with = "minutes", value_parser = clap::value_parser!(u64).range(1..=86_400))]
        seconds: Option<u64>,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Run a benchmark; writes target/bench/NAME.json.
    Bench {
        /// Which benchmark: identity, policy, datapath, cluster, l7, memory, kubernetes, services, services-table or soak.
        name: String,
    },
    /// The cluster under pod, label and policy churn with traffic probed
    /// throughout; writes target/bench/soak.json.
    Soak {
        /// How long it runs.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1440))]
        minutes: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup => setup::run(&root),
        Cmd::HelmDocs => helm::docs(&root),
        Cmd::Image => {
            build_all(&root, true)?;
            image::run(
                &root.join("target").join("release"),
                &root.join("target").join("images"),
                env!("CARGO_PKG_VERSION"),
            )
        }
        Cmd::BuildBpf => bpf::build(&root, &setup::bpf_linker_dir()).map(|objects| {
            for p in objects {
                println!("eBPF object: {}", p.display());
            }
        }),
        Cmd::Test { args } => test(&root, &args),
        Cmd::Demo(args) => demo::run(&root, args),
        Cmd::Bench { name } => bench::run(&root, &name),
        Cmd::Soak { minutes } => {
            std::env::set_var("AXONEME_SOAK_MINUTES", minutes.to_string());
            bench::run(&root, "soak")
        }
        Cmd::Fuzz {
            minutes,
            seconds,
            targets,
        } => {
            setup::run(&root)?;
            fuzz::run(&root, seconds.unwrap_or(minutes * 60), &targets)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace, failing with its rendering.
fn run_cmd(root: &Path, cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root);
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The cargo that runs xtask (rustup's stable). Not incremental unless the
/// caller asks: xtask builds whole workspaces, where incremental state costs
/// gigabytes of disk and saves little.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

/// Everything a test run or the demo needs built: the eBPF object and every binary.
fn build_all(root: &Path, release: bool) -> Result<()> {
    setup::run(root)?;
    bpf::build(root, &setup::bpf_linker_dir())?;
    let mut cmd = cargo();
    cmd.args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(root, &mut cmd)
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    sweep::stale_runs();
    build_all(root, false)?;
    run_cmd(root, cargo().args(["fmt", "--all", "--check"]))?;
    // The fuzz targets are a workspace of their own.
    run_cmd(
        root,
        cargo().args(["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"]),
    )?;
    run_cmd(
        root,
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // Every test target, every benchmark's smoke form and every fuzz target
    // in a short form (each finds what a change broke in its parser within
    // seconds; `cargo xtask fuzz` runs them longer), two at a time (see
    // lanes.rs): each integration test starts its own etcd cluster and
    // processes, and most of their time is spent waiting on them.
    let logs = root.join("target").join("xtask");
    let test_log = logs.join("test.log");
    let jobs = targets::build(root, extra, FUZZ_SMOKE_SECONDS)?;
    let Err(failed) = lanes::from_env()?.run(jobs, &logs.join("jobs"), &test_log) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&test_log).unwrap_or_default();
    for section in digest::failures(&text) {
        eprintln!("\nxtask: failed, from {}:\n{section}", test_log.display());
    }
    Err(failed)
}

/// How long each fuzz target runs in `cargo xtask test`.
const FUZZ_SMOKE_SECONDS: u64 = 30;
