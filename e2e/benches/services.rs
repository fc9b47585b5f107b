//! `cargo xtask bench services`: Axoneme's socket LB and the real
//! kube-proxy (iptables and nftables modes, built from the same Kubernetes
//! release as the control plane) side by side in one four-node cluster,
//! at 1, 1,000 and 10,000 Services of 4 backends each.
//!
//! The four nginx backends of the measured Service are on node 0; the
//! client pods on nodes 1 (kube-proxy iptables), 2 (kube-proxy nftables,
//! and its direct baseline) and 3 (no kube-proxy: Axoneme's socket LB and
//! the direct baseline of it and of iptables), so kube-proxy's DNAT and
//! its reverse happen in the client's node's stack (see
//! docs/services.md). Each kube-proxy path has a client pod of its own,
//! apart from the direct ones: a backend's TIME_WAIT socket
//! holds the sequence numbers and timestamps of its last connection on a
//! tuple, which a client derives from the address it connected to (the
//! Service's under DNAT, the backend's otherwise), so one client's
//! connections through DNAT and without it, cycling through the same
//! ports, refuse each other's SYNs (each retransmitted a few ms later);
//! with any one path per client they do not (docs/benchmarks.md).
//! The client pods reuse their own TIME_WAIT sockets (`tcp_tw_reuse`) and
//! send timestamps without a per-address offset (`tcp_timestamps=2`), see
//! `main`.
//! kube-proxy runs in iptables mode in node 1's network namespace and in
//! nftables mode in node 2's, both against a real kube-apiserver holding
//! the same number of Services (and EndpointSlices) as Axoneme's kvstore;
//! Axoneme's and kube-proxy's Services use separate address ranges, so
//! each path sees only its own. kube-proxy's Services all have the four
//! backends, and each round measures the one whose rule is in the middle
//! of kube-proxy iptables' `KUBE-SERVICES` chain (a new connection walks
//! the rules before its Service's; kube-proxy reorders them at each
//! sync), so that its figure is what a connection to any Service costs
//! on average, not the luck of one Service's place. Per scale:
//!
//! - CRR (a new connection per request, wrk with `Connection: close`) and
//!   RR (one kept-alive connection) latency to the measured Service through
//!   each, and to a backend's pod IP directly from the same client: the
//!   baseline (wrk to the first backend; new connections to the four, one
//!   picked per connection, as a Service's are spread). Interleaved
//!   rounds, medians, ratios to direct. wrk's CRR
//!   latency starts after the connect, so each round also times new
//!   connections whole, connect included (`new_connection`: a compiled
//!   client in the pod, `axoneme-bench-connections`, one connection after
//!   another), and their connects alone (`connect`), which is where
//!   socket LB and kube-proxy's DNAT work.
//! - Service change to first use: a Service created (the CLI or kubectl
//!   invoked) to the first connection a prober in a client pod gets
//!   through it, p50/p99 (one kubectl change, timed by a prober on each
//!   kube-proxy's node).
//! - The RSS of node 3's agent (every agent holds every Service).
//!
//! Targets (issue 18): flat from 1 to 10,000; socket LB within 3% of
//! direct; at 10,000 at least 5x lower new-connection p99 than kube-proxy;
//! change to use p99 under 50 ms at 10,000. Writes JSON to
//! `AXONEME_BENCH_OUT` (default target/bench/services.json).
//!
//! Under `cargo test` (no `--bench` argument) its smoke form runs: 1 and 20
//! Services, one round of 1 s, two changes, every answer checked, nothing
//! written. `AXONEME_SERVICES_SCALES=1,1000` runs only those counts.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use axoneme_e2e::bench::{
    cpu_by_command, cpu_spent, percentile, pick, tcp_counters, tcp_counters_sum, tcp_trouble,
    write_figures,
};
use axoneme_e2e::http::{nginx, wrk_with, WrkRun};
use axoneme_e2e::{kube_proxy, Cluster, ClusterConfig, CniPod, KubeControlPlane};
use serde_json::json;

/// Only these Service counts (comma-separated), for a run that looks at
/// one of them.
const SCALES: &str = "AXONEME_SERVICES_SCALES";

/// Axoneme's Services: 10.98.0.1 onwards (the measured one first).
const AX_BASE: u32 = u32::from_be_bytes([10, 98, 0, 0]);
/// kube-proxy's: 10.96.128.1 onwards, inside the API server's range.
const KP_BASE: u32 = u32::from_be_bytes([10, 96, 128, 0]);
/// Created by the change measurements: Axoneme's, kube-proxy's.
const AX_CHANGE_BASE: u32 = u32::from_be_bytes([10, 99, 0, 0]);
const KP_CHANGE_BASE: u32 = u32::from_be_bytes([10, 96, 250, 0]);

fn ip(base: u32, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(base + 1 + u32::try_from(i).expect("small"))
}

/// Four addresses that are nobody's: the filler Services' backends.
fn filler_backends(i: usize) -> Vec<IpAddr> {
    (0..4u32)
        .map(|k| {
            IpAddr::V4(Ipv4Addr::from(
                u32::from_be_bytes([10, 251, 0, 0]) + (u32::try_from(i).expect("small") * 4 + k),
            ))
        })
        .collect()
}

/// Axoneme Service documents, `axoneme service create` takes them.
fn ax_doc(name: &str, vip: Ipv4Addr, backends: &[IpAddr], node: &str) -> String {
    let eps: String = backends
        .iter()
        .map(|b| format!("- addresses: [{b}]\n  nodeName: {node}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  ports:\n  - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}\nendpoints:\n{eps}"
    )
}

fn ax_create(c: &Cluster, docs: &[String], tag: &str) -> Result<()> {
    // Each service is its record and its cluster IP's name in the index,
    // plus the index's marker: 63 fit etcd's 128 operations per transaction.
    for (k, chunk) in docs.chunks(60).enumerate() {
        let path = c.dir.join(format!("svc-{tag}-{k}.yaml"));
        std::fs::write(&path, chunk.join("---\n"))?;
        c.cli(
            0,
            &["service", "create", "-f", path.to_str().context("path")?],
        )?;
    }
    Ok(())
}

/// Frontends node `i`'s agent has programmed (its API's `/v1/services`).
fn ax_programmed(c: &Cluster, i: usize) -> Result<usize> {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", "--unix-socket"])
        .arg(&c.nodes[i].socket)
        .arg("http://agent/v1/services")
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("/v1/services")?;
    if v["synced"] != json!(true) {
        return Ok(0);
    }
    Ok(v["frontends"].as_array().map_or(0, Vec::len))
}

fn until(what: &str, within: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    while !f()? {
        if start.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(start.elapsed())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

fn wrk(client: &CniPod, url: &str, seconds: u32, close: bool) -> Result<WrkRun> {
    let run = wrk_with(|args| client.command(args), "GET", url, 1, seconds, close)?;
    if run.requests == 0 || run.non_2xx > 0 || run.socket_errors > 0 {
        bail!("wrk {url} (close: {close}): {run:?}");
    }
    Ok(run)
}

/// One round of new connections (`axoneme-bench-connections`' answer):
/// latencies in µs, of the whole connection and of its connect alone.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
struct Conns {
    answered: u64,
    failed: u64,
    p50_us: f64,
    p99_us: f64,
    connect_p50_us: f64,
    connect_p99_us: f64,
}

/// New connections one after another for `seconds` from `client` to
/// `hosts` (`ip[,ip...]`, one picked per connection) at `port`, each
/// timed with its connect by `axoneme-bench-connections` (wrk's CRR
/// latency starts at the request's write, after the connect, where both
/// socket LB and kube-proxy's DNAT on the SYN do their work). A
/// connection that failed is a figure, not an error of the bench; their
/// causes go to stderr.
fn connections(client: &CniPod, hosts: &str, port: u16, seconds: u32) -> Result<Conns> {
    let url = format!("{hosts} port {port}");
    let out = client
        .command(&[
            env!("CARGO_BIN_EXE_axoneme-bench-connections"),
            hosts,
            &port.to_string(),
            &seconds.to_string(),
        ])
        .output()?;
    let why = String::from_utf8_lossy(&out.stderr);
    let r: Conns = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "connections to {url}: {}{why}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    if r.answered == 0 {
        bail!(
            "connections to {url}: none answered, {} failed: {why}",
            r.failed
        );
    }
    if r.failed > 0 {
        eprintln!(
            "connections to {url}: {} of {} failed: {}",
            r.failed,
            r.answered + r.failed,
            why.trim()
        );
    }
    Ok(r)
}

const PROBER: &str = r#"
import socket, sys, time
addr = sys.argv[1]
print("ready", flush=True)
while True:
    s = socket.socket()
    s.settimeout(0.02)
    try:
        s.connect((addr, 80))
        print(time.time(), flush=True)
        break
    except OSError:
        time.sleep(0.001)
    finally:
        s.close()
"#;

/// For each client: seconds from `change` starting, and from it returning
/// (the Service stored: the CLI's or kubectl's own work done), to its first
/// connection to `vip:80` (0 when the first came before the return).
fn change_to_use<const N: usize>(
    clients: [&CniPod; N],
    vip: Ipv4Addr,
    change: impl FnOnce() -> Result<()>,
) -> Result<[(f64, f64); N]> {
    let vip = vip.to_string();
    let mut probers = Vec::new();
    for client in clients {
        let mut child = client
            .command(&["timeout", "30", "python3", "-c", PROBER, &vip])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        if lines.next().transpose()?.as_deref() != Some("ready") {
            bail!("prober did not start");
        }
        probers.push((child, lines));
    }
    let now = || -> Result<f64> {
        Ok(SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs_f64())
    };
    let t0 = now()?;
    change()?;
    let stored = now()?;
    let mut out = [(0.0, 0.0); N];
    for ((mut child, mut lines), slot) in probers.into_iter().zip(&mut out) {
        let line = lines
            .next()
            .transpose()?
            .context("the prober never connected")?;
        let _ = child.wait();
        let used = line.trim().parse::<f64>()?;
        *slot = (used - t0, (used - stored).max(0.0));
    }
    Ok(out)
}

/// The paths each round measures, in order (`paths` in `main`).
const PATHS: [&str; 5] = [
    "direct",
    "axoneme",
    "kube_proxy_iptables",
    "direct_node2",
    "kube_proxy_nftables",
];

/// The paths' latency, p50 and p99 (ms), with their ratios and `more`
/// beside them. kube-proxy's iptables mode is compared with the direct
/// connections of node 3 (no kube-proxy), its nftables mode with node 2's
/// own.
fn latency_figures(m: [(f64, f64); 5], more: serde_json::Value) -> serde_json::Value {
    let [d, a, k, d2, n] = m;
    let mut v = json!({
        "axoneme_p50_vs_direct": a.0 / d.0,
        "axoneme_p99_vs_direct": a.1 / d.1,
        "kube_proxy_p50_vs_direct": k.0 / d.0,
        "kube_proxy_p99_vs_direct": k.1 / d.1,
        "kube_proxy_p99_vs_axoneme": k.1 / a.1,
        "kube_proxy_nftables_p50_vs_direct": n.0 / d2.0,
        "kube_proxy_nftables_p99_vs_direct": n.1 / d2.1,
        "kube_proxy_nftables_p99_vs_axoneme": n.1 / a.1,
    });
    for (name, (p50, p99)) in PATHS.into_iter().zip(m) {
        v[name] = json!({"p50_ms": p50, "p99_ms": p99});
    }
    if let (Some(v), serde_json::Value::Object(more)) = (v.as_object_mut(), more) {
        v.extend(more);
    }
    v
}

/// Socket LB's p50 over the direct one's, round by round (each round
/// measures them one after the other from the same pod, so what the
/// machine was doing then weighs on both): the median and every round's.
fn paired(axoneme: &[Conns], direct: &[Conns], p50: fn(&Conns) -> f64) -> serde_json::Value {
    let ratios: Vec<f64> = axoneme
        .iter()
        .zip(direct)
        .map(|(a, d)| p50(a) / p50(d))
        .collect();
    json!({"median": median(&ratios), "rounds": ratios})
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let scales: Vec<usize> = match std::env::var(SCALES) {
        Ok(v) => v
            .split(',')
            .map(|n| n.trim().parse().with_context(|| format!("{SCALES}={v}")))
            .collect::<Result<_>>()?,
        Err(_) => pick(vec![1, 1000, 10_000], vec![1, 20]),
    };
    let (seconds, rounds, changes) = pick((3u32, 5usize, 20usize), (1, 1, 2));
    let mut c = Cluster::start(&ClusterConfig {
        nodes: 4,
        ..ClusterConfig::default()
    })?;
    // Direct and socket LB (both connect to the backend's address) from
    // one pod on node 3, which runs no kube-proxy: kube-proxy's iptables
    // rules in node 1 are walked by every new connection a pod there
    // opens, to a Service or not, which a KPR cluster does not have. Each kube-proxy path and node
    // 2's direct baseline from pods of their own (see the crate's
    // documentation).
    let client = c.add_pod(3, "client", &[("app", "client")])?;
    let client_kp = c.add_pod(1, "client-kp", &[("app", "client")])?;
    let client_2 = c.add_pod(2, "client-2", &[("app", "client")])?;
    let client_nft = c.add_pod(2, "client-nft", &[("app", "client")])?;
    // wrk's CRR closes first, so its connections' TIME_WAIT sockets stay
    // in the client for a minute; tens of thousands of them take every
    // ephemeral port to the backend, and each later connect() then
    // searched the port range for milliseconds, on every path alike.
    // Reusing them, as load generators do, keeps the
    // search short; a TIME_WAIT socket is reused only after a second and
    // with timestamps that tell the connections apart.
    // And a backend's TIME_WAIT takes a new SYN on its tuple when the
    // SYN's timestamp is newer; the kernel offsets each connection's
    // timestamps by a hash of the addresses connected to, so after a
    // kube-proxy client switched Services (each round measures another)
    // half its SYNs looked older and were refused. Timestamps without
    // the offset (2) run on one clock whatever the address.
    for pod in [&client, &client_kp, &client_2, &client_nft] {
        pod.ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        pod.ns.sysctl("net.ipv4.tcp_timestamps", "2")?;
    }
    let mut webs = Vec::new();
    for i in 0..4 {
        let w = c.add_pod(0, &format!("web-{i}"), &[("app", "web")])?;
        let dir = c.dir.join(format!("nginx-{i}"));
        c.extra.push(nginx(&w.ns, &[8080], false, &dir)?);
        webs.push(w);
    }
    let web_ips: Vec<IpAddr> = webs.iter().map(|w| IpAddr::V4(w.ip)).collect();
    let node0 = c.nodes[0].name.clone();

    let kube = KubeControlPlane::start()?;
    let mut proxies = Vec::new();
    for (i, mode) in [(1, "iptables"), (2, "nftables")] {
        let node = &c.nodes[i];
        kube.create_node(&node.name, node.ip, Some(node.ip6))?;
        let log = c.dir.join(format!("kube-proxy-{mode}.log"));
        proxies.push(kube_proxy::start(&kube, &node.ns, &node.name, mode, &log)?);
    }

    let direct_url = format!("http://{}:8080/", webs[0].ip);
    // Direct new connections go to the four backends, one picked per
    // connection as the Service's are, so that both wake the same nginx
    // processes (wrk's direct rounds keep to the first).
    let direct_hosts = web_ips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let ax_host = ip(AX_BASE, 0).to_string();
    let ax_url = format!("http://{ax_host}/");
    let mut rows = Vec::new();
    let mut have = 0usize;
    let mut changed = 0usize;
    for &n in &scales {
        // Grow both sets to n Services; the first is the measured one.
        let started = Instant::now();
        let backends = |i: usize| {
            if i == 0 {
                web_ips.clone()
            } else {
                filler_backends(i)
            }
        };
        let docs: Vec<String> = (have..n)
            .map(|i| ax_doc(&format!("svc-{i}"), ip(AX_BASE, i), &backends(i), &node0))
            .collect();
        ax_create(&c, &docs, &n.to_string())?;
        let ax_store = started.elapsed();
        // kube-proxy's Services all have the measured backends (its rules
        // are as many whatever the addresses), so that any of them can be
        // measured: each round takes the one in the middle of its chain.
        let objects: Vec<serde_json::Value> = (have..n)
            .flat_map(|i| {
                kube_proxy::service_objects(
                    &format!("svc-{i}"),
                    IpAddr::V4(ip(KP_BASE, i)),
                    80,
                    8080,
                    &web_ips,
                    &node0,
                )
            })
            .collect();
        let started = Instant::now();
        kube_proxy::create(&kube, &objects)?;
        let kp_store = started.elapsed();
        let kp_stored_at = Instant::now();
        have = n;
        let ax_ready = until(
            "Axoneme programs every Service",
            Duration::from_secs(120),
            || Ok(ax_programmed(&c, 1)? >= n),
        )?;
        // Both kube-proxies, each from the API's store.
        let (mut kp_ready, mut nft_ready) = (None, None);
        until(
            "kube-proxy programs every Service (both modes)",
            Duration::from_secs(300),
            || {
                if kp_ready.is_none() && kube_proxy::iptables_services(&c.nodes[1].ns)? >= n {
                    kp_ready = Some(kp_stored_at.elapsed());
                }
                if nft_ready.is_none() && kube_proxy::nftables_services(&c.nodes[2].ns)? >= n {
                    nft_ready = Some(kp_stored_at.elapsed());
                }
                Ok(kp_ready.is_some() && nft_ready.is_some())
            },
        )?;
        let (kp_ready, nft_ready) = (kp_ready.unwrap_or_default(), nft_ready.unwrap_or_default());
        eprintln!("{n} services: stored in {ax_store:?} (Axoneme) / {kp_store:?} (API); programmed {ax_ready:?} after / {kp_ready:?} (iptables) / {nft_ready:?} (nftables) after");

        let mut crr: [Vec<(f64, f64)>; 5] = Default::default();
        let mut rr: [Vec<(f64, f64, f64)>; 5] = Default::default();
        // New connections, each round's (whole and their connect alone).
        let mut new_conn: [Vec<Conns>; 5] = Default::default();
        // Where each of those rounds' CPU went (every process on the
        // machine, kernel threads included), and the client's and the
        // backends' TCP counters that say a connection was retried,
        // refused or cut: what a round that falls behind the others shows.
        let mut new_conn_why: [Vec<serde_json::Value>; 5] = Default::default();
        // The kube-proxy Service each round measured, and where in the
        // chain its rule was before and after the round.
        let mut kp_measured = Vec::new();
        for _ in 0..rounds {
            // The Service in the middle of kube-proxy iptables' chain: a
            // new connection to it walks what one to any Service walks
            // on average (the Service with the backends Axoneme's path
            // measures, the first created, may sit anywhere).
            let order = kube_proxy::iptables_service_order(&c.nodes[1].ns)?;
            let kp_vip = *order
                .get(order.len() / 2)
                .context("kube-proxy has no Service")?;
            let kp_url = format!("http://{kp_vip}/");
            let kp_host = kp_vip.to_string();
            // direct, Axoneme (one pod on node 3), iptables (node 1);
            // direct, nftables (a pod each) from node 2: the pod, wrk's
            // URL, the new connections' hosts and port.
            let paths = [
                (&client, &direct_url, &direct_hosts, 8080),
                (&client, &ax_url, &ax_host, 80),
                (&client_kp, &kp_url, &kp_host, 80),
                (&client_2, &direct_url, &direct_hosts, 8080),
                (&client_nft, &kp_url, &kp_host, 80),
            ];
            for (k, &(from, url, hosts, port)) in paths.iter().enumerate() {
                let cpu = cpu_by_command(None);
                let client_tcp = tcp_counters(&from.ns)?;
                let web_tcp = tcp_counters_sum(webs.iter().map(|w| &w.ns))?;
                let r = connections(from, hosts, port, seconds)?;
                let why = json!({
                    "cpu_s": cpu_spent(&cpu, &cpu_by_command(None)),
                    "client_tcp": tcp_trouble(&client_tcp, &tcp_counters(&from.ns)?),
                    "backends_tcp": tcp_trouble(&web_tcp, &tcp_counters_sum(webs.iter().map(|w| &w.ns))?),
                });
                eprintln!(
                    "new connections to {hosts} port {port} from {}: {} in {seconds} s, p50 {:.0} µs, p99 {:.0} µs (connect {:.0} / {:.0}); {why}",
                    from.name, r.answered, r.p50_us, r.p99_us, r.connect_p50_us, r.connect_p99_us
                );
                new_conn[k].push(r);
                new_conn_why[k].push(why);
                let r = wrk(from, url, seconds, true)?;
                crr[k].push((r.p50_ms, r.p99_ms));
                let r = wrk(from, url, seconds, false)?;
                rr[k].push((r.rps, r.p50_ms, r.p99_ms));
            }
            let after = kube_proxy::iptables_service_order(&c.nodes[1].ns)?;
            kp_measured.push(json!({
                "vip": kp_vip,
                "position": order.len() / 2 + 1,
                "position_after": after.iter().position(|v| *v == kp_vip).map(|i| i + 1),
                "rules": order.len(),
            }));
        }
        // Medians of two figures of each path's rounds.
        let medians = |pick: &dyn Fn(usize, usize) -> Option<(f64, f64)>| {
            [0, 1, 2, 3, 4].map(|k| {
                let runs: Vec<(f64, f64)> = (0..).map_while(|i| pick(k, i)).collect();
                (
                    median(&runs.iter().map(|r| r.0).collect::<Vec<_>>()),
                    median(&runs.iter().map(|r| r.1).collect::<Vec<_>>()),
                )
            })
        };
        let crr_med = medians(&|k, i| crr[k].get(i).copied());
        let new_med = medians(&|k, i| new_conn[k].get(i).map(|r| (r.p50_us / 1e3, r.p99_us / 1e3)));
        let connect_med = medians(&|k, i| {
            new_conn[k]
                .get(i)
                .map(|r| (r.connect_p50_us / 1e3, r.connect_p99_us / 1e3))
        });
        let [rd, ra, rk, rd2, rn] = medians(&|k, i| rr[k].get(i).map(|r| (r.0, r.1)));

        // Service change to first use, each path in turn.
        let (mut ax_change, mut kp_change, mut nft_change) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ax_stored, mut kp_stored, mut nft_stored) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..changes {
            let name = format!("chg-{changed}");
            let vip = ip(AX_CHANGE_BASE, changed);
            let doc = ax_doc(&name, vip, &web_ips, &node0);
            let [(all, after)] = change_to_use([&client], vip, || ax_create(&c, &[doc], &name))?;
            ax_change.push(all * 1000.0);
            ax_stored.push(after * 1000.0);
            let vip = ip(KP_CHANGE_BASE, changed);
            let objects =
                kube_proxy::service_objects(&name, IpAddr::V4(vip), 80, 8080, &web_ips, &node0);
            let [(all, after), (all_nft, after_nft)] =
                change_to_use([&client_kp, &client_nft], vip, || {
                    kube_proxy::create(&kube, &objects)
                })?;
            kp_change.push(all * 1000.0);
            kp_stored.push(after * 1000.0);
            nft_change.push(all_nft * 1000.0);
            nft_stored.push(after_nft * 1000.0);
            changed += 1;
        }
        let pct =
            |v: &Vec<f64>| json!({"p50": percentile(v, 500), "p99": percentile(v, 990), "all": v});
        let pid = c.nodes[3].agent.as_ref().context("agent")?.pid();
        let rss = rss_kib(pid)?;
        let row = json!({
            "services": n,
            "crr": latency_figures(crr_med, json!({"rounds": crr})),
            "new_connection": latency_figures(new_med, json!({
                "axoneme_p50_vs_direct_paired": paired(&new_conn[1], &new_conn[0], |r| r.p50_us),
                "failed": new_conn.each_ref().map(|runs| runs.iter().map(|r| r.failed).sum::<u64>()),
                "rounds": new_conn,
                "rounds_cpu_and_tcp": new_conn_why,
            })),
            "connect": latency_figures(connect_med, json!({
                "axoneme_p50_vs_direct_paired": paired(&new_conn[1], &new_conn[0], |r| r.connect_p50_us),
            })),
            "kube_proxy_measured": kp_measured,
            "rr": {
                "direct": {"rps": rd.0, "p50_ms": rd.1},
                "axoneme": {"rps": ra.0, "p50_ms": ra.1},
                "kube_proxy_iptables": {"rps": rk.0, "p50_ms": rk.1},
                "direct_node2": {"rps": rd2.0, "p50_ms": rd2.1},
                "kube_proxy_nftables": {"rps": rn.0, "p50_ms": rn.1},
                "axoneme_rps_vs_direct": ra.0 / rd.0,
                "kube_proxy_rps_vs_direct": rk.0 / rd.0,
                "kube_proxy_nftables_rps_vs_direct": rn.0 / rd2.0,
                "rounds": rr,
            },
            "change_to_use_ms": {
                "axoneme": pct(&ax_change),
                "kube_proxy_iptables": pct(&kp_change),
                "kube_proxy_nftables": pct(&nft_change),
            },
            "stored_to_use_ms": {
                "axoneme": pct(&ax_stored),
                "kube_proxy_iptables": pct(&kp_stored),
                "kube_proxy_nftables": pct(&nft_stored),
            },
            "programmed_after_store_s": {
                "axoneme": ax_ready.as_secs_f64(),
                "kube_proxy_iptables": kp_ready.as_secs_f64(),
                "kube_proxy_nftables": nft_ready.as_secs_f64(),
            },
            "stored_s": {"axoneme_cli": ax_store.as_secs_f64(), "kubectl": kp_store.as_secs_f64()},
            "agent_rss_mib": rss as f64 / 1024.0,
        });
        eprintln!("{row:#}");
        rows.push(row);
    }
    for (i, mut proxy) in proxies.into_iter().enumerate() {
        proxy.terminate(Duration::from_secs(5));
        kube_proxy::cleanup(&c.nodes[i + 1].ns);
    }
    write_figures(
        "services",
        &json!({
            "topology": "client pods on nodes 3 (no kube-proxy: direct and Axoneme), 1 (kube-proxy iptables) and 2 (one for direct, one for kube-proxy nftables); the measured Service's 4 nginx backends on node 0 (direct new connections pick one of them each, wrk's direct rounds use the first); kube-proxy measured at the Service in the middle of its iptables chain; kube-proxy in iptables mode (--iptables-min-sync-period=0) in node 1's namespace, in nftables mode in node 2's; wrk with 1 connection",
            "seconds": seconds,
            "rounds": rounds,
            "rows": rows,
            "targets": {
                "socket_lb_crr_vs_direct_max": 1.03,
                "kube_proxy_p99_vs_axoneme_at_10000_min": 5.0,
                "change_to_use_p99_ms_at_10000_max": 50.0,
                "note": "change_to_use counts from the command's start (the CLI reads the frontend index's names of the new service and their holders); stored_to_use from its return",
            },
        }),
    )
}
