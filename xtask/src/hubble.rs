//! The Hubble CLI the flow tests run (see `axoneme_e2e::hubble`), built
//! from Cilium's Go module pinned in `e2e/hubble/` into a cache outside the
//! work tree, keyed by version, moved in only when complete.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use axoneme_e2e::hubble::{cached, cilium_version};

/// Whether `bin` runs (`hubble version` exits 0).
fn present(bin: &Path) -> bool {
    Command::new(bin)
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn ensure_binary(root: &Path) -> Result<()> {
    let version = cilium_version();
    let dest = cached(version);
    if present(&dest) {
        println!(
            "setup: Hubble CLI (Cilium {version}) present at {}",
            dest.display()
        );
        return Ok(());
    }
    let dir = dest.parent().context("cache path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let staging = dest.with_file_name(format!("hubble.partial-{}", std::process::id()));
    println!(
        "setup: building the Hubble CLI of Cilium {version} into {} (about 5 minutes on 2 cores)",
        dest.display()
    );
    let started = Instant::now();
    let status = crate::go::build(&root.join("e2e").join("hubble"))
        .args(["-ldflags", "-s -w", "-o"])
        .arg(&staging)
        .arg("github.com/cilium/cilium/hubble")
        .status()
        .context("running go build (is Go installed?)")?;
    if !status.success() {
        let _ = std::fs::remove_file(&staging);
        bail!("building the Hubble CLI failed: {status}");
    }
    std::fs::rename(&staging, &dest)
        .with_context(|| format!("moving the Hubble CLI into {}", dest.display()))?;
    if !present(&dest) {
        bail!("{} does not run `hubble version`", dest.display());
    }
    println!(
        "setup: Hubble CLI built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
