//! Full maps fail closed on a real cluster: the policy trie, the ipcache,
//! the endpoints map and a conntrack table, each made small by its flag.
//!
//! The policy trie: agents run with
//! `--bpf-policy-max 2`; the seed policy takes one entry on node 0.
//! `axoneme status` reports the configured size. A second policy lets the
//! intruder in on ports 80, 81 and 8080: there is room for one entry (the
//! unit writes in key order: port 80), 81 is refused, 8080 never written.
//! The policy sync unit fails and says why, status warns that the map is
//! full, the intruder stays blocked on 8080, and what was enforced before
//! stays enforced.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::expect::{seed_policy, stays, until_post, wait_for};
use axoneme_e2e::probe::{admit_on_port, echo_server, exchange, reaches};
use axoneme_e2e::{Cluster, ClusterConfig, SeedPods};
use serde_json::Value;

const LET_THE_INTRUDER_IN: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: intruder-welcome
spec:
  endpointSelector:
    matchLabels:
      app: payments
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: intruder
    toPorts:
    - ports:
      - port: \"80\"
        protocol: TCP
      - port: \"81\"
        protocol: TCP
      - port: \"8080\"
        protocol: TCP
";

/// The seed scenario, enforced, on a cluster whose agents run with
/// `flag size`: the cluster, its pods and payments' address.
fn seed_scenario(flag: &str, size: u32) -> Result<(Cluster, SeedPods, String)> {
    let mut c = Cluster::start(&ClusterConfig {
        agent_args: vec![flag.into(), size.to_string()],
        ..ClusterConfig::default()
    })?;
    let pods = c.seed_pods()?;
    let pay = pods.payments.ip.to_string();
    c.import_policy(0, &seed_policy())?;
    until_post(&pods.checkout, &pay, Some(200), Duration::from_secs(10))?;
    Ok((c, pods, pay))
}

/// `status -o json` on node `i` (it exits non-zero while a unit fails).
fn status(c: &Cluster, i: usize) -> Result<Value> {
    let out = c
        .cli_command(i, &["status", "--verbose", "-o", "json"])
        .output()?;
    serde_json::from_slice(&out.stdout).context("status -o json")
}

#[test]
fn a_full_policy_map_is_reported_and_fails_closed() -> Result<()> {
    let (c, pods, pay) = seed_scenario("--bpf-policy-max", 2)?;

    // The size is the flag's.
    let policy_map = |st: &Value| -> Result<(Option<u64>, Option<u64>)> {
        let maps = st["agent"]["status"]["maps"].as_array().context("maps")?;
        let m = maps
            .iter()
            .find(|m| m["name"] == "policy")
            .context("the policy map")?;
        Ok((m["entries"].as_u64(), m["max_entries"].as_u64()))
    };
    let st = status(&c, 0)?;
    assert_eq!(policy_map(&st)?, (Some(1), Some(2)), "{st}");

    // No room for the intruder's entry: it stays out, and the unit says why.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("intruder.yaml");
    std::fs::write(&file, LET_THE_INTRUDER_IN)?;
    c.cli(
        0,
        &["policy", "import", file.to_str().context("UTF-8 path")?],
    )?;
    let failing = failing_unit(&c, 0, "policy")?;
    let error = failing["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left"), "{failing}");
    let st = status(&c, 0)?;
    assert_eq!(policy_map(&st)?, (Some(2), Some(2)), "{st}");
    let human = String::from_utf8(c.cli_command(0, &["status"]).output()?.stdout)?;
    assert!(
        human.contains("BPF map policy is 100% full (2 of 2)")
            && human.contains("--bpf-policy-max"),
        "{human}"
    );
    stays(
        &pods.intruder,
        "POST",
        &pay,
        "/v1/charge",
        None,
        Duration::from_secs(2),
    )?;
    stays(
        &pods.checkout,
        "POST",
        &pay,
        "/v1/charge",
        Some(200),
        Duration::from_secs(1),
    )?;
    eprintln!(
        "map full: the policy unit failed with {}",
        failing["last_error"]
    );
    Ok(())
}

/// The sync unit `name` of node `i`'s agent, once it reports a failure.
fn failing_unit(c: &Cluster, i: usize, name: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(c, i)?;
        let unit = st["agent"]["status"]["sync_units"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == name).cloned())
            .with_context(|| format!("the {name} sync unit: {st}"))?;
        if unit["ok"] == false {
            return Ok(unit);
        }
        if Instant::now() > deadline {
            bail!("the {name} unit never failed: {st}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A full ipcache fails closed: agents run with `--bpf-ipcache-max 12`,
/// which the nodes' addresses and the pods' gateway (6, there from the
/// start) and the seed pods (IPv4 and IPv6 each) fill. A pod with checkout's
/// labels that comes after has no room: node 0 does not know its
/// addresses, so to payments it is `world`, denied; checkout, known, is
/// still allowed, and status warns. When the intruder leaves, its entries
/// are removed first and the newcomer gets their room: it is let in.
#[test]
fn a_full_ipcache_leaves_a_newcomer_unknown_until_there_is_room() -> Result<()> {
    let (c, pods, pay) = seed_scenario("--bpf-ipcache-max", 12)?;

    let extra = c.add_pod(1, "extra", &[("app", "checkout")])?;
    let failing = failing_unit(&c, 0, "ipcache")?;
    eprintln!("ipcache full: {failing}");
    stays(
        &extra,
        "POST",
        &pay,
        "/v1/charge",
        None,
        Duration::from_secs(2),
    )?;
    stays(
        &pods.checkout,
        "POST",
        &pay,
        "/v1/charge",
        Some(200),
        Duration::from_secs(1),
    )?;
    let human = String::from_utf8(c.cli_command(0, &["status"]).output()?.stdout)?;
    assert!(
        human.contains("BPF map ipcache is 100% full (12 of 12)")
            && human.contains("--bpf-ipcache-max"),
        "{human}"
    );

    c.delete_pod(&pods.intruder)?;
    let took = until_post(&extra, &pay, Some(200), Duration::from_secs(10))?;
    eprintln!("room made: the newcomer let in after {took:?}");
    Ok(())
}

/// A full endpoints map fails closed: agents run with
/// `--bpf-endpoints-max 2`, which checkout and the intruder fill on node 1.
/// A third pod's CNI ADD there fails at once with a CNI error naming the
/// map and its flag, and leaves nothing (no veth, no state file, no
/// endpoint record); status warns; what was enforced stays enforced.
/// When the intruder leaves, the same pod comes up and is let in.
#[test]
fn a_full_endpoints_map_refuses_a_new_pod_until_one_leaves() -> Result<()> {
    let (c, pods, pay) = seed_scenario("--bpf-endpoints-max", 2)?;
    let human = String::from_utf8(c.cli_command(1, &["status"]).output()?.stdout)?;
    assert!(
        human.contains("BPF map endpoints is 100% full (2 of 2)")
            && human.contains("--bpf-endpoints-max"),
        "{human}"
    );

    let links = c.node_links(1)?;
    let files = c.endpoint_files(1, "json")?;
    let (out, ns) = c.failing_add(1, "extra")?;
    let (code, text) = out.error()?;
    assert!(
        code == 11 && text.contains("no room") && text.contains("--bpf-endpoints-max"),
        "{out:?}"
    );
    assert!(out.elapsed < Duration::from_secs(5), "{out:?}");
    assert_eq!(c.node_links(1)?, links, "the refused ADD left a veth");
    assert_eq!(c.endpoint_files(1, "json")?, files, "it left a state file");
    wait_for(
        "the refused pod's record gone",
        Duration::from_secs(5),
        || {
            let list = c.cli(1, &["-o", "json", "endpoint", "list"])?;
            Ok(!String::from_utf8_lossy(&list.stdout).contains("extra"))
        },
    )?;
    stays(
        &pods.intruder,
        "POST",
        &pay,
        "/v1/charge",
        None,
        Duration::from_secs(1),
    )?;
    stays(
        &pods.checkout,
        "POST",
        &pay,
        "/v1/charge",
        Some(200),
        Duration::from_secs(1),
    )?;

    // The same pod again (as a kubelet retries) once there is room.
    drop(ns);
    c.delete_pod(&pods.intruder)?;
    let extra = c.add_pod(1, "extra", &[("app", "checkout")])?;
    let took = until_post(&extra, &pay, Some(200), Duration::from_secs(10))?;
    eprintln!(
        "endpoints full: ADD refused in {:?} ({text}); after the intruder left, the pod came up and was let in after {took:?}",
        out.elapsed
    );
    Ok(())
}

/// A full conntrack table fails closed: agents run with `--bpf-ct-max 64`
/// and checkout opens 300 connections to payments (node 0's IPv4 table
/// holds 64 flows), with one long-lived connection open throughout. The
/// oldest flows are evicted and judged again: every allowed connection
/// is answered, the long-lived one too, and none of the intruder's gets
/// through; status reports the IPv4 table (`ct4`) on its own.
#[test]
fn a_full_conntrack_table_evicts_and_judges_again() -> Result<()> {
    const PORT: u16 = 9090;
    let mut c = Cluster::start(&ClusterConfig {
        agent_args: vec!["--bpf-ct-max".into(), "64".into()],
        ..ClusterConfig::default()
    })?;
    let pods = c.seed_pods()?;
    echo_server(&pods.payments, PORT)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("echo.yaml");
    std::fs::write(
        &file,
        admit_on_port(
            "echo-from-checkout",
            "payments",
            &[("app", "checkout")],
            PORT,
        ),
    )?;
    c.import_policy(0, &file)?;
    let to = pods.payments.ip;
    wait_for("the echo policy", Duration::from_secs(10), || {
        Ok(reaches(&pods.checkout, to, PORT)? && !reaches(&pods.intruder, to, PORT)?)
    })?;

    // One connection kept open: its flow is evicted by the ones after it.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let kept = pods.checkout.ns.spawn(move || -> Result<usize> {
        let mut conn = TcpStream::connect_timeout(&(to, PORT).into(), Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut answered = 0;
        let mut line = String::new();
        loop {
            conn.write_all(b"ping\n")?;
            line.clear();
            reader.read_line(&mut line)?;
            anyhow::ensure!(line == "pong\n", "answer {line:?}");
            answered += 1;
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(answered);
            }
        }
    });
    let flows = pods.checkout.ns.spawn(move || {
        (0..300)
            .filter_map(|i| {
                exchange(to, PORT, Duration::from_secs(2))
                    .err()
                    .map(|e| format!("{i}: {e}"))
            })
            .collect::<Vec<_>>()
    });
    let intruded = pods.intruder.ns.spawn(move || {
        (0..30)
            .filter(|_| exchange(to, PORT, Duration::from_millis(300)).is_ok())
            .count()
    });
    let failed = flows
        .join()
        .map_err(|_| anyhow::anyhow!("flows panicked"))??;
    let passed = intruded
        .join()
        .map_err(|_| anyhow::anyhow!("intruder panicked"))??;
    let st = status(&c, 0)?;
    let _ = tx.send(());
    let answered = kept
        .join()
        .map_err(|_| anyhow::anyhow!("kept panicked"))???;
    assert!(failed.is_empty(), "allowed connections failed: {failed:?}");
    assert_eq!(passed, 0, "intruder connections got through");
    let ct4 = st["agent"]["status"]["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "ct4").cloned())
        .with_context(|| format!("the ct4 map: {st}"))?;
    assert_eq!(ct4["max_entries"], 64, "{ct4}");
    // The kernel's LRU evicts in batches per CPU, so a table this small
    // starts evicting well before its nominal size (about 3/4 here; a
    // table of the default size, near full): no 90% warning to expect.
    let held = ct4["entries"].as_u64().unwrap_or(0);
    assert!((32..=64).contains(&held), "the IPv4 table: {ct4}");
    eprintln!("conntrack full ({ct4}): 300 allowed connections answered, the long-lived one {answered} times, 0 of 30 intruder connections passed");
    Ok(())
}
