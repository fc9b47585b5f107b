//! What failed in a test run, shown last. `cargo xtask test` prints a lot
//! (every test target, every benchmark's smoke form, the fuzz table), and
//! a CI log is often read from its tail only: a failure early in the run
//! scrolls out of sight. So the cargo steps' output is also kept in a file
//! as the terminal shows it, and on failure each failing target's section
//! is printed again at the end.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// At most this many lines of one failing target's output in the digest.
const LINES_PER_TARGET: usize = 80;
/// Lines kept after each panic message when a target's failures are longer.
const AFTER_PANIC: usize = 8;

/// Runs `cmd` in `root` as `run_cmd` does, its stdout and stderr passed
/// through and also written, line by line as they come, to `log`.
pub fn run_logged(root: &Path, cmd: &mut Command, log: &Path) -> Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let file = Arc::new(Mutex::new(file));
    let starts = Starts::default();
    cmd.current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("xtask: running {cmd:?} (output also in {})", log.display());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let (done_tx, done_rx) = mpsc::channel();
    let out = child.stdout.take().context("stdout piped")?;
    let err = child.stderr.take().context("stderr piped")?;
    spawn_copy(
        out,
        std::io::stdout(),
        file.clone(),
        starts.clone(),
        done_tx.clone(),
    );
    spawn_copy(
        err,
        std::io::stderr(),
        file,
        starts.clone(),
        done_tx.clone(),
    );
    drop(done_tx);
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    // A process a test leaked would hold the pipes open forever: the
    // copies get a moment to drain, not a wait on it.
    while done_rx.recv_timeout(Duration::from_secs(10)).is_ok() {}
    eprintln!(
        "xtask: the slowest targets of {}: {}",
        log.display(),
        slowest(
            &starts.lock().map(|s| s.clone()).unwrap_or_default(),
            Instant::now()
        )
    );
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// When each target's `Running ...` line was seen: CI's time budget is
/// spent by a few targets, and the log says which.
type Starts = Arc<Mutex<Vec<(Instant, String)>>>;

/// The targets that ran longest (each until the next one started, the
/// last until `end`), slowest first, as `name 12 s, ...`.
fn slowest(starts: &[(Instant, String)], end: Instant) -> String {
    let mut took: Vec<(Duration, &str)> = starts
        .iter()
        .zip(starts.iter().skip(1).map(|(t, _)| *t).chain([end]))
        .map(|((from, name), to)| (to.saturating_duration_since(*from), name.as_str()))
        .collect();
    took.sort_by_key(|t| std::cmp::Reverse(t.0));
    took.iter()
        .take(SLOWEST_SHOWN)
        .map(|(d, name)| format!("{name} {} s", d.as_secs()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many of the slowest targets [`run_logged`] names.
const SLOWEST_SHOWN: usize = 12;

/// The target a cargo `Running` line names: `tests/a.rs` of `Running
/// tests/a.rs (target/debug/deps/a-1)`; a crate's unit tests by their
/// binary's name too (`unittests src/lib.rs of axoneme_agent`), since
/// every library's are `src/lib.rs`.
fn running(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?.trim();
    let rest = text.strip_prefix("Running ")?;
    let (target, binary) = rest.split_once(" (").unwrap_or((rest, ""));
    if !target.starts_with("unittests") {
        return Some(target.to_string());
    }
    // `target/debug/deps/axoneme_agent-0123abcd)`: the file, its hash off.
    let file = binary
        .trim_end_matches(')')
        .rsplit('/')
        .next()
        .unwrap_or("");
    let name = file.rsplit_once('-').map_or(file, |(name, _)| name);
    Some(format!("{target} of {name}"))
}

/// Copies `from` to `to` (the terminal) and to `file` in a thread of its
/// own, a whole line at a time, so stdout's and stderr's lines do not
/// interleave within one; notes targets' starts in `starts`; says `done`
/// at the end.
fn spawn_copy(
    from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
    file: Arc<Mutex<File>>,
    starts: Starts,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        copy_lines(from, &mut to, &file, &starts);
        let _ = done.send(());
    });
}

fn copy_lines(
    from: impl Read,
    to: &mut impl Write,
    file: &Mutex<File>,
    starts: &Mutex<Vec<(Instant, String)>>,
) {
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match from.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let (Some(name), Ok(mut starts)) = (running(&line), starts.lock()) {
            starts.push((Instant::now(), name));
        }
        let _ = to.write_all(&line);
        if let Ok(mut f) = file.lock() {
            let _ = f.write_all(&line);
        }
    }
}

/// The failing targets' sections of a `cargo test` log: each starts with
/// cargo's `Running ...` line and ends with its `error: test failed` (or
/// `bench failed`) line; what is shown of one is its failures (the
/// harness's `failures:` block, shortened to the panics if long) or, for a
/// program without the harness, its last lines.
pub fn failures(log: &str) -> Vec<String> {
    let mut sections: Vec<Vec<&str>> = vec![vec![]];
    for line in log.lines() {
        let t = line.trim_start();
        if t.starts_with("Running ") || t.starts_with("Doc-tests ") {
            sections.push(vec![]);
        }
        sections
            .last_mut()
            .expect("one section at least")
            .push(line);
    }
    sections
        .into_iter()
        .filter(|s| s.iter().any(|l| is_cargo_failure(l)))
        .map(|s| shown(&s).join("\n"))
        .collect()
}

fn is_cargo_failure(line: &str) -> bool {
    let t = line.trim_start();
    (t.starts_with("error: test failed") || t.starts_with("error: bench failed"))
        && t.contains("to rerun pass")
}

/// A backtrace's frame line: `  12: name` or `      at file:line`.
fn is_frame(line: &str) -> bool {
    let t = line.trim_start();
    let numbered = t
        .split_once(": ")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    numbered || (t.starts_with("at ") && line.len() - t.len() >= 4)
}

fn shown<'a>(section: &[&'a str]) -> Vec<&'a str> {
    let header = section[0];
    let body = &section[1..];
    let from = body
        .iter()
        .position(|l| l.trim_end() == "failures:")
        .unwrap_or(0);
    // Backtraces' frames say little a CI log's reader can use and would
    // push the messages out of the lines shown.
    let tail: Vec<&str> = body[from..]
        .iter()
        .copied()
        .filter(|l| !is_frame(l))
        .collect();
    let mut kept: Vec<&str> = if tail.len() <= LINES_PER_TARGET {
        tail
    } else if from > 0 {
        // The harness's failures, too long: each test's name, its panic
        // and what follows it, and the closing list.
        let mut keep = vec![false; tail.len()];
        for (i, l) in tail.iter().enumerate() {
            if l.starts_with("---- ") || l.starts_with("test result:") || is_cargo_failure(l) {
                keep[i] = true;
            }
            if l.contains("panicked at") {
                for k in keep.iter_mut().skip(i).take(AFTER_PANIC + 1) {
                    *k = true;
                }
            }
        }
        tail.iter()
            .zip(keep)
            .filter_map(|(l, k)| k.then_some(*l))
            .collect()
    } else {
        tail[tail.len() - LINES_PER_TARGET..].to_vec()
    };
    if kept.len() > LINES_PER_TARGET {
        kept.drain(..kept.len() - LINES_PER_TARGET);
    }
    std::iter::once(header).chain(kept).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_command_keeps_both_streams_and_its_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sub").join("run.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo to-stdout; echo to-stderr >&2; exit 3"]);
        let err = run_logged(dir.path(), &mut cmd, &log).unwrap_err();
        assert!(format!("{err}").contains("exit status: 3"), "{err}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("to-stdout\n") && text.contains("to-stderr\n"),
            "{text}"
        );
    }

    #[test]
    fn the_slowest_targets_come_first_each_until_the_next_started() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let line = b"     Running tests/b.rs (target/debug/deps/b-2)\n";
        let starts = vec![
            (at(0), "tests/a.rs".to_string()),
            (at(5), running(line).unwrap()),
            (at(65), "unittests src/lib.rs".to_string()),
        ];
        assert_eq!(
            slowest(&starts, at(70)),
            "tests/b.rs 60 s, tests/a.rs 5 s, unittests src/lib.rs 5 s"
        );
        assert_eq!(running(b"test x ... ok\n"), None);
        assert_eq!(
            running(b"     Running unittests src/lib.rs (target/debug/deps/axoneme_agent-0a1b)\n")
                .as_deref(),
            Some("unittests src/lib.rs of axoneme_agent")
        );
    }

    #[test]
    fn a_passing_run_has_no_failures() {
        let log = "     Running tests/a.rs (target/debug/deps/a-1)\n\nrunning 1 test\ntest x ... ok\n\ntest result: ok. 1 passed\n";
        assert!(failures(log).is_empty());
    }

    #[test]
    fn a_program_without_the_harness_shows_its_last_lines() {
        let mut log = String::from("     Running benches/ok.rs (x)\nfine\n");
        log.push_str("     Running benches/ipsec.rs (target/debug/deps/ipsec-1)\n");
        for i in 0..200 {
            log.push_str(&format!("console line {i}\n"));
        }
        log.push_str("Error: no figures (1): a hand-made state carried nothing\n");
        log.push_str("\nStack backtrace:\n");
        for i in 0..40 {
            log.push_str(&format!(
                "  {i:>2}: <unknown>\n             at ./csu/x.h:58:16\n"
            ));
        }
        log.push_str("error: bench failed, to rerun pass `-p axoneme-e2e --bench ipsec`\n");
        log.push_str("     Running benches/soak.rs (x)\nsoak fine\n");
        let f = failures(&log);
        assert_eq!(f.len(), 1, "{f:?}");
        let lines: Vec<&str> = f[0].lines().collect();
        assert!(lines[0].contains("benches/ipsec.rs"));
        assert_eq!(lines.len(), LINES_PER_TARGET + 1);
        assert!(f[0].contains("a hand-made state carried nothing"));
        assert!(f[0].contains("--bench ipsec"));
        assert!(!f[0].contains("console line 100\n"));
        assert!(!f[0].contains("soak"));
        assert!(!f[0].contains("<unknown>"));
    }

    #[test]
    fn a_harness_target_shows_its_failures_block_and_long_ones_their_panics() {
        let mut log = String::from(
            "     Running tests/e2e.rs (target/debug/deps/e2e-1)\n\nrunning 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n---- b stdout ----\n",
        );
        for i in 0..300 {
            log.push_str(&format!("agent log {i}\n"));
        }
        log.push_str("thread 'b' panicked at e2e/tests/e2e.rs:9:5:\nthe intruder got through\n");
        log.push_str("\nfailures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed\n");
        log.push_str("error: test failed, to rerun pass `-p axoneme-e2e --test e2e`\n");
        let f = failures(&log);
        assert_eq!(f.len(), 1);
        let s = &f[0];
        assert!(s.starts_with("     Running tests/e2e.rs"));
        assert!(s.contains("---- b stdout ----"));
        assert!(s.contains("the intruder got through"));
        assert!(s.contains("test result: FAILED"));
        assert!(!s.contains("agent log 5\n"), "{s}");
        assert!(!s.contains("test a ... ok"));
    }
}
