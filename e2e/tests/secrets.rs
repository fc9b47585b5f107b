//! Secrets stay secret. A cluster whose etcd requires client certificates
//! (mutual TLS) runs the seed scenario; the CLI reads everything a user
//! reads; bad key files (a key that does not match the certificate, a cut
//! PEM) are given to the CLI and to an agent. Then every log and every
//! output is searched for the key material used, in the forms a leak would
//! take: PEM lines, base64 of the key, hex, a byte list.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axoneme_e2e::expect::{seed_policy, until_post};
use axoneme_e2e::{bin_path, Cluster, ClusterConfig};

/// A key's material as a leak would show it: pieces of its PEM base64, of
/// its DER bytes in hex and as a Rust byte list.
fn leak_forms(key: &Path) -> Result<Vec<String>> {
    let pem = std::fs::read_to_string(key)?;
    let base64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = Command::new("openssl")
        .args(["pkey", "-outform", "DER", "-in"])
        .arg(key)
        .output()
        .context("running openssl")?;
    if !der.status.success() || der.stdout.len() < 32 {
        bail!(
            "openssl pkey {}: {}",
            key.display(),
            String::from_utf8_lossy(&der.stderr)
        );
    }
    let der = der.stdout;
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    let mut forms = Vec::new();
    for piece in base64.as_bytes().chunks_exact(16) {
        forms.push(String::from_utf8_lossy(piece).into_owned());
    }
    for piece in hex.as_bytes().chunks_exact(16) {
        let piece = String::from_utf8_lossy(piece).into_owned();
        forms.push(piece.to_uppercase());
        forms.push(piece);
    }
    for bytes in der.chunks_exact(8) {
        let list = format!("{bytes:?}");
        forms.push(list.trim_matches(['[', ']']).to_string());
    }
    Ok(forms)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every `.log` file under `dir`.
fn logs(dir: &Path, into: &mut Vec<(String, String)>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            logs(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "log") {
            let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
            into.push((path.display().to_string(), text));
        }
    }
    Ok(())
}

#[test]
fn etcd_keys_never_appear_in_logs_outputs_or_errors() -> Result<()> {
    // Our crates at debug level: a setting logged with `?` shows up there.
    std::env::set_var(
        "RUST_LOG",
        "info,axoneme_agent=debug,axoneme_operator=debug,axoneme_kvstore=debug",
    );
    let mut c = Cluster::start(&ClusterConfig {
        etcd_tls: true,
        ..ClusterConfig::default()
    })?;
    let certs = c.etcd().certs().context("a TLS etcd")?;
    let (ca, cert) = (certs.ca_cert.clone(), certs.client_cert.clone());
    let (client_key, server_key) = (certs.client_key.clone(), certs.server_key.clone());
    let pods = c.seed_pods()?;
    let pay = pods.payments.ip.to_string();
    c.import_policy(0, &seed_policy())?;
    // The cluster works over mutual TLS: the seed scenario is enforced.
    until_post(&pods.checkout, &pay, Some(200), Duration::from_secs(10))?;
    until_post(&pods.intruder, &pay, None, Duration::from_secs(10))?;

    let mut seen: Vec<(String, String)> = Vec::new();
    for args in [
        &["status"][..],
        &["status", "-o", "json"],
        &["identity", "list"],
        &["policy", "list"],
        &["policy", "get", "payments-api", "-o", "json"],
        &["node", "list"],
        &["endpoint", "list"],
        &["bpf", "ipcache", "list"],
        &["bpf", "ct", "list"],
        &["events"],
    ] {
        let out = c.cli(0, args)?;
        seen.push((format!("axoneme {}", args.join(" ")), text(&out)));
    }

    // Bad keys: the server's key for the client's certificate, and the
    // client's key cut short. Each fails, in one line, naming the file.
    let dir = tempfile::tempdir()?;
    let cut = dir.path().join("cut.key");
    let client_pem = std::fs::read_to_string(&client_key)?;
    std::fs::write(&cut, &client_pem[..client_pem.len() * 2 / 3])?;
    let bad: [(&str, PathBuf); 2] = [
        ("a key of another certificate", server_key.clone()),
        ("a cut PEM", cut.clone()),
    ];
    for (what, key) in &bad {
        let out = c
            .cli_command(0, &["identity", "list", "--timeout", "3s"])
            .env("AXONEME_ETCD_KEY", key)
            .output()?;
        let said = text(&out);
        let named = said.contains(&format!("--etcd-key {}", key.display()));
        if out.status.success() || said.trim().lines().count() != 1 || !named {
            bail!("the CLI with {what}: {}: {said}", out.status);
        }
        eprintln!("the CLI with {what}: {}", said.trim());
        seen.push((format!("CLI with {what}"), said));
        // An agent given the same key stops at start with an error.
        let agent = Command::new("timeout")
            .arg("20")
            .arg(bin_path("axoneme-agent"))
            .args(["--node", "secrets-probe", "--etcd-endpoints"])
            .arg(c.etcd().endpoints().join(","))
            .arg("--etcd-ca")
            .arg(&ca)
            .arg("--etcd-cert")
            .arg(&cert)
            .arg("--etcd-key")
            .arg(key)
            .arg("--bpf-pin-dir")
            .arg(dir.path().join("pins"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--api-socket")
            .arg(dir.path().join("agent.sock"))
            .output()?;
        if agent.status.success() {
            bail!("an agent with {what} ran: {}", text(&agent));
        }
        let said = text(&agent);
        eprintln!(
            "an agent with {what}: {}",
            said.lines().last().unwrap_or_default()
        );
        seen.push((format!("agent with {what}"), said));
    }

    logs(&c.dir, &mut seen)?;
    let logged: usize = seen.iter().map(|(_, t)| t.len()).sum();
    assert!(
        seen.len() > 14 && logged > 10_000,
        "too little was collected to search: {} outputs, {logged} bytes",
        seen.len()
    );
    for key in [&client_key, &server_key] {
        for form in leak_forms(key)? {
            for (what, text) in &seen {
                assert!(
                    !text.contains(&form),
                    "{what} shows key material of {} ({form:?}):\n{text}",
                    key.display()
                );
            }
        }
    }
    eprintln!(
        "secrets: {} outputs and logs, {logged} bytes, searched for 2 keys",
        seen.len()
    );
    Ok(())
}
