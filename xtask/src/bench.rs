//! `cargo xtask bench NAME`: builds release binaries, then runs the named
//! benchmark program, which writes `target/bench/NAME.json`.

use std::path::Path;

use anyhow::{bail, Result};

/// Benchmark name → (package, bench target).
const BENCHES: &[(&str, &str, &str)] = &[
    ("identity", "axoneme-operator", "identity"),
    ("policy", "axoneme-policy", "policy"),
    ("datapath", "axoneme-agent", "datapath"),
    ("cluster", "axoneme-e2e", "cluster"),
    ("l7", "axoneme-e2e", "l7"),
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
    super::run_cmd(
        root,
        super::cargo()
            .args(["bench", "-p", package, "--bench", target])
            .env("AXONEME_BIN_DIR", root.join("target").join("release"))
            .env("AXONEME_BENCH_OUT", out_dir.join(format!("{name}.json"))),
    )
}
