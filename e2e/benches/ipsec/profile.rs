//! Where a path's time goes, with `AXONEME_IPSEC_BENCH_PERF` set: `perf
//! record` on the VM's first vCPU (where both ends of a request/response
//! run, and the softirqs their packets raise) for one request/response run,
//! then each kernel function's and program's own samples as microseconds
//! per transaction. Two paths' profiles side by side say where one spends
//! the time the other does not. Off by default: the sampling interrupts
//! slow everything under TCG.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axoneme_e2e::netns::run;
use axoneme_e2e::process::Proc;
use serde_json::{json, Value};

/// The variable that turns profiling on.
pub const PERF: &str = "AXONEME_IPSEC_BENCH_PERF";

/// Where the VM has perf (copied from the host by the bench's `main`).
pub const PERF_BIN: &str = "/opt/bin/perf";

/// Samples per second: a sample every 250 µs, so the hrtimer's own cost
/// stays small against a transaction of about a millisecond under TCG.
const HZ: u64 = 4000;

pub fn enabled() -> bool {
    std::env::var_os(PERF).is_some()
}

/// What the kernel hides from perf by default: its symbols' addresses,
/// other processes' samples, the programs' JIT images' names.
fn open_up() -> Result<()> {
    for (file, value) in [
        ("/proc/sys/kernel/perf_event_paranoid", "-1"),
        ("/proc/sys/kernel/kptr_restrict", "0"),
        ("/proc/sys/net/core/bpf_jit_kallsyms", "1"),
    ] {
        std::fs::write(file, value).with_context(|| format!("writing {file}"))?;
    }
    Ok(())
}

/// Each symbol's own samples (`perf report`'s sample column) in `data`.
fn samples(data: &Path) -> Result<BTreeMap<String, u64>> {
    let data = data.display().to_string();
    let out = run(&[
        PERF_BIN,
        "report",
        "--stdio",
        "-q",
        "-n",
        "--no-children",
        "--sort",
        "sym",
        "--percent-limit",
        "0",
        "-i",
        &data,
    ])?;
    // "    12.34%          1234  [k] xfrm_lookup_with_ifid"
    let mut by = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut w = line.split_whitespace();
        let (Some(_pct), Some(n), Some(_kind)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        let sym = w.collect::<Vec<_>>().join(" ");
        *by.entry(sym).or_default() += n;
    }
    Ok(by)
}

/// One path's profile: microseconds per transaction by symbol.
pub struct Profile {
    pub transactions: f64,
    pub us: BTreeMap<String, f64>,
}

/// Profiles `transact` (which returns how many transactions it made): perf
/// starts disabled and is enabled and disabled through its control FIFO
/// around `transact` alone, so its start and its writing out stay out of
/// the samples.
pub fn per_transaction(label: &str, transact: impl FnOnce() -> Result<u64>) -> Result<Profile> {
    open_up()?;
    let dir = std::env::temp_dir();
    let data = dir.join(format!("perf-{label}.data"));
    let (ctl, ack) = (
        dir.join(format!("perf-{label}.ctl")),
        dir.join(format!("perf-{label}.ack")),
    );
    for f in [&ctl, &ack] {
        let _ = std::fs::remove_file(f);
        nix::unistd::mkfifo(f.as_path(), nix::sys::stat::Mode::S_IRWXU)?;
    }
    let mut cmd = Command::new(PERF_BIN);
    cmd.args([
        "record",
        "-C",
        "0",
        "-e",
        "cpu-clock",
        "--no-buildid",
        "-D",
        "-1",
    ])
    .args(["-F", &HZ.to_string(), "-o"])
    .arg(&data)
    .arg("--control")
    .arg(format!("fifo:{},{}", ctl.display(), ack.display()));
    let mut perf = Proc::spawn("perf", cmd, &dir.join(format!("perf-{label}.log")))?;
    // Opening a FIFO waits for its other end: perf opens both at its start.
    let mut ctl_w = std::fs::OpenOptions::new().write(true).open(&ctl)?;
    let mut ack_r = std::io::BufReader::new(std::fs::File::open(&ack)?);
    let mut command = |c: &str| -> Result<()> {
        writeln!(ctl_w, "{c}")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut ack_r, &mut line)?;
        // perf writes the string's terminating NUL too.
        let said = line.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        ensure!(said == "ack", "perf answered {line:?} to {c}");
        Ok(())
    };
    command("enable")?;
    let n = transact()?.max(1) as f64;
    command("disable")?;
    // perf record writes its data out on SIGTERM.
    perf.terminate(Duration::from_secs(60));
    let by = samples(&data)?;
    for f in [&data, &ctl, &ack] {
        let _ = std::fs::remove_file(f);
    }
    let us = by
        .into_iter()
        .map(|(s, k)| (s, k as f64 * 1e6 / HZ as f64 / n))
        .collect();
    Ok(Profile {
        transactions: n,
        us,
    })
}

/// Two paths' profiles side by side: each one's total and programs' share
/// per transaction, and the `top` symbols on which `a` spends the most
/// more (and the most less) than `b`.
pub fn compare(a: &Profile, b: &Profile, top: usize) -> Value {
    let total = |p: &Profile| p.us.values().sum::<f64>();
    let programs = |p: &Profile| {
        p.us.iter()
            .filter(|(s, _)| s.starts_with("bpf_prog_"))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let mut diff: Vec<(&String, f64, f64)> =
        a.us.keys()
            .chain(b.us.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|s| {
                let (x, y) = (
                    a.us.get(s).copied().unwrap_or(0.0),
                    b.us.get(s).copied().unwrap_or(0.0),
                );
                (s, x, y)
            })
            .collect();
    diff.sort_by(|p, q| (q.1 - q.2).total_cmp(&(p.1 - p.2)));
    let rows = |it: &mut dyn Iterator<Item = &(&String, f64, f64)>| -> Vec<Value> {
        it.take(top)
            .map(|(s, x, y)| json!([s, round(*x), round(*y), round(x - y)]))
            .collect()
    };
    json!({
        "transactions": [a.transactions, b.transactions],
        "us_per_transaction": [round(total(a)), round(total(b))],
        "programs_us_per_transaction": [round(programs(a)), round(programs(b))],
        "more": rows(&mut diff.iter()),
        "less": rows(&mut diff.iter().rev()),
    })
}
