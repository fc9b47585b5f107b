//! Metrics end to end: a real Prometheus (Debian's `prometheus`, started
//! by the test in node 0's namespace on a per-run port) scrapes both
//! agents' `/metrics` over the underlay, as it would scrape a DaemonSet on
//! the host network; `promtool check metrics` accepts every agent's and
//! operator's endpoint; after the seed scenario the counters Prometheus
//! holds match what was sent. Prometheus scrapes the operators too, and
//! every query of every Grafana dashboard the chart ships
//! (`helm/axoneme/dashboards/`) returns data: a dashboard naming a metric
//! that does not exist fails here.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axoneme_e2e::expect::seed_policy;
use axoneme_e2e::expect::wait_for;
use axoneme_e2e::netns::Netns;
use axoneme_e2e::operator::http_get;
use axoneme_e2e::{free_port, Cluster, ClusterConfig, CniPod, Proc};

use axoneme_e2e::cluster::{sum_samples, AGENT_METRICS_PORT as AGENT_PORT};

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
    /// Starts it with one scrape job per `(job, targets)`; the caller
    /// keeps the process (stopped by PID on drop).
    fn start(dir: &Path, ns: &Netns, jobs: &[(&str, Vec<String>)]) -> Result<(Self, Proc)> {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let mut yml =
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n".to_string();
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            yml += &format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            );
        }
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, yml)?;
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

    /// The names of every series Prometheus holds.
    fn names(&self) -> Result<Vec<String>> {
        self.strings("/api/v1/label/__name__/values")
    }

    /// A `data` list of strings from the API (label values).
    fn strings(&self, path: &str) -> Result<Vec<String>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.get(path)?).context(path.to_string())?;
        if v["status"] != "success" {
            bail!("{path}: {v}");
        }
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
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

/// Makes `upstream`, on this process's loopback, reachable at the returned
/// address on the loopback of the namespace `ns`. The e2e cluster runs the
/// operators on the host's loopback and the agents inside their nodes'
/// namespaces; a Prometheus sees both in a real cluster (host network), here
/// it runs in node 0's namespace and reaches the operators through this. The
/// listener is made by a thread inside `ns` (a socket keeps the namespace it
/// was made in); the relay threads connect upstream from this process's own.
fn relay_into(ns: &Netns, upstream: String) -> Result<String> {
    let listener = ns.enter(|| TcpListener::bind("127.0.0.1:0"))??;
    let addr = listener.local_addr()?.to_string();
    // Lives as long as the test process: blocked in accept, it holds nothing else.
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            for (mut from, mut to) in [(client, s2), (server, c2)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    Ok(addr)
}

const DENIED_INGRESS: &str =
    r#"axoneme_drop_count_total{reason="Policy denied",direction="INGRESS"}"#;

fn blocked(from: &CniPod, addr: &str) -> bool {
    from.http("GET", addr, 8080, "/").is_none()
}

#[test]
fn prometheus_scrapes_the_agents_and_the_counters_match_the_seed_scenario() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let axoneme_e2e::SeedPods {
        payments,
        checkout,
        intruder,
    } = c.seed_pods()?;
    let pay4 = payments.ip.to_string();

    // Every endpoint passes promtool, agents' and operators' alike (the
    // operators' failed it when they served only OpenMetrics).
    for i in 0..c.nodes.len() {
        promtool_check(&format!("agent {i}"), &c.agent_metrics(i)?)?;
    }
    for op in &c.operators {
        promtool_check(&format!("operator {}", op.id), &op.http_get("/metrics")?)?;
    }

    let targets: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("{}:{AGENT_PORT}", n.ip))
        .collect();
    let operators = c
        .operators
        .iter()
        .map(|op| relay_into(&c.nodes[0].ns, op.metrics_addr.clone()))
        .collect::<Result<Vec<_>>>()?;
    let (prom, proc) = Prometheus::start(
        &c.dir,
        &c.nodes[0].ns,
        &[("axoneme-agent", targets), ("axoneme-operator", operators)],
    )?;
    // Stopped by PID with the cluster.
    c.extra.push(proc);
    wait_for("both agents scraped", Duration::from_secs(20), || {
        Ok(prom.query("up{job=\"axoneme-agent\"} == 1")?.len() == 2)
    })?;
    wait_for("both operators scraped", Duration::from_secs(20), || {
        Ok(prom.query("up{job=\"axoneme-operator\"} == 1")?.len() == 2)
    })?;

    // The seed policy, enforced on node 0 once the intruder is blocked.
    let seed = seed_policy();
    c.import_policy(0, &seed)?;
    wait_for("the intruder blocked", Duration::from_secs(10), || {
        Ok(blocked(&intruder, &pay4))
    })?;

    // The intruder's probes: each is at least one SYN dropped at payments'
    // veth with reason 133 (Policy denied), ingress.
    let before = sum_samples(&c.agent_metrics(0)?, DENIED_INGRESS);
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

    // Every new flow's verdict, counted in node 0's datapath: the
    // intruder's denied by default (no entry matched), checkout's three
    // connections admitted by an L3-L4 entry and sent to the proxy.
    let verdicts = |labels: &str| {
        prom.value(&format!(
            r#"sum(axoneme_policy_verdicts_total{{instance="192.168.77.1:9962",direction="ingress",{labels}}})"#
        ))
    };
    wait_for(
        "Prometheus sees the verdicts",
        Duration::from_secs(15),
        || Ok(verdicts(r#"match="l3-l4",action="redirected""#)? >= 3.0),
    )?;
    let dropped = verdicts(r#"match="none",action="dropped""#)?;
    assert!(dropped >= PROBES as f64, "intruder verdicts {dropped}");

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
    // Every agent regenerated its endpoints (the pods, the policy), each
    // pass timed by scope.
    let regenerated = prom.query(
        r#"sum by (instance) (axoneme_endpoint_regeneration_time_stats_seconds_count{scope="total"}) > 0"#,
    )?;
    assert_eq!(
        regenerated.len(),
        2,
        "agents with regenerations: {regenerated:?}"
    );
    // Every agent's etcd calls, timed by operation and outcome: both
    // agents have made successful calls since they started (lease
    // keep-alives, their endpoints' writes), and none failed: etcd was up.
    let ok = prom.query(
        r#"sum by (instance) (axoneme_kvstore_operations_duration_seconds_count{job="axoneme-agent",outcome="success"}) > 0"#,
    )?;
    assert_eq!(ok.len(), 2, "agents with timed etcd calls: {ok:?}");
    // Both operators' too (the leader's allocations; the standby's
    // election watch and its lease).
    let ok = prom.query(
        r#"sum by (instance) (axoneme_kvstore_operations_duration_seconds_count{job="axoneme-operator",outcome="success"}) > 0"#,
    )?;
    assert_eq!(ok.len(), 2, "operators with timed etcd calls: {ok:?}");
    assert!(
        prom.query(r#"axoneme_kvstore_operations_duration_seconds_count{outcome="fail"} > 0"#)?
            .is_empty(),
        "no etcd call failed"
    );
    // The operators' allocation side: every pod's record answered.
    assert!(
        prom.value("sum(axoneme_identity_assignment_duration_seconds_count)")? >= 3.0,
        "identity assignments timed"
    );
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

    // Every query of every dashboard returns data from this cluster.
    let checked = check_dashboards(&prom)?;
    eprintln!("dashboards: {checked} queries answered");
    Ok(())
}

/// The dashboards the chart ships.
fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/axoneme/dashboards")
}

/// A panel's query as Prometheus gets it from Grafana: the interval
/// variables become windows holding many of this Prometheus' 1 s scrapes,
/// the dashboard's own variables (`vars`, matched with `=~`) become `.*`,
/// Grafana's "All". An unknown variable is an error.
fn substitute(expr: &str, vars: &[String]) -> Result<String> {
    let mut out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    for v in vars {
        out = out
            .replace(&format!("${{{v}}}"), ".*")
            .replace(&format!("${v}"), ".*");
    }
    if out.contains('$') {
        bail!("{expr}: a variable the dashboard does not define");
    }
    Ok(out)
}

/// The `axoneme_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("axoneme_"))
        .collect()
}

/// Runs every `targets[].expr` of every panel of every dashboard (and
/// every variable's `label_values` query) against `prom`; each must
/// return at least one series, and every metric it names must exist.
/// Fails naming the dashboard, the panel and the expression. Returns how
/// many queries were run.
fn check_dashboards(prom: &Prometheus) -> Result<usize> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    assert_eq!(
        files.len(),
        3,
        "agent, operator and SLO dashboards: {files:?}"
    );
    let names = prom.names()?;
    let mut checked = 0;
    for file in &files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file)?)
            .with_context(|| format!("{name} is not JSON"))?;
        let title = d["title"].as_str().unwrap_or_default();
        let variables = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let vars: Vec<String> = variables
            .iter()
            .filter_map(|v| v["name"].as_str().map(String::from))
            .collect();
        for v in &variables {
            if v["type"] != "query" {
                continue;
            }
            let q = v["query"]["query"].as_str().unwrap_or_default();
            // label_values(metric, label): the label has values on that metric.
            let (metric, label) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.split_once(','))
                .with_context(|| format!("{name}: variable {}: {q}", v["name"]))?;
            let values = prom.strings(&format!(
                "/api/v1/label/{}/values?match[]={}",
                label.trim(),
                encode(metric.trim())
            ))?;
            assert!(
                !values.is_empty(),
                "dashboard {name} ({title}), variable {}: {q} has no values",
                v["name"]
            );
            checked += 1;
        }
        // Rows hold their panels in `panels` when collapsed.
        let mut panels: Vec<serde_json::Value> = Vec::new();
        for p in d["panels"].as_array().context("panels")? {
            panels.extend(p["panels"].as_array().cloned().unwrap_or_default());
            panels.push(p.clone());
        }
        for p in panels.iter().filter(|p| p["type"] != "row") {
            let panel = p["title"].as_str().unwrap_or_default();
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(
                !targets.is_empty(),
                "dashboard {name}, panel {panel:?}: no query"
            );
            for t in &targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                let what = format!("dashboard {name} ({title}), panel {panel:?}: {expr}");
                for m in metric_names(expr) {
                    assert!(names.iter().any(|n| n == m), "{what}: no metric {m}");
                }
                let q = substitute(expr, &vars).with_context(|| what.clone())?;
                // A series born at the end of the scenario needs a second
                // scrape before rate() sees it.
                let mut found = 0;
                wait_for(&what, Duration::from_secs(10), || {
                    found = prom.query(&q).with_context(|| what.clone())?.len();
                    Ok(found > 0)
                })
                .with_context(|| format!("{what}: no data (ran {q})"))?;
                checked += 1;
            }
        }
    }
    Ok(checked)
}

#[test]
fn dashboard_queries_are_substituted_as_grafana_would() -> Result<()> {
    let vars = ["instance".to_string(), "DS_PROMETHEUS".to_string()];
    assert_eq!(
        substitute("rate(x{instance=~\"$instance\"}[$__rate_interval])", &vars)?,
        "rate(x{instance=~\".*\"}[1m])"
    );
    assert_eq!(substitute("x{i=~\"${instance}\"}", &vars)?, "x{i=~\".*\"}");
    assert!(substitute("x{node=~\"$node\"}", &vars).is_err());
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(axoneme_a_bucket[1m]))) / axoneme_b"
        ),
        ["axoneme_a_bucket", "axoneme_b"]
    );
    Ok(())
}
