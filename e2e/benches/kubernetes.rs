//! `cargo xtask bench kubernetes`: the two-node cluster in Kubernetes mode
//! against a real kube-apiserver (release binaries), with the same cluster
//! in standalone mode, in the same run, as the baseline.
//!
//! - Pod ready: CNI ADD start (the plugin process is spawned) to its
//!   return, by when the pod's identity and policy are in the maps; in
//!   Kubernetes mode the Pod object exists first and the agent takes the
//!   labels from it. 100 pods over 10 label sets, alternating nodes, in
//!   each mode.
//! - Policy propagation: 50 changes of one CiliumNetworkPolicy selecting a
//!   server pod on each node, toggled between admitting the client pods
//!   and admitting nobody; Kubernetes mode changes it with `kubectl apply`,
//!   standalone mode with `axoneme policy import`. Each change's latency
//!   runs from just before the command starts until new TCP connections
//!   crosswise between the nodes behave as the change says on *both*
//!   nodes (a probe loop of fresh connections in each client pod); in
//!   Kubernetes mode also until the policy's `Enforced` condition says
//!   "enforced on 2/2 nodes" for the new generation (seen on a `kubectl
//!   get --watch`).
//! - Bulk: 1,000 CiliumNetworkPolicies (selecting the pods of the first
//!   figure) in one multi-document YAML, `kubectl apply --server-side`,
//!   until every one is `Valid=True` and `Enforced=True` for its
//!   generation.
//!
//! Writes JSON to `AXONEME_BENCH_OUT` (default target/bench/kubernetes.json).
//!
//! Under `cargo test` (no `--bench` argument) it runs in its smoke form
//! instead: a handful of pods, changes and policies with the debug
//! binaries, every check on, nothing written.

use std::collections::HashMap;
use std::io::BufReader;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::bench::{
    crosswise_probes, percentile, pick, smoke, summary, write_figures, Prober, PROBE_TIMEOUT,
};
use axoneme_e2e::{Cluster, ClusterConfig, CniPod, KubeControlPlane};
use serde_json::json;

/// Pods, label sets, policy changes, bulk policies.
const FULL: Sizes = Sizes {
    pods: 100,
    apps: 10,
    changes: 50,
    client_side_changes: 20,
    bulk: 1000,
};
/// The smoke form's (more pods than label sets, both nodes, an even number
/// of changes: every summary has samples).
const SMOKE: Sizes = Sizes {
    pods: 6,
    apps: 3,
    changes: 4,
    client_side_changes: 2,
    bulk: 20,
};
const PORT: u16 = 8080;
/// How long one change may take to be observed before the bench fails.
const CHANGE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the bulk apply may take before the bench fails.
const BULK_DEADLINE: Duration = Duration::from_secs(120);
const TOGGLE: &str = "bench-toggle";
/// `kubectl apply --server-side` from stdin (forcing: the client-side
/// series edits the same object with another field manager).
const SERVER_SIDE_APPLY: [&str; 6] = [
    "apply",
    "--server-side",
    "--force-conflicts",
    "--field-manager=axoneme-bench",
    "-f",
    "-",
];

const TARGET_POD_READY_P99_MS: f64 = 150.0;
const TARGET_PROPAGATION_P99_MS: f64 = 250.0;
const TARGET_BULK_S: f64 = 10.0;

#[derive(Clone, Copy)]
struct Sizes {
    pods: usize,
    apps: usize,
    changes: usize,
    client_side_changes: usize,
    bulk: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One condition of a policy as the watch printed it.
#[derive(Debug, Clone)]
struct Condition {
    type_: String,
    status: String,
    observed: i64,
    message: String,
}

/// One policy object as the watch printed it.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    generation: i64,
    conditions: Vec<Condition>,
}

impl Seen {
    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Valid and enforced on every node at its current generation.
    fn valid_and_enforced(&self) -> bool {
        let at_gen = |c: &&Condition| c.status == "True" && c.observed == self.generation;
        self.condition("Valid").filter(at_gen).is_some()
            && self
                .condition("Enforced")
                .filter(at_gen)
                .is_some_and(|c| all_nodes(&c.message))
    }
}

/// Whether an `Enforced` message says every node: "enforced on N/N nodes …".
fn all_nodes(message: &str) -> bool {
    message
        .strip_prefix("enforced on ")
        .and_then(|m| m.split(' ').next())
        .and_then(|m| m.split_once('/'))
        .is_some_and(|(a, b)| a == b && a != "0")
}

/// `kubectl get cnp --watch -o json`: every event's object (name,
/// generation, conditions), stamped when it arrived. (With `-o jsonpath`
/// kubectl stops after the first object without a status.)
struct ConditionWatch {
    child: Child,
    events: Arc<Mutex<Vec<(Instant, Seen)>>>,
}

impl ConditionWatch {
    fn start(kube: &KubeControlPlane, selector: &[&str]) -> Result<Self> {
        let mut child = kube
            .kubectl_command()
            .args(["get", "cnp", "-n", "default", "--watch", "-o", "json"])
            .args(selector)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting kubectl get --watch")?;
        let stdout = child.stdout.take().context("watch stdout")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = events.clone();
        std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(BufReader::new(stdout))
                .into_iter::<serde_json::Value>();
            for obj in stream {
                let Ok(obj) = obj else { break };
                let t = Instant::now();
                match Self::parse(&obj) {
                    Some(seen) => log.lock().expect("events").push((t, seen)),
                    None => eprintln!("kubectl get --watch: unexpected object {obj}"),
                }
            }
        });
        Ok(ConditionWatch { child, events })
    }

    fn parse(obj: &serde_json::Value) -> Option<Seen> {
        let conditions = obj["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some(Condition {
                    type_: c["type"].as_str()?.to_string(),
                    status: c["status"].as_str()?.to_string(),
                    observed: c["observedGeneration"].as_i64()?,
                    message: c["message"].as_str().unwrap_or_default().to_string(),
                })
            })
            .collect();
        Some(Seen {
            name: obj["metadata"]["name"].as_str()?.to_string(),
            generation: obj["metadata"]["generation"].as_i64()?,
            conditions,
        })
    }

    /// The arrival of the first event after `since` for which `ok` holds.
    fn first(&self, since: Instant, ok: impl Fn(&Seen) -> bool) -> Option<Instant> {
        let events = self.events.lock().expect("events");
        events
            .iter()
            .find(|(t, s)| *t >= since && ok(s))
            .map(|(t, _)| *t)
    }

    /// For every name, its last event's arrival and whether `ok` holds for
    /// it.
    fn latest(&self, ok: impl Fn(&Seen) -> bool) -> HashMap<String, (Instant, bool)> {
        let events = self.events.lock().expect("events");
        let mut last = HashMap::new();
        for (t, s) in events.iter() {
            last.insert(s.name.clone(), (*t, ok(s)));
        }
        last
    }
}

impl Drop for ConditionWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds by command of this process's descendants.
fn cpu_by_command() -> HashMap<String, f64> {
    axoneme_e2e::bench::cpu_by_command(Some(std::process::id()))
}

/// The toggled policy: selects the server pods and admits the client
/// pods (`allow`) or nobody.
fn toggle_policy(allow: bool) -> String {
    let from = if allow { "client" } else { "nobody" };
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {TOGGLE}\n  namespace: default\nspec:\n  endpointSelector:\n    matchLabels:\n      app: server\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: {from}\n"
    )
}

/// `n` policies for the bulk apply, one multi-document YAML: policy i
/// selects the pods of label set i % apps and admits those of the next set
/// on port 10000 + i.
fn bulk_policies(n: usize, apps: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bulk-{i:04}\n  namespace: default\n  labels:\n    bench: bulk\nspec:\n  endpointSelector:\n    matchLabels:\n      app: bench-{}\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: bench-{}\n    toPorts:\n    - ports:\n      - port: \"{}\"\n        protocol: TCP\n",
                i % apps,
                (i + 1) % apps,
                10000 + i
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `pods` pods over `apps` label sets, alternating nodes; their CNI ADD
/// durations (ms): (all, those that needed a new identity, the others).
fn pod_ready(c: &Cluster, s: Sizes) -> Result<(Vec<CniPod>, Vec<f64>, Vec<f64>)> {
    let mut new_id = Vec::new();
    let mut existing = Vec::new();
    let mut pods = Vec::new();
    for i in 0..s.pods {
        let app = format!("bench-{}", i % s.apps);
        let pod = c.add_pod(i % 2, &format!("p{i}"), &[("app", &app)])?;
        if i < s.apps {
            new_id.push(ms(pod.ready));
        } else {
            existing.push(ms(pod.ready));
        }
        pods.push(pod);
    }
    Ok((pods, new_id, existing))
}

/// What one run of changes measured (ms).
#[derive(Default)]
struct Propagation {
    /// Command start → datapath changed on both nodes.
    datapath: Vec<f64>,
    /// … of changes that admit the clients again.
    allow: Vec<f64>,
    /// … of changes that deny them.
    deny: Vec<f64>,
    /// Command start → the command returned.
    command: Vec<f64>,
    /// Command start → `Enforced` on every node (Kubernetes mode).
    enforced: Vec<f64>,
    /// Command start → the new generation seen on the watch: the API
    /// server has the change (Kubernetes mode).
    api_write: Vec<f64>,
    /// The API server has the change → datapath changed on both nodes:
    /// the product's share (Kubernetes mode).
    api_to_datapath: Vec<f64>,
}

/// Server and client pods on each node, and a probe loop in each client
/// to the other node's server.
struct Probes {
    probers: [Prober; 2],
    _pods: Vec<CniPod>,
}

impl Probes {
    /// The pods and probes; returns once the toggled policy, already in
    /// place admitting nobody, denies on both nodes.
    fn start(c: &Cluster) -> Result<Self> {
        let (pods, probers) = crosswise_probes(c, PORT)?;
        let t0 = Instant::now();
        while !probers.iter().all(|p| p.settled(t0, false).is_some()) {
            if t0.elapsed() > CHANGE_DEADLINE {
                bail!("the initial deny was not observed on both nodes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(Probes {
            probers,
            _pods: pods,
        })
    }

    /// `changes` (even) changes through `apply`, starting from the deny,
    /// each measured. `watch` (Kubernetes mode) also times the `Enforced`
    /// condition; it holds the policy's generation, advanced by each
    /// change.
    fn changes(
        &self,
        c: &Cluster,
        changes: usize,
        apply: &dyn Fn(bool) -> Result<()>,
        mut watch: Option<(&ConditionWatch, &mut i64)>,
    ) -> Result<Propagation> {
        let probers = &self.probers;
        let mut p = Propagation::default();
        for i in 0..changes {
            let allow = i % 2 == 0;
            let t0 = Instant::now();
            apply(allow)?;
            p.command.push(ms(t0.elapsed()));
            let deadline = t0 + CHANGE_DEADLINE;
            let settled = loop {
                let each: Vec<Option<Instant>> =
                    probers.iter().map(|pr| pr.settled(t0, allow)).collect();
                if each.iter().all(Option::is_some) {
                    break each.into_iter().flatten().max().expect("two probers");
                }
                if Instant::now() > deadline {
                    bail!("change {i} (allow={allow}) not observed on both nodes within {CHANGE_DEADLINE:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let took = ms(settled.duration_since(t0));
            p.datapath.push(took);
            if allow {
                p.allow.push(took);
            } else {
                p.deny.push(took);
            }
            if let Some((w, gen)) = watch.as_mut() {
                **gen += 1;
                let gen = **gen;
                let enforced = loop {
                    let ok = |s: &Seen| {
                        s.name == TOGGLE && s.generation == gen && s.valid_and_enforced()
                    };
                    if let Some(t) = w.first(t0, ok) {
                        break t;
                    }
                    if Instant::now() > deadline {
                        let last = w.events.lock().expect("events").last().cloned();
                        let now = c
                            .kube
                            .as_ref()
                            .context("control plane")?
                            .kubectl(["get", "cnp", TOGGLE, "-o", "yaml"])?;
                        bail!(
                            "change {i}: generation {gen} not Enforced on every node within {CHANGE_DEADLINE:?}; last seen {last:?}; now:\n{}",
                            String::from_utf8_lossy(&now.stdout)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(5));
                };
                p.enforced.push(ms(enforced.duration_since(t0)));
                let written = w
                    .first(t0, |s| s.name == TOGGLE && s.generation == gen)
                    .expect("the Enforced event is of this generation");
                p.api_write.push(ms(written.duration_since(t0)));
                p.api_to_datapath
                    .push(took - ms(written.duration_since(t0)));
            }
            // Let the probes see the new state for a while before the next change.
            std::thread::sleep(Duration::from_millis(150));
        }
        Ok(p)
    }
}

fn propagation_report(p: &Propagation) -> serde_json::Value {
    let mut r = json!({
        "datapath": summary(&p.datapath),
        "allow": summary(&p.allow),
        "deny": summary(&p.deny),
        "command": summary(&p.command),
    });
    if !p.enforced.is_empty() {
        r["enforced_condition"] = summary(&p.enforced);
        r["api_write"] = summary(&p.api_write);
        r["api_to_datapath"] = summary(&p.api_to_datapath);
    }
    r
}

/// The bulk phase's figures.
struct Bulk {
    applied: Duration,
    all_valid: Duration,
    all_enforced: Duration,
    cpu: serde_json::Value,
    requests: serde_json::Value,
}

impl Bulk {
    fn report(&self, n: usize) -> serde_json::Value {
        let s = self.all_enforced.as_secs_f64();
        json!({
            "n": n,
            "kubectl_apply_s": self.applied.as_secs_f64(),
            "all_valid_s": self.all_valid.as_secs_f64(),
            "all_valid_and_enforced_s": s,
            "cpu_seconds": self.cpu,
            "apiserver_requests": self.requests,
            "target_s": TARGET_BULK_S,
            "target_met": s < TARGET_BULK_S,
        })
    }
}

/// The API server's `apiserver_request_total`, summed over response codes
/// (and scopes, versions), by `verb resource[/subresource]`.
fn apiserver_requests(kube: &KubeControlPlane) -> Result<HashMap<String, f64>> {
    let out = kube.kubectl(["get", "--raw", "/metrics"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut by = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let mut key = format!("{} {}", label("verb"), label("resource"));
        let sub = label("subresource");
        if !sub.is_empty() {
            key = format!("{key}/{sub}");
        }
        *by.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(by)
}

/// Requests between two [`apiserver_requests`] samples, most first (only
/// those with any).
fn requests_made(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> serde_json::Value {
    let mut v: Vec<(&String, f64)> = after
        .iter()
        .map(|(k, a)| (k, a - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).expect("no NaN").then(a.0.cmp(b.0)));
    v.into_iter()
        .map(|(k, d)| (k.clone(), json!(d)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `AXONEME_BENCH_BULK_ONLY=1`: the Kubernetes-mode cluster, its pods and
/// the bulk apply only (no baseline, no propagation), printed, no figures
/// file: for working on the bulk figure.
fn bulk_only(s: Sizes) -> Result<()> {
    let c = Cluster::start(&ClusterConfig {
        kubernetes: true,
        ..ClusterConfig::default()
    })?;
    let kube = c.kube.as_ref().context("control plane")?;
    let (pods, _, _) = pod_ready(&c, s)?;
    let b = bulk(kube, s)?;
    println!("{}", serde_json::to_string_pretty(&b.report(s.bulk))?);
    for pod in &pods {
        c.delete_pod(pod)?;
    }
    Ok(())
}

/// 1,000 CNPs in one `kubectl apply --server-side` until every one is
/// Valid and Enforced.
fn bulk(kube: &KubeControlPlane, s: Sizes) -> Result<Bulk> {
    let watch = ConditionWatch::start(kube, &["-l", "bench=bulk"])?;
    let yaml = bulk_policies(s.bulk, s.apps);
    let cpu0 = cpu_by_command();
    let requests0 = apiserver_requests(kube)?;
    let t0 = Instant::now();
    kube.kubectl_stdin(SERVER_SIDE_APPLY, &yaml)?;
    let applied = t0.elapsed();
    let (all_valid, all_enforced) = loop {
        let valid = watch.latest(|s| {
            s.condition("Valid")
                .is_some_and(|c| c.status == "True" && c.observed == s.generation)
        });
        let done = watch.latest(Seen::valid_and_enforced);
        let finished = |m: &HashMap<String, (Instant, bool)>| {
            (m.len() == s.bulk && m.values().all(|(_, ok)| *ok))
                .then(|| m.values().map(|(t, _)| *t).max().expect("non-empty"))
        };
        if let (Some(v), Some(e)) = (finished(&valid), finished(&done)) {
            break (v.duration_since(t0), e.duration_since(t0));
        }
        if t0.elapsed() > BULK_DEADLINE {
            let ok = done.values().filter(|(_, ok)| *ok).count();
            bail!(
                "{} bulk policies: {ok} valid and enforced after {BULK_DEADLINE:?} ({} seen)",
                s.bulk,
                done.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(watch);
    let bulk_cpu = axoneme_e2e::bench::cpu_spent(&cpu0, &cpu_by_command());
    let requests = requests_made(&requests0, &apiserver_requests(kube)?);
    println!("bulk: API server requests: {requests}");
    println!("bulk: CPU seconds by process: {bulk_cpu}");
    println!(
        "bulk: {} policies applied in {applied:.2?}, all Valid after {all_valid:.2?}, all Valid and Enforced after {all_enforced:.2?}",
        s.bulk
    );

    Ok(Bulk {
        applied,
        all_valid,
        all_enforced,
        cpu: bulk_cpu,
        requests,
    })
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn main() -> Result<()> {
    let s = pick(FULL, SMOKE);
    if std::env::var_os("AXONEME_BENCH_BULK_ONLY").is_some_and(|v| v == "1") {
        return bulk_only(s);
    }
    let started = Instant::now();

    // Baseline: the same cluster in standalone mode.
    let (base_ready, base_prop) = {
        let c = Cluster::start(&ClusterConfig::default())?;
        let (pods, new_id, existing) = pod_ready(&c, s)?;
        let all: Vec<f64> = new_id.iter().chain(&existing).copied().collect();
        println!("standalone pod ready: {}", summary(&all));
        drop(pods);
        let dir = c.dir.clone();
        let files = [false, true].map(|allow| {
            let path = dir.join(format!("toggle-{allow}.yaml"));
            std::fs::write(&path, toggle_policy(allow)).map(|()| path)
        });
        let [deny_file, allow_file] = files;
        let (deny_file, allow_file) = (deny_file?, allow_file?);
        c.cli(
            0,
            &["policy", "import", deny_file.to_str().context("path")?],
        )?;
        let apply = |allow: bool| -> Result<()> {
            let f = if allow { &allow_file } else { &deny_file };
            c.cli(0, &["policy", "import", f.to_str().context("path")?])
                .map(drop)
        };
        let p = Probes::start(&c)?.changes(&c, s.changes, &apply, None)?;
        println!("standalone propagation: {}", summary(&p.datapath));
        (all, p)
    };
    eprintln!("standalone part done after {:.1?}", started.elapsed());

    let c = Cluster::start(&ClusterConfig {
        kubernetes: true,
        ..ClusterConfig::default()
    })?;
    eprintln!("Kubernetes-mode cluster up after {:.1?}", started.elapsed());
    let kube = c.kube.as_ref().context("control plane")?;

    // 1. Pod ready.
    let (pods, new_id, existing) = pod_ready(&c, s)?;
    let ready: Vec<f64> = new_id.iter().chain(&existing).copied().collect();
    println!("pod ready: {}", summary(&ready));

    // 2. Propagation.
    let name = format!("metadata.name={TOGGLE}");
    let watch = ConditionWatch::start(kube, &["--field-selector", &name])?;
    let server_side = |allow: bool| {
        kube.kubectl_stdin(SERVER_SIDE_APPLY, &toggle_policy(allow))
            .map(drop)
    };
    server_side(false)?;
    let mut generation = 1;
    let probes = Probes::start(&c)?;
    let cpu0 = cpu_by_command();
    let prop = probes.changes(&c, s.changes, &server_side, Some((&watch, &mut generation)))?;
    let prop_cpu = axoneme_e2e::bench::cpu_spent(&cpu0, &cpu_by_command());
    println!(
        "propagation (server-side apply): {}",
        summary(&prop.datapath)
    );
    println!("propagation: CPU seconds by process: {prop_cpu}");
    // The same with client-side apply (kubectl's default), which costs
    // kubectl more: it fetches and parses the OpenAPI v2 document first.
    let client_side = |allow: bool| kube.apply_yaml(&toggle_policy(allow));
    let prop_csa = probes.changes(
        &c,
        s.client_side_changes,
        &client_side,
        Some((&watch, &mut generation)),
    )?;
    drop((probes, watch));
    println!(
        "propagation (client-side apply): {}",
        summary(&prop_csa.datapath)
    );

    // 3. Bulk.
    let bulk = bulk(kube, s)?;

    // Pod delete, for completeness.
    let mut deletes = Vec::new();
    for pod in &pods {
        let t = Instant::now();
        c.delete_pod(pod)?;
        deletes.push(ms(t.elapsed()));
    }
    drop(pods);
    drop(c);

    let ready_p99 = percentile(&ready, 990);
    let base_p99 = percentile(&base_ready, 990);
    let prop_p99 = percentile(&prop.datapath, 990);
    let bulk_s = bulk.all_enforced.as_secs_f64();
    let report = json!({
        "machine": "2 cores, one host: kube-apiserver + kube-controller-manager (own etcd), 3 etcd members (kvstore), 2 operators, 2 agents (release builds)",
        "pod_ready": {
            "kubernetes": {
                "all": summary(&ready),
                "new_identity": summary(&new_id),
                "existing_identity": summary(&existing),
            },
            "standalone": summary(&base_ready),
            "ratio_p50": percentile(&ready, 500) / percentile(&base_ready, 500),
            "ratio_p99": ready_p99 / base_p99,
            "target_p99_ms": TARGET_POD_READY_P99_MS,
            "target_met": ready_p99 < TARGET_POD_READY_P99_MS,
        },
        "pod_delete": summary(&deletes),
        "policy_propagation": {
            "kubernetes": propagation_report(&prop),
            "kubernetes_client_side_apply": propagation_report(&prop_csa),
            "kubernetes_cpu_seconds": prop_cpu,
            "standalone": propagation_report(&base_prop),
            "ratio_p50": percentile(&prop.datapath, 500) / percentile(&base_prop.datapath, 500),
            "probe_timeout_ms": ms(PROBE_TIMEOUT),
            "target_p99_ms": TARGET_PROPAGATION_P99_MS,
            "target_met": prop_p99 < TARGET_PROPAGATION_P99_MS,
        },
        "bulk_policies": bulk.report(s.bulk),
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !smoke() {
        println!(
            "targets: pod ready p99 {ready_p99:.1} ms (< {TARGET_POD_READY_P99_MS}): {}; propagation p99 {prop_p99:.1} ms (< {TARGET_PROPAGATION_P99_MS}): {}; {} CNPs {bulk_s:.2} s (< {TARGET_BULK_S}): {}",
            verdict(ready_p99 < TARGET_POD_READY_P99_MS),
            verdict(prop_p99 < TARGET_PROPAGATION_P99_MS),
            s.bulk,
            verdict(bulk_s < TARGET_BULK_S),
        );
    }
    write_figures("kubernetes", &report)
}
