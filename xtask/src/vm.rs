//! The kernel for the tests that need what this machine's kernel lacks
//! (ESP and AES-GCM for IPsec): Debian's cloud kernel, booted under qemu
//! (TCG: KVM does not work here) by `axoneme_e2e::vm`. Setup downloads the
//! package the `linux-image-cloud-amd64` meta-package depends on and
//! unpacks it once into `/var/cache/axoneme/vm/<version>/` (no /boot
//! hooks run), then writes the version to `/var/cache/axoneme/vm/CURRENT`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup::sh;

/// Where the unpacked kernels live (outside the work tree, across runs),
/// where the tests' VM harness looks for them.
use axoneme_e2e::vm::CACHE;

/// The kernel package the meta-package points at now
/// (`linux-image-6.1.0-NN-cloud-amd64`).
fn current_package() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .context("apt-cache depends linux-image-cloud-amd64")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_string)
        .with_context(|| {
            format!("no kernel package in `apt-cache depends linux-image-cloud-amd64`: {text}")
        })
}

/// Downloads and unpacks the cloud kernel unless it is there.
pub fn ensure_kernel() -> Result<()> {
    let package = current_package()?;
    let version = package
        .strip_prefix("linux-image-")
        .expect("checked prefix")
        .to_string();
    let dir = Path::new(CACHE).join(&version);
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{version}"));
    if vmlinuz.exists() {
        println!("setup: VM kernel {version} present in {}", dir.display());
    } else {
        let started = std::time::Instant::now();
        println!("setup: downloading and unpacking the VM kernel {package} (for the IPsec tests; about 10 s)");
        let work = Path::new(CACHE).join("download");
        std::fs::create_dir_all(&work)?;
        // apt-get download writes to the current directory.
        sh(Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(&work))?;
        let deb = std::fs::read_dir(&work)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&package) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no {package} .deb"))?;
        let partial = Path::new(CACHE).join(format!("{version}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        // Module dependencies for modprobe inside the VM.
        sh(Command::new("depmod").arg("-b").arg(&partial).arg(&version))?;
        std::fs::rename(&partial, &dir)?;
        std::fs::remove_dir_all(&work)?;
        if !vmlinuz.exists() {
            bail!("{} has no {}", package, vmlinuz.display());
        }
        println!("setup: VM kernel unpacked in {:.0?}", started.elapsed());
    }
    std::fs::write(Path::new(CACHE).join("CURRENT"), &version)?;
    Ok(())
}
