//! A real HTTP backend for L7 tests: Python's `http.server`, answering
//! every method with `200 ok METHOD PATH` (HTTP/1.1, keep-alive, request
//! bodies by length or in chunks) and
//! appending `METHOD PATH` to a log file for every request it receives,
//! so a test can prove that a denied request never reached it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::{CniPod, Proc};

const SCRIPT: &str = r#"
import http.server, socket, sys
LOG, PORT = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def read_body(self):
        # A chunked body is read chunk by chunk (its bytes left unread
        # would be taken for the next request on the connection).
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return
                self.rfile.read(size + 2)
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
    def handle_any(self):
        self.read_body()
        with open(LOG, "a") as f:
            f.write("%s %s\n" % (self.command, self.path))
        body = ("ok %s %s\n" % (self.command, self.path)).encode()
        self.send_response(200)
        # Who asked and who answered, as the backend sees them (NodePort
        # tests: whether the client's address was kept).
        self.send_header("X-Peer", self.client_address[0].removeprefix("::ffff:"))
        self.send_header("X-Served-By", self.connection.getsockname()[0].removeprefix("::ffff:"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
S(("::", PORT), H).serve_forever()
"#;

/// Starts the backend in `ns` on `port`, logging requests to `log`;
/// returns once it accepts connections.
pub fn logging_backend(ns: &Netns, port: u16, log: &Path, out: &Path) -> Result<Proc> {
    std::fs::write(log, "")?;
    let mut cmd = ns.command(&[
        "python3",
        "-c",
        SCRIPT,
        &log.to_string_lossy(),
        &port.to_string(),
    ]);
    cmd.current_dir(log.parent().unwrap_or(Path::new("/")));
    let proc = Proc::spawn("http-backend", cmd, out)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = ns.enter(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())?;
        if up {
            // The probe itself is no request: the log stays empty.
            return Ok(proc);
        }
        if Instant::now() > deadline {
            bail!("the HTTP backend did not start: {}", proc.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx (Debian's) in `ns`, answering `200 ok` to every request on
/// `ports`, with cleartext HTTP/2 (prior knowledge) instead of HTTP/1.1
/// when `h2c`; its config, pid and logs live in `dir`. Returns once it
/// accepts connections.
pub fn nginx(ns: &Netns, ports: &[u16], h2c: bool, dir: &Path) -> Result<Proc> {
    let port = ports.first().copied().unwrap_or(80);
    start_nginx(ns, |a| ns.command(a), dir, &ok_server(ports, h2c), port)
}

/// [`nginx`] as a process of `pod` (its namespace and cgroup). Stop it
/// before the pod goes: its cgroup cannot be removed while it runs.
pub fn nginx_in(pod: &CniPod, ports: &[u16], h2c: bool, dir: &Path) -> Result<Proc> {
    let port = ports.first().copied().unwrap_or(80);
    let server = ok_server(ports, h2c);
    start_nginx(&pod.ns, |a| pod.command(a), dir, &server, port)
}

/// A `server` block answering `200 ok` on `ports`.
fn ok_server(ports: &[u16], h2c: bool) -> String {
    let listen: String = ports
        .iter()
        .map(|p| format!("    listen {p}{};\n", if h2c { " http2" } else { "" }))
        .collect();
    format!("  server {{\n{listen}    location / {{ return 200 \"ok\\n\"; }}\n  }}\n")
}

/// nginx as the backend of L7 tests, in `pod` (its namespace and cgroup:
/// stop it before the pod goes) on both families: HTTP/1.1
/// on `h1`, cleartext HTTP/2 (prior knowledge) on `h2c`, answering `200
/// ok` and appending `METHOD PATH PROTOCOL` of every request it received to
/// the returned log, so a test can prove which requests got through.
pub fn nginx_backend(pod: &CniPod, h1: u16, h2c: u16, dir: &Path) -> Result<(Proc, PathBuf)> {
    let log = dir.join("requests.log");
    let server = format!(
        "  log_format requests '$request_method $request_uri $server_protocol';\n\
         \x20 server {{\n    listen {h1};\n    listen [::]:{h1};\n\
         \x20   listen {h2c} http2;\n    listen [::]:{h2c} http2;\n\
         \x20   access_log {} requests;\n\
         \x20   location / {{ return 200 \"ok\\n\"; }}\n  }}\n",
        log.display()
    );
    std::fs::create_dir_all(dir)?;
    std::fs::write(&log, "")?;
    Ok((
        start_nginx(&pod.ns, |a| pod.command(a), dir, &server, h1)?,
        log,
    ))
}

/// nginx as a reverse proxy in `ns`: `bind:port` (`bind` an IPv4 address:
/// `127.0.0.1`, or `0.0.0.0` for all) forwards every request to `upstream`
/// (`ip:port`) over kept-alive connections. The benchmarks' reference for
/// what one well-tuned userspace HTTP hop costs.
pub fn nginx_reverse_proxy(
    ns: &Netns,
    bind: &str,
    port: u16,
    upstream: &str,
    dir: &Path,
) -> Result<Proc> {
    let server = format!(
        "  upstream backend {{ server {upstream}; keepalive 128; }}\n\
         \x20 server {{\n    listen {bind}:{port};\n    location / {{\n\
         \x20     proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n    }}\n  }}\n"
    );
    start_nginx(ns, |a| ns.command(a), dir, &server, port)
}

/// Starts nginx in `ns` with one worker, no access log, state in `dir`,
/// `servers` inside its `http` block; waits until `port` accepts.
fn start_nginx(
    ns: &Netns,
    command: impl FnOnce(&[&str]) -> std::process::Command,
    dir: &Path,
    servers: &str,
    port: u16,
) -> Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {servers}}}\n"
        ),
    )?;
    let cmd = command(&[
        "nginx",
        "-c",
        &conf.to_string_lossy(),
        "-e",
        &format!("{d}/error.log"),
    ]);
    let proc = Proc::spawn("nginx", cmd, &dir.join("nginx.out"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ns.enter(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())? {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            bail!(
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkRun {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers other than 2xx/3xx.
    pub non_2xx: u64,
    /// connect, read, write and timeout errors together.
    pub socket_errors: u64,
}

/// Runs wrk (Debian's) in `ns` against `url`: `method` (a Lua line sets it
/// for anything but GET), `connections` connections on up to two threads,
/// for `seconds`, with latency percentiles.
pub fn wrk(ns: &Netns, method: &str, url: &str, connections: u32, seconds: u32) -> Result<WrkRun> {
    wrk_with(
        |args| ns.command(args),
        method,
        url,
        connections,
        seconds,
        false,
    )
}

/// [`wrk`] run by `command` (e.g. a pod's, in its cgroup); with `close`,
/// every request on a connection of its own (`Connection: close`): what
/// a connect-request-response (CRR) client does.
pub fn wrk_with(
    command: impl FnOnce(&[&str]) -> std::process::Command,
    method: &str,
    url: &str,
    connections: u32,
    seconds: u32,
    close: bool,
) -> Result<WrkRun> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("method.lua");
    std::fs::write(&script, format!("wrk.method = \"{method}\"\n"))?;
    let threads = connections.clamp(1, 2).to_string();
    let (conns, duration, script) = (
        connections.to_string(),
        format!("{seconds}s"),
        script.to_string_lossy().to_string(),
    );
    let mut args = vec![
        "wrk",
        "-t",
        &threads,
        "-c",
        &conns,
        "-d",
        &duration,
        "--latency",
        "-s",
        &script,
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = command(&args).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk {url}: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("wrk {url}: {text}"))
}

/// Parses wrk's report (with `--latency`).
pub fn parse_wrk(text: &str) -> Result<WrkRun> {
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let rps = line("Requests/sec:")
        .context("no Requests/sec")?
        .parse::<f64>()?;
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.parse::<u64>())
        })
        .context("no request count")??;
    let ms = |pct: &str| -> Result<f64> {
        let v = line(pct).with_context(|| format!("no {pct} latency (--latency)"))?;
        Ok(if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>()? / 1000.0
        } else if let Some(x) = v.strip_suffix("ms") {
            x.parse::<f64>()?
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>()? * 1000.0
        } else {
            bail!("latency {v:?}")
        })
    };
    let (p50_ms, p99_ms) = (ms("50%")?, ms("99%")?);
    let non_2xx = line("Non-2xx or 3xx responses:").map_or(Ok(0), str::parse)?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket_errors = line("Socket errors:").map_or(0, |l| {
        l.split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    });
    Ok(WrkRun {
        requests,
        rps,
        p50_ms,
        p99_ms,
        non_2xx,
        socket_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_parse() {
        let text = "Running 1s test @ http://10.200.0.1:8080/v1/charge
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   124.00us   30.00us   1.00ms   90.00%
  Latency Distribution
     50%  118.00us
     75%  130.00us
     90%  150.00us
     99%  301.00us
  15012 requests in 1.00s, 2.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 15012
Requests/sec:  15000.50
Transfer/sec:      2.12MB
";
        assert_eq!(
            parse_wrk(text).unwrap(),
            WrkRun {
                requests: 15012,
                rps: 15000.5,
                p50_ms: 0.118,
                p99_ms: 0.301,
                non_2xx: 15012,
                socket_errors: 3,
            }
        );
        let clean = text
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .collect::<Vec<_>>()
            .join("\n");
        let run = parse_wrk(&clean).unwrap();
        assert_eq!((run.non_2xx, run.socket_errors), (0, 0));
    }
}
