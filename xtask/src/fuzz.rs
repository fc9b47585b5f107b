//! `cargo xtask fuzz`: builds the cargo-fuzz targets in fuzz/ and runs
//! each with libFuzzer for a set time, from the seeds in fuzz/corpus/
//! (and, for policies, Cilium's example policies in ../shared/testdata).
//! A crash, a failed assertion, a hang or an out-of-memory input fails
//! the run and leaves the input in target/fuzz/artifacts/TARGET/. The
//! figures (executions, rate, coverage) go to target/bench/fuzz.json and
//! the terminal.
//!
//! Built without a sanitizer: the code fuzzed forbids `unsafe`, so what
//! there is to find is panics (failed assertions, overflow and
//! out-of-bounds checks, which stay on), hangs and memory blow-ups, and
//! AddressSanitizer would halve the executions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

/// Every target, in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "policy",
    "cni",
    "api_request",
    "kvstore_records",
    "ipsec_keys",
    "http_framing",
];

/// One input taking longer than this is a hang.
const HANG_SECONDS: u32 = 10;
/// An input making the process larger than this is a memory blow-up.
const RSS_LIMIT_MB: u32 = 2048;

/// What one target's run did.
struct Figures {
    target: String,
    seconds: u64,
    executions: u64,
    per_second: u64,
    coverage: u64,
    corpus: u64,
}

/// Needs `setup` run first (cargo-fuzz).
pub fn run(root: &Path, seconds: u64, only: &[String]) -> Result<()> {
    for t in only {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target {t:?} (there are: {})", TARGETS.join(", "));
        }
    }
    let targets: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    let fuzz = root.join("fuzz");
    let cargo_fuzz = super::setup::cargo_fuzz();
    let built = Instant::now();
    super::run_cmd(
        &fuzz,
        Command::new(&cargo_fuzz).args(["fuzz", "build", "--sanitizer", "none"]),
    )?;
    println!("fuzz: targets built in {} s", built.elapsed().as_secs());
    let bin = fuzz
        .join("target")
        .join("x86_64-unknown-linux-gnu")
        .join("release");
    let work = root.join("target").join("fuzz");
    let mut all = Vec::new();
    for target in targets {
        all.push(run_one(root, &bin.join(target), &work, target, seconds)?);
    }
    println!(
        "\nfuzz: {:<16} {:>6} {:>12} {:>9} {:>9} {:>7}",
        "target", "s", "executions", "exec/s", "coverage", "corpus"
    );
    for f in &all {
        println!(
            "fuzz: {:<16} {:>6} {:>12} {:>9} {:>9} {:>7}",
            f.target, f.seconds, f.executions, f.per_second, f.coverage, f.corpus
        );
    }
    let out = root.join("target").join("bench");
    std::fs::create_dir_all(&out)?;
    let figures: Vec<_> = all
        .iter()
        .map(|f| {
            json!({
                "target": f.target, "seconds": f.seconds, "executions": f.executions,
                "exec_per_second": f.per_second, "coverage": f.coverage, "corpus": f.corpus,
            })
        })
        .collect();
    std::fs::write(
        out.join("fuzz.json"),
        serde_json::to_string_pretty(&json!({ "targets": figures }))?,
    )?;
    Ok(())
}

/// Runs one target from a fresh copy of its seeds.
fn run_one(root: &Path, bin: &Path, work: &Path, target: &str, seconds: u64) -> Result<Figures> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let _ = std::fs::remove_dir_all(&corpus);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let mut seeds: Vec<PathBuf> = vec![root.join("fuzz").join("corpus").join(target)];
    let examples = root.join("../shared/testdata/cilium-examples");
    if target == "policy" && examples.is_dir() {
        seeds.push(examples);
    }
    println!("fuzz: {target} for {seconds} s");
    let output = Command::new(bin)
        .arg(&corpus)
        .args(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={HANG_SECONDS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let log_file = work.join(format!("{target}.log"));
    std::fs::write(&log_file, log.as_bytes())?;
    if !output.status.success() {
        let found: Vec<_> = log
            .lines()
            .filter(|l| {
                l.contains("panicked at") || l.contains("ERROR:") || l.contains("Test unit written")
            })
            .collect();
        bail!(
            "fuzz target {target} failed ({}): {}\nthe whole log: {}",
            output.status,
            found.join("\n"),
            log_file.display()
        );
    }
    let stat = |name: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // The last status line: `#N  DONE  cov: C ft: F corp: K/...`.
    let last = |key: &str| -> u64 {
        log.lines()
            .rev()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == key)?;
                words.next()?.split('/').next()?.parse().ok()
            })
            .unwrap_or(0)
    };
    let figures = Figures {
        target: target.to_string(),
        seconds,
        executions: stat("number_of_executed_units"),
        per_second: stat("average_exec_per_sec"),
        coverage: last("cov:"),
        corpus: last("corp:"),
    };
    if figures.executions == 0 {
        bail!("fuzz target {target} ran no input: {}", log_file.display());
    }
    Ok(figures)
}
