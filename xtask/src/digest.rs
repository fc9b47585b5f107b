//! What failed in a test run, shown last. `cargo xtask test` prints a lot
//! (every test target, every benchmark's smoke form, the fuzz table), and
//! a CI log is often read from its tail only: a failure early in the run
//! scrolls out of sight. So the targets' output is also kept in a file as
//! the terminal shows it (lanes.rs), and on failure each failing target's
//! section is printed again at the end.

/// At most this many lines of one failing target's output in the digest.
const LINES_PER_TARGET: usize = 80;
/// Lines kept after each panic message when a target's failures are longer.
const AFTER_PANIC: usize = 8;

/// The failing targets' sections of a test log (as `cargo test` prints it): each starts with
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
        && t.contains("to rerun")
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
