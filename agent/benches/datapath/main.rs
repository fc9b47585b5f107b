//! `cargo xtask bench datapath`: two pods on one node (network namespaces),
//! the same allowed flow measured side by side over
//! (a) the bare veths, (b) Axoneme's datapath with 1 / 100 / 1,000 / 10,000
//! policy entries and identities, (c) iptables rules implementing the same
//! policy at the same sizes (stateful: ESTABLISHED first, one rule per
//! allowed peer, the real client's rule last, then DROP).
//!
//! Per configuration: iperf3 throughput (one stream), TCP request/response
//! latency over one connection (64 bytes, p50/p99), connect + request +
//! close latency (new connections), and two CPU-bound packet rates that the
//! sender's CPU alone pays for (the whole path runs in its softirq): small
//! UDP datagrams on one established flow, and UDP datagrams that are each a
//! new flow (where per-rule costs show, as in a DNS-like load). For
//! Axoneme, the programs' own run time per packet from the kernel's BPF
//! statistics (`BPF_ENABLE_STATS`, on only while it is measured). Under
//! `BPF_PROG_TEST_RUN`, each case also runs on the same programs loaded
//! without counting and events (`*_quiet_ns`, `*_observe_cost_ns`): what
//! observability costs per packet. Three
//! rounds over all configurations, interleaved, medians reported. The client
//! side runs on CPU 0 and the server side on CPU 1 (threads and iperf3
//! pinned), so runs swing less.
//! Writes JSON (with ratios against the bare veth) to `AXONEME_BENCH_OUT`.
//!
//! Under `cargo test` (no `--bench` argument) it runs in its smoke form
//! instead ([`smoke`]: one round, sizes 1 and 100, a few thousand packets,
//! 1 s of iperf3), every check on, nothing written.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;
use axoneme_agent::datapath::{Datapath, PIN_ROOT};
use axoneme_bpf_common::{endpoint_flags, EndpointInfo};
use axoneme_e2e::bench::{pick, write_figures};
use axoneme_e2e::netns::{Node, Pod};
use serde_json::{json, Value};

#[path = "../../tests/support/mod.rs"]
mod support;

mod config;
mod cost;
mod paired;
mod traffic;

use config::{iptables, iptables_flush, program};
use cost::{bpf_cost, program_cost};
use paired::{attach_floor, paired};
use traffic::{
    echo_server, ensure_denied, iperf, latency, new_flows, pinning, udp_sink, udp_stream,
    CLIENT_CPU, SERVER_CPU,
};

const SIZES: &[u32] = &[1, 100, 1_000, 10_000];
const RR_PORT: u16 = 7000;
/// A TCP port no configuration allows (and nothing listens on).
const DENIED_PORT: u16 = 7002;
const IPERF_PORT: u16 = 5201;
const UDP_PORT: u16 = 7001;
/// Datagrams of the established-flow rate test.
const STREAM_PACKETS: usize = 200_000;
/// New flows per new-flow rate test; each configuration size uses its own
/// source-port block (starting at [`NEW_FLOW_PORT_BASE`]), so every
/// datagram really is a new flow for Axoneme's conntrack too.
const NEW_FLOWS: u16 = 15_000;
const NEW_FLOW_PORT_BASE: u16 = 2_000;
/// UDP payloads: `h` asks the sink for a reply (making the flow
/// established for conntrack), anything else is only counted.
const HELLO: u8 = b'h';
/// Block pairs of the paired comparison, and each block's size.
const PAIRS: usize = 21;
const PAIR_UDP_BLOCK: usize = 20_000;
const PAIR_RR_BLOCK: usize = 500;
const CLIENT_ID: u32 = 1000;
const SERVER_ID: u32 = 2000;
const RR_ROUNDS: usize = 5_000;
const CRR_ROUNDS: usize = 1_000;
const IPERF_SECONDS: &str = "3";
/// Interleaved rounds over every configuration (`AXONEME_BENCH_ROUNDS`
/// overrides).
const ROUNDS: usize = 3;
/// The figures taken per run (their medians are reported).
const METRICS: [&str; 16] = [
    "gbit_per_s",
    "rr_p50_us",
    "rr_p99_us",
    "crr_p50_us",
    "crr_p99_us",
    "crr_per_s",
    "udp_pps",
    "new_flows_per_s",
    "bpf_from_container_ns",
    "bpf_to_container_ns",
    "paired_udp_pps_ratio",
    "paired_rr_p50_ratio",
    "floor_paired_udp_pps_ratio",
    "floor_paired_rr_p50_ratio",
    "iptables_paired_udp_pps_ratio",
    "iptables_paired_rr_p50_ratio",
];
/// The smoke form's values of the constants above, by the same names.
mod smoke {
    pub const SIZES: &[u32] = &[1, 100];
    pub const STREAM_PACKETS: usize = 5_000;
    pub const NEW_FLOWS: u16 = 2_000;
    pub const PAIRS: usize = 3;
    pub const PAIR_UDP_BLOCK: usize = 2_000;
    pub const PAIR_RR_BLOCK: usize = 100;
    pub const RR_ROUNDS: usize = 500;
    pub const CRR_ROUNDS: usize = 100;
    pub const IPERF_SECONDS: &str = "1";
    pub const ROUNDS: usize = 1;
    pub const TEST_RUN_REPEAT: u32 = 1_000;
    pub const TEST_RUNS: usize = 1;
}
/// Metrics where more is better (the others are times).
const HIGHER_IS_BETTER: [&str; 4] = ["gbit_per_s", "crr_per_s", "udp_pps", "new_flows_per_s"];

/// Every figure of one configuration; `block` is its new-flow port block.
fn measure(name: &str, client: &Pod, server: &Pod, block: u16) -> Result<Value> {
    let gbps = iperf(client, server)?;
    let mut v = latency(client, server.ip)?;
    v["gbit_per_s"] = json!(gbps);
    v["udp_pps"] = json!(udp_stream(client, server)?);
    v["new_flows_per_s"] = json!(new_flows(client, server, block)?);
    v["config"] = json!(name);
    eprintln!("{name}: {v}");
    Ok(v)
}

fn main() -> Result<()> {
    let programs = program_cost()?;
    eprintln!("programs under BPF_PROG_TEST_RUN: {programs}");
    if std::env::var_os("AXONEME_BENCH_PROGRAMS_ONLY").is_some() {
        return Ok(());
    }
    let prefix = axoneme_e2e::run_prefix("b");
    let node = Node::create(&format!("{prefix}n"))?;
    // iptables gets a node namespace of its own: its conntrack and its
    // (nftables) FORWARD hook, once there, stay for every packet the
    // namespace routes, so they must not touch the other pairs.
    let iptables_node = Node::create(&format!("{prefix}i"))?;
    // A client/server pod pair on `node` named by `tag`, at 10.88.0.<first>
    // and the next address.
    let pair = |node: &Node, tag: &str, first: u8| -> Result<(Pod, Pod)> {
        let pod = |role: &str, last: u8| {
            let name = format!("{prefix}{role}{tag}");
            node.add_pod(&name, &format!("{name}h"), Ipv4Addr::new(10, 88, 0, last))
        };
        Ok((pod("c", first)?, pod("s", first + 1)?))
    };
    let (client, server) = pair(&node, "", 1)?;
    // The never-attached pair of the paired comparison.
    let (bare_client, bare_server) = pair(&node, "2", 3)?;
    // And a pair with a minimal program attached: the floor.
    let (floor_client, floor_server) = pair(&node, "3", 5)?;
    // And the pair iptables filters.
    let (ipt_client, ipt_server) = pair(&iptables_node, "4", 7)?;
    for s in [&server, &bare_server, &floor_server, &ipt_server] {
        echo_server(s)?;
        udp_sink(s)?;
    }
    let _floor = attach_floor(&node, (&floor_client, &floor_server))?;

    // Rounds interleave every configuration, so a slow spell of the host
    // hits all of them; each figure is the median over the rounds.
    let mut rounds: Vec<Vec<Value>> = Vec::new();
    let rounds_wanted = std::env::var("AXONEME_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(pick(ROUNDS, smoke::ROUNDS));
    let sizes = pick(SIZES, smoke::SIZES);
    let skip_iptables = std::env::var_os("AXONEME_BENCH_SKIP_IPTABLES").is_some();
    for round in 0..rounds_wanted {
        let mut runs = vec![measure("bare veth", &client, &server, 0)?];
        for (block, &n) in (0..).zip(sizes).filter(|_| !skip_iptables) {
            iptables(&iptables_node, &ipt_client, &ipt_server, n)?;
            let name = format!("iptables {n}");
            ensure_denied(&ipt_client, &ipt_server, &name)?;
            runs.push(measure(&name, &ipt_client, &ipt_server, block)?);
            iptables_flush(&iptables_node)?;
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
                    EndpointInfo::new(id, id, flags, &[pod.ip.into(), pod.ip6.into()]),
                )?;
            }
            for (block, &n) in (0..).zip(sizes) {
                program(&mut dp, &client, &server, n)?;
                ensure_denied(&client, &server, &format!("axoneme {n}"))?;
                let mut v = measure(&format!("axoneme {n}"), &client, &server, block)?;
                let cost = bpf_cost(&dp, &client, &server)?;
                // The same policy in iptables, on its own pair, in the
                // same blocks.
                iptables(&iptables_node, &ipt_client, &ipt_server, n)?;
                let sides = [
                    (&bare_client, &bare_server),
                    (&client, &server),
                    (&floor_client, &floor_server),
                    (&ipt_client, &ipt_server),
                ];
                let ratios = paired(&sides);
                iptables_flush(&iptables_node)?;
                let ratios = ratios?;
                let pair = json!({
                    "paired_udp_pps_ratio": ratios[0].0,
                    "paired_rr_p50_ratio": ratios[0].1,
                    "floor_paired_udp_pps_ratio": ratios[1].0,
                    "floor_paired_rr_p50_ratio": ratios[1].1,
                    "iptables_paired_udp_pps_ratio": ratios[2].0,
                    "iptables_paired_rr_p50_ratio": ratios[2].1,
                });
                eprintln!("axoneme {n}: programs per packet {cost}, paired with bare {pair}");
                for (k, x) in [cost, pair].iter().filter_map(Value::as_object).flatten() {
                    v[k] = x.clone();
                }
                runs.push(v);
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
    let by_name: std::collections::HashMap<String, Value> = results
        .iter()
        .map(|v| {
            (
                v["config"].as_str().unwrap_or_default().to_string(),
                v.clone(),
            )
        })
        .collect();
    let get = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    // How many times better `v` is than `base` on metric `k`.
    let better = |v: &Value, base: &Value, k: &str| {
        if HIGHER_IS_BETTER.contains(&k) {
            get(v, k) / get(base, k)
        } else {
            get(base, k) / get(v, k)
        }
    };
    for v in &mut results {
        let config = v["config"].as_str().unwrap_or_default().to_string();
        let measured = METRICS
            .iter()
            .filter(|k| !k.starts_with("bpf_") && !k.contains("paired_"));
        v["vs_bare"] = measured
            .clone()
            .map(|k| (k.to_string(), json!(get(v, k) / get(&bare, k))))
            .collect();
        if let Some(n) = config.strip_prefix("axoneme ") {
            if let Some(ipt) = by_name.get(&format!("iptables {n}")) {
                v["times_better_than_iptables"] = measured
                    .map(|k| (k.to_string(), json!(better(v, ipt, k))))
                    .collect();
            }
            // The same, from the paired blocks (both sides run
            // milliseconds apart, so the host's swings cancel).
            let paired = |axo: &str, ipt: &str| get(v, axo) / get(v, ipt);
            v["paired_times_better_than_iptables"] = json!({
                "rr_p50": 1.0 / paired("paired_rr_p50_ratio", "iptables_paired_rr_p50_ratio"),
                "udp_pps": paired("paired_udp_pps_ratio", "iptables_paired_udp_pps_ratio"),
            });
            // The programs' share of a bare packet's path (both veths).
            let programs_ns = get(v, "bpf_from_container_ns") + get(v, "bpf_to_container_ns");
            v["programs_share_of_bare_packet"] = json!(programs_ns * get(&bare, "udp_pps") / 1e9);
        }
    }
    let doc = json!({
        "runs": results,
        "programs_under_test_run": programs,
        "note": "same machine, same run; medians over interleaved rounds; vs_bare: value / bare value; times_better_than_iptables: >1 favours Axoneme",
        "rounds": rounds_wanted,
        "pinned": pinning().then_some(json!({"client_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU})),
    });
    write_figures("datapath", &doc)
}
