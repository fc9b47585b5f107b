//! `cargo xtask bench NAME`: builds release binaries, then runs the named
//! benchmark program, which writes `target/bench/NAME.json`.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Benchmark name → (package, bench target).
const BENCHES: &[(&str, &str, &str)] = &[
    ("identity", "axoneme-operator", "identity"),
    ("policy", "axoneme-policy", "policy"),
    ("datapath", "axoneme-agent", "datapath"),
    ("cluster", "axoneme-e2e", "cluster"),
    ("l7", "axoneme-e2e", "l7"),
    ("memory", "axoneme-e2e", "memory"),
    ("kubernetes", "axoneme-e2e", "kubernetes"),
    ("services", "axoneme-e2e", "services"),
    ("services-table", "axoneme-agent", "services_table"),
    ("proxy-view", "axoneme-agent", "proxy_view"),
    ("soak", "axoneme-e2e", "soak"),
    ("ipsec", "axoneme-e2e", "ipsec"),
];

pub fn run(root: &Path, name: &str) -> Result<()> {
    let Some((_, package, target)) = BENCHES.iter().find(|(n, _, _)| *n == name) else {
        let names: Vec<&str> = BENCHES.iter().map(|(n, _, _)| *n).collect();
        bail!(
            "unknown benchmark {name:?}; available: {}",
            names.join(", ")
        );
    };
    super::build_all(root, true)?;
    let out_dir = root.join("target").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("{name}.json"));
    super::run_cmd(
        root,
        super::cargo()
            .args(["bench", "-p", package, "--bench", target])
            .env("AXONEME_BIN_DIR", root.join("target").join("release"))
            .env("AXONEME_BENCH_OUT", &out),
    )?;
    // `AXONEME_BENCH_PROGRAMS_ONLY` measures the programs under
    // BPF_PROG_TEST_RUN and stops: no figures file to add the
    // differential's counts to.
    if name == "datapath" && std::env::var_os("AXONEME_BENCH_PROGRAMS_ONLY").is_none() {
        differential(root, &out)?;
    }
    Ok(())
}

/// Cases of the datapath-vs-oracle differential in the bench (CI runs 64).
const DIFFERENTIAL_CASES: u32 = 200;

/// The large differential run: the datapath-vs-oracle property test
/// (`agent/tests/datapath_oracle.rs`, release build) with
/// [`DIFFERENTIAL_CASES`] random policy sets, every flow of each through
/// the real programs. Any mismatch fails the bench (proptest prints the
/// minimal case); the counts go into `out` under `differential`.
fn differential(root: &Path, out: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    let mut cmd = super::cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "axoneme-agent",
        "--test",
        "datapath_oracle",
        "--",
        "--nocapture",
    ])
    .env("PROPTEST_CASES", DIFFERENTIAL_CASES.to_string())
    .current_dir(root);
    eprintln!("xtask: running {cmd:?}");
    let output = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("the datapath disagrees with the oracle:\n{text}");
    }
    // "datapath/oracle case: N flows agree", once per case.
    let per_case: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("datapath/oracle case: ")?
                .strip_suffix(" flows agree")?
                .parse()
                .ok()
        })
        .collect();
    let flows: u64 = per_case.iter().sum();
    if per_case.is_empty() {
        bail!("no differential cases ran:\n{text}");
    }
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(out)?)?;
    doc["differential"] = serde_json::json!({
        "cases": per_case.len(),
        "flows": flows,
        "mismatches": 0,
        "seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(out, serde_json::to_string_pretty(&doc)?)?;
    eprintln!(
        "differential: {flows} flows over {} cases agree with the oracle",
        per_case.len()
    );
    Ok(())
}
