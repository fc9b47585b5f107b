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

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use axoneme_agent::datapath::{policy_entry, Datapath, PIN_ROOT};
use axoneme_bpf_common::{endpoint_flags, EndpointInfo, IpcacheValue};
use axoneme_e2e::bench::{pick, write_figures};
use axoneme_e2e::netns::{run, Node, Pod};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Direction, Key, Verdict, PROTO_TCP, PROTO_UDP};
use serde_json::{json, Value};

#[path = "../tests/support/mod.rs"]
mod support;

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

/// A UDP sink in the server pod: answers [`HELLO`] datagrams, drops the
/// rest (they are counted at the pod's interface, see [`rx_packets`]).
fn udp_sink(server: &Pod) -> Result<()> {
    let sock = server
        .ns
        .enter(|| UdpSocket::bind(("0.0.0.0", UDP_PORT)))??;
    std::thread::spawn(move || {
        pin(SERVER_CPU);
        let mut buf = [0u8; 64];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if n > 0 && buf[0] == HELLO {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
    });
    Ok(())
}

/// Packets received by the interfaces (not `lo`) of the namespace the
/// calling thread is in.
fn rx_packets() -> Result<u64> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    let mut total = 0;
    for line in dev.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() != "lo" {
            let rx: u64 = counters
                .split_whitespace()
                .nth(1)
                .context("/proc/net/dev: no rx_packets column")?
                .parse()?;
            total += rx;
        }
    }
    Ok(total)
}

/// Runs `send` (which returns how many datagrams it sent) in the client pod
/// on the client CPU, and returns the rate at which datagrams reached the
/// server pod (not merely left the client: a drop must not look fast).
fn delivered_rate(
    client: &Pod,
    server: &Pod,
    send: impl FnOnce() -> Result<usize> + Send,
) -> Result<f64> {
    let before = server.ns.enter(rx_packets)??;
    let (sent, elapsed) = client.ns.enter(move || -> Result<(usize, Duration)> {
        pin(CLIENT_CPU);
        let t = Instant::now();
        let sent = send()?;
        Ok((sent, t.elapsed()))
    })??;
    std::thread::sleep(Duration::from_millis(50));
    let delivered = server.ns.enter(rx_packets)?? - before;
    ensure!(
        delivered as f64 >= sent as f64 * 0.99,
        "only {delivered} of {sent} datagrams reached the server"
    );
    Ok(delivered.min(sent as u64) as f64 / elapsed.as_secs_f64())
}

/// Small datagrams on one UDP flow that the server has answered once
/// (established for every conntrack).
fn udp_stream(client: &Pod, server: &Pod) -> Result<f64> {
    let sock = udp_flow(client, server)?;
    let n = pick(STREAM_PACKETS, smoke::STREAM_PACKETS);
    delivered_rate(client, server, move || blast(&sock, n))
}

/// A UDP socket in the client pod, connected to the server's sink, whose
/// flow the sink has answered once.
fn udp_flow(client: &Pod, server: &Pod) -> Result<UdpSocket> {
    let addr = SocketAddr::from((server.ip, UDP_PORT));
    client.ns.enter(move || -> Result<UdpSocket> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.send(&[HELLO; 18])?;
        sock.recv(&mut [0u8; 64])
            .context("no answer from the UDP sink")?;
        Ok(sock)
    })?
}

/// Sends `n` small datagrams on `sock`.
fn blast(sock: &UdpSocket, n: usize) -> Result<usize> {
    for _ in 0..n {
        sock.send(&[b'd'; 18])?;
    }
    Ok(n)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Configurations against the bare veth with the host's swings taken out:
/// client/server pairs side by side on the same node (`sides[0]` the
/// never-attached one), and short blocks alternating between them (the
/// order rotating every pair), so both sides of each ratio ran within
/// milliseconds of each other. Returns, per other side, the medians of the
/// per-block ratios (side / bare) of the small-UDP packet rate and of the
/// round-trip p50.
fn paired(sides: &[(&Pod, &Pod)]) -> Result<Vec<(f64, f64)>> {
    let n = sides.len();
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for &(client, server) in sides {
        udp.push(udp_flow(client, server)?);
        let addr = SocketAddr::from((server.ip, RR_PORT));
        tcp.push(client.ns.enter(move || -> Result<TcpStream> {
            let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            conn.set_nodelay(true)?;
            Ok(conn)
        })??);
    }
    let (pairs, udp_block, rr_block) = pick(
        (PAIRS, PAIR_UDP_BLOCK, PAIR_RR_BLOCK),
        (smoke::PAIRS, smoke::PAIR_UDP_BLOCK, smoke::PAIR_RR_BLOCK),
    );
    let rx = || -> Result<Vec<u64>> { sides.iter().map(|s| s.1.ns.enter(rx_packets)?).collect() };
    let before = rx()?;
    let blocks = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Vec<(f64, f64)>>> {
            pin(CLIENT_CPU);
            let mut blocks = Vec::new();
            for pair in 0..pairs {
                let mut block = vec![(0f64, 0f64); n];
                for i in (0..n).map(|i| (i + pair) % n) {
                    let t = Instant::now();
                    blast(&udp[i], udp_block)?;
                    let pps = udp_block as f64 / t.elapsed().as_secs_f64();
                    let rr = percentile(round_trips(&mut tcp[i], rr_block)?, 500);
                    block[i] = (pps, rr);
                }
                blocks.push(block);
            }
            Ok(blocks)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("paired measurement panicked"))?
    })?;
    std::thread::sleep(Duration::from_millis(50));
    let after = rx()?;
    // Every datagram arrived, on every side (the round trips add more).
    let sent = (pairs * udp_block) as u64;
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        ensure!(
            a - b >= sent * 99 / 100,
            "pair {i}: {} of {sent} datagrams arrived",
            a - b
        );
    }
    Ok((1..n)
        .map(|i| {
            let ratios = |f: &dyn Fn(&(f64, f64)) -> f64| {
                median(blocks.iter().map(|b| f(&b[i]) / f(&b[0])).collect())
            };
            (ratios(&|x| x.0), ratios(&|x| x.1))
        })
        .collect())
}

/// A minimal program on both host veths of a pair, the floor any TC
/// program pays: `axoneme_smoke`, the toolchain's smoke test (parse
/// IPv4/UDP with direct packet access, one hash lookup for UDP; its own
/// object, its map not pinned).
fn attach_floor(node: &Node, pair: (&Pod, &Pod)) -> Result<support::Smoke> {
    use aya::programs::{tc, TcAttachType};
    let mut smoke = support::Smoke::load()?;
    let program = smoke.program();
    node.ns.enter(|| -> Result<()> {
        for pod in [pair.0, pair.1] {
            let _ = tc::qdisc_add_clsact(&pod.host_if);
            for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
                let link = program.attach(&pod.host_if, dir)?;
                // Kept attached until the namespace goes.
                std::mem::forget(program.take_link(link)?);
            }
        }
        Ok(())
    })??;
    Ok(smoke)
}

/// [`NEW_FLOWS`] datagrams, each from its own source port in block
/// `block`: every one a new flow (a raw socket writes the headers, so no
/// socket per flow is needed).
fn new_flows(client: &Pod, server: &Pod, block: u16) -> Result<f64> {
    let (src, dst) = (client.ip, server.ip);
    let flows = pick(NEW_FLOWS, smoke::NEW_FLOWS);
    delivered_rate(client, server, move || {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(255)), // IPPROTO_RAW: we write the IP header
        )?;
        let to = socket2::SockAddr::from(SocketAddrV4::new(dst, 0));
        // IPv4 (the kernel fills in the length, id and checksum), UDP
        // without a checksum, 10 bytes of payload.
        let mut pkt = [0u8; 38];
        pkt[0] = 0x45;
        pkt[8] = 64;
        pkt[9] = 17;
        pkt[12..16].copy_from_slice(&src.octets());
        pkt[16..20].copy_from_slice(&dst.octets());
        pkt[22..24].copy_from_slice(&UDP_PORT.to_be_bytes());
        pkt[24..26].copy_from_slice(&18u16.to_be_bytes());
        pkt[28..].fill(b'n');
        let first = NEW_FLOW_PORT_BASE + block * flows;
        for sport in first..first + flows {
            pkt[20..22].copy_from_slice(&sport.to_be_bytes());
            sock.send_to(&pkt, &to)?;
        }
        Ok(usize::from(flows))
    })
}

/// The programs' own run time per packet on the established UDP flow, from
/// the kernel's BPF statistics (enabled only for this measurement, so they
/// cost nothing elsewhere).
fn bpf_cost(dp: &Datapath, client: &Pod, server: &Pod) -> Result<Value> {
    const PROGRAMS: [&str; 2] = ["axoneme_from_container", "axoneme_to_container"];
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let sample = || -> Result<Vec<(Duration, u64)>> {
        PROGRAMS
            .iter()
            .map(|name| {
                let info = dp.program(name)?.info()?;
                Ok((info.run_time(), info.run_count()))
            })
            .collect()
    };
    let before = sample()?;
    udp_stream(client, server)?;
    let after = sample()?;
    drop(stats);
    let ns = |i: usize| {
        let runs = after[i].1.saturating_sub(before[i].1).max(1);
        after[i].0.saturating_sub(before[i].0).as_nanos() as f64 / runs as f64
    };
    Ok(json!({ "bpf_from_container_ns": ns(0), "bpf_to_container_ns": ns(1) }))
}

/// Runs per case in one `BPF_PROG_TEST_RUN`.
const TEST_RUN_REPEAT: u32 = 1_000_000;

/// The programs' time per run under `BPF_PROG_TEST_RUN`, in the kernel
/// with no traffic and no statistics overhead, so it is steady enough to
/// compare code changes: 64-byte UDP/IPv4 packets of an established flow
/// each way, a TCP ACK of an established flow, and a packet policy denies
/// (conntrack miss, ipcache and policy lookups; its event rate-limited
/// away). `axoneme_smoke` on the same packet is the floor (the harness'
/// own per-run cost and a minimal parse). Medians over 5 interleaved runs.
fn program_cost() -> Result<Value> {
    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const W: [u8; 4] = [10, 0, 0, 9];
    let dp = &mut support::load();
    // The same programs loaded without counting and events: what
    // observability costs per packet (`*_quiet_ns` beside each case).
    let quiet = &mut support::load_options(support::LoadOptions {
        observe: false,
        ..Default::default()
    });
    let smoke = &mut support::Smoke::load()?;
    for dp in [&mut *dp, &mut *quiet] {
        dp.maps.set_endpoint(
            1,
            EndpointInfo::new(
                CLIENT_ID,
                CLIENT_ID,
                endpoint_flags::EGRESS_ENFORCED,
                &[A.into()],
            ),
        )?;
        dp.maps
            .set_ipcache(&"10.0.0.2/32".parse()?, id(SERVER_ID))?;
        for (protocol, port) in [(PROTO_UDP, UDP_PORT), (PROTO_TCP, RR_PORT)] {
            allow(dp, CLIENT_ID, Direction::Egress, SERVER_ID, protocol, port)?;
        }
    }
    let payload = [0u8; 64];
    let v4 = |src, dst, protocol, l4: Vec<u8>| support::ipv4(src, dst, protocol, &l4, 0, 1);
    let (udp, tcp) = (support::IPPROTO_UDP, support::IPPROTO_TCP);
    let out = v4(A, B, udp, support::udp(40000, UDP_PORT, &payload));
    let back = v4(B, A, udp, support::udp(UDP_PORT, 40000, &payload));
    let syn = v4(A, B, tcp, support::tcp(40001, RR_PORT, support::TCP_SYN));
    let ack = v4(A, B, tcp, support::tcp(40001, RR_PORT, support::TCP_ACK));
    let denied = v4(A, W, udp, support::udp(40002, UDP_PORT, &payload));
    let from = "axoneme_from_container";
    let to = "axoneme_to_container";
    // The flows are opened by one ordinary run each.
    for dp in [&*dp, &*quiet] {
        ensure!(
            dp.test_run(from, &out)? == 0,
            "the UDP flow was not allowed"
        );
        ensure!(
            dp.test_run(from, &syn)? == 0,
            "the TCP flow was not allowed"
        );
    }
    // (`None`: the smoke object's program.)
    let cases: [(&str, Option<&'static str>, &[u8], i32); 5] = [
        ("floor_smoke", None, &out, 0),
        ("udp4_established_egress", Some(from), &out, 0),
        ("udp4_established_reply", Some(to), &back, 0),
        ("tcp4_established_egress", Some(from), &ack, 0),
        ("udp4_denied", Some(from), &denied, 2),
    ];
    let mut times = vec![Vec::new(); cases.len()];
    let mut quiet_times = vec![Vec::new(); cases.len()];
    let repeat = pick(TEST_RUN_REPEAT, smoke::TEST_RUN_REPEAT);
    for _ in 0..pick(5, smoke::TEST_RUNS) {
        for (((name, program, packet, want), t), qt) in
            cases.iter().zip(&mut times).zip(&mut quiet_times)
        {
            let Some(program) = program else {
                let (action, per_run) = smoke.run_repeated(packet, repeat)?;
                ensure!(action == *want, "{name}: TC action {action}");
                t.push(per_run.as_nanos() as f64);
                continue;
            };
            // Both loads of the case back to back, so a slow spell of the
            // host hits both.
            for (dp, t) in [(&*dp, &mut *t), (&*quiet, &mut *qt)] {
                let (action, per_run) = dp.test_run_repeated(program, packet, repeat)?;
                ensure!(
                    action == *want,
                    "{name}: TC action {action}, expected {want}"
                );
                t.push(per_run.as_nanos() as f64);
            }
        }
    }
    // The switch works: the quiet load counted nothing.
    ensure!(
        quiet.maps.traffic()?.is_empty() && quiet.maps.counters()? == Default::default(),
        "the datapath loaded without observability counted packets"
    );
    ensure!(
        !dp.maps.traffic()?.is_empty(),
        "the datapath counted no packet"
    );
    let ns: Vec<f64> = times.into_iter().map(median).collect();
    let mut v = json!({});
    for (((name, program, ..), x), qt) in cases.iter().zip(&ns).zip(quiet_times) {
        v[format!("{name}_ns")] = json!(x);
        if program.is_some() {
            v[format!("{name}_over_floor_ns")] = json!(x - ns[0]);
            let quiet_ns = median(qt);
            v[format!("{name}_quiet_ns")] = json!(quiet_ns);
            v[format!("{name}_observe_cost_ns")] = json!(x - quiet_ns);
        }
    }
    // The programs' size as the kernel has them (subprograms included):
    // instructions after the verifier's rewrites (`bpftool prog show`'s
    // xlated size / 8) and the instructions the verifier processed.
    for program in [from, to] {
        let info = dp.program(program)?.info()?;
        let key = program.trim_start_matches("axoneme_");
        v[format!("{key}_xlated_insns")] = json!(info.size_translated().unwrap_or(0) / 8);
        v[format!("{key}_verified_insns")] = json!(info.verified_instruction_count());
    }
    Ok(v)
}

/// `n` 64-byte round trips over `conn`, each timed.
fn round_trips(conn: &mut TcpStream, n: usize) -> Result<Vec<Duration>> {
    let mut buf = [7u8; 64];
    let mut rr = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.write_all(&buf)?;
        conn.read_exact(&mut buf)?;
        rr.push(t.elapsed());
    }
    Ok(rr)
}

/// Round trips over one connection, then connect+request+close rounds.
fn latency(client: &Pod, server: Ipv4Addr) -> Result<Value> {
    client.ns.enter(move || -> Result<Value> {
        pin(CLIENT_CPU);
        let addr = SocketAddr::from((server, RR_PORT));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        conn.set_nodelay(true)?;
        let (rr_rounds, crr_rounds) = pick(
            (RR_ROUNDS, CRR_ROUNDS),
            (smoke::RR_ROUNDS, smoke::CRR_ROUNDS),
        );
        let rr = round_trips(&mut conn, rr_rounds)?;
        let mut buf = [7u8; 64];
        let mut crr = Vec::with_capacity(crr_rounds);
        let started = Instant::now();
        for _ in 0..crr_rounds {
            let t = Instant::now();
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            c.set_nodelay(true)?;
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            drop(c);
            crr.push(t.elapsed());
        }
        let crr_rate = crr_rounds as f64 / started.elapsed().as_secs_f64();
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
            pick(IPERF_SECONDS, smoke::IPERF_SECONDS),
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

/// A TCP connection from `client` to [`DENIED_PORT`] of `server`, which
/// the policy does not allow, must get no answer at all (dropped, not
/// refused): the configuration really enforces, so its figures are those
/// of an enforcing path.
fn ensure_denied(client: &Pod, server: &Pod, config: &str) -> Result<()> {
    let addr = SocketAddr::from((server.ip, DENIED_PORT));
    let outcome = client
        .ns
        .enter(move || TcpStream::connect_timeout(&addr, Duration::from_millis(300)))?;
    match outcome {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(()),
        Ok(_) => anyhow::bail!("{config}: a connection to port {DENIED_PORT}, which no policy allows, was accepted"),
        Err(e) => anyhow::bail!(
            "{config}: port {DENIED_PORT}, which no policy allows, answered ({e}) instead of being dropped"
        ),
    }
}

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

fn filler_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        90,
        u8::try_from(i / 256).unwrap_or(255),
        u8::try_from(i % 256).unwrap_or(0),
    )
}

/// The same policy as iptables rules: established flows first, then one
/// chain per protocol with one rule per allowed peer (the real client's
/// last, the worst position), then DROP.
fn iptables(node: &Node, client: &Pod, server: &Pod, n: u32) -> Result<()> {
    let mut rules =
        String::from("*filter\n:FORWARD ACCEPT [0:0]\n:AXB-TCP - [0:0]\n:AXB-UDP - [0:0]\n");
    rules.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    rules.push_str("-A FORWARD -p tcp -j AXB-TCP\n-A FORWARD -p udp -j AXB-UDP\n");
    rules.push_str(&format!("-A FORWARD -d {}/32 -j DROP\n", server.ip));
    let peers = (0..n.saturating_sub(1)).map(filler_ip).chain([client.ip]);
    for peer in peers {
        rules.push_str(&format!(
            "-A AXB-TCP -s {peer}/32 -d {}/32 -p tcp -m multiport --dports {RR_PORT},{IPERF_PORT} -j ACCEPT\n",
            server.ip
        ));
        rules.push_str(&format!(
            "-A AXB-UDP -s {peer}/32 -d {}/32 -p udp --dport {UDP_PORT} -j ACCEPT\n",
            server.ip
        ));
    }
    rules.push_str("COMMIT\n");
    let mut child = node
        .ns
        .command(&["iptables-restore"])
        .stdin(Stdio::piped())
        .spawn()
        .context("iptables-restore (cargo xtask setup installs iptables)")?;
    child.stdin.take().unwrap().write_all(rules.as_bytes())?;
    ensure!(child.wait()?.success(), "iptables-restore failed");
    // Unanswered UDP entries (the new-flow test's) expire before the next
    // round reuses their ports, so each datagram is a new flow there too.
    node.ns
        .sysctl("net.netfilter.nf_conntrack_udp_timeout", "5")?;
    Ok(())
}

fn iptables_flush(node: &Node) -> Result<()> {
    let ns = node.ns.name.clone();
    for op in ["-F", "-X"] {
        run(&["ip", "netns", "exec", &ns, "iptables", op])?;
    }
    Ok(())
}

fn program(dp: &mut Datapath, client: &Pod, server: &Pod, n: u32) -> Result<()> {
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
        for (protocol, port) in [
            (PROTO_TCP, RR_PORT),
            (PROTO_TCP, IPERF_PORT),
            (PROTO_UDP, UDP_PORT),
        ] {
            allow(dp, SERVER_ID, Direction::Ingress, peer, protocol, port)?;
        }
    }
    Ok(())
}

/// An ipcache value for `identity`.
fn id(identity: u32) -> IpcacheValue {
    IpcacheValue {
        identity,
        ..IpcacheValue::default()
    }
}

/// Lets `peer` reach endpoint `endpoint` in `dir` on one protocol and port.
fn allow(
    dp: &mut Datapath,
    endpoint: u32,
    dir: Direction,
    peer: u32,
    protocol: u8,
    port: u16,
) -> Result<()> {
    let key = Key {
        identity: NumericIdentity(peer),
        protocol,
        port,
        prefix: 16,
    };
    let (k, v) = policy_entry(endpoint, dir, &key, &Verdict::Allow, 0);
    dp.maps.set_policy(&k, v)?;
    Ok(())
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
