//! Operator replicas as real processes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{free_port, Proc};

/// One `axoneme-operator` process.
pub struct OperatorProc {
    pub id: String,
    pub metrics_addr: String,
    pub proc: Proc,
}

impl OperatorProc {
    /// Starts a replica named `id` against `etcd` endpoints, logging into `dir`.
    pub fn start(
        binary: &Path,
        id: &str,
        etcd: &[String],
        extra: &[String],
        dir: &Path,
    ) -> Result<Self> {
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(binary);
        // None given: the replica takes them from its --config-dir.
        if !etcd.is_empty() {
            cmd.arg("--etcd-endpoints").arg(etcd.join(","));
        }
        cmd.args(["--id", id])
            .args(["--metrics-addr", &metrics_addr])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let proc = Proc::spawn(
            &format!("operator-{id}"),
            cmd,
            &dir.join(format!("operator-{id}.log")),
        )?;
        Ok(OperatorProc {
            id: id.to_string(),
            metrics_addr,
            proc,
        })
    }

    /// GET a path on the replica's metrics server (plain HTTP/1.0 on loopback).
    pub fn http_get(&self, path: &str) -> Result<String> {
        http_get(&self.metrics_addr, path)
    }

    /// The value of one metric sample (`name` with labels as rendered), 0 if absent.
    pub fn metric(&self, sample: &str) -> Result<f64> {
        let text = self.http_get("/metrics")?;
        Ok(metric_value(&text, sample).unwrap_or(0.0))
    }

    /// Waits until the replica's metrics endpoint answers.
    pub fn wait_up(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.proc.is_running() {
                bail!("operator {} exited:\n{}", self.id, self.proc.log_text());
            }
            if self.http_get("/healthz").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("operator {} not up after {timeout:?}", self.id)
    }
}

/// Finds a sample's value in Prometheus text output.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// A minimal HTTP/1.0 GET for the harness's own loopback health checks.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path} on {addr}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_string())
}
