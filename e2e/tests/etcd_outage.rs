//! etcd's quorum lost for 60 s while pods come and go and an agent
//! restarts, on the two-node cluster, with flows probed throughout:
//!
//! - checkout (node 1) opens a new connection to echo (node 0, allowed by
//!   an L3/L4 policy) every 100 ms: none may fail;
//! - the intruder (node 1) tries the same: none may get through;
//! - a latecomer with checkout's labels, created on node 1 while node 0's
//!   agent was down, is a peer node 0 cannot resolve: denied until etcd is
//!   back, then allowed within 5 s.
//!
//! During the outage node 0's agent is restarted: it starts from its
//! pinned maps, its API answers at once and says what it waits for, and a
//! CNI ADD to it is refused at once. A CNI ADD on node 1 fails within its
//! timeout naming etcd and leaves no veth or state file; a CNI DEL on
//! node 1 completes; node 1's agent stops at once on SIGTERM and starts
//! again. Once etcd is back: both nodes are ready, new pods come up on
//! both, and no record is left of the failed ADD or the DEL.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axoneme_e2e::expect::wait_for;
use axoneme_e2e::probe::{admit_on_port, describe, echo_server, reaches, Odd, Probe};
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};

const PORT: u16 = 9090;
const OUTAGE: Duration = Duration::from_secs(60);

/// The endpoint IDs etcd holds (`axoneme endpoint list`).
fn records(c: &Cluster) -> Result<String> {
    let out = c.cli(1, &["-o", "json", "endpoint", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What is checked while etcd has no quorum: node 0's agent starts and
/// answers, CNI ADDs fail closed, a CNI DEL completes.
fn during_the_outage(c: &mut Cluster, checkout: &CniPod, leaver: &CniPod) -> Result<()> {
    c.start_agent(0)?;
    wait_for("node 0's agent answering", Duration::from_secs(10), || {
        Ok(c.agent_get(0, "/v1/status")
            .is_ok_and(|(code, _, _)| code == 200))
    })?;
    let (_, body, took) = c.agent_get(0, "/v1/status")?;
    ensure!(took < Duration::from_secs(1), "status took {took:?}");
    let st: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(st["ok"] == false, "a starting agent says it is fine: {st}");
    let agent_line = st["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "agent")
        .with_context(|| format!("no agent component: {st}"))?;
    ensure!(
        agent_line["message"]
            .as_str()
            .is_some_and(|m| m.contains("pinned maps keep enforcing")),
        "{agent_line}"
    );
    let (code, body, _) = c.agent_get(0, "/v1/bpf/ipcache")?;
    ensure!(
        code == 200 && body.contains(&checkout.ip.to_string()),
        "node 0's ipcache from its pins: {code} {body}"
    );

    // A CNI ADD to the starting agent: refused at once.
    let (out, _ns0) = c.failing_add(0, "early")?;
    ensure!(out.elapsed < Duration::from_secs(2), "{out:?}");
    let (code, text) = out.error()?;
    ensure!(
        code == 11 && text.contains("the agent is starting"),
        "{out:?}"
    );

    // A CNI ADD on node 1: fails within its timeout (15 s), nothing left.
    let links = c.node_links(1)?;
    let state_files = || c.endpoint_files(1, "json");
    let files = state_files()?;
    let (out, _ns1) = c.failing_add(1, "stranded")?;
    ensure!(out.elapsed < Duration::from_millis(16_000), "{out:?}");
    let (code, text) = out.error()?;
    ensure!(code == 11 && text.contains("etcd unavailable"), "{out:?}");
    ensure!(c.node_links(1)? == links, "the failed ADD left a veth");
    ensure!(state_files()? == files, "the failed ADD left a state file");

    // A CNI DEL on node 1 completes; its record goes when etcd is back.
    let started = Instant::now();
    c.delete_pod(leaver)?;
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "DEL took {:?}",
        started.elapsed()
    );
    let now = c.node_links(1)?;
    ensure!(
        now.len() + 1 == links.len() && now.iter().all(|l| links.contains(l)),
        "the DEL did not remove the leaver's veth: {now:?} (before: {links:?})"
    );
    ensure!(state_files()? + 1 == files, "the DEL left its state file");

    // SIGTERM to node 1's agent: it stops at once (no task waits on
    // etcd), and starts again from its pins and its orphan files.
    let stopping = Instant::now();
    c.nodes[1]
        .agent
        .as_mut()
        .context("agent 1")?
        .terminate(Duration::from_secs(15));
    let stopped = stopping.elapsed();
    ensure!(
        stopped < Duration::from_secs(3),
        "agent 1 took {stopped:?} to stop with etcd gone:\n{}",
        c.agent_log(1)
    );
    eprintln!("agent 1 stopped {stopped:?} after SIGTERM with etcd's quorum lost");
    c.start_agent(1)?;
    Ok(())
}

#[test]
fn quorum_lost_for_a_minute_during_pod_churn_and_an_agent_restart() -> Result<()> {
    // The node grace is the agent's default (5 min). Leases are counted in
    // the etcd leader's time: a paused leader that resumes revokes the
    // leases not renewed for their TTL, so with a grace shorter than the
    // outage a node is forgotten and its routes withdrawn, as designed.
    let mut c = Cluster::start(&ClusterConfig {
        node_grace: 300,
        ..ClusterConfig::default()
    })?;
    let echo = c.add_pod(0, "echo", &[("app", "echo")])?;
    let checkout = c.add_pod(1, "checkout", &[("app", "checkout")])?;
    let intruder = c.add_pod(1, "intruder", &[("app", "intruder")])?;
    let leaver = c.add_pod(1, "leaver", &[("app", "leaver")])?;
    echo_server(&echo, PORT)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("echo.yaml");
    std::fs::write(
        &file,
        admit_on_port("echo-from-checkout", "echo", &[("app", "checkout")], PORT),
    )?;
    c.import_policy(0, &file)?;
    let to = echo.ip;
    let reaches = |pod: &CniPod| reaches(pod, to, PORT);
    wait_for("the echo policy", Duration::from_secs(10), || {
        Ok(reaches(&checkout)? && !reaches(&intruder)?)
    })?;

    let allowed = Probe::start(&checkout.ns, to, PORT, true);
    let denied = Probe::start(&intruder.ns, to, PORT, false);

    // Node 0's agent goes down; a pod node 0 will not know about arrives.
    c.nodes[0].agent.as_mut().context("agent 0")?.kill9();
    let latecomer = c.add_pod(1, "latecomer", &[("app", "checkout")])?;
    let late = Probe::start(&latecomer.ns, to, PORT, false);

    // Quorum lost for a minute; node 0's agent starts meanwhile.
    for i in [0, 1] {
        c.etcd().pause(i)?;
    }
    let lost = Instant::now();
    let during = during_the_outage(&mut c, &checkout, &leaver);
    if during.is_ok() {
        std::thread::sleep(OUTAGE.saturating_sub(lost.elapsed()));
    }
    for i in [0, 1] {
        c.etcd().resume(i)?;
    }
    let back = Instant::now();
    during?;
    ensure!(
        c.nodes[0].agent.as_mut().context("agent 0")?.is_running(),
        "{}",
        c.agent_log(0)
    );

    // Node 0 catches up: the latecomer is let in within 5 s.
    wait_for(
        "the latecomer allowed on node 0",
        Duration::from_secs(5),
        || reaches(&latecomer),
    )?;
    let converged = back.elapsed();
    c.wait_node_ready(0, Duration::from_secs(10))?;
    c.wait_node_ready(1, Duration::from_secs(10))?;
    // New pods come up on both nodes.
    let newcomers = [
        c.add_pod(0, "after-0", &[("app", "checkout")])?,
        c.add_pod(1, "after-1", &[("app", "checkout")])?,
    ];
    wait_for("a new pod allowed", Duration::from_secs(5), || {
        reaches(&newcomers[1])
    })?;
    // No record of the failed ADDs or of the deleted pod.
    wait_for("no record left behind", Duration::from_secs(5), || {
        let r = records(&c)?;
        Ok(["early", "stranded", "leaver"]
            .iter()
            .all(|n| !r.contains(&format!("\"{}-{n}\"", c.prefix)))
            && c.endpoint_files(1, "orphan")? == 0)
    })?;

    let allowed = allowed.finish()?;
    let passed = denied.finish()?.odd;
    let late_passed = late.finish()?.odd;
    let early_late: Vec<_> = late_passed.iter().filter(|(t, _)| *t < back).collect();
    println!(
        "allowed: {} answered, {} failed; intruder: {} passed; latecomer: {} passed before etcd was back ({} after); converged {converged:?} after etcd was back",
        allowed.answered,
        allowed.unanswered,
        passed.len(),
        early_late.len(),
        late_passed.len() - early_late.len()
    );
    let lost_flows = allowed.odd;
    if !lost_flows.is_empty() || !passed.is_empty() || !early_late.is_empty() {
        let since = |odd: &[&Odd]| describe(odd, lost);
        let logs: String = (0..2)
            .map(|i| {
                let log = c.agent_log(i);
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains("axoneme::event"))
                    .collect();
                format!("== agent {i} (events left out) ==\n{}\n", lines.join("\n"))
            })
            .collect();
        bail!(
            "since the outage began: allowed flows lost at {:?}, denied passed at {:?}, latecomer passed at {:?}; etcd back at {:?}\n{logs}",
            since(&lost_flows.iter().collect::<Vec<_>>()),
            since(&passed.iter().collect::<Vec<_>>()),
            since(&early_late),
            back.saturating_duration_since(lost),
        );
    }
    Ok(())
}
