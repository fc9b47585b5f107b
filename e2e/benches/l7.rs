//! `cargo xtask bench l7`: wrk against nginx (from Debian) in a pod of a
//! real one-node cluster, side by side in one run:
//!
//! - direct: port 8081, allowed at L3/L4 with no L7 rule (the datapath
//!   only);
//! - proxy: port 8080, allowed by an L7 rule (`GET /.*`), so every request
//!   goes through the node's L7 proxy;
//! - nginx hop: the same requests to port 8081 through nginx as a reverse
//!   proxy (kept-alive upstream connections) on the client pod's loopback:
//!   what one well-tuned userspace HTTP hop costs on this machine, without
//!   policy. A reference, measured in the same run;
//! - nginx on the node: the same reverse proxy in the node's namespace,
//!   where the L7 proxy runs, on the node's address: the client's requests
//!   leave its pod, cross its veth and the node's stack, and the upstream
//!   connections come from the node, as the proxy's do. The hop in the
//!   same place as the proxy, so that proxy / this compares the two
//!   programs rather than two placements.
//!
//! At 1 and 64 connections, three interleaved rounds of 4 s each, medians:
//! requests/s, p99 latency, the forwarding hop's CPU time per request
//! (user and system: where a gap between two hops is), and the ratios
//! (proxy / direct, nginx hop / direct, proxy / nginx hop, proxy / nginx
//! on the node). Targets: at least 60% of direct RPS, p99 under 2x; the
//! issue's: at least the RPS of an nginx hop, p99 no worse. Writes JSON to
//! `AXONEME_BENCH_OUT` (default target/bench/l7.json).
//!
//! Under `cargo test` (no `--bench` argument) it runs in its smoke form
//! instead: one round of 1 s at 1 and 8 connections with the debug
//! binaries, every answer still checked, nothing written.

use std::time::Duration;

use anyhow::{bail, Result};
use axoneme_e2e::bench::{pick, tree_cpu, write_figures};
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};
use serde_json::json;

const SECONDS: u32 = 4;
/// Interleaved rounds per connection count.
const ROUNDS: usize = 3;
/// Connection counts.
const CONNECTIONS: [u32; 2] = [1, 64];
/// The smoke form's seconds, rounds and connection counts.
const SMOKE: (u32, usize, [u32; 2]) = (1, 1, [1, 8]);

/// The median rps and p99 of `runs`, each taken on its own, and the CPU
/// per request (user, system) of the run with the median total.
fn median(runs: &[Run]) -> Run {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut cpus: Vec<(f64, f64)> = runs.iter().filter_map(|r| r.cpu_us).collect();
    cpus.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    Run {
        rps: mid(runs.iter().map(|r| r.rps).collect()),
        p99_ms: mid(runs.iter().map(|r| r.p99_ms).collect()),
        cpu_us: cpus.get(cpus.len() / 2).copied(),
    }
}

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bench-web
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: \"8080\"
        protocol: TCP
      rules:
        http:
        - method: GET
          path: /.*
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: \"8081\"
        protocol: TCP
  - fromEntities:
    - host
    toPorts:
    - ports:
      - port: \"8081\"
        protocol: TCP
";

/// nginx in `pod` (in its cgroup), answering `200 ok` on 8080 and 8081.
/// The caller keeps it where it is stopped before the pod's cgroup goes.
fn nginx(c: &Cluster, pod: &CniPod) -> Result<axoneme_e2e::Proc> {
    axoneme_e2e::http::nginx_in(pod, &[8080, 8081], false, &c.dir.join("nginx"))
}

/// One run of a path: requests/s, p99 in ms, and the CPU time per request
/// (user, system; µs) of the process tree that forwards on it (the agent,
/// or the nginx reverse proxy), all threads.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Run {
    rps: f64,
    p99_ms: f64,
    cpu_us: Option<(f64, f64)>,
}

/// `GET url` from `client` for `seconds`, with the CPU time of the process
/// tree `hop` (if any) over it; there must be answers, and every answer
/// must be a 2xx.
fn wrk(
    client: &CniPod,
    url: &str,
    connections: u32,
    seconds: u32,
    hop: Option<u32>,
) -> Result<Run> {
    let before = hop.map(tree_cpu);
    // In the pod's cgroup, as a pod's process is.
    let run = axoneme_e2e::http::wrk_with(
        |args| client.command(args),
        "GET",
        url,
        connections,
        seconds,
        false,
    )?;
    let after = hop.map(tree_cpu);
    if run.requests == 0 || run.non_2xx > 0 || run.socket_errors > 0 {
        bail!("wrk {url}: {run:?}");
    }
    let per_request = |s: f64| s * 1e6 / run.requests as f64;
    let cpu_us = before
        .zip(after)
        .map(|(b, a)| (per_request(a.0 - b.0), per_request(a.1 - b.1)));
    Ok(Run {
        rps: run.rps,
        p99_ms: run.p99_ms,
        cpu_us,
    })
}

fn main() -> Result<()> {
    let (seconds, rounds_n, connection_counts) = pick((SECONDS, ROUNDS, CONNECTIONS), SMOKE);
    let mut c = Cluster::start(&ClusterConfig {
        nodes: 1,
        ..ClusterConfig::default()
    })?;
    let web = c.add_pod(0, "web", &[("app", "web")])?;
    let client = c.add_pod(0, "client", &[("app", "client")])?;
    // Declared after the pods: stopped before their cgroups are removed.
    let _web_nginx = nginx(&c, &web)?;
    let policy = c.dir.join("bench-web.yaml");
    std::fs::write(&policy, POLICY)?;
    c.import_policy(0, &policy)?;
    let ip = web.ip.to_string();
    // Enforced: the L7 port answers through the proxy (a 403 for POST).
    for _ in 0..50 {
        if client.http("POST", &ip, 8080, "/") == Some(403) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if client.http("POST", &ip, 8080, "/") != Some(403) {
        bail!("the L7 rule is not enforced on port 8080");
    }
    let hop_dir = c.dir.join("nginx-hop");
    let hop = axoneme_e2e::http::nginx_reverse_proxy(
        &client.ns,
        "127.0.0.1",
        8082,
        &format!("{ip}:8081"),
        &hop_dir,
    )?;
    let node_ip = c.nodes[0].ip.to_string();
    let node_hop_dir = c.dir.join("nginx-node");
    let node_hop = axoneme_e2e::http::nginx_reverse_proxy(
        &c.nodes[0].ns,
        "0.0.0.0",
        8083,
        &format!("{ip}:8081"),
        &node_hop_dir,
    )?;
    let agent = c.nodes[0].agent.as_ref().map(|a| a.pid());
    // Whose CPU each path's runs measure: the forwarding hop's.
    let hops = [None, Some(hop.pid()), agent, Some(node_hop.pid())];
    c.extra.extend([hop, node_hop]);
    let mut rows = Vec::new();
    for connections in connection_counts {
        // Rounds interleave the four paths, so a slow spell of the host
        // hits all of them; the medians are compared.
        let urls = [
            format!("http://{ip}:8081/"),
            "http://127.0.0.1:8082/".to_string(),
            format!("http://{ip}:8080/"),
            format!("http://{node_ip}:8083/"),
        ];
        let mut rounds: [Vec<Run>; 4] = Default::default();
        for _ in 0..rounds_n {
            for ((url, runs), hop) in urls.iter().zip(rounds.iter_mut()).zip(hops) {
                runs.push(wrk(&client, url, connections, seconds, hop)?);
            }
        }
        let [direct, hop, proxy, node_hop] = rounds.each_ref().map(|runs| median(runs));
        let (rps_ratio, p99_ratio) = (proxy.rps / direct.rps, proxy.p99_ms / direct.p99_ms);
        let row = json!({
            "connections": connections,
            "rounds": {"direct": rounds[0], "nginx_hop": rounds[1], "proxy": rounds[2], "nginx_on_node": rounds[3]},
            "direct": direct,
            "nginx_hop": hop,
            "proxy": proxy,
            "nginx_on_node": node_hop,
            "rps_ratio": rps_ratio,
            "p99_ratio": p99_ratio,
            "nginx_hop_rps_ratio": hop.rps / direct.rps,
            "nginx_hop_p99_ratio": hop.p99_ms / direct.p99_ms,
            "proxy_vs_nginx_hop_rps": proxy.rps / hop.rps,
            "proxy_vs_nginx_on_node_rps": proxy.rps / node_hop.rps,
            "proxy_vs_nginx_on_node_p99": proxy.p99_ms / node_hop.p99_ms,
            "targets": {
                "rps_ratio_min": 0.6,
                "p99_ratio_max": 2.0,
                "rps_met": rps_ratio >= 0.6,
                "p99_met": p99_ratio <= 2.0,
            },
        });
        println!("{row}");
        rows.push(row);
    }
    // What the flow observer kept up with: flows made, events its queue
    // dropped (it was full).
    let metrics = c.agent_metrics(0)?;
    let sum = |prefix: &str| axoneme_e2e::cluster::sum_samples(&metrics, prefix);
    let report = json!({
        "observer": {
            "flows_processed": sum("axoneme_hubble_flows_processed_total{"),
            "events_lost": sum("axoneme_hubble_lost_events_total{source=\"observer_events_queue\"}"),
        },
        // Messages of the proxy's connections passed socket to socket
        // (`--proxy-sockmap`), and through the TCP stack.
        "sockmap": {
            "redirected": sum("axoneme_proxy_sockmap_messages_total{path=\"redirected\"}"),
            "passed": sum("axoneme_proxy_sockmap_messages_total{path=\"passed\"}"),
        },
        "machine": "2 cores, one host; wrk and nginx in pods of one node, the agent (release) with the L7 proxy; nginx hop: nginx reverse proxy on the client pod's loopback; nginx on the node: the same in the node's namespace on the node's address",
        "seconds_per_run": seconds,
        "rounds": rounds_n,
        "figures": "medians over the rounds; rounds lists each run; cpu_us: (user, system) CPU microseconds per request of the forwarding hop's processes (all the agent's threads for the proxy; nginx's master and worker for the nginx paths), from the round with the median total",
        "runs": rows,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    write_figures("l7", &report)
}
