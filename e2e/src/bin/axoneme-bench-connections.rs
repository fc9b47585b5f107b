//! New HTTP connections one after another for a while, each timed from
//! before `connect` to after the answer's end and `close`: what a new
//! connection costs the client, balancing included (socket LB works in
//! `connect`, kube-proxy's DNAT on the SYN). A bench runs it inside a pod
//! (`axoneme-bench-connections HOST[,HOST...] PORT SECONDS`: with several
//! hosts each connection goes to one picked at random, as a balancer
//! spreads them, so that a direct baseline wakes the same backends a
//! Service's connections do); it prints one JSON
//! object: the count answered and failed, p50 and p99 in µs of the whole
//! connection and of its `connect` alone (the handshake, where the
//! balancing is), and each failure's cause to stderr. Compiled, so that
//! the client's own time per connection (an interpreter's, before) does
//! not hide what the path adds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axoneme_e2e::bench::percentile;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const TIMEOUT: Duration = Duration::from_secs(1);

/// One connection: connect, ask, read to the end; the answer must be a
/// 200. Returns when the connect had returned.
fn once(to: &SocketAddr, answer: &mut Vec<u8>) -> Result<Instant, String> {
    let mut s = TcpStream::connect_timeout(to, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let connected = Instant::now();
    s.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(TIMEOUT)))
        .and_then(|()| s.write_all(REQUEST))
        .map_err(|e| format!("write: {e}"))?;
    answer.clear();
    s.read_to_end(answer).map_err(|e| format!("read: {e}"))?;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(connected)
    } else {
        let head = String::from_utf8_lossy(&answer[..answer.len().min(40)]).into_owned();
        Err(format!("answer: {head:?}"))
    }
}

/// The hosts (IP addresses, comma-separated) at `port`.
fn destinations(hosts: &str, port: &str) -> Option<Vec<SocketAddr>> {
    let port: u16 = port.parse().ok()?;
    hosts
        .split(',')
        .map(|h| Some(SocketAddr::new(h.parse().ok()?, port)))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match &args[..] {
        [hosts, port, seconds] => destinations(hosts, port).zip(seconds.parse::<f64>().ok()),
        _ => None,
    };
    let Some((to, seconds)) = parsed else {
        eprintln!("usage: axoneme-bench-connections IP[,IP...] PORT SECONDS (got {args:?})");
        std::process::exit(2);
    };
    // xorshift64: a pick per connection without a dependency.
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::from(d.subsec_nanos()) | 1);
    let mut pick = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = u64::try_from(to.len()).unwrap_or(1);
        &to[usize::try_from(state % n).unwrap_or(0)]
    };
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut times, mut connects) = (Vec::with_capacity(65_536), Vec::with_capacity(65_536));
    let mut failed = 0u64;
    let mut answer = Vec::with_capacity(4096);
    while Instant::now() < end {
        let t0 = Instant::now();
        match once(pick(), &mut answer) {
            Ok(connected) => {
                times.push(t0.elapsed().as_secs_f64() * 1e6);
                connects.push((connected - t0).as_secs_f64() * 1e6);
            }
            Err(why) => {
                failed += 1;
                eprintln!("{why}");
            }
        }
    }
    let pct = |v: &[f64], p: usize| if v.is_empty() { 0.0 } else { percentile(v, p) };
    println!(
        "{}",
        serde_json::json!({
            "answered": times.len(),
            "failed": failed,
            "p50_us": pct(&times, 500),
            "p99_us": pct(&times, 990),
            "connect_p50_us": pct(&connects, 500),
            "connect_p99_us": pct(&connects, 990),
        })
    );
}
