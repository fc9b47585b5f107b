//! Socket-level load balancing on the real kernel: the datapath's
//! `sock_addr` programs attached to a cgroup of the test's own, the LB maps
//! written by the services unit's sync, and real sockets (Python's) in a
//! network namespace of the test's, run inside that cgroup.
//!
//! Backends are addresses on the namespace's loopback, each served by a
//! thread that answers with its own address; the service addresses exist
//! nowhere (no route, no device): only the translation makes them work.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

use anyhow::{bail, Context, Result};
use axoneme_agent::datapath::LbMaps;
use axoneme_agent::services::sync::{sync, LbWriter};
use axoneme_agent::services::table::{build, Ids, Table};
use axoneme_e2e::cgroup::Cgroup;
use axoneme_e2e::netns::Netns;
use axoneme_service::{Backend, BackendState, Frontend, FrontendKind, Protocol};
use support::*;

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
const BACKENDS4: [&str; 3] = ["10.200.0.1", "10.200.0.2", "10.200.0.3"];
const BACKEND6: &str = "fd00:200::1";

/// The namespace, its cgroup, the datapath with socket LB on the cgroup.
struct Rig {
    ns: Netns,
    cg: Cgroup,
    lb: LbMaps,
    have: Table,
    ids: Ids,
    // Last: the pins go after the links' users.
    _dp: TestDatapath,
}

impl Rig {
    fn start() -> Result<Self> {
        let mut dp = load();
        let prefix = axoneme_e2e::run_prefix("slb");
        let ns = Netns::create(&prefix)?;
        for a in BACKENDS4 {
            ns.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{BACKEND6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        let cg = Cgroup::create(&prefix)?;
        dp.attach_socket_lb(&cg.path)
            .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))?;
        let lb = dp.take_lb_maps()?;
        for a in BACKENDS4.iter().chain([&BACKEND6]) {
            serve(&ns, a.parse()?)?;
        }
        Ok(Rig {
            ns,
            cg,
            lb,
            have: Table::default(),
            ids: Ids::default(),
            _dp: dp,
        })
    }

    fn program(&mut self, frontends: &[Frontend]) -> Result<()> {
        let want = build(frontends, "node-a", &[], &mut self.ids)?;
        sync(&mut self.lb, &mut self.have, &want)?;
        assert_eq!(self.lb.read()?, want, "the maps hold what was synced");
        Ok(())
    }

    /// Runs `script` with Python in the namespace and the cgroup; its
    /// output lines.
    fn python(&self, script: &str) -> Result<Vec<String>> {
        let out = self
            .cg
            .command(&[
                "ip",
                "netns",
                "exec",
                &self.ns.name,
                "python3",
                "-c",
                script,
            ])
            .output()
            .context("running python3")?;
        if !out.status.success() {
            bail!(
                "python3 failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

/// Answers every TCP connection and UDP datagram on `addr` port 8080 with
/// `addr` (threads in the namespace, living as long as the test).
fn serve(ns: &Netns, addr: IpAddr) -> Result<()> {
    let bound = ns.enter(move || -> Result<(TcpListener, UdpSocket)> {
        let sa = SocketAddr::new(addr, 8080);
        Ok((TcpListener::bind(sa)?, UdpSocket::bind(sa)?))
    })??;
    let (tcp, udp) = bound;
    std::thread::spawn(move || {
        for mut c in tcp.incoming().flatten() {
            let _ = writeln!(c, "{addr}");
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(addr.to_string().as_bytes(), from);
        }
    });
    Ok(())
}

fn frontend(vip: &str, protocol: Protocol, backends: &[&str]) -> Frontend {
    Frontend {
        service: "default/payments".into(),
        port_name: String::new(),
        kind: FrontendKind::ClusterIP,
        addr: vip.parse().unwrap(),
        port: if protocol == Protocol::Udp { 53 } else { 80 },
        protocol,
        backends: backends
            .iter()
            .map(|a| Backend {
                addr: a.parse().unwrap(),
                port: 8080,
                node: Some("node-a".into()),
                state: BackendState::Active,
            })
            .collect(),
        affinity_timeout: None,
        local_only: false,
    }
}

/// `n` TCP connections to `vip:80`: per connection, the backend that
/// answered and what `getpeername` said.
fn tcp_script(vip: &str, n: usize) -> String {
    let fam = if vip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    format!(
        r#"
import socket
for _ in range({n}):
    s = socket.socket(socket.{fam}, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(("{vip}", 80))
    except OSError as e:
        print("error", e.errno)
        continue
    peer = s.getpeername()
    print(s.makefile().readline().strip(), "%s:%d" % (peer[0], peer[1]))
    s.close()
"#
    )
}

/// Counts of each backend in the script's output (failing on errors).
fn tally(lines: &[String]) -> Result<BTreeMap<String, usize>> {
    let mut t = BTreeMap::new();
    for l in lines {
        let mut f = l.split_whitespace();
        let backend = f.next().unwrap_or_default();
        if backend == "error" {
            bail!("a connection failed: {l}");
        }
        *t.entry(backend.to_string()).or_default() += 1;
    }
    Ok(t)
}

#[test]
fn services_are_translated_at_connect_and_shown_as_themselves() -> Result<()> {
    let mut rig = Rig::start()?;
    rig.program(&[
        frontend(VIP4, Protocol::Tcp, &BACKENDS4),
        frontend(VIP4, Protocol::Udp, &BACKENDS4[..1]),
        frontend(VIP6, Protocol::Tcp, &[BACKEND6]),
    ])?;

    // TCP: every connection reaches a backend; getpeername names the
    // service; the three share the connections.
    let lines = rig.python(&tcp_script(VIP4, 150))?;
    assert_eq!(lines.len(), 150);
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {VIP4}:80"))),
        "getpeername shows the service: {lines:?}"
    );
    let t = tally(&lines)?;
    assert_eq!(t.len(), 3, "all three backends used: {t:?}");
    // Uniform choice: each expects 50; 20 is more than 6 standard
    // deviations (sd ≈ 5.8) below.
    assert!(t.values().all(|n| *n >= 20), "distribution {t:?}");

    // UDP: an unconnected socket's datagram reaches the backend, and the
    // reply comes "from" the service (recvmsg's reverse translation).
    let lines = rig.python(&format!(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"hi", ("{VIP4}", 53))
data, peer = s.recvfrom(64)
print(data.decode(), "%s:%d" % peer)
"#
    ))?;
    assert_eq!(lines, [format!("{} {VIP4}:53", BACKENDS4[0])]);

    // IPv6.
    let lines = rig.python(&tcp_script(VIP6, 3))?;
    assert_eq!(lines, vec![format!("{BACKEND6} {VIP6}:80"); 3]);

    // A service without a usable backend refuses at once (EPERM), and an
    // address that is no service is left alone.
    rig.program(&[frontend(VIP4, Protocol::Tcp, &[])])?;
    let lines = rig.python(&tcp_script(VIP4, 1))?;
    assert_eq!(lines, ["error 1"], "EPERM");
    let lines = rig.python(&tcp_script(BACKENDS4[1], 0))?;
    assert!(lines.is_empty());

    // Removing every service empties the maps.
    rig.program(&[])?;
    assert_eq!(rig.lb.read()?, Table::default());
    Ok(())
}

#[test]
fn client_ip_affinity_sticks_moves_off_a_removed_backend_and_expires() -> Result<()> {
    let mut rig = Rig::start()?;
    let mut f = frontend(VIP4, Protocol::Tcp, &BACKENDS4);
    f.affinity_timeout = Some(1);
    rig.program(std::slice::from_ref(&f))?;
    let t = tally(&rig.python(&tcp_script(VIP4, 20))?)?;
    assert_eq!(t.len(), 1, "one client, one backend: {t:?}");
    let first = t.keys().next().unwrap().clone();

    // The affine backend leaves: the client moves, and sticks again.
    f.backends.retain(|b| b.addr.to_string() != first);
    rig.program(std::slice::from_ref(&f))?;
    let t = tally(&rig.python(&tcp_script(VIP4, 20))?)?;
    assert_eq!(t.len(), 1, "{t:?}");
    let second = t.keys().next().unwrap().clone();
    assert_ne!(first, second);

    // Idle past the timeout, a client chooses afresh: among two backends,
    // some attempt in twelve lands on the other one (odds of failing:
    // 2^-12).
    let moved = (0..12).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let t = tally(&rig.python(&tcp_script(VIP4, 1)).unwrap()).unwrap();
        !t.contains_key(&second)
    });
    assert!(moved, "affinity never expired");
    Ok(())
}
