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

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::bench::{crosswise_probes, pick, summary, write_figures, PROBE_TIMEOUT};
use axoneme_e2e::{Cluster, ClusterConfig};
use serde_json::json;

const PODS: usize = 100;
const APPS: usize = 10;
const CHANGES: usize = 50;
/// The smoke form's pods, label sets and changes (more pods than label
/// sets, an even number of changes: every summary has samples).
const SMOKE: (usize, usize, usize) = (6, 3, 4);
const PORT: u16 = 8080;

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
    // Crosswise: each node's client probes the other node's server.
    let (_pods, probers) = crosswise_probes(&c, PORT)?;
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
