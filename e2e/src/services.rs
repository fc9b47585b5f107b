//! Clients and servers for the Service tests and benches: a request loop
//! (one Python process opening a new connection per request, as a
//! short-lived client does), a UDP server that answers with its own
//! address, and the Service document `axoneme service` takes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};

use anyhow::{bail, Context, Result};

use crate::cluster::CniPod;
use crate::netns::Netns;
use crate::Proc;

/// Outcomes of a request loop: HTTP status (`"200"`) or the client's
/// error (`"ConnectionRefusedError"`, `"timeout"`) → count.
pub type Outcomes = BTreeMap<String, u64>;

const LOOP: &str = r#"
import http.client, json, os, socket, sys, time
host, port, method, path, n, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
out = {}
i = 0
while (n > 0 and i < n) or (n == 0 and not os.path.exists(stop)):
    i += 1
    try:
        c = http.client.HTTPConnection(host, port, timeout=2)
        c.request(method, path, body=b"" if method == "POST" else None)
        r = c.getresponse()
        r.read()
        c.close()
        k = str(r.status)
    except socket.timeout:
        k = "timeout"
    except Exception as e:
        k = type(e).__name__
    out[k] = out.get(k, 0) + 1
    if n == 0:
        time.sleep(0.005)
print(json.dumps(out))
"#;

fn loop_command(
    pod: &CniPod,
    addr: &str,
    port: u16,
    method: &str,
    path: &str,
    n: u32,
    stop: &str,
) -> std::process::Command {
    let port = port.to_string();
    let n = n.to_string();
    pod.command(&["python3", "-c", LOOP, addr, &port, method, path, &n, stop])
}

fn outcomes(out: &std::process::Output) -> Result<Outcomes> {
    if !out.status.success() {
        bail!(
            "request loop failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "request loop wrote {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `n` requests from `pod` to `addr:port`, each on a new connection.
pub fn requests(
    pod: &CniPod,
    addr: &str,
    port: u16,
    method: &str,
    path: &str,
    n: u32,
) -> Result<Outcomes> {
    let out = loop_command(pod, addr, port, method, path, n, "/nonexistent").output()?;
    outcomes(&out)
}

/// Requests from `pod` to `addr:port` in a loop (a new connection each,
/// every 5 ms) until [`RequestLoop::finish`].
pub struct RequestLoop {
    child: Option<Child>,
    stop: PathBuf,
}

impl RequestLoop {
    pub fn start(
        pod: &CniPod,
        addr: &str,
        port: u16,
        method: &str,
        path: &str,
        dir: &std::path::Path,
    ) -> Result<Self> {
        let stop = dir.join(format!("stop-{}-{}", pod.name, crate::run_prefix("loop")));
        let child = loop_command(pod, addr, port, method, path, 0, &stop.to_string_lossy())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(RequestLoop {
            child: Some(child),
            stop,
        })
    }

    /// Stops the loop; what its requests got.
    pub fn finish(mut self) -> Result<Outcomes> {
        std::fs::write(&self.stop, "")?;
        let child = self.child.take().context("finished twice")?;
        let out = child.wait_with_output()?;
        let _ = std::fs::remove_file(&self.stop);
        outcomes(&out)
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.stop);
    }
}

const UDP_SERVER: &str = r#"
import socket, sys
port, name = int(sys.argv[1]), sys.argv[2].encode()
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(name.ljust(len(data)), peer)
"#;

/// A UDP server in `ns` on `port` (both families) answering every
/// datagram with `name`, padded with spaces to the datagram's length.
pub fn udp_server(ns: &Netns, port: u16, name: &str, log: &std::path::Path) -> Result<Proc> {
    let cmd = ns.command(&["python3", "-c", UDP_SERVER, &port.to_string(), name]);
    Proc::spawn("udp-server", cmd, log)
}

const UDP_CLIENT: &str = r#"
import socket, sys
addr, port, size, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
s.settimeout(1)
for _ in range(5):
    try:
        s.sendto(b"h" * size, (addr, port))
        data, peer = s.recvfrom(65535)
        print(data.split()[0].decode(), peer[0], peer[1], len(data))
        break
    except socket.timeout:
        pass
"#;

/// A UDP server's answer: its name, where it came from, its length.
#[derive(Debug)]
pub struct UdpAnswer {
    pub name: String,
    pub from: IpAddr,
    pub port: u16,
    pub len: usize,
}

/// One datagram from `pod` to `addr:port` (retried): the answer (`None`:
/// no answer).
pub fn udp_request(pod: &CniPod, addr: &str, port: u16) -> Result<Option<UdpAnswer>> {
    udp_exchange(|args| pod.command(args), addr, port, 2, 0)
}

/// A datagram of `size` bytes from `ns`, from local port `sport` (0: any)
/// to `addr:port` (retried), as [`udp_request`]: a client outside the
/// cluster, or one whose datagrams are fragmented.
pub fn udp_request_from(
    ns: &Netns,
    addr: &str,
    port: u16,
    size: usize,
    sport: u16,
) -> Result<Option<UdpAnswer>> {
    udp_exchange(|args| ns.command(args), addr, port, size, sport)
}

fn udp_exchange(
    command: impl Fn(&[&str]) -> std::process::Command,
    addr: &str,
    port: u16,
    size: usize,
    sport: u16,
) -> Result<Option<UdpAnswer>> {
    let (port_s, size_s, sport_s) = (port.to_string(), size.to_string(), sport.to_string());
    let out = command(&[
        "python3", "-c", UDP_CLIENT, addr, &port_s, &size_s, &sport_s,
    ])
    .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    match f[..] {
        [] => Ok(None),
        [name, from, port, len] => Ok(Some(UdpAnswer {
            name: name.to_string(),
            from: from.parse()?,
            port: port.parse()?,
            len: len.parse()?,
        })),
        _ => bail!(
            "UDP client wrote {text:?} ({})",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A backend of a Service document: a pod's addresses on its node.
pub struct Endpoint<'a> {
    pub pod: &'a CniPod,
    pub node: &'a str,
    /// `ready: false, serving: true, terminating: true` when set.
    pub terminating: bool,
}

/// The Service document `axoneme service create` takes: `ports` are
/// `(name, protocol, port, targetPort)`.
pub fn service_yaml(
    name: &str,
    cluster_ips: &[&str],
    ports: &[(&str, &str, u16, u16)],
    endpoints: &[Endpoint<'_>],
    extra_spec: &str,
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIPs: [{}]\n  ports:\n",
        cluster_ips.join(", ")
    );
    for (pname, proto, port, target) in ports {
        y.push_str(&format!(
            "  - {{name: {pname}, protocol: {proto}, port: {port}, targetPort: {target}}}\n"
        ));
    }
    y.push_str(extra_spec);
    y.push_str("endpoints:\n");
    for e in endpoints {
        let mut addrs = vec![e.pod.ip.to_string()];
        addrs.extend(e.pod.ip6.map(|a| a.to_string()));
        let conditions = if e.terminating {
            "{ready: false, serving: true, terminating: true}"
        } else {
            "{ready: true}"
        };
        y.push_str(&format!(
            "- addresses: [{}]\n  nodeName: {}\n  conditions: {conditions}\n",
            addrs.join(", "),
            e.node
        ));
    }
    y
}

/// Only answers that are not HTTP statuses (every connection failed).
pub fn all_failed(o: &Outcomes) -> bool {
    !o.is_empty() && o.keys().all(|k| k.parse::<u16>().is_err())
}

/// Polls `f` every 100 ms until it says yes, at most `within`; logs how
/// long it took.
pub fn until(
    what: &str,
    within: std::time::Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = std::time::Instant::now();
    while !f()? {
        if start.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!("{what}: {:?}", start.elapsed());
    Ok(())
}

/// Lines in a request log (0 before it exists).
pub fn lines(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

/// What the request-logging backend ([`crate::http`]) answered one GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status, or `failed` when no answer came.
    pub status: String,
    /// The client's address as the backend saw it (`X-Peer`).
    pub peer: Option<String>,
    /// The backend's own address (`X-Served-By`).
    pub served_by: Option<String>,
}

/// One GET from namespace `ns` (not a pod: e.g. a client outside the
/// cluster) to `url`, on a new connection, with a 2 s deadline.
pub fn get_from(ns: &Netns, url: &str) -> Result<Answer> {
    let out = ns
        .command(&["curl", "-s", "-i", "--max-time", "2", url])
        .output()?;
    Ok(answer(
        out.status.success(),
        &String::from_utf8_lossy(&out.stdout),
    ))
}

/// A GET from a given local port (`SO_REUSEADDR`: curl's `--local-port`
/// cannot bind a port an earlier connection left in TIME_WAIT).
const GET_FROM_PORT: &str = r#"
import socket, sys
ip, port, local = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", local))
s.settimeout(2)
s.connect((ip, port))
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"#;

/// [`get_from`] to `ip:port` from local port `local`.
pub fn get_from_port(ns: &Netns, ip: &str, port: u16, local: u16) -> Result<Answer> {
    let out = ns
        .command(&[
            "python3",
            "-c",
            GET_FROM_PORT,
            ip,
            &port.to_string(),
            &local.to_string(),
        ])
        .output()?;
    Ok(answer(
        out.status.success(),
        &String::from_utf8_lossy(&out.stdout),
    ))
}

/// An HTTP answer's status and the logging backend's headers.
fn answer(ok: bool, text: &str) -> Answer {
    let status = match text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
    {
        Some(s) if ok => s.to_string(),
        _ => "failed".to_string(),
    };
    let header = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Answer {
        status,
        peer: header("X-Peer:"),
        served_by: header("X-Served-By:"),
    }
}

/// The payments policy (imported by the caller) holding through a
/// service address `vip:80`: the intruder gets no connection (within
/// `within`, while the policy lands), checkout's GET gets the L7 proxy's
/// 403, its `posts` POSTs to /v1/charge pass.
pub fn seed_policy_holds(
    seed: &crate::SeedPods,
    vip: &str,
    posts: u32,
    within: std::time::Duration,
) -> Result<()> {
    until("the intruder is blocked through the VIP", within, || {
        Ok(all_failed(&requests(
            &seed.intruder,
            vip,
            80,
            "GET",
            "/",
            1,
        )?))
    })?;
    until(
        "checkout's GET gets the proxy's 403",
        std::time::Duration::from_secs(10),
        || Ok(requests(&seed.checkout, vip, 80, "GET", "/", 1)?.contains_key("403")),
    )?;
    let got = requests(&seed.checkout, vip, 80, "POST", "/v1/charge", posts)?;
    anyhow::ensure!(
        got == BTreeMap::from([("200".to_string(), u64::from(posts))]),
        "checkout's POSTs through {vip}: {got:?}"
    );
    Ok(())
}
