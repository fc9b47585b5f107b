//! What every benchmark program (`harness = false` bench targets) shares:
//! a full form under `cargo bench` (what `cargo xtask bench NAME` runs),
//! which writes its figures as JSON, and a smoke form under `cargo test`
//! (what `cargo xtask test` runs): one short round at small sizes, every
//! answer still checked, nothing written.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::{Cluster, CniPod};

/// Whether this benchmark runs in its smoke form: true unless `--bench` is
/// among the process's arguments (`cargo bench` passes it, `cargo test
/// --benches` does not); `AXONEME_BENCH_SMOKE=1` forces the smoke form.
/// Other arguments are ignored.
pub fn smoke() -> bool {
    static SMOKE: OnceLock<bool> = OnceLock::new();
    *SMOKE.get_or_init(|| {
        let forced = std::env::var_os("AXONEME_BENCH_SMOKE").is_some_and(|v| v == "1");
        forced || !std::env::args_os().skip(1).any(|a| a == "--bench")
    })
}

/// `full` in the full form, `smoke` in the smoke form.
pub fn pick<T>(full: T, smoke: T) -> T {
    if self::smoke() {
        smoke
    } else {
        full
    }
}

/// In the full form, writes `doc` to `$AXONEME_BENCH_OUT` (by default
/// `target/bench/NAME.json` at the workspace root); in the smoke form,
/// writes nothing and says that the smoke form passed.
pub fn write_figures(name: &str, doc: &serde_json::Value) -> Result<()> {
    if smoke() {
        println!("bench {name}: smoke form passed (no figures written)");
        return Ok(());
    }
    let out = std::env::var_os("AXONEME_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // This crate's directory is a member of the workspace root.
            let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
            e2e.parent()
                .unwrap_or(e2e)
                .join("target")
                .join("bench")
                .join(format!("{name}.json"))
        });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("bench {name}: figures written to {}", out.display());
    Ok(())
}

/// The `per_mille`th value of `v` (500: the median, 990: p99).
pub fn percentile(v: &[f64], per_mille: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[(v.len() - 1) * per_mille / 1000]
}

/// Count, p50, p99 and max of latencies in milliseconds.
pub fn summary(v: &[f64]) -> serde_json::Value {
    json!({
        "n": v.len(),
        "p50_ms": percentile(v, 500),
        "p99_ms": percentile(v, 990),
        "max_ms": percentile(v, 1000),
    })
}

/// A process's CPU time so far (all its threads), from `/proc/PID/stat`.
#[derive(Debug, Clone)]
pub struct ProcessCpu {
    pub ppid: u32,
    pub comm: String,
    pub user_s: f64,
    pub system_s: f64,
}

/// Every process's CPU time now, by pid.
pub fn processes_cpu() -> HashMap<u32, ProcessCpu> {
    // USER_HZ: 100 on Linux.
    const TICKS: f64 = 100.0;
    let mut procs = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid … utime(14) stime(15)
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map_or("", |(_, c)| c).to_string();
        let f: Vec<&str> = tail.split(' ').collect();
        let (Some(ppid), Some(ut), Some(st)) = (
            f.get(1).and_then(|v| v.parse::<u32>().ok()),
            f.get(11).and_then(|v| v.parse::<f64>().ok()),
            f.get(12).and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        procs.insert(
            pid,
            ProcessCpu {
                ppid,
                comm,
                user_s: ut / TICKS,
                system_s: st / TICKS,
            },
        );
    }
    procs
}

/// Whether `pid` is `root` or one of its descendants in `procs`.
pub fn in_tree(procs: &HashMap<u32, ProcessCpu>, mut pid: u32, root: u32) -> bool {
    // Bounded: a pid reused while /proc was read could make a cycle.
    for _ in 0..=procs.len() {
        if pid == root {
            return true;
        }
        match procs.get(&pid) {
            Some(p) => pid = p.ppid,
            None => return false,
        }
    }
    false
}

/// (user, system) CPU seconds used so far by `root` and its descendants.
pub fn tree_cpu(root: u32) -> (f64, f64) {
    let procs = processes_cpu();
    procs
        .iter()
        .filter(|(pid, _)| in_tree(&procs, **pid, root))
        .fold((0.0, 0.0), |(u, s), (_, p)| (u + p.user_s, s + p.system_s))
}

/// CPU seconds (user + system) used so far, by command name (etcd,
/// kube-apiserver, axoneme-agent, nginx, ...; a kernel thread's name
/// without its `/CPU` suffix, so `ksoftirqd` is one entry): of `root`'s
/// process tree, or of every process with `None`. Processes that exited
/// in between are not counted.
pub fn cpu_by_command(root: Option<u32>) -> HashMap<String, f64> {
    let procs = processes_cpu();
    let mut by = HashMap::new();
    for (pid, p) in &procs {
        if let Some(root) = root {
            if *pid == root || !in_tree(&procs, *pid, root) {
                continue;
            }
        }
        let name = p.comm.split('/').next().unwrap_or(&p.comm).to_string();
        *by.entry(name).or_insert(0.0) += p.user_s + p.system_s;
    }
    by
}

/// CPU seconds by command between two [`cpu_by_command`] samples, most
/// first, those of at least 10 ms.
pub fn cpu_spent(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> serde_json::Value {
    let mut v: Vec<(&String, f64)> = after
        .iter()
        .map(|(k, a)| (k, a - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d >= 0.01)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.into_iter()
        .map(|(k, d)| (k.clone(), json!((d * 100.0).round() / 100.0)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The TCP counters of a network namespace (`/proc/net/snmp`'s `Tcp:` and
/// `/proc/net/netstat`'s `TcpExt:` lines), by name: where connections were
/// retransmitted, reset or refused.
pub fn tcp_counters(ns: &crate::netns::Netns) -> Result<HashMap<String, i64>> {
    ns.enter(|| -> Result<HashMap<String, i64>> {
        let mut counters = HashMap::new();
        // thread-self: /proc/self/net is the namespace of the process's
        // first thread, not of this one.
        for file in ["snmp", "netstat"] {
            let path = format!("/proc/thread-self/net/{file}");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let [names, values] = pair else { continue };
                let (Some(("Tcp" | "TcpExt", names)), Some((_, values))) =
                    (names.split_once(": "), values.split_once(": "))
                else {
                    continue;
                };
                for (n, v) in names.split(' ').zip(values.split(' ')) {
                    if let Ok(v) = v.parse::<i64>() {
                        counters.insert(n.to_string(), v);
                    }
                }
            }
        }
        Ok(counters)
    })?
}

/// The counters that moved between two [`tcp_counters`] samples, of
/// those that say a connection was retried, refused or cut, beside the
/// connections opened and left in TIME_WAIT for scale: names and changes.
pub fn tcp_trouble(
    before: &HashMap<String, i64>,
    after: &HashMap<String, i64>,
) -> serde_json::Value {
    const TROUBLE: [&str; 14] = [
        "ActiveOpens",
        "AttemptFails",
        "EstabResets",
        "RetransSegs",
        "OutRsts",
        "TCPSynRetrans",
        "ListenOverflows",
        "ListenDrops",
        "TW",
        "TWRecycled",
        "TWKilled",
        "PAWSActive",
        "TCPTimeWaitOverflow",
        "TCPAbortOnData",
    ];
    TROUBLE
        .iter()
        .filter_map(|n| {
            let d = after.get(*n).copied().unwrap_or(0) - before.get(*n).copied().unwrap_or(0);
            (d != 0).then(|| (n.to_string(), json!(d)))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// [`tcp_counters`] of several namespaces, summed.
pub fn tcp_counters_sum<'a>(
    namespaces: impl IntoIterator<Item = &'a crate::netns::Netns>,
) -> Result<HashMap<String, i64>> {
    let mut sum = HashMap::new();
    for ns in namespaces {
        for (k, v) in tcp_counters(ns)? {
            *sum.entry(k).or_insert(0) += v;
        }
    }
    Ok(sum)
}

/// A listener on `port` in `pod` that accepts and closes.
pub fn listen(pod: &CniPod, port: u16) -> Result<()> {
    let l = pod.ns.enter(|| TcpListener::bind(("0.0.0.0", port)))??;
    std::thread::spawn(move || for _ in l.incoming() {});
    Ok(())
}

/// A blocked SYN is dropped: a probe's connect times out after this.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(15);
/// Consecutive failed probes that mean "denied" (a slow allowed connect
/// on a busy machine must not read as a deny).
pub const DENY_RUN: usize = 3;

/// A probe loop from `client` to `target`: records (start time, ok) of
/// fresh connections until dropped.
pub struct Prober {
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Arc<AtomicBool>,
}

impl Prober {
    pub fn start(client: &CniPod, target: SocketAddr) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        client.ns.spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = TcpStream::connect_timeout(&target, PROBE_TIMEOUT).is_ok();
                l.lock().expect("log").push((t, ok));
                if ok {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Prober { log, stop }
    }

    /// The first probe after `since` from which on the flow is `allowed`
    /// (for a deny: the first of [`DENY_RUN`] failures in a row).
    pub fn settled(&self, since: Instant, allowed: bool) -> Option<Instant> {
        let log = self.log.lock().expect("log");
        let after: Vec<&(Instant, bool)> = log.iter().filter(|(t, _)| *t >= since).collect();
        if allowed {
            return after.iter().find(|(_, ok)| *ok).map(|(t, _)| *t);
        }
        after
            .windows(DENY_RUN)
            .find(|w| w.iter().all(|(_, ok)| !ok))
            .map(|w| w[0].0)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Crosswise probes between two nodes: a server (`app=server`, listening
/// on `port`) and a client (`app=client`) pod on each of nodes 0 and 1,
/// each node's client probing the other node's server. The pods (kept
/// alive with the probes) and the two probers.
pub fn crosswise_probes(c: &Cluster, port: u16) -> Result<(Vec<CniPod>, [Prober; 2])> {
    let servers = [
        c.add_pod(0, "server0", &[("app", "server")])?,
        c.add_pod(1, "server1", &[("app", "server")])?,
    ];
    let clients = [
        c.add_pod(0, "client0", &[("app", "client")])?,
        c.add_pod(1, "client1", &[("app", "client")])?,
    ];
    for s in &servers {
        listen(s, port)?;
    }
    let probers = [
        Prober::start(&clients[0], SocketAddr::from((servers[1].ip, port))),
        Prober::start(&clients[1], SocketAddr::from((servers[0].ip, port))),
    ];
    Ok((servers.into_iter().chain(clients).collect(), probers))
}

/// (VmRSS, VmHWM) of `pid` in MiB.
pub fn rss_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
