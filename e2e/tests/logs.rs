//! `--log-format json` on the real binaries, as a log collector reads a
//! DaemonSet's output: every line the operator and the agent write is one
//! JSON object, the events inside spans carry the spans' fields, the fatal
//! error is an object too, and the format is taken from the configuration
//! directory like any flag (so it is known before logging starts). A bad
//! format is clap's error naming the flag.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::{bin_path, free_port, OperatorProc};
use serde_json::Value;

/// Every line of `out` as a JSON object (at least one line); fails naming
/// the first line that is not one.
fn json_lines(what: &str, out: &str) -> Result<Vec<Value>> {
    let mut lines = Vec::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{what}: not a JSON line: {line:?}\n{out}"))?;
        if !v.is_object() || !v["timestamp"].is_string() || !v["level"].is_string() {
            bail!("{what}: not a log object: {line}");
        }
        lines.push(v);
    }
    if lines.is_empty() {
        bail!("{what}: no output");
    }
    Ok(lines)
}

fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or_default()
}

/// A binary that stops at start on a bad setting, after logging began;
/// its stderr and exit status.
fn run_failing(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(bool, String)> {
    let out = Command::new(bin_path(binary))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .output()
        .with_context(|| format!("running {binary} (cargo build --workspace --bins)"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn the_operator_logs_json_lines_with_span_fields_set_from_its_config_dir() -> Result<()> {
    // No etcd: a closed loopback port, so the replica keeps campaigning
    // (and logging why, inside its `operator` span) until stopped.
    let etcd = vec![format!("http://127.0.0.1:{}", free_port()?)];
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    std::fs::write(config.join("log-format"), "json")?;
    let mut op = OperatorProc::start(
        &bin_path("axoneme-operator"),
        "op-json",
        &etcd,
        &[
            "--config-dir".into(),
            config.display().to_string(),
            "--etcd-request-timeout-ms".into(),
            "100".into(),
            "--etcd-retry-deadline-s".into(),
            "1".into(),
        ],
        dir.path(),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !op.proc.log_text().contains("campaign failed") {
        if Instant::now() > deadline || !op.proc.is_running() {
            bail!("the operator did not campaign:\n{}", op.proc.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    op.proc.terminate(Duration::from_secs(5));
    let log = op.proc.log_text();
    let lines = json_lines("operator", &log)?;

    // The config-dir line is still logged, in the format it chose.
    assert!(
        lines
            .iter()
            .any(|l| message(l).starts_with("flags from ") && message(l).contains("log-format")),
        "{log}"
    );
    // Inside the `operator` span: its name and field on the event.
    let campaign = lines
        .iter()
        .find(|l| message(l) == "campaign failed; retrying")
        .context("campaign failed")?;
    assert_eq!(campaign["level"], "WARN");
    assert!(
        campaign["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("etcd unavailable")),
        "{campaign}"
    );
    assert_eq!(campaign["span"]["name"], "operator", "{campaign}");
    assert_eq!(campaign["span"]["id"], "op-json", "{campaign}");
    assert!(
        campaign["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "operator" && s["id"] == "op-json"),
        "{campaign}"
    );
    Ok(())
}

#[test]
fn a_failing_start_is_json_to_the_last_line_for_both_binaries() -> Result<()> {
    // The environment for the operator, the flag for the agent; each stops
    // on a setting it refuses, before touching etcd or the kernel.
    let bad_range = ["--identity-min", "10", "--identity-max", "20"];
    for (binary, args, env, says) in [
        (
            "axoneme-operator",
            &bad_range[..],
            &[("AXONEME_LOG_FORMAT", "json")][..],
            "identity range starts at 10",
        ),
        (
            "axoneme-agent",
            &[
                "--node",
                "log-test",
                "--log-format",
                "json",
                "--enable-ipsec=true",
            ][..],
            &[][..],
            "--enable-ipsec needs --ipsec-key-file",
        ),
    ] {
        let (ok, stderr) = run_failing(binary, args, env)?;
        assert!(!ok, "{binary} started:\n{stderr}");
        let lines = json_lines(binary, &stderr)?;
        let last = lines.last().context("a line")?;
        assert_eq!(last["level"], "ERROR", "{binary}: {last}");
        assert_eq!(message(last), format!("{binary} exiting"));
        let error = last["fields"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{binary}: {last}");
    }
    // Text stays the default, with the usual last line.
    let (_, stderr) = run_failing("axoneme-operator", &bad_range, &[])?;
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("axoneme-operator: error: identity range")),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_bad_log_format_names_the_flag() -> Result<()> {
    for (binary, args) in [
        ("axoneme-operator", &[][..]),
        ("axoneme-agent", &["--node", "n1"][..]),
    ] {
        let out = Command::new(bin_path(binary))
            .args(args)
            .args(["--log-format", "xml"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{binary}: {stderr}");
        assert!(
            stderr.contains("invalid value 'xml' for '--log-format <LOG_FORMAT>'")
                && stderr.contains("[possible values: text, json]"),
            "{binary}: {stderr}"
        );
    }
    // From the environment, the variable's value is refused the same way.
    let out = Command::new(bin_path("axoneme-operator"))
        .env("AXONEME_LOG_FORMAT", "yaml")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2) && stderr.contains("invalid value 'yaml' for '--log-format"),
        "{stderr}"
    );
    Ok(())
}
