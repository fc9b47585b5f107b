//! Real traffic between pods on one node, enforced by a real agent process:
//! etcd, an operator, the `axoneme` CLI writing endpoint records and the
//! policy, network namespaces for the node and three pods, real TCP/UDP
//! sockets and ping. Then the agent is restarted (SIGTERM, then kill -9)
//! while an allowed TCP stream and a denied probe run.
//!
//! Needs root, iproute2 and ping (`cargo xtask setup` installs them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use axoneme_bpf_common::{AddrSlot, IpcacheKey, ADDR_SLOTS};
use axoneme_e2e::netns::{Node, Pod};
use axoneme_e2e::{bin_path, run_prefix, EtcdCluster, OperatorProc, Proc};

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

struct Cluster {
    _etcd: EtcdCluster,
    op: OperatorProc,
    endpoints: String,
    dir: tempfile::TempDir,
    node: Node,
    node_name: String,
    pins: PathBuf,
    client: Pod,
    server: Pod,
    intruder: Pod,
    agent: Option<Proc>,
    agent_runs: usize,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(a) = &mut self.agent {
            a.terminate(Duration::from_secs(3));
        }
        if std::thread::panicking() {
            eprintln!("--- operator log ---\n{}", self.op.proc.log_text());
            for i in 0..self.agent_runs {
                let log = std::fs::read_to_string(self.dir.path().join(format!("agent-{i}.log")))
                    .unwrap_or_default();
                eprintln!("--- agent log {i} ---\n{log}");
            }
        }
        if !axoneme_e2e::keep() {
            let _ = std::fs::remove_dir_all(&self.pins);
        }
    }
}

fn axoneme(endpoints: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(bin_path("axoneme"))
        .args(["--etcd-endpoints", endpoints])
        .args(args)
        .output()
        .context("running axoneme")?;
    ensure!(
        out.status.success(),
        "axoneme {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Cluster {
    fn start() -> Result<Self> {
        let prefix = run_prefix("t");
        let etcd = EtcdCluster::start(1)?;
        let endpoints = etcd.endpoints().join(",");
        let dir = tempfile::tempdir()?;
        let op = OperatorProc::start(
            &bin_path("axoneme-operator"),
            "op-traffic",
            &etcd.endpoints(),
            &["--lease-ttl".into(), "2".into()],
            dir.path(),
        )?;
        let node = Node::create(&format!("{prefix}n"))?;
        let pod = |tag: &str, last: u8| {
            node.add_pod(
                &format!("{prefix}{tag}"),
                &format!("{prefix}{tag}h"),
                Ipv4Addr::new(10, 77, 0, last),
            )
        };
        let client = pod("c", 1)?;
        let server = pod("s", 2)?;
        let intruder = pod("i", 3)?;
        let node_name = format!("{prefix}-node");
        for (id, app, p) in [
            ("client", "client", &client),
            ("server", "server", &server),
            ("intruder", "intruder", &intruder),
        ] {
            axoneme(
                &endpoints,
                &[
                    "endpoint",
                    "put",
                    "--node",
                    &node_name,
                    "--id",
                    id,
                    "-l",
                    &format!("app={app}"),
                    "-l",
                    "io.kubernetes.pod.namespace=default",
                    "--address",
                    &p.ip.to_string(),
                    "--address",
                    &p.ip6.to_string(),
                    "--interface",
                    &p.host_if,
                    "--wait",
                    "20",
                ],
            )?;
        }
        let pins = PathBuf::from("/sys/fs/bpf/axoneme").join(&prefix);
        let mut c = Cluster {
            _etcd: etcd,
            op,
            endpoints,
            dir,
            node,
            node_name,
            pins,
            client,
            server,
            intruder,
            agent: None,
            agent_runs: 0,
        };
        c.start_agent()?;
        Ok(c)
    }

    fn agent_log(&self) -> String {
        let i = self.agent_runs - 1;
        std::fs::read_to_string(self.dir.path().join(format!("agent-{i}.log"))).unwrap_or_default()
    }

    /// Starts an agent and waits for its first datapath pass.
    fn start_agent(&mut self) -> Result<()> {
        let log = self
            .dir
            .path()
            .join(format!("agent-{}.log", self.agent_runs));
        self.agent_runs += 1;
        let mut cmd = Command::new(bin_path("axoneme-agent"));
        cmd.args([
            "--node",
            &self.node_name,
            "--etcd-endpoints",
            &self.endpoints,
        ])
        .arg("--netns")
        .arg(self.node.ns.path())
        .arg("--bpf-pin-dir")
        .arg(&self.pins)
        // Services are tested with a cluster's cgroups (e2e services).
        .arg("--kube-proxy-replacement=false")
        .env("RUST_LOG", "info");
        self.agent = Some(Proc::spawn("agent", cmd, &log)?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.agent_log().contains("datapath ready") {
            ensure!(
                Instant::now() < deadline,
                "agent not ready:\n{}",
                self.agent_log()
            );
            ensure!(
                self.agent.as_mut().is_some_and(|a| a.is_running()),
                "agent exited:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn import(&self, yaml: &str) -> Result<()> {
        let file = self.dir.path().join("policy.yaml");
        std::fs::write(&file, yaml)?;
        axoneme(
            &self.endpoints,
            &["policy", "import", file.to_str().unwrap(), "--wait", "20"],
        )?;
        Ok(())
    }
}

/// A TCP server in `pod` answering each line with `ok <line>` (one
/// dual-stack socket: IPv4 and IPv6); a UDP echo.
fn serve(pod: &Pod) {
    let tcp = pod
        .ns
        .enter(|| TcpListener::bind(("::", TCP_PORT)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    if writeln!(w, "ok {line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    let udp = pod
        .ns
        .enter(|| UdpSocket::bind(("0.0.0.0", UDP_PORT)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
}

/// Whether `from` gets an answer over TCP from `to:port` within 1 s.
fn tcp_ok(from: &Pod, to: impl Into<IpAddr>, port: u16) -> bool {
    let to = to.into();
    from.ns
        .enter(move || -> std::io::Result<bool> {
            let addr = SocketAddr::from((to, port));
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"hi\n")?;
            let mut buf = [0u8; 6];
            s.read_exact(&mut buf)?;
            Ok(&buf == b"ok hi\n")
        })
        .unwrap()
        .unwrap_or(false)
}

fn udp_ok(from: &Pod, to: Ipv4Addr) -> bool {
    from.ns
        .enter(move || -> std::io::Result<bool> {
            let s = UdpSocket::bind(("0.0.0.0", 0))?;
            s.set_read_timeout(Some(Duration::from_millis(700)))?;
            s.send_to(b"ping", (to, UDP_PORT))?;
            let mut buf = [0u8; 16];
            let (n, _) = s.recv_from(&mut buf)?;
            Ok(&buf[..n] == b"ping")
        })
        .unwrap()
        .unwrap_or(false)
}

fn ping_ok(from: &Pod, to: Ipv4Addr) -> bool {
    from.ns
        .command(&["ping", "-c", "1", "-W", "1", &to.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}, {port: \"5353\", protocol: UDP}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    icmps: [{fields: [{type: 8}]}]
";

/// Packets counted by the pinned policy trie's allow entries for TCP/8080
/// ingress (read from the pins, as a debugging tool would).
fn allowed_8080_packets(c: &Cluster) -> Result<u64> {
    use axoneme_bpf_common::{direction, PolicyKey, PolicyValue};
    use aya::maps::{LpmTrie, Map, MapData};
    let data = MapData::from_pin(c.pins.join("POLICY")).context("opening the pinned POLICY map")?;
    let trie: LpmTrie<_, PolicyKey, PolicyValue> = LpmTrie::try_from(Map::LpmTrie(data))?;
    let mut sum = 0;
    for item in trie.iter() {
        let (k, v) = item?;
        let k = k.data();
        if k.direction == direction::INGRESS
            && k.protocol == 6
            && k.dport_host() == TCP_PORT
            && !v.is_deny()
        {
            sum += v.packets;
        }
    }
    Ok(sum)
}

/// Datagrams the node's own IPv4 and IPv6 routing forwarded (its SNMP
/// counters): what local delivery skips.
fn forwarded(c: &Cluster) -> Result<(u64, u64)> {
    let read = |file: &str, field: &str| -> Result<u64> {
        let out = c.node.ns.command(&["cat", file]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // /proc/net/snmp: a header line of names, then a line of values;
        // /proc/net/snmp6: one "name value" per line.
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let names: Vec<&str> = line.split_whitespace().collect();
            if names.len() == 2 && names[0] == field {
                return Ok(names[1].parse()?);
            }
            if let Some(i) = names.iter().position(|n| *n == field) {
                let values = lines.next().context("snmp values")?;
                return Ok(values
                    .split_whitespace()
                    .nth(i)
                    .context(field.to_string())?
                    .parse()?);
            }
        }
        anyhow::bail!("no {field} in {file}")
    };
    Ok((
        read("/proc/net/snmp", "ForwDatagrams")?,
        read("/proc/net/snmp6", "Ip6OutForwDatagrams")?,
    ))
}

/// The pinned local-delivery map: each local endpoint address → its
/// ifindex.
fn delivery_map(c: &Cluster) -> Result<aya::maps::HashMap<aya::maps::MapData, IpcacheKey, u32>> {
    use aya::maps::{Map, MapData};
    let data = MapData::from_pin(c.pins.join("ENDPOINT_ADDRS"))
        .context("opening the pinned ENDPOINT_ADDRS map")?;
    Ok(Map::HashMap(data).try_into()?)
}

/// The pinned `ENDPOINT_ADDR_SLOTS` array local delivery reads
/// `ENDPOINT_ADDRS` through.
fn delivery_slots(c: &Cluster) -> Result<aya::maps::Array<aya::maps::MapData, AddrSlot>> {
    use aya::maps::{Map, MapData};
    let data = MapData::from_pin(c.pins.join("ENDPOINT_ADDR_SLOTS"))
        .context("opening the pinned ENDPOINT_ADDR_SLOTS map")?;
    Ok(Map::Array(data).try_into()?)
}

/// Waits until `f` holds (policy changes take a moment to reach the node).
fn eventually(what: &str, f: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        ensure!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn pods_on_one_node_policy_and_agent_restarts() -> Result<()> {
    let mut c = Cluster::start()?;
    serve(&c.server);
    let s = c.server.ip;

    // No policy yet: everything flows, IPv4 and IPv6.
    assert!(tcp_ok(&c.client, s, TCP_PORT));
    assert!(tcp_ok(&c.intruder, c.server.ip6, TCP_PORT), "IPv6 path");
    assert!(tcp_ok(&c.intruder, s, TCP_PORT));
    assert!(udp_ok(&c.intruder, s));

    c.import(POLICY)?;
    eventually("intruder blocked on TCP", || {
        !tcp_ok(&c.intruder, s, TCP_PORT)
    })?;
    // Allowed exactly as written, both protocols and ICMP, replies included.
    assert!(tcp_ok(&c.client, s, TCP_PORT), "client TCP/8080");
    assert!(udp_ok(&c.client, s), "client UDP/5353");
    assert!(ping_ok(&c.client, s), "client ping");
    assert!(!udp_ok(&c.intruder, s), "intruder UDP");
    assert!(!ping_ok(&c.intruder, s), "intruder ping");
    // The server's egress is not restricted; the client's ingress neither.
    assert!(ping_ok(&c.server, c.client.ip), "server pings client");
    // The allow entry counted the client's new flows (the counters count
    // flows' first packets: policy is looked up on new flows only).
    let before = allowed_8080_packets(&c)?;
    let routed = forwarded(&c)?;
    for _ in 0..5 {
        assert!(tcp_ok(&c.client, s, TCP_PORT));
    }
    let after = allowed_8080_packets(&c)?;
    assert_eq!(after - before, 5, "five new connections, five counted");
    // The same over IPv6.
    assert!(
        tcp_ok(&c.client, c.server.ip6, TCP_PORT),
        "client TCP/8080 over IPv6"
    );
    // Every packet of those connections, both ways, went from pod to pod
    // without the node's routing (local delivery).
    assert_eq!(forwarded(&c)?, routed, "packets the node routed");
    assert!(
        !tcp_ok(&c.intruder, c.server.ip6, TCP_PORT),
        "intruder over IPv6"
    );
    // The drop is in the agent's event stream, with Cilium's reason.
    let intruder_ip = c.intruder.ip.to_string();
    eventually("drop event for the intruder", || {
        c.agent_log().lines().any(|l| {
            l.contains("kind=drop") && l.contains("reason=133") && l.contains(&intruder_ip)
        })
    })?;

    // Restarts while an allowed stream and a denied probe run.
    let stop = Arc::new(AtomicBool::new(false));
    let max_gap_ms = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(AtomicU64::new(0));
    let stream = {
        let (stop, max_gap_ms, answers) = (stop.clone(), max_gap_ms.clone(), answers.clone());
        c.client.ns.spawn(move || -> std::io::Result<()> {
            let mut conn = TcpStream::connect((s, TCP_PORT))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut reader = BufReader::new(conn.try_clone()?);
            let mut last = Instant::now();
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(b"tick\n")?;
                line.clear();
                reader.read_line(&mut line)?;
                assert_eq!(line, "ok tick\n");
                let gap = u64::try_from(last.elapsed().as_millis()).unwrap_or(u64::MAX);
                max_gap_ms.fetch_max(gap, Ordering::Relaxed);
                answers.fetch_add(1, Ordering::Relaxed);
                last = Instant::now();
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };
    let breaches = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(AtomicU64::new(0));
    let probe = {
        let (stop, breaches, probes) = (stop.clone(), breaches.clone(), probes.clone());
        c.intruder.ns.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let addr = SocketAddr::from((s, TCP_PORT));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    breaches.fetch_add(1, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    // Each step leaves a second for the stream and the probe to notice.
    let pause = || std::thread::sleep(Duration::from_secs(1));
    pause();
    // Without local delivery's address entries (as in pins from before
    // them) the stream goes the long way, through the node's routing; the
    // restarted agent writes them again.
    let mut delivery = delivery_map(&c)?;
    let addresses: Vec<IpcacheKey> = delivery.keys().collect::<Result<_, _>>()?;
    assert_eq!(addresses.len(), 6, "three pods, two addresses each");
    for a in &addresses {
        delivery.remove(a)?;
    }
    // ... nor the slots the programs read them through (pins from before
    // the slots have none; a slot left saying "one address" would go on
    // delivering without the hash).
    let mut slots = delivery_slots(&c)?;
    for i in 0..ADDR_SLOTS {
        slots.set(i, AddrSlot::default(), 0)?;
    }
    pause();
    c.agent.as_mut().unwrap().terminate(Duration::from_secs(5));
    pause();
    c.start_agent()?;
    pause();
    c.agent.as_mut().unwrap().kill9();
    pause();
    c.start_agent()?;
    pause();
    stop.store(true, Ordering::Relaxed);
    stream.join().unwrap()?.context("allowed stream failed")?;
    probe.join().unwrap()?;
    let (gap, n) = (
        max_gap_ms.load(Ordering::Relaxed),
        answers.load(Ordering::Relaxed),
    );
    eprintln!(
        "restart: {n} answers, longest gap {gap} ms; {} denied probes, {} got through",
        probes.load(Ordering::Relaxed),
        breaches.load(Ordering::Relaxed)
    );
    assert!(n > 50, "the stream ran ({n} answers)");
    assert!(gap < 1000, "allowed stream stalled {gap} ms");
    assert!(probes.load(Ordering::Relaxed) > 10);
    assert_eq!(
        breaches.load(Ordering::Relaxed),
        0,
        "a denied connection got through"
    );
    // The restarted agent adopted the maps: the policy still holds, and
    // the address entries are back.
    let routed = forwarded(&c)?;
    assert!(
        routed.0 > 0,
        "the stream was routed while the entries were gone"
    );
    assert!(tcp_ok(&c.client, s, TCP_PORT));
    assert!(!tcp_ok(&c.intruder, s, TCP_PORT));
    assert_eq!(delivery.keys().count(), 6);
    assert_eq!(forwarded(&c)?, routed, "delivered again without routing");

    // Deleting the policy opens the way again.
    axoneme(
        &c.endpoints,
        &["policy", "delete", "server-ingress", "-n", "default"],
    )?;
    eventually("intruder allowed after delete", || {
        tcp_ok(&c.intruder, s, TCP_PORT)
    })?;
    Ok(())
}
