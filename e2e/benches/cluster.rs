//! `cargo xtask bench cluster`: a real two-node cluster (release binaries).
//!
//! - Pod ready latency: CNI ADD start (the plugin process is spawned) to
//!   its return, by when the pod's identity and policy are in the maps;
//!   100 pods over 10 label sets (10 need a new identity from the
//!   operator, 90 reuse one), alternating nodes.
//! - Policy propagation: 50 changes (25 imports and 25 deletes of a policy
//!   selecting a server pod on each node) with `axoneme policy import` /
//!   `delete`; each change's latency is from the CLI start until new TCP
//!   connections crosswise between the nodes (node 0 → node 1's server and
//!   node 1 → node 0's server) behave as the change says on *both* nodes,
//!   detected by a probe loop of fresh connections in each client pod.
//!
//! Writes JSON to `AXONEME_BENCH_OUT` (default target/bench/cluster.json).
//!
//! Under `cargo test` (no `--bench` argument) it runs in its smoke form
//! instead: a handful of pods and changes with the debug binaries, every
//! check on, nothing written.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::bench::{pick, write_figures};
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};
use serde_json::json;

const PODS: usize = 100;
const APPS: usize = 10;
const CHANGES: usize = 50;
/// The smoke form's pods, label sets and changes (more pods than label
/// sets, an even number of changes: every summary has samples).
const SMOKE: (usize, usize, usize) = (6, 3, 4);
const PORT: u16 = 8080;
/// A blocked SYN is dropped: the connect times out after this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(15);
/// Consecutive failed probes that mean "denied" (a slow allowed connect
/// on a busy machine must not read as a deny).
const DENY_RUN: usize = 3;

fn percentile(v: &[f64], per_mille: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[(v.len() - 1) * per_mille / 1000]
}

fn summary(v: &[f64]) -> serde_json::Value {
    json!({
        "n": v.len(),
        "p50_ms": percentile(v, 500),
        "p99_ms": percentile(v, 990),
        "max_ms": percentile(v, 1000),
    })
}

/// A listener in `pod` that accepts and closes.
fn listen(pod: &CniPod) -> Result<()> {
    let l = pod.ns.enter(|| TcpListener::bind(("0.0.0.0", PORT)))??;
    std::thread::spawn(move || for _ in l.incoming() {});
    Ok(())
}

/// A probe loop from `client` to `target`: records (start time, ok) of
/// fresh connections until `stop`.
struct Prober {
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Arc<AtomicBool>,
}

impl Prober {
    fn start(client: &CniPod, target: SocketAddr) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        client.ns.spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = TcpStream::connect_timeout(&target, PROBE_TIMEOUT).is_ok();
                l.lock().expect("log").push((t, ok));
                if ok {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Prober { log, stop }
    }

    /// The first probe after `since` from which on the flow is `allowed`
    /// (for a deny: the first of `DENY_RUN` failures in a row).
    fn settled(&self, since: Instant, allowed: bool) -> Option<Instant> {
        let log = self.log.lock().expect("log");
        let after: Vec<&(Instant, bool)> = log.iter().filter(|(t, _)| *t >= since).collect();
        if allowed {
            return after.iter().find(|(_, ok)| *ok).map(|(t, _)| *t);
        }
        after
            .windows(DENY_RUN)
            .find(|w| w.iter().all(|(_, ok)| !ok))
            .map(|w| w[0].0)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn main() -> Result<()> {
    let (pods_n, apps, changes_n) = pick((PODS, APPS, CHANGES), SMOKE);
    let c = Cluster::start(&ClusterConfig::default())?;

    // Pod ready latency.
    let mut new_id = Vec::new();
    let mut existing = Vec::new();
    let mut pods = Vec::new();
    for i in 0..pods_n {
        let app = format!("bench-{}", i % apps);
        let pod = c.add_pod(i % 2, &format!("p{i}"), &[("app", &app)])?;
        let ms = pod.ready.as_secs_f64() * 1e3;
        if i < apps {
            new_id.push(ms);
        } else {
            existing.push(ms);
        }
        pods.push(pod);
    }
    let all: Vec<f64> = new_id.iter().chain(&existing).copied().collect();
    let mut deletes = Vec::new();
    for pod in &pods {
        let t = Instant::now();
        c.delete_pod(pod)?;
        deletes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(pods);
    println!("pod ready: {}", summary(&all));

    // Policy propagation.
    let servers = [
        c.add_pod(0, "server0", &[("app", "server")])?,
        c.add_pod(1, "server1", &[("app", "server")])?,
    ];
    let clients = [
        c.add_pod(0, "client0", &[("app", "client")])?,
        c.add_pod(1, "client1", &[("app", "client")])?,
    ];
    for s in &servers {
        listen(s)?;
    }
    // Crosswise: each node's client probes the other node's server.
    let probers = [
        Prober::start(&clients[0], SocketAddr::from((servers[1].ip, PORT))),
        Prober::start(&clients[1], SocketAddr::from((servers[0].ip, PORT))),
    ];
    let policy = c.dir.join("bench-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bench\n  namespace: default\nspec:\n  endpointSelector:\n    matchLabels:\n      app: server\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: nobody\n",
    )?;
    let policy = policy.to_str().context("path")?.to_string();
    let mut imports = Vec::new();
    let mut removals = Vec::new();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..changes_n {
        let import = i % 2 == 0;
        let t0 = Instant::now();
        if import {
            c.cli(0, &["policy", "import", &policy])?;
        } else {
            c.cli(0, &["policy", "delete", "bench"])?;
        }
        let want_allowed = !import;
        let deadline = t0 + Duration::from_secs(10);
        let settled = loop {
            let each: Vec<Option<Instant>> = probers
                .iter()
                .map(|p| p.settled(t0, want_allowed))
                .collect();
            if each.iter().all(Option::is_some) {
                break each.into_iter().flatten().max().expect("two probers");
            }
            if Instant::now() > deadline {
                bail!("change {i} (import={import}) not observed on both nodes within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ms = settled.duration_since(t0).as_secs_f64() * 1e3;
        if import {
            imports.push(ms);
        } else {
            removals.push(ms);
        }
        // Let the probes see the new state for a while before the next change.
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(probers);
    let changes: Vec<f64> = imports.iter().chain(&removals).copied().collect();
    println!("propagation: {}", summary(&changes));

    let report = json!({
        "machine": "2 cores, one host: 3 etcd members, 2 operators, 2 agents (release builds)",
        "pod_ready": {
            "all": summary(&all),
            "new_identity": summary(&new_id),
            "existing_identity": summary(&existing),
            "target_p99_ms": 150,
        },
        "pod_delete": summary(&deletes),
        "policy_propagation": {
            "all": summary(&changes),
            "import": summary(&imports),
            "delete": summary(&removals),
            "probe_timeout_ms": PROBE_TIMEOUT.as_secs_f64() * 1e3,
            "target_p99_ms": 200,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    write_figures("cluster", &report)
}
