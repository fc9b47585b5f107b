//! The measurements: TCP throughput and request/response between two pod
//! namespaces, both ends pinned to the VM's first vCPU.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use axoneme_e2e::netns::Netns;

static PORT: AtomicU16 = AtomicU16::new(20000);

/// Pins the calling thread to the VM's first CPU. Both ends of every
/// measurement run there: under TCG a wake-up across vCPUs costs so much,
/// and so unevenly, that with the ends on two vCPUs the RR median of two
/// identical paths differed by up to 20% between rounds; on one vCPU
/// within 7%.
fn pin() {
    pin_to(0, 0);
}

/// Pins thread `tid` (0: the calling one) to CPU `cpu`; a thread that
/// cannot move (a per-CPU kernel thread) stays.
fn pin_to(tid: i32, cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set);
    }
}

/// Moves every thread in the VM but this process's to the second CPU:
/// the cluster's processes (etcd alone used more than half a vCPU under
/// TCG) stay off the CPU the measured ends run on. Called before each
/// phase: processes started after `pin` inherit the first CPU from the
/// thread that spawned them.
pub fn clear_first_cpu() {
    let me = std::process::id().to_string();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if p.file_name().to_str() == Some(me.as_str()) {
            continue;
        }
        for t in std::fs::read_dir(p.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(tid) = t.file_name().to_str().and_then(|t| t.parse().ok()) {
                pin_to(tid, 1);
            }
        }
    }
}

/// One measurement: TCP throughput in Mbit/s, transactions per second,
/// and the transactions' latency (p50, p99) in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub mbps: f64,
    pub tps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// TCP throughput and request/response from `client` to `server` (at
/// `addr`) for `secs` each.
pub fn measure(server: &Netns, client: &Netns, addr: IpAddr, secs: f64) -> Result<Sample> {
    let dur = Duration::from_secs_f64(secs);
    let mbps = throughput(server, client, addr, dur)?;
    let (_, mut sample) = request_response(server, client, addr, dur)?;
    sample.mbps = mbps;
    Ok(sample)
}

/// TCP throughput (Mbit/s) from `client` to `server` for `dur`: the server
/// counts what arrives until the client closes.
pub fn throughput(server: &Netns, client: &Netns, addr: IpAddr, dur: Duration) -> Result<f64> {
    let port = PORT.fetch_add(1, Ordering::Relaxed);
    let listener = server.enter(move || TcpListener::bind(("0.0.0.0", port)))??;
    pin();
    let sink = std::thread::spawn(move || -> Result<(u64, Duration)> {
        pin();
        let (mut s, _) = listener.accept()?;
        let started = Instant::now();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                n => total += n as u64,
            }
        }
        Ok((total, started.elapsed()))
    });
    let mut c = client.enter(move || {
        TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(5))
    })??;
    let chunk = vec![0x5au8; 1 << 16];
    let started = Instant::now();
    while started.elapsed() < dur {
        c.write_all(&chunk)?;
    }
    drop(c);
    let (bytes, took) = sink
        .join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))??;
    ensure!(bytes > 0, "no bytes to {addr}");
    Ok(bytes as f64 * 8.0 / took.as_secs_f64() / 1e6)
}

/// Request/response for `dur`: one byte each way on one connection. The
/// number of transactions, and the sample without throughput.
pub fn request_response(
    server: &Netns,
    client: &Netns,
    addr: IpAddr,
    dur: Duration,
) -> Result<(u64, Sample)> {
    let mut conn = Rr::open(server, client, addr)?;
    let mut took = Vec::with_capacity(1 << 16);
    let started = Instant::now();
    conn.run(dur, &mut took)?;
    let tps = took.len() as f64 / started.elapsed().as_secs_f64();
    conn.close()?;
    Ok((took.len() as u64, latencies(took, tps, addr)?))
}

/// Request/response on two paths taking turns (`turns` of `dur / turns`
/// each, which path goes first alternating), so that both see the same
/// moments of the host: under TCG its speed moves within seconds, and two
/// paths measured one after the other differed by up to 2x in one round.
/// Each path's sample without throughput (its rate over its own turns).
pub fn rr_turns(
    a: (&Netns, &Netns, IpAddr),
    b: (&Netns, &Netns, IpAddr),
    dur: Duration,
    turns: u32,
) -> Result<[Sample; 2]> {
    rr_turns_with(a, b, dur, turns, |_| Ok(()))
}

/// [`rr_turns`], calling `before(i)` ahead of each turn of path `i` (0:
/// `a`, 1: `b`), outside the turn's time: two states of one path (its
/// programs on, then off) measured as two paths.
pub fn rr_turns_with(
    a: (&Netns, &Netns, IpAddr),
    b: (&Netns, &Netns, IpAddr),
    dur: Duration,
    turns: u32,
    mut before: impl FnMut(usize) -> Result<()>,
) -> Result<[Sample; 2]> {
    let mut conns = [Rr::open(a.0, a.1, a.2)?, Rr::open(b.0, b.1, b.2)?];
    let mut took = [Vec::with_capacity(1 << 16), Vec::with_capacity(1 << 16)];
    let mut busy = [Duration::ZERO; 2];
    let turn = dur / turns.max(1);
    for t in 0..turns.max(1) {
        for i in [t as usize % 2, 1 - t as usize % 2] {
            before(i)?;
            let started = Instant::now();
            conns[i].run(turn, &mut took[i])?;
            busy[i] += started.elapsed();
        }
    }
    let [ca, cb] = conns;
    ca.close()?;
    cb.close()?;
    let [ta, tb] = took;
    let rate = |t: &Vec<f64>, busy: Duration| t.len() as f64 / busy.as_secs_f64();
    let (ra, rb) = (rate(&ta, busy[0]), rate(&tb, busy[1]));
    Ok([latencies(ta, ra, a.2)?, latencies(tb, rb, b.2)?])
}

/// One round of a path and its twin (each `(server, client, address)`):
/// throughput back to back (`twin_first` says which goes first; alternate
/// it by round), request/response taking turns ([`rr_turns`]).
pub fn side_by_side(
    path: (&Netns, &Netns, IpAddr),
    twin: (&Netns, &Netns, IpAddr),
    dur: Duration,
    turns: u32,
    twin_first: bool,
) -> Result<[Sample; 2]> {
    let mut mbps = [0.0; 2];
    for twin_now in [twin_first, !twin_first] {
        let (s, c, to) = if twin_now { twin } else { path };
        mbps[usize::from(twin_now)] = throughput(s, c, to, dur)?;
    }
    let [mut p, mut t] = rr_turns(path, twin, dur, turns)?;
    (p.mbps, t.mbps) = (mbps[0], mbps[1]);
    Ok([p, t])
}

/// One request/response connection: an echo in the server's namespace,
/// the client's socket connected to it.
struct Rr {
    conn: TcpStream,
    echo: JoinHandle<Result<()>>,
}

impl Rr {
    fn open(server: &Netns, client: &Netns, addr: IpAddr) -> Result<Self> {
        let port = PORT.fetch_add(1, Ordering::Relaxed);
        let listener = server.enter(move || TcpListener::bind(("0.0.0.0", port)))??;
        pin();
        let echo = std::thread::spawn(move || -> Result<()> {
            pin();
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut b = [0u8; 1];
            while s.read(&mut b)? == 1 {
                s.write_all(&b)?;
            }
            Ok(())
        });
        let conn = client.enter(move || {
            TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(5))
        })??;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Rr { conn, echo })
    }

    /// Transactions for `dur`, each one's latency (µs) pushed to `took`.
    fn run(&mut self, dur: Duration, took: &mut Vec<f64>) -> Result<()> {
        let mut b = [1u8; 1];
        let started = Instant::now();
        while started.elapsed() < dur {
            let t = Instant::now();
            self.conn.write_all(&b)?;
            self.conn.read_exact(&mut b)?;
            took.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(())
    }

    fn close(self) -> Result<()> {
        drop(self.conn);
        self.echo
            .join()
            .map_err(|_| anyhow::anyhow!("echo panicked"))?
    }
}

/// A sample from transactions' latencies (µs) at `tps`.
fn latencies(mut took: Vec<f64>, tps: f64, addr: IpAddr) -> Result<Sample> {
    ensure!(!took.is_empty(), "no transaction to {addr}");
    took.sort_by(f64::total_cmp);
    let at = |pct: usize| took[(took.len() - 1) * pct / 100];
    Ok(Sample {
        mbps: 0.0,
        tps,
        p50_us: at(50),
        p99_us: at(99),
    })
}
