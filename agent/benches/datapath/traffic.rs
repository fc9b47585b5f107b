//! The traffic of the measurements: the server pod's echo and UDP sink,
//! the client's UDP streams and new flows (counted where they arrive),
//! round trips, new connections and iperf3, each side pinned to its CPU.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use axoneme_e2e::bench::pick;
use axoneme_e2e::netns::Pod;
use serde_json::{json, Value};

use crate::{
    smoke, CRR_ROUNDS, DENIED_PORT, HELLO, IPERF_PORT, IPERF_SECONDS, NEW_FLOWS,
    NEW_FLOW_PORT_BASE, RR_PORT, RR_ROUNDS, STREAM_PACKETS, UDP_PORT,
};

/// The CPUs the client and the server side are pinned to (with fewer than
/// two CPUs, nothing is pinned): fewer scheduler swings between runs.
pub(crate) const CLIENT_CPU: usize = 0;
pub(crate) const SERVER_CPU: usize = 1;

pub(crate) fn pinning() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Pins the calling thread to `cpu` (when [`pinning`]).
pub(crate) fn pin(cpu: usize) {
    if pinning() {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
}

/// `args` prefixed with `taskset -c cpu` (when [`pinning`]).
pub(crate) fn pinned(cpu: usize, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = if pinning() {
        vec!["taskset".into(), "-c".into(), cpu.to_string()]
    } else {
        Vec::new()
    };
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

pub(crate) fn percentile(mut v: Vec<Duration>, per_mille: usize) -> f64 {
    v.sort();
    v[(v.len() - 1) * per_mille / 1000].as_secs_f64() * 1e6
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// An echo server for 64-byte messages in the server pod.
pub(crate) fn echo_server(server: &Pod) -> Result<()> {
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
pub(crate) fn udp_sink(server: &Pod) -> Result<()> {
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
pub(crate) fn rx_packets() -> Result<u64> {
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
pub(crate) fn delivered_rate(
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
pub(crate) fn udp_stream(client: &Pod, server: &Pod) -> Result<f64> {
    let sock = udp_flow(client, server)?;
    let n = pick(STREAM_PACKETS, smoke::STREAM_PACKETS);
    delivered_rate(client, server, move || blast(&sock, n))
}

/// A UDP socket in the client pod, connected to the server's sink, whose
/// flow the sink has answered once.
pub(crate) fn udp_flow(client: &Pod, server: &Pod) -> Result<UdpSocket> {
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
pub(crate) fn blast(sock: &UdpSocket, n: usize) -> Result<usize> {
    for _ in 0..n {
        sock.send(&[b'd'; 18])?;
    }
    Ok(n)
}

/// [`NEW_FLOWS`] datagrams, each from its own source port in block
/// `block`: every one a new flow (a raw socket writes the headers, so no
/// socket per flow is needed).
pub(crate) fn new_flows(client: &Pod, server: &Pod, block: u16) -> Result<f64> {
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

/// `n` 64-byte round trips over `conn`, each timed.
pub(crate) fn round_trips(conn: &mut TcpStream, n: usize) -> Result<Vec<Duration>> {
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
pub(crate) fn latency(client: &Pod, server: Ipv4Addr) -> Result<Value> {
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

pub(crate) fn iperf(client: &Pod, server: &Pod) -> Result<f64> {
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
pub(crate) fn ensure_denied(client: &Pod, server: &Pod, config: &str) -> Result<()> {
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
