//! A real etcd cluster on loopback for tests, the demo and benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{free_port, Proc};
use crate::tls::TestCerts;

/// One member's addresses and process.
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    proc: Option<Proc>,
}

/// A cluster of `etcd` processes with per-run ports and data directories.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
    token: String,
    dir: tempfile::TempDir,
    tls: Option<TestCerts>,
}

/// Data directories on tmpfs when there is one: fsync cost would otherwise
/// dominate every test; benchmarks may ask for disk with `AXONEME_ETCD_DISK=1`.
fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if std::env::var_os("AXONEME_ETCD_DISK").is_none() && shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy.
    pub fn start(n: usize) -> Result<Self> {
        Self::start_inner(n, false)
    }

    /// Like `start`, with client mTLS (`--client-cert-auth`) and generated certificates.
    pub fn start_tls(n: usize) -> Result<Self> {
        Self::start_inner(n, true)
    }

    fn start_inner(n: usize, tls: bool) -> Result<Self> {
        let mut last_err = None;
        // A port picked as free can be taken before etcd binds it: retry.
        for _ in 0..3 {
            match Self::try_start(n, tls) {
                Ok(c) => return Ok(c),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn try_start(n: usize, tls: bool) -> Result<Self> {
        let token = crate::run_prefix("etcd");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{token}-"))
            .tempdir_in(base_dir())
            .context("creating etcd data dir")?;
        let certs = if tls {
            Some(TestCerts::generate(&dir.path().join("pki"))?)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let mut members = Vec::new();
        for i in 0..n {
            members.push(EtcdMember {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()?),
                peer_url: format!("http://127.0.0.1:{}", free_port()?),
                data_dir: dir.path().join(format!("m{i}")),
                proc: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token,
            dir,
            tls: certs,
        };
        for i in 0..n {
            cluster.spawn_member(i, "new")?;
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn spawn_member(&mut self, i: usize, state: &str) -> Result<()> {
        let m = &self.members[i];
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            // Fast failure detection on loopback: a killed leader is
            // replaced in about a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .env_remove("ETCD_NAME");
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_cert)
                .arg("--client-cert-auth");
        }
        let log = self.dir.path().join(format!("{}.log", m.name));
        let proc = Proc::spawn(&format!("etcd-{}", m.name), cmd, &log)?;
        self.members[i].proc = Some(proc);
        Ok(())
    }

    /// Client URLs of every member, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Client URLs of the members that are running.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.proc.is_some())
            .map(|m| m.client_url.clone())
            .collect()
    }

    pub fn certs(&self) -> Option<&TestCerts> {
        self.tls.as_ref()
    }

    fn etcdctl(&self, endpoints: &[String]) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--command-timeout=2s");
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca_cert.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        cmd
    }

    /// Waits until every running member reports healthy.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for m in &mut self.members {
                if let Some(p) = &mut m.proc {
                    if !p.is_running() {
                        bail!("etcd {} exited during start-up:\n{}", m.name, p.log_text());
                    }
                }
            }
            let out = self
                .etcdctl(&self.live_endpoints())
                .args(["endpoint", "health"])
                .output()
                .context("running etcdctl (is etcd-client installed? run cargo xtask setup)")?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd not healthy after {timeout:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Index of the member that currently leads raft, if any is known.
    pub fn leader(&self) -> Result<Option<usize>> {
        let out = self
            .etcdctl(&self.live_endpoints())
            .args(["endpoint", "status", "-w", "json"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let statuses: Vec<serde_json_lite::Status> = serde_json_lite::parse(&text);
        for s in statuses {
            if s.member_id == s.leader && s.leader != 0 {
                return Ok(self.members.iter().position(|m| m.client_url == s.endpoint));
            }
        }
        Ok(None)
    }

    /// SIGKILL one member (its data directory stays for `restart`).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill9();
        }
    }

    /// SIGSTOPs one member: it holds its connections but answers nothing
    /// (what a hung or partitioned member looks like to clients).
    pub fn pause(&self, i: usize) -> Result<()> {
        match &self.members[i].proc {
            Some(p) => p.pause(),
            None => Ok(()),
        }
    }

    /// SIGCONTs a paused member.
    pub fn resume(&self, i: usize) -> Result<()> {
        match &self.members[i].proc {
            Some(p) => p.resume(),
            None => Ok(()),
        }
    }

    /// Starts a killed member again on its old data directory.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.members[i].proc.is_none() {
            self.spawn_member(i, "existing")?;
        }
        Ok(())
    }

    /// Loses member `i` for good and replaces it, as an operator of etcd
    /// does after a disk failure: the process is killed, the member
    /// removed from the cluster, its data directory deleted, and a member
    /// of the same name and peer URL added and started empty (the leader
    /// sends it a snapshot). Waits until every member is healthy.
    pub fn wipe_and_rejoin(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        let others: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(j, m)| *j != i && m.proc.is_some())
            .map(|(_, m)| m.client_url.clone())
            .collect();
        let name = self.members[i].name.clone();
        // Retried for a while: a killed leader is replaced within about a
        // second, and until then etcd refuses membership changes. A retry
        // that finds its change made (`done`) succeeds.
        let run = |cmd: &mut Command, what: &str, done: &str| -> Result<String> {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let out = cmd.output().with_context(|| format!("etcdctl {what}"))?;
                let stderr = String::from_utf8_lossy(&out.stderr);
                if out.status.success() || (!done.is_empty() && stderr.contains(done)) {
                    return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
                }
                if Instant::now() > deadline {
                    bail!(
                        "etcdctl {what}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        // `member list`: "ID, status, name, peer URLs, client URLs, learner".
        let list = run(
            self.etcdctl(&others).args(["member", "list"]),
            "member list",
            "",
        )?;
        let id = list
            .lines()
            .map(|l| l.split(", ").collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&name.as_str()))
            .and_then(|f| f.first().map(|id| id.to_string()))
            .with_context(|| format!("member {name} not in {list}"))?;
        run(
            self.etcdctl(&others).args(["member", "remove", &id]),
            "member remove",
            "member not found",
        )?;
        std::fs::remove_dir_all(&self.members[i].data_dir)
            .with_context(|| format!("wiping {}", self.members[i].data_dir.display()))?;
        let peer = format!("--peer-urls={}", self.members[i].peer_url);
        run(
            self.etcdctl(&others).args(["member", "add", &name, &peer]),
            "member add",
            "already exists",
        )?;
        self.spawn_member(i, "existing")?;
        self.wait_healthy(Duration::from_secs(30))
    }

    /// The keys under `prefix` that member `i` holds itself (a serializable
    /// read: no round trip to the leader).
    pub fn local_keys(&self, i: usize, prefix: &str) -> Result<Vec<String>> {
        let out = self
            .etcdctl(std::slice::from_ref(&self.members[i].client_url))
            .args(["get", "--prefix", "--keys-only", "--consistency=s", prefix])
            .output()?;
        if !out.status.success() {
            bail!(
                "etcdctl get on member {i}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Member logs, for failure dumps.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| {
                m.proc
                    .as_ref()
                    .map(|p| format!("== {} ==\n{}", m.name, p.log_text()))
            })
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Leaves the members running after `self` is gone; returns their PIDs
    /// and the kept data directory (for `cargo xtask demo --down`).
    pub fn detach(mut self) -> (Vec<u32>, PathBuf) {
        let pids = self
            .members
            .iter_mut()
            .filter_map(|m| m.proc.take().map(|p| p.detach()))
            .collect();
        let dir = std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("tmp"));
        (pids, dir.keep())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if crate::keep() {
            for m in &mut self.members {
                if let Some(p) = m.proc.take() {
                    eprintln!(
                        "AXONEME_KEEP: etcd {} left running, pid {}",
                        m.name,
                        p.detach()
                    );
                }
            }
            let path = std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("tmp"));
            eprintln!("AXONEME_KEEP: etcd data in {}", path.keep().display());
            return;
        }
        for m in &mut self.members {
            if let Some(mut p) = m.proc.take() {
                p.kill9();
            }
        }
    }
}

/// `etcdctl endpoint status -w json` has integers too large for f64, so the
/// two fields we need are picked out by hand rather than through serde_json.
mod serde_json_lite {
    pub struct Status {
        pub endpoint: String,
        pub member_id: u64,
        pub leader: u64,
    }

    fn num_after(s: &str, key: &str) -> Option<u64> {
        let i = s.find(key)? + key.len();
        let digits: String = s[i..]
            .trim_start_matches([':', ' '])
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    }

    pub fn parse(text: &str) -> Vec<Status> {
        text.split("{\"Endpoint\":\"")
            .skip(1)
            .filter_map(|chunk| {
                let endpoint = chunk.split('"').next()?.to_string();
                Some(Status {
                    endpoint,
                    member_id: num_after(chunk, "\"member_id\"")?,
                    leader: num_after(chunk, "\"leader\"")?,
                })
            })
            .collect()
    }
}
