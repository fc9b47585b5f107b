//! Flows probed throughout a test: a new TCP connection from a pod to an
//! echo server every 100 ms, each counted, and the ones that went
//! otherwise than policy says (an allowed one that failed, a denied one
//! that got through) kept with when and how.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::netns::Netns;
use crate::CniPod;

/// A connection that went otherwise than policy says: when, and how.
pub type Odd = (Instant, String);

/// An echo server in `pod` on `port`: "pong" to every line.
pub fn echo_server(pod: &CniPod, port: u16) -> Result<()> {
    serve(pod.ns.enter(|| TcpListener::bind(("0.0.0.0", port)))??)
}

/// An echo server in namespace `ns` on `port`, IPv4 and IPv6.
pub fn echo_server_in(ns: &Netns, port: u16) -> Result<()> {
    serve(ns.enter(|| TcpListener::bind(("::", port)))??)
}

fn serve(listener: TcpListener) -> Result<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut out) = conn.try_clone() else {
                    return;
                };
                for _ in BufReader::new(conn).lines().map_while(Result::ok) {
                    if out.write_all(b"pong\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// One exchange with an echo server (from the calling thread's network
/// namespace): connected and answered, or where it failed.
pub fn exchange(to: impl Into<IpAddr>, port: u16, timeout: Duration) -> Result<(), String> {
    let mut conn = TcpStream::connect_timeout(&(to.into(), port).into(), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"ping\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line == "pong\n" {
        Ok(())
    } else {
        Err(format!("answer {line:?}"))
    }
}

/// Whether `pod` reaches the echo server at `to:port` now.
pub fn reaches(pod: &CniPod, to: Ipv4Addr, port: u16) -> Result<bool> {
    pod.ns
        .enter(|| exchange(to, port, Duration::from_millis(500)).is_ok())
}

/// A probe: a new connection from a namespace every 100 ms until stopped.
pub struct Probe {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    odd: Arc<Mutex<Vec<Odd>>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<()>>,
}

/// What a probe saw.
#[derive(Debug, Clone)]
pub struct Probed {
    pub answered: u64,
    pub unanswered: u64,
    /// The connections that went otherwise than policy says.
    pub odd: Vec<Odd>,
}

impl Probe {
    /// Probes `to:port` from `ns`; `allowed` says what policy should do.
    pub fn start(ns: &Netns, to: Ipv4Addr, port: u16, allowed: bool) -> Self {
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let odd = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // A denied connection is given less time: it never answers.
        let timeout = Duration::from_millis(if allowed { 2000 } else { 300 });
        let thread = {
            let (ok, failed, odd, stop) = (ok.clone(), failed.clone(), odd.clone(), stop.clone());
            ns.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let answered = exchange(to, port, timeout);
                    if answered.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if answered.is_ok() != allowed {
                        let how = answered.err().unwrap_or_else(|| "answered".into());
                        odd.lock().expect("probe lock").push((at, how));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Probe {
            ok,
            failed,
            odd,
            stop,
            thread,
        }
    }

    /// Stops the probe: what it saw.
    pub fn finish(self) -> Result<Probed> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("probe panicked"))??;
        let odd = self.odd.lock().expect("probe lock").clone();
        Ok(Probed {
            answered: self.ok.load(Ordering::Relaxed),
            unanswered: self.failed.load(Ordering::Relaxed),
            odd,
        })
    }
}

/// The odd connections as offsets from `since`, with how each went.
pub fn describe(odd: &[&Odd], since: Instant) -> Vec<String> {
    odd.iter()
        .map(|(t, how)| format!("{:?} ({how})", t.saturating_duration_since(since)))
        .collect()
}

/// A CiliumNetworkPolicy `name`: pods labelled `app: selected` admit the
/// pods matching `from` on TCP `port`, and nothing else.
pub fn admit_on_port(name: &str, selected: &str, from: &[(&str, &str)], port: u16) -> String {
    let labels: String = from
        .iter()
        .map(|(k, v)| format!("        {k}: \"{v}\"\n"))
        .collect();
    format!(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: {name}
spec:
  endpointSelector:
    matchLabels:
      app: {selected}
  ingress:
  - fromEndpoints:
    - matchLabels:
{labels}    toPorts:
    - ports:
      - port: \"{port}\"
        protocol: TCP
"
    )
}
