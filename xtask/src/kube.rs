//! The Kubernetes control plane the e2e tests run (kube-apiserver,
//! kube-controller-manager, kube-proxy, kubectl), built from the published
//! `k8s.io/kubernetes` module in `e2e/kube/` into a cache outside the work
//! tree, keyed by version (`axoneme_e2e::kube::kube_bin_dir`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use axoneme_e2e::kube::{kube_bin_dir, kube_version, KUBE_BINARIES, KUBE_BIN_ENV};

/// The version packages `-ldflags -X` sets, as Kubernetes' own build does
/// (hack/lib/version.sh): the servers report it, kubectl too.
const VERSION_PACKAGES: [&str; 2] = [
    "k8s.io/component-base/version",
    "k8s.io/client-go/pkg/version",
];

/// Whether every binary is in `dir` and kube-apiserver reports `version`.
fn present(dir: &Path, version: &str) -> bool {
    KUBE_BINARIES.iter().all(|b| dir.join(b).is_file())
        && Command::new(dir.join("kube-apiserver"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("Kubernetes {version}"))
            .unwrap_or(false)
}

fn ldflags(module: &Path, version: &str) -> Result<String> {
    let mut parts = version.trim_start_matches('v').split('.');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        bail!("cannot parse Kubernetes version {version}");
    };
    // The build date of a release build is its tag's; the module proxy knows
    // the tag's time, which keeps the build reproducible.
    let date = Command::new("go")
        .args([
            "list",
            "-m",
            "-f",
            "{{.Time.UTC.Format \"2006-01-02T15:04:05Z\"}}",
        ])
        .arg("k8s.io/kubernetes")
        .current_dir(module)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|d| !d.is_empty());
    // Stripped (-s -w) as release binaries are: a third smaller.
    let mut flags = vec!["-s".to_string(), "-w".to_string()];
    for pkg in VERSION_PACKAGES {
        let mut set = |k: &str, v: &str| flags.push(format!("-X {pkg}.{k}={v}"));
        set("gitVersion", version);
        set("gitMajor", major);
        set("gitMinor", minor);
        set("gitTreeState", "clean");
        if let Some(d) = &date {
            set("buildDate", d);
        }
    }
    Ok(flags.join(" "))
}

/// Builds the control-plane binaries unless the cache already holds them at
/// the version `e2e/kube/go.mod` requires; returns their directory.
pub fn ensure_binaries(root: &Path) -> Result<PathBuf> {
    let version = kube_version();
    let dir = kube_bin_dir();
    if present(&dir, version) {
        println!(
            "setup: Kubernetes {version} binaries present in {}",
            dir.display()
        );
        return Ok(dir);
    }
    let module = root.join("e2e").join("kube");
    let go = Command::new("go")
        .arg("version")
        .output()
        .context("running `go version`: building Kubernetes needs Go (1.26 or newer) on PATH")?;
    let go = String::from_utf8_lossy(&go.stdout).trim().to_string();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built next to the cache and moved in only when all are done, so an
    // interrupted build never leaves a half-written binary behind.
    let staging = dir.with_file_name(format!("bin.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    println!(
        "setup: building Kubernetes {version} ({}) with {go} into {} \
         (a cold build takes about 10-16 minutes on 2 cores; {KUBE_BIN_ENV} overrides the directory)",
        KUBE_BINARIES.join(", "),
        dir.display()
    );
    let started = Instant::now();
    let mut cmd = crate::go::build(&module);
    cmd.arg("-ldflags")
        .arg(ldflags(&module, version)?)
        .arg("-o")
        .arg(format!("{}/", staging.display()))
        .args(
            KUBE_BINARIES
                .iter()
                .map(|b| format!("k8s.io/kubernetes/cmd/{b}")),
        );
    println!("setup: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!("building Kubernetes {version} failed: {status}");
    }
    for b in KUBE_BINARIES {
        std::fs::rename(staging.join(b), dir.join(b))
            .with_context(|| format!("moving {b} into {}", dir.display()))?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    if !present(&dir, version) {
        bail!(
            "built Kubernetes binaries in {} do not report {version}",
            dir.display()
        );
    }
    let sizes = KUBE_BINARIES
        .iter()
        .map(|b| {
            let mb = std::fs::metadata(dir.join(b)).map_or(0, |m| m.len()) / (1 << 20);
            format!("{b} {mb} MiB")
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "setup: built Kubernetes {version} in {:.0?}: {sizes}",
        started.elapsed()
    );
    Ok(dir)
}
