//! Metrics end to end: a real Prometheus (Debian's `prometheus`, started
//! by the test in node 0's namespace on a per-run port) scrapes both
//! agents' `/metrics` over the underlay, as it would scrape a DaemonSet on
//! the host network; `promtool check metrics` accepts every agent's and
//! operator's endpoint; after the seed scenario the counters Prometheus
//! holds match what was sent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::netns::Netns;
use axoneme_e2e::operator::http_get;
use axoneme_e2e::{free_port, Cluster, ClusterConfig, CniPod, Proc};

/// The agents' default `--prometheus-serve-addr` port.
const AGENT_PORT: u16 = 9962;

fn seed_policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/seed-payments-policy.yaml")
}

/// `promtool check metrics` on `text`: fails with promtool's words.
fn promtool_check(what: &str, text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (cargo xtask setup installs the prometheus package)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool check metrics on {what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A real Prometheus inside `ns`, listening on its loopback.
struct Prometheus {
    ns_path: PathBuf,
    addr: String,
}

impl Prometheus {
    /// Starts it; the caller keeps the process (stopped by PID on drop).
    fn start(dir: &Path, ns: &Netns, targets: &[String]) -> Result<(Self, Proc)> {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: axoneme-agent\n    static_configs:\n      \
                 - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let cmd = ns.command(&[
            "prometheus",
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address={addr}"),
        ]);
        let mut proc = Proc::spawn("prometheus", cmd, &dir.join("prometheus.log"))?;
        let p = Prometheus {
            ns_path: ns.path(),
            addr,
        };
        wait_for("Prometheus ready", Duration::from_secs(30), || {
            if !proc.is_running() {
                bail!("prometheus exited:\n{}", proc.log_text());
            }
            Ok(p.get("/-/ready").is_ok())
        })?;
        Ok((p, proc))
    }

    fn get(&self, path: &str) -> Result<String> {
        let (ns, addr, path) = (self.ns_path.clone(), self.addr.clone(), path.to_string());
        std::thread::spawn(move || {
            axoneme_e2e::netns::enter_netns(&ns)?;
            http_get(&addr, &path)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("query thread panicked"))?
    }

    /// An instant query: each series' labels and value.
    fn query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>> {
        let body = self.get(&format!("/api/v1/query?query={}", encode(promql)))?;
        let v: serde_json::Value = serde_json::from_str(&body).context("query answer")?;
        if v["status"] != "success" {
            bail!("{promql}: {v}");
        }
        Ok(v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let value = s["value"][1].as_str()?.parse().ok()?;
                Some((s["metric"].clone(), value))
            })
            .collect())
    }

    /// The one value of a query that sums to one series (0 if none).
    fn value(&self, promql: &str) -> Result<f64> {
        Ok(self.query(promql)?.first().map_or(0.0, |s| s.1))
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An agent's `/metrics` as a scraper without `Accept` gets it, read
/// inside its node's namespace.
fn agent_metrics(c: &Cluster, node: usize) -> Result<String> {
    let n = &c.nodes[node];
    let addr = format!("{}:{AGENT_PORT}", n.ip);
    n.ns.enter(|| http_get(&addr, "/metrics"))?
}

/// The sum of the samples of `text` whose line starts with `prefix`.
fn sum_samples(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

const DENIED_INGRESS: &str =
    r#"axoneme_drop_count_total{reason="Policy denied",direction="INGRESS"}"#;

fn blocked(from: &CniPod, addr: &str) -> bool {
    from.http("GET", addr, 8080, "/").is_none()
}

#[test]
fn prometheus_scrapes_the_agents_and_the_counters_match_the_seed_scenario() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let payments = c.add_pod(0, "payments", &[("app", "payments")])?;
    let checkout = c.add_pod(1, "checkout", &[("app", "checkout")])?;
    let intruder = c.add_pod(1, "intruder", &[("app", "intruder")])?;
    c.logging_backend(&payments, 8080)?;
    let pay4 = payments.ip.to_string();

    // Every endpoint passes promtool, agents' and operators' alike (the
    // operators' failed it when they served only OpenMetrics).
    for i in 0..c.nodes.len() {
        promtool_check(&format!("agent {i}"), &agent_metrics(&c, i)?)?;
    }
    for op in &c.operators {
        promtool_check(&format!("operator {}", op.id), &op.http_get("/metrics")?)?;
    }

    let targets: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("{}:{AGENT_PORT}", n.ip))
        .collect();
    let (prom, proc) = Prometheus::start(&c.dir, &c.nodes[0].ns, &targets)?;
    // Stopped by PID with the cluster.
    c.extra.push(proc);
    wait_for("both agents scraped", Duration::from_secs(20), || {
        Ok(prom.query("up{job=\"axoneme-agent\"} == 1")?.len() == 2)
    })?;

    // The seed policy, enforced on node 0 once the intruder is blocked.
    let seed = seed_policy();
    c.cli(
        0,
        &["policy", "import", "--wait", "10", seed.to_str().unwrap()],
    )?;
    wait_for("the intruder blocked", Duration::from_secs(10), || {
        Ok(blocked(&intruder, &pay4))
    })?;

    // The intruder's probes: each is at least one SYN dropped at payments'
    // veth with reason 133 (Policy denied), ingress.
    let before = sum_samples(&agent_metrics(&c, 0)?, DENIED_INGRESS);
    const PROBES: usize = 5;
    for _ in 0..PROBES {
        assert!(blocked(&intruder, &pay4), "the intruder got through");
    }
    let want = before + PROBES as f64;
    let query = format!(
        "sum({})",
        DENIED_INGRESS.replace("_total{", "_total{instance=\"192.168.77.1:9962\",")
    );
    wait_for(
        "Prometheus sees the probes",
        Duration::from_secs(15),
        || Ok(prom.value(&query)? >= want),
    )
    .with_context(|| format!("{query}: {:?}, want >= {want}", prom.value(&query)))?;

    // checkout through node 0's L7 proxy: one allowed, two 403s.
    assert_eq!(checkout.http("POST", &pay4, 8080, "/v1/charge"), Some(200));
    assert_eq!(checkout.http("GET", &pay4, 8080, "/v1/charge"), Some(403));
    assert_eq!(checkout.http("POST", &pay4, 8080, "/v1/refund"), Some(403));
    let l7 = |q: &str| prom.value(&format!("sum({q})"));
    wait_for(
        "Prometheus sees the L7 verdicts",
        Duration::from_secs(15),
        || Ok(l7(r#"axoneme_policy_l7_total{rule="received"}"#)? >= 3.0),
    )?;
    assert_eq!(l7(r#"axoneme_policy_l7_total{rule="denied"}"#)?, 2.0);
    assert_eq!(l7(r#"axoneme_policy_l7_total{rule="forwarded"}"#)?, 1.0);
    for (method, class, verdict) in [
        ("GET", "4xx", "denied"),
        ("POST", "4xx", "denied"),
        ("POST", "2xx", "forwarded"),
    ] {
        let q = format!(
            r#"axoneme_proxy_http_requests_total{{method="{method}",status_class="{class}",verdict="{verdict}",direction="ingress"}}"#
        );
        assert_eq!(l7(&q)?, 1.0, "{q}");
    }

    // Policy stored → enforced, observed on both nodes with their label;
    // the three pods' identities, each on its node.
    assert!(prom.value("sum(axoneme_policy_implementation_delay_count)")? >= 2.0);
    for (i, pods) in [(0, 1.0), (1, 2.0)] {
        let node = &c.nodes[i].name;
        let q = format!(r#"axoneme_slo_policy_propagation_seconds_count{{node="{node}"}}"#);
        assert!(prom.value(&q)? >= 1.0, "{q}");
        let q = format!(r#"axoneme_slo_identity_ready_seconds_count{{node="{node}"}}"#);
        assert!(prom.value(&q)? >= pods, "{q}");
    }
    // What one PromQL query over the cluster gives: a p99 in seconds.
    let p99 = prom.value(
        "histogram_quantile(0.99, sum by (le) (axoneme_slo_policy_propagation_seconds_bucket))",
    )?;
    assert!(p99 > 0.0 && p99 < 30.0, "policy propagation p99 {p99}");

    // Forwards counted too, and map use within bounds.
    assert!(prom.value(r#"sum(axoneme_forward_count_total{direction="INGRESS"})"#)? > 0.0);
    let pressure = prom.query("axoneme_bpf_map_pressure")?;
    assert!(!pressure.is_empty());
    for (labels, v) in &pressure {
        assert!((0.0..=1.0).contains(v), "{labels} {v}");
    }
    assert!(prom.value(r#"sum(axoneme_endpoint_state{endpoint_state="ready"})"#)? >= 3.0);
    eprintln!(
        "metrics: drops 133 ingress on node 0 {before} -> {} ({PROBES} probes); \
         L7 denied {}; policy propagation p99 {p99:.4}s; identity ready p99 {:.4}s",
        prom.value(&query)?,
        l7(r#"axoneme_policy_l7_total{rule="denied"}"#)?,
        prom.value(
            "histogram_quantile(0.99, sum by (le) (axoneme_slo_identity_ready_seconds_bucket))"
        )?,
    );
    Ok(())
}
