//! The test command's targets (every test binary, every benchmark's smoke
//! form, the doc tests) two at a time. Run one after another, most of
//! them wait: on etcd leases, timeouts, a cluster's agents coming up. The
//! sum of their CPU time is under half of their wall time, so two at once
//! finish in a little over half the time.
//!
//! Each target's output goes to a file of its own and is shown, with a
//! header and a failure line in cargo's words, when it ends: the combined
//! log reads as `cargo test` would print it, one target after another, and
//! [`crate::digest::failures`] finds what failed in it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One target to run.
pub struct Job {
    /// What cargo's `Running` line names: `tests/a.rs (target/debug/deps/a-1)`.
    pub label: String,
    /// The command that reruns it alone: `cargo test -p axoneme-e2e --test a`.
    pub rerun: String,
    pub cmd: Command,
    /// Takes a whole core or more the whole time (the IPsec VM: qemu under
    /// software emulation on both cores; fuzzing): two such jobs never run
    /// at once.
    pub heavy: bool,
}

/// How the jobs run: how many at once, and how long one may take before
/// it is stopped (with every process it started).
pub struct Lanes {
    pub lanes: usize,
    pub deadline: Duration,
}

/// The lanes the test command uses: `AXONEME_TEST_LANES` (1 runs the
/// targets one after another), two by default for two cores.
pub fn from_env() -> Result<Lanes> {
    let lanes = match std::env::var("AXONEME_TEST_LANES") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=16).contains(n))
            .with_context(|| format!("AXONEME_TEST_LANES={v:?}: expected 1 to 16"))?,
        Err(_) => 2,
    };
    Ok(Lanes {
        lanes,
        deadline: JOB_DEADLINE,
    })
}

/// A target still running after this is stopped: the longest takes a few
/// minutes, and a hung one would otherwise hold CI until its own limit.
const JOB_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// How one job ended.
struct Outcome {
    id: usize,
    status: std::io::Result<ExitStatus>,
    timed_out: bool,
    took: Duration,
}

impl Lanes {
    /// Runs `jobs` in their order, `self.lanes` at a time (a heavy job
    /// waits while another heavy job runs); each job's output, when it
    /// ends, goes to the terminal and to `log`; their own outputs are kept
    /// in `dir`. Fails naming every job that failed.
    pub fn run(&self, jobs: Vec<Job>, dir: &Path, log: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut combined =
            File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let total = jobs.len();
        let started_all = Instant::now();
        let mut queue: VecDeque<(usize, Job)> = jobs.into_iter().enumerate().collect();
        let mut running: Vec<(usize, Job, PathBuf)> = Vec::new();
        let mut done: Vec<(Duration, String)> = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        let (tx, rx) = mpsc::channel::<Outcome>();
        eprintln!(
            "xtask: {total} targets, {} at a time (output in {})",
            self.lanes,
            log.display()
        );
        loop {
            while running.len() < self.lanes {
                let heavy = running.iter().any(|(_, j, _)| j.heavy);
                let Some(pos) = queue.iter().position(|(_, j)| !(j.heavy && heavy)) else {
                    break;
                };
                let (id, mut job) = queue.remove(pos).expect("a position in the queue");
                let out = dir.join(format!("{id}.log"));
                eprintln!(
                    "xtask: started {} ({} of {total})",
                    job.label,
                    total - queue.len()
                );
                spawn(id, &mut job.cmd, &out, self.deadline, tx.clone());
                running.push((id, job, out));
            }
            if running.is_empty() {
                break;
            }
            let outcome = rx.recv().context("a job's thread ended without a word")?;
            let at = running
                .iter()
                .position(|(id, _, _)| *id == outcome.id)
                .context("an outcome for a job not running")?;
            let (_, job, out) = running.remove(at);
            let section = section(&job, &out, &outcome);
            print!("{section}");
            let _ = std::io::stdout().flush();
            combined
                .write_all(section.as_bytes())
                .with_context(|| format!("writing {}", log.display()))?;
            if !matches!(&outcome.status, Ok(s) if s.success()) || outcome.timed_out {
                failed.push(job.rerun.clone());
            }
            done.push((outcome.took, name(&job.label)));
        }
        let sum: Duration = done.iter().map(|(d, _)| *d).sum();
        eprintln!(
            "xtask: {total} targets took {} s, {} s one after another; the slowest: {}",
            started_all.elapsed().as_secs(),
            sum.as_secs(),
            slowest(done)
        );
        if !failed.is_empty() {
            bail!("{} failed: {}", failed.len(), failed.join("; "));
        }
        Ok(())
    }
}

/// Starts `cmd` with its output in `out`, and a thread that waits for it
/// (stopping it and what it started at `deadline`) and reports to `tx`.
fn spawn(id: usize, cmd: &mut Command, out: &Path, deadline: Duration, tx: mpsc::Sender<Outcome>) {
    let started = Instant::now();
    let child = File::create(out)
        .and_then(|f| Ok((f.try_clone()?, f)))
        .and_then(|(a, b)| {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(a))
                .stderr(Stdio::from(b))
                .spawn()
        });
    std::thread::spawn(move || {
        let (status, timed_out) = match child {
            Ok(child) => wait(child, started + deadline),
            Err(e) => (Err(e), false),
        };
        let _ = tx.send(Outcome {
            id,
            status,
            timed_out,
            took: started.elapsed(),
        });
    });
}

/// Waits for `child` until `until`; then kills it and every process it
/// started (by their PIDs, found by their parents).
fn wait(mut child: Child, until: Instant) -> (std::io::Result<ExitStatus>, bool) {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return (Ok(s), false),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                // Children first, while their parent still holds them.
                for pid in descendants(child.id()) {
                    let _ = axoneme_e2e::process::signal(pid, "KILL");
                }
                let _ = child.kill();
                return (child.wait(), true);
            }
            Err(e) => return (Err(e), false),
        }
    }
}

/// Every process below `pid`, found by their parents
/// ([`axoneme_e2e::bench::processes_cpu`] reads them from `/proc`).
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = axoneme_e2e::bench::processes_cpu()
        .into_iter()
        .map(|(p, cpu)| (p, cpu.ppid))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let of = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == of).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// A job's part of the log: cargo's `Running` header, its output, and for
/// a failure, a line in cargo's words saying how to rerun it.
fn section(job: &Job, out: &Path, outcome: &Outcome) -> String {
    let output = std::fs::read(out)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(its output in {} is unreadable: {e})\n", out.display()));
    let mut s = format!("     Running {}\n{output}", job.label);
    if !s.ends_with('\n') {
        s.push('\n');
    }
    let how = match (&outcome.status, outcome.timed_out) {
        (_, true) => format!("stopped after {} s, its deadline", outcome.took.as_secs()),
        (Ok(st), _) if st.success() => return s,
        (Ok(st), _) => st.to_string(),
        (Err(e), _) => format!("not started: {e}"),
    };
    s.push_str(&format!(
        "error: test failed, to rerun: `{}`\n\nCaused by:\n  {} ({how})\n",
        job.rerun, job.label
    ));
    s
}

/// A label's target without its binary, and a crate's unit tests by the
/// crate (every library's are `src/lib.rs`): `tests/a.rs`,
/// `unittests src/lib.rs of axoneme_agent`.
fn name(label: &str) -> String {
    let (target, binary) = label.split_once(" (").unwrap_or((label, ""));
    if !target.starts_with("unittests") {
        return target.to_string();
    }
    let file = binary
        .trim_end_matches(')')
        .rsplit('/')
        .next()
        .unwrap_or("");
    let krate = file.rsplit_once('-').map_or(file, |(name, _)| name);
    format!("{target} of {krate}")
}

/// The jobs that took longest, slowest first, as `name 12 s, ...`.
fn slowest(mut took: Vec<(Duration, String)>) -> String {
    took.sort_by_key(|t| std::cmp::Reverse(t.0));
    took.iter()
        .take(SLOWEST_SHOWN)
        .map(|(d, name)| format!("{name} {} s", d.as_secs()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many of the slowest jobs the summary names.
const SLOWEST_SHOWN: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(label: &str, script: &str, heavy: bool) -> Job {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Job {
            label: format!("tests/{label}.rs (target/debug/deps/{label}-1)"),
            rerun: format!("cargo test --test {label}"),
            cmd,
            heavy,
        }
    }

    fn lanes(lanes: usize, deadline_s: u64) -> Lanes {
        Lanes {
            lanes,
            deadline: Duration::from_secs(deadline_s),
        }
    }

    #[test]
    fn two_run_at_once_and_the_log_holds_each_whole() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        let flag = flag.display();
        // The first waits for what the second does: only two at once pass.
        let jobs = vec![
            sh(
                "waits",
                &format!("until [ -f {flag} ]; do sleep 0.05; done; echo saw it"),
                false,
            ),
            sh("makes", &format!("echo making; touch {flag}"), false),
        ];
        let log = dir.path().join("test.log");
        lanes(2, 30)
            .run(jobs, &dir.path().join("jobs"), &log)
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("     Running tests/makes.rs (target/debug/deps/makes-1)\nmaking\n"),
            "{text}"
        );
        assert!(
            text.contains("     Running tests/waits.rs (target/debug/deps/waits-1)\nsaw it\n"),
            "{text}"
        );
        assert!(crate::digest::failures(&text).is_empty());
    }

    #[test]
    fn heavy_jobs_never_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let busy = dir.path().join("busy");
        let busy = busy.display();
        let vm = format!("[ ! -f {busy} ] && touch {busy} && sleep 0.3 && rm {busy}");
        let jobs = vec![
            sh("vm1", &vm, true),
            sh("vm2", &vm, true),
            sh("other", "true", false),
        ];
        lanes(2, 30)
            .run(jobs, &dir.path().join("jobs"), &dir.path().join("test.log"))
            .unwrap();
    }

    #[test]
    fn failures_and_deadlines_are_named_and_a_stopped_job_leaves_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let jobs = vec![
            sh("fails", "echo the intruder got through; exit 3", false),
            sh(
                "hangs",
                &format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
                false,
            ),
            sh("passes", "echo fine", false),
        ];
        let log = dir.path().join("test.log");
        let err = lanes(1, 2)
            .run(jobs, &dir.path().join("jobs"), &log)
            .unwrap_err();
        assert_eq!(
            format!("{err}"),
            "2 failed: cargo test --test fails; cargo test --test hangs"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        let f = crate::digest::failures(&text);
        assert_eq!(f.len(), 2, "{text}");
        assert!(
            f[0].contains("the intruder got through") && f[0].contains("exit status: 3"),
            "{}",
            f[0]
        );
        assert!(f[1].contains("stopped after 2 s, its deadline"), "{}", f[1]);
        assert!(text.contains("fine\n"), "a job after a failure still runs");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        // SIGKILL takes effect when the process next runs: on a busy
        // machine that can be a moment after the signal was sent.
        let gone = || {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .map_or(true, |s| s.contains(") Z "))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "the hung job's child {pid} still runs");
    }

    #[test]
    fn names_and_the_slowest_first() {
        assert_eq!(name("tests/a.rs (target/debug/deps/a-1)"), "tests/a.rs");
        assert_eq!(
            name("unittests src/lib.rs (target/debug/deps/axoneme_agent-0a1b)"),
            "unittests src/lib.rs of axoneme_agent"
        );
        let took = vec![
            (Duration::from_secs(5), "a".to_string()),
            (Duration::from_secs(60), "b".to_string()),
        ];
        assert_eq!(slowest(took), "b 60 s, a 5 s");
    }
}
