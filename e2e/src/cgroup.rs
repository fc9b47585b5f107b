//! cgroup2 directories for nodes and pods, as a kubelet makes them: a node
//! has one (the agent attaches its socket-LB programs there) and each pod a
//! child of it, holding the pod's processes. Only directories the test
//! created are used, never the hierarchy's root; each is removed on drop
//! (after its children, once its processes have exited).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where cgroup2 is mounted (`cargo xtask setup` mounts it when the
/// machine has none).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(PathBuf::from))
        .context("no cgroup2 mount (run `cargo xtask setup`, which mounts one)")
}

/// A cgroup2 directory the test owns.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    /// A new cgroup directly under the cgroup2 root, named `name` (give it
    /// a per-run prefix).
    pub fn create(name: &str) -> Result<Self> {
        Self::create_in(&cgroup2_root()?, name)
    }

    fn create_in(parent: &Path, name: &str) -> Result<Self> {
        let path = parent.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// A child cgroup (a pod's under its node's).
    pub fn child(&self, name: &str) -> Result<Self> {
        Self::create_in(&self.path, name)
    }

    /// A command whose process (and its children) runs in this cgroup:
    /// a shell moves itself in, then execs `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path)
            .args(args);
        c
    }

    /// Keeps the directory after `self` is gone.
    pub fn leak(self) -> PathBuf {
        let p = self.path.clone();
        std::mem::forget(self);
        p
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if crate::keep() {
            return;
        }
        // Processes that just exited may hold it for a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("cgroup {}: not removed: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Fails unless `path` is a cgroup2 directory.
pub fn check(path: &Path) -> Result<()> {
    if !path.join("cgroup.controllers").exists() {
        bail!("{} is not a cgroup2 directory", path.display());
    }
    Ok(())
}
