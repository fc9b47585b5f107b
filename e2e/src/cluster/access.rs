//! Talking to the cluster's nodes as a user or a test does: the `axoneme`
//! CLI, the agent's socket, its log, the node's interfaces.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Cluster;
use crate::{bin_path, Proc};

/// The agents' default `--prometheus-serve-addr` port.
pub const AGENT_METRICS_PORT: u16 = 9962;

/// The sum of the samples of a Prometheus text `text` whose line starts
/// with `prefix` (0 when there are none).
pub fn sum_samples(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        // Not `sum`: an empty one is -0.0.
        .fold(0.0, |a, b| a + b)
}

impl Cluster {
    /// Node `i`'s agent's `/metrics` (on its default port), as a scraper
    /// without `Accept` gets it, read inside the node's namespace.
    pub fn agent_metrics(&self, i: usize) -> Result<String> {
        let n = &self.nodes[i];
        let addr = format!("{}:{AGENT_METRICS_PORT}", n.ip);
        n.ns.enter(|| crate::operator::http_get(&addr, "/metrics"))?
    }

    /// Node `i`'s agent's log so far.
    pub fn agent_log(&self, i: usize) -> String {
        self.nodes[i]
            .agent
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }

    /// The `axoneme` CLI against this cluster and node `i`'s agent.
    pub fn cli_command(&self, node: usize, args: &[&str]) -> Command {
        let mut c = Command::new(bin_path("axoneme"));
        c.env("AXONEME_ETCD_ENDPOINTS", self.etcd().endpoints().join(","))
            .env("AXONEME_AGENT_SOCKET", &self.nodes[node].socket);
        if let Some(certs) = self.etcd().certs() {
            c.env("AXONEME_ETCD_CA", &certs.ca_cert)
                .env("AXONEME_ETCD_CERT", &certs.client_cert)
                .env("AXONEME_ETCD_KEY", &certs.client_key);
        }
        c.args(args);
        c
    }

    /// Imports the policy file at `path` through node `node`'s CLI and
    /// waits (up to 10 s) until every node enforces it.
    pub fn import_policy(&self, node: usize, path: &Path) -> Result<()> {
        let path = path.to_str().context("a policy path that is UTF-8")?;
        self.cli(node, &["policy", "import", "--wait", "10", path])?;
        Ok(())
    }

    /// Runs the CLI; fails with its stderr if it fails.
    pub fn cli(&self, node: usize, args: &[&str]) -> Result<Output> {
        let out = self
            .cli_command(node, args)
            .output()
            .context("running axoneme")?;
        if !out.status.success() {
            bail!(
                "axoneme {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// GET `path` on node `i`'s agent socket, as the CLI does: (HTTP
    /// status, body, time taken).
    pub fn agent_get(&self, i: usize, path: &str) -> Result<(u16, String, Duration)> {
        let started = Instant::now();
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
            .arg("--unix-socket")
            .arg(&self.nodes[i].socket)
            .arg(format!("http://agent{path}"))
            .output()?;
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("curl output")?;
        Ok((code.trim().parse().unwrap_or(0), body.to_string(), took))
    }

    /// Interfaces in node `i`'s namespace (for leak checks).
    pub fn node_links(&self, i: usize) -> Result<Vec<String>> {
        let out = self.nodes[i].ns.ip(&["-o", "link", "show"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    }
}
