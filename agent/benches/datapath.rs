//! `cargo xtask bench datapath`: two pods on one node (network namespaces),
//! the same allowed flow measured side by side over
//! (a) the bare veths, (b) Axoneme's datapath with 1 / 100 / 1,000 / 10,000
//! policy entries and identities, (c) iptables rules implementing the same
//! policy at the same sizes (stateful: ESTABLISHED first, one rule per
//! allowed peer, the real client's rule last, then DROP).
//!
//! Per configuration: iperf3 throughput (one stream), TCP request/response
//! latency over one connection (64 bytes, p50/p99), and connect + request +
//! close latency (new connections: where per-rule costs show); three
//! rounds over all configurations, interleaved, medians reported. The client
//! side runs on CPU 0 and the server side on CPU 1 (threads and iperf3
//! pinned), so runs swing less.
//! Writes JSON (with ratios against the bare veth) to `AXONEME_BENCH_OUT`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use axoneme_agent::datapath::{policy_entry, Datapath, PIN_ROOT};
use axoneme_bpf_common::{endpoint_flags, EndpointInfo, IpcacheValue};
use axoneme_e2e::netns::{run, Node, Pod};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Direction, Key, Verdict, PROTO_TCP};
use serde_json::{json, Value};

const SIZES: &[u32] = &[1, 100, 1_000, 10_000];
const RR_PORT: u16 = 7000;
const IPERF_PORT: u16 = 5201;
const CLIENT_ID: u32 = 1000;
const SERVER_ID: u32 = 2000;
const RR_ROUNDS: usize = 5_000;
const CRR_ROUNDS: usize = 1_000;
const IPERF_SECONDS: &str = "3";
/// Interleaved rounds over every configuration (`AXONEME_BENCH_ROUNDS`
/// overrides).
const ROUNDS: usize = 3;
/// The figures taken per run (their medians are reported).
const METRICS: [&str; 6] = [
    "gbit_per_s",
    "rr_p50_us",
    "rr_p99_us",
    "crr_p50_us",
    "crr_p99_us",
    "crr_per_s",
];

/// The CPUs the client and the server side are pinned to (with fewer than
/// two CPUs, nothing is pinned): fewer scheduler swings between runs.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;

fn pinning() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Pins the calling thread to `cpu` (when [`pinning`]).
fn pin(cpu: usize) {
    if pinning() {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
}

/// `args` prefixed with `taskset -c cpu` (when [`pinning`]).
fn pinned(cpu: usize, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = if pinning() {
        vec!["taskset".into(), "-c".into(), cpu.to_string()]
    } else {
        Vec::new()
    };
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

fn percentile(mut v: Vec<Duration>, per_mille: usize) -> f64 {
    v.sort();
    v[(v.len() - 1) * per_mille / 1000].as_secs_f64() * 1e6
}

/// An echo server for 64-byte messages in the server pod.
fn echo_server(server: &Pod) -> Result<()> {
    let listener = server
        .ns
        .enter(|| TcpListener::bind(("0.0.0.0", RR_PORT)))??;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                pin(SERVER_CPU);
                let _ = conn.set_nodelay(true);
                let mut conn = conn;
                let mut buf = [0u8; 64];
                while conn.read_exact(&mut buf).is_ok() {
                    if conn.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Round trips over one connection, then connect+request+close rounds.
fn latency(client: &Pod, server: Ipv4Addr) -> Result<Value> {
    client.ns.enter(move || -> Result<Value> {
        pin(CLIENT_CPU);
        let addr = SocketAddr::from((server, RR_PORT));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        conn.set_nodelay(true)?;
        let mut buf = [7u8; 64];
        let mut rr = Vec::with_capacity(RR_ROUNDS);
        for _ in 0..RR_ROUNDS {
            let t = Instant::now();
            conn.write_all(&buf)?;
            conn.read_exact(&mut buf)?;
            rr.push(t.elapsed());
        }
        let mut crr = Vec::with_capacity(CRR_ROUNDS);
        let started = Instant::now();
        for _ in 0..CRR_ROUNDS {
            let t = Instant::now();
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            c.set_nodelay(true)?;
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            drop(c);
            crr.push(t.elapsed());
        }
        let crr_rate = CRR_ROUNDS as f64 / started.elapsed().as_secs_f64();
        Ok(json!({
            "rr_p50_us": percentile(rr.clone(), 500),
            "rr_p99_us": percentile(rr, 990),
            "crr_p50_us": percentile(crr.clone(), 500),
            "crr_p99_us": percentile(crr, 990),
            "crr_per_s": crr_rate,
        }))
    })?
}

fn iperf(client: &Pod, server: &Pod) -> Result<f64> {
    let port = IPERF_PORT.to_string();
    let srv_args = pinned(SERVER_CPU, &["iperf3", "-s", "-1", "-p", &port]);
    let mut srv = server
        .ns
        .command(&srv_args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (cargo xtask setup installs it)")?;
    std::thread::sleep(Duration::from_millis(300));
    let server_ip = server.ip.to_string();
    let cli_args = pinned(
        CLIENT_CPU,
        &[
            "iperf3",
            "-c",
            &server_ip,
            "-p",
            &port,
            "-t",
            IPERF_SECONDS,
            "-J",
        ],
    );
    let out = client
        .ns
        .command(&cli_args.iter().map(String::as_str).collect::<Vec<_>>())
        .output()?;
    let _ = srv.wait();
    ensure!(
        out.status.success(),
        "iperf3 client: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 JSON without end.sum_received")
}

fn measure(name: &str, client: &Pod, server: &Pod) -> Result<Value> {
    let gbps = iperf(client, server)?;
    let mut v = latency(client, server.ip)?;
    v["gbit_per_s"] = json!(gbps);
    v["config"] = json!(name);
    eprintln!("{name}: {v}");
    Ok(v)
}

fn filler_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        90,
        u8::try_from(i / 256).unwrap_or(255),
        u8::try_from(i % 256).unwrap_or(0),
    )
}

fn iptables(node: &Node, client: &Pod, server: &Pod, n: u32) -> Result<()> {
    let mut rules = String::from("*filter\n:FORWARD ACCEPT [0:0]\n-F FORWARD\n");
    rules.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    let ports = format!("{RR_PORT},{IPERF_PORT}");
    for i in 0..n.saturating_sub(1) {
        rules.push_str(&format!(
            "-A FORWARD -s {}/32 -d {}/32 -p tcp -m multiport --dports {ports} -j ACCEPT\n",
            filler_ip(i),
            server.ip
        ));
    }
    rules.push_str(&format!(
        "-A FORWARD -s {}/32 -d {}/32 -p tcp -m multiport --dports {ports} -j ACCEPT\n",
        client.ip, server.ip
    ));
    rules.push_str(&format!("-A FORWARD -d {}/32 -j DROP\nCOMMIT\n", server.ip));
    let mut child = node
        .ns
        .command(&["iptables-restore"])
        .stdin(Stdio::piped())
        .spawn()
        .context("iptables-restore (cargo xtask setup installs iptables)")?;
    child.stdin.take().unwrap().write_all(rules.as_bytes())?;
    ensure!(child.wait()?.success(), "iptables-restore failed");
    Ok(())
}

fn iptables_flush(node: &Node) -> Result<()> {
    let ns = node.ns.name.clone();
    run(&["ip", "netns", "exec", &ns, "iptables", "-F", "FORWARD"])?;
    Ok(())
}

fn program(dp: &mut Datapath, client: &Pod, server: &Pod, n: u32) -> Result<()> {
    let id = |i| IpcacheValue {
        identity: i,
        ..IpcacheValue::default()
    };
    dp.maps
        .set_ipcache(&format!("{}/32", client.ip).parse()?, id(CLIENT_ID))?;
    dp.maps
        .set_ipcache(&format!("{}/32", server.ip).parse()?, id(SERVER_ID))?;
    for i in 0..n.saturating_sub(1) {
        dp.maps
            .set_ipcache(&format!("{}/32", filler_ip(i)).parse()?, id(3000 + i))?;
    }
    for peer in (0..n.saturating_sub(1))
        .map(|i| 3000 + i)
        .chain([CLIENT_ID])
    {
        for port in [RR_PORT, IPERF_PORT] {
            let key = Key {
                identity: NumericIdentity(peer),
                protocol: PROTO_TCP,
                port,
                prefix: 16,
            };
            let (k, v) = policy_entry(SERVER_ID, Direction::Ingress, &key, &Verdict::Allow, 0);
            dp.maps.set_policy(&k, v)?;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let prefix = axoneme_e2e::run_prefix("b");
    let node = Node::create(&format!("{prefix}n"))?;
    let client = node.add_pod(
        &format!("{prefix}c"),
        &format!("{prefix}ch"),
        Ipv4Addr::new(10, 88, 0, 1),
    )?;
    let server = node.add_pod(
        &format!("{prefix}s"),
        &format!("{prefix}sh"),
        Ipv4Addr::new(10, 88, 0, 2),
    )?;
    echo_server(&server)?;

    // Rounds interleave every configuration, so a slow spell of the host
    // hits all of them; each figure is the median over the rounds.
    let mut rounds: Vec<Vec<Value>> = Vec::new();
    let rounds_wanted = std::env::var("AXONEME_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let skip_iptables = std::env::var_os("AXONEME_BENCH_SKIP_IPTABLES").is_some();
    for round in 0..rounds_wanted {
        let mut runs = vec![measure("bare veth", &client, &server)?];
        for &n in SIZES.iter().filter(|_| !skip_iptables) {
            iptables(&node, &client, &server, n)?;
            runs.push(measure(&format!("iptables {n}"), &client, &server)?);
            iptables_flush(&node)?;
        }
        let pins = PathBuf::from(PIN_ROOT).join(format!("{prefix}{round}"));
        let mut dp = Datapath::load(&pins)?;
        let outcome = (|| -> Result<()> {
            let netns = node.ns.path();
            for (pod, id, flags) in [
                (&client, CLIENT_ID, 0),
                (&server, SERVER_ID, endpoint_flags::INGRESS_ENFORCED),
            ] {
                let ifindex = dp.attach(&pod.host_if, Some(&netns))?;
                dp.maps.set_endpoint(
                    ifindex,
                    EndpointInfo {
                        endpoint_id: id,
                        identity: id,
                        flags,
                        pad: [0; 3],
                    },
                )?;
            }
            for &n in SIZES {
                program(&mut dp, &client, &server, n)?;
                runs.push(measure(&format!("axoneme {n}"), &client, &server)?);
            }
            Ok(())
        })();
        for pod in [&client, &server] {
            dp.detach(&pod.host_if, Some(&node.ns.path()));
        }
        drop(dp);
        let _ = std::fs::remove_dir_all(&pins);
        outcome?;
        rounds.push(runs);
    }
    let mut results: Vec<Value> = (0..rounds[0].len())
        .map(|i| {
            let runs: Vec<&Value> = rounds.iter().map(|r| &r[i]).collect();
            let mut v = json!({ "config": runs[0]["config"], "rounds": runs });
            for metric in METRICS {
                let mut xs: Vec<f64> = runs.iter().filter_map(|r| r[metric].as_f64()).collect();
                xs.sort_by(f64::total_cmp);
                v[metric] = json!(xs.get(xs.len() / 2));
            }
            v
        })
        .collect();
    let bare = results[0].clone();
    let ratio = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0) / bare[k].as_f64().unwrap_or(1.0);
    for v in &mut results {
        let r = json!({
            "throughput": ratio(v, "gbit_per_s"),
            "rr_p50": ratio(v, "rr_p50_us"),
            "rr_p99": ratio(v, "rr_p99_us"),
            "crr_p50": ratio(v, "crr_p50_us"),
            "crr_p99": ratio(v, "crr_p99_us"),
        });
        v["vs_bare"] = r;
    }
    let doc = json!({
        "runs": results,
        "note": "same machine, same run; medians over interleaved rounds; ratios against the bare veth",
        "rounds": rounds_wanted,
        "pinned": pinning().then_some(json!({"client_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU})),
    });
    let out =
        std::env::var("AXONEME_BENCH_OUT").unwrap_or_else(|_| "target/bench/datapath.json".into());
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("written to {out}");
    Ok(())
}
