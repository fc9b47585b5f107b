//! The agent with etcd gone: every read of its API answers within 100 ms
//! and says the kvstore is failing, the datapath keeps enforcing the last
//! state, and once etcd is back everything catches up. Twice: every member
//! frozen (SIGSTOP: connections open, no answers, the worst case for a
//! client), then quorum lost (two of three frozen).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axoneme_e2e::expect::seed_policy;
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};

/// The agent's API reads, as the CLI's `status`, `bpf ipcache list`,
/// `bpf policy get`, `bpf ct list` and `events` make them.
fn reads(payments: &CniPod) -> [String; 5] {
    [
        "/v1/status".into(),
        "/v1/bpf/ipcache".into(),
        format!("/v1/bpf/policy/{}", payments.container_id),
        "/v1/bpf/ct".into(),
        "/v1/events".into(),
    ]
}

/// Every read answers 200 within 100 ms on both nodes; the status's kvstore
/// component is `kv_ok` (waits for the agent's probe to notice).
fn check_reads(c: &Cluster, payments: &CniPod, kv_ok: bool, what: &str) -> Result<()> {
    for i in 0..c.nodes.len() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, body, _) = c.agent_get(i, "/v1/status")?;
            let st: serde_json::Value = serde_json::from_str(&body)?;
            let kv = st["components"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "kvstore")
                .cloned()
                .unwrap_or_default();
            if kv["ok"] == kv_ok {
                eprintln!("{what}: node {i} kvstore: {}", kv["message"]);
                break;
            }
            if Instant::now() > deadline {
                bail!("{what}: node {i} still reports the kvstore as {kv}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for path in reads(payments) {
            // A node may not hold payments: its policy read is a 404 then.
            let (code, body, took) = c.agent_get(i, &path)?;
            let wanted = if path.contains("/bpf/policy/") && i != payments.node {
                404
            } else {
                200
            };
            if code != wanted || took > Duration::from_millis(100) {
                bail!("{what}: node {i} GET {path}: {code} after {took:?}: {body:.200}");
            }
        }
    }
    Ok(())
}

/// The seed scenario as it stands: checkout's charge passes, its refund
/// gets the proxy's 403, the intruder gets nothing.
fn enforced(checkout: &CniPod, intruder: &CniPod, pay: &str, what: &str) -> Result<()> {
    let got = (
        checkout.http("POST", pay, 8080, "/v1/charge"),
        checkout.http("POST", pay, 8080, "/v1/refund"),
        intruder.http("POST", pay, 8080, "/v1/charge"),
    );
    if got != (Some(200), Some(403), None) {
        bail!("{what}: (charge, refund, intruder) = {got:?}");
    }
    Ok(())
}

#[test]
fn with_etcd_gone_reads_answer_at_once_and_enforcement_goes_on() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let payments = c.add_pod(0, "payments", &[("app", "payments")])?;
    let checkout = c.add_pod(1, "checkout", &[("app", "checkout")])?;
    let intruder = c.add_pod(1, "intruder", &[("app", "intruder")])?;
    c.logging_backend(&payments, 8080)?;
    let pay = payments.ip.to_string();
    let seed = seed_policy();
    c.import_policy(0, &seed)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while enforced(&checkout, &intruder, &pay, "before").is_err() {
        if Instant::now() > deadline {
            enforced(&checkout, &intruder, &pay, "before")?;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check_reads(&c, &payments, true, "etcd up")?;

    for (what, frozen) in [
        ("every member frozen", vec![0, 1, 2]),
        ("quorum lost", vec![0, 1]),
    ] {
        for i in &frozen {
            c.etcd().pause(*i)?;
        }
        let result = check_reads(&c, &payments, false, what)
            .and_then(|()| enforced(&checkout, &intruder, &pay, what));
        for i in &frozen {
            c.etcd().resume(*i)?;
        }
        result?;
        check_reads(&c, &payments, true, &format!("{what}, then back"))?;
    }

    // Caught up: a policy change after the outage reaches both nodes.
    c.cli(0, &["policy", "delete", "payments-api"])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while intruder.http("POST", &pay, 8080, "/v1/charge") != Some(200) {
        if Instant::now() > deadline {
            bail!("the policy's deletion after the outage was not enforced");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
