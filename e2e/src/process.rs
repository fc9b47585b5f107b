//! Child processes that are stopped by their PID, never by name.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A free TCP port on loopback (bound and released; callers retry on a race).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// Path of a workspace binary built next to the running test or tool.
/// `AXONEME_BIN_DIR` overrides the directory.
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("AXONEME_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    // Integration tests run from target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// A child process with its output in a log file; killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    keep_running: bool,
}

/// Sends signal `sig` (`TERM`, `KILL`, ...) to `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -s {sig} {pid} failed");
    }
    Ok(())
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdout(out).stderr(err).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            keep_running: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if still running after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = signal(self.pid(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }

    /// SIGSTOP: the process stays alive but does nothing.
    pub fn pause(&self) -> Result<()> {
        signal(self.pid(), "STOP")
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<()> {
        signal(self.pid(), "CONT")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far (for assertions and failure dumps).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Leave the process running when dropped (debugging with AXONEME_KEEP).
    pub fn detach(mut self) -> u32 {
        self.keep_running = true;
        self.pid()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.keep_running {
            let _ = signal(self.pid(), "CONT");
            self.terminate(Duration::from_secs(3));
        }
    }
}
