//! What every benchmark program (`harness = false` bench targets) shares:
//! a full form under `cargo bench` (what `cargo xtask bench NAME` runs),
//! which writes its figures as JSON, and a smoke form under `cargo test`
//! (what `cargo xtask test` runs): one short round at small sizes, every
//! answer still checked, nothing written.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};

/// Whether this benchmark runs in its smoke form: true unless `--bench` is
/// among the process's arguments (`cargo bench` passes it, `cargo test
/// --benches` does not); `AXONEME_BENCH_SMOKE=1` forces the smoke form.
/// Other arguments are ignored.
pub fn smoke() -> bool {
    static SMOKE: OnceLock<bool> = OnceLock::new();
    *SMOKE.get_or_init(|| {
        let forced = std::env::var_os("AXONEME_BENCH_SMOKE").is_some_and(|v| v == "1");
        forced || !std::env::args_os().skip(1).any(|a| a == "--bench")
    })
}

/// `full` in the full form, `smoke` in the smoke form.
pub fn pick<T>(full: T, smoke: T) -> T {
    if self::smoke() {
        smoke
    } else {
        full
    }
}

/// In the full form, writes `doc` to `$AXONEME_BENCH_OUT` (by default
/// `target/bench/NAME.json` at the workspace root); in the smoke form,
/// writes nothing and says that the smoke form passed.
pub fn write_figures(name: &str, doc: &serde_json::Value) -> Result<()> {
    if smoke() {
        println!("bench {name}: smoke form passed (no figures written)");
        return Ok(());
    }
    let out = std::env::var_os("AXONEME_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // This crate's directory is a member of the workspace root.
            let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
            e2e.parent()
                .unwrap_or(e2e)
                .join("target")
                .join("bench")
                .join(format!("{name}.json"))
        });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("bench {name}: figures written to {}", out.display());
    Ok(())
}
