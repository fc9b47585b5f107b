//! The one way setup runs `go build` (Kubernetes, Helm, the Hubble CLI):
//! niced, static, reproducible, and with a build cache of its own that is
//! removed when setup ends. A cold Kubernetes build leaves gigabytes in Go's
//! default cache that nothing reads again (the binaries themselves are
//! cached by version), and CI's disk is shared with the Rust target dir.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Go's build cache for this setup run.
fn scratch_cache() -> PathBuf {
    PathBuf::from(format!(
        "/var/cache/axoneme/go-build-scratch-{}",
        std::process::id()
    ))
}

/// `nice -n 10 go build -trimpath -buildvcs=false` in `module`, with
/// `CGO_ENABLED=0` and the scratch build cache; callers add flags,
/// `-o` and packages.
pub fn build(module: &Path) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "go", "build", "-trimpath", "-buildvcs=false"])
        .current_dir(module)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", scratch_cache());
    cmd
}

/// Removes the scratch build cache when dropped (setup's end, success or not).
pub struct ScratchCache;

impl Drop for ScratchCache {
    fn drop(&mut self) {
        let dir = scratch_cache();
        if dir.exists() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => println!("setup: removed Go's build cache {}", dir.display()),
                Err(e) => eprintln!("setup: removing {}: {e}", dir.display()),
            }
        }
    }
}
