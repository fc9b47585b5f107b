//! Default deny, safely (audit mode and `policy explain`), end to end on
//! the seed scenario.
//!
//! Audit mode: the payments pod
//! put in audit mode (`axoneme endpoint config`) lets the intruder in,
//! and every intruder connection is reported as an `audit` verdict (the
//! agent's events, Hubble's flows, the verdict metric); L7 rules still
//! hold; `status` names the endpoint; switching audit off blocks the
//! intruder at once. The agent-wide `--policy-audit-mode` does the same
//! for every endpoint of the node.
//!
//! `policy explain` live: node 0's agent explains the seed's flows with
//! what it enforces, each attributed to the rule that decided, and its
//! datapath's policy map agrees for its own endpoint; what the pods then
//! really get matches.

use anyhow::{ensure, Context, Result};
use axoneme_e2e::expect::{seed_policy, wait_for};
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};
use std::time::Duration;

/// Intruder connections tried while in audit mode.
const PROBES: usize = 4;

fn blocked(from: &CniPod, addr: &str) -> bool {
    from.http("GET", addr, 8080, "/").is_none()
}

/// Node `node`'s `axoneme_policy_verdicts_total` samples for ingress
/// with `action`, summed.
fn verdict_count(c: &Cluster, node: usize, action: &str) -> Result<f64> {
    let text = c.agent_metrics(node)?;
    let wanted = format!("action=\"{action}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("axoneme_policy_verdicts_total{"))
        .filter(|l| l.contains("direction=\"ingress\"") && l.contains(&wanted))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// The JSON the CLI prints for `args` against node `node`.
fn cli_json(c: &Cluster, node: usize, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.cli(node, &all)?;
    serde_json::from_slice(&out.stdout).with_context(|| format!("axoneme {}", args.join(" ")))
}

/// The `policy-audit` line of node `node`'s agent status.
fn audit_line(c: &Cluster, node: usize) -> Result<String> {
    let (_, body, _) = c.agent_get(node, "/v1/status")?;
    let st: serde_json::Value = serde_json::from_str(&body).context("status")?;
    let text = st.to_string();
    let line = st["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "policy-audit"))
        .and_then(|c| c["message"].as_str())
        .with_context(|| format!("no policy-audit component in {text}"))?;
    Ok(line.to_string())
}

/// A cluster with the seed's pods (payments, checkout, intruder) and the
/// seed policy enforced on every node.
fn seeded(config: ClusterConfig) -> Result<(Cluster, CniPod, CniPod, CniPod)> {
    let mut c = Cluster::start(&config)?;
    let axoneme_e2e::SeedPods {
        payments,
        checkout,
        intruder,
    } = c.seed_pods()?;
    c.import_policy(0, &seed_policy())?;
    Ok((c, payments, checkout, intruder))
}

#[test]
fn an_endpoint_in_audit_mode_reports_the_intruder_and_lets_it_in_until_audit_ends() -> Result<()> {
    let (c, payments, checkout, intruder) = seeded(ClusterConfig::default())?;
    let pay4 = payments.ip.to_string();
    wait_for("the intruder blocked", Duration::from_secs(10), || {
        Ok(blocked(&intruder, &pay4))
    })?;
    let off = audit_line(&c, 0)?;
    ensure!(off.starts_with("off"), "{off}");

    let endpoint = payments.container_id.as_str();
    let out = c.cli(
        0,
        &["endpoint", "config", endpoint, "--policy-audit-mode=true"],
    )?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(said.contains("policy audit mode on"), "{said}");
    let line = audit_line(&c, 0)?;
    ensure!(
        line.starts_with("on for 1 of 1 endpoints") && line.contains(endpoint),
        "{line}"
    );

    // The command returned once the datapath had it: the intruder is in,
    // each connection an `audit` verdict.
    let before = verdict_count(&c, 0, "audit")?;
    for i in 0..PROBES {
        let code = intruder.http("GET", &pay4, 8080, "/");
        ensure!(code.is_some(), "intruder probe {i} blocked in audit mode");
    }
    let after = verdict_count(&c, 0, "audit")?;
    ensure!(
        after - before >= PROBES as f64,
        "audit verdicts {before} -> {after}, want +{PROBES}"
    );
    // Audit mode covers L3/L4 only: checkout's requests still meet the
    // HTTP rules.
    assert_eq!(checkout.http("POST", &pay4, 8080, "/v1/charge"), Some(200));
    assert_eq!(checkout.http("POST", &pay4, 8080, "/v1/refund"), Some(403));

    // The verdicts name the intruder: in the agent's events and as
    // Hubble's AUDIT flows.
    let intruder_id = cli_json(&c, 1, &["endpoint", "list"])?
        .as_array()
        .and_then(|eps| {
            eps.iter()
                .find(|e| e["endpoint"] == intruder.container_id.as_str())
        })
        .and_then(|e| e["identity"].as_u64())
        .context("the intruder's identity")?;
    // The agent drains the datapath's events every 100 ms.
    wait_for(
        "the intruder's audit events",
        Duration::from_secs(5),
        || {
            let events = cli_json(
                &c,
                0,
                &["events", "--type", "policy-verdict", "--last", "200"],
            )?;
            let audits = events
                .as_array()
                .context("events")?
                .iter()
                .filter(|e| e["verdict"] == "audit" && e["src_identity"] == intruder_id)
                .count();
            Ok(audits >= PROBES)
        },
    )?;
    wait_for("Hubble's AUDIT flows", Duration::from_secs(5), || {
        let flows = c.cli(
            0,
            &[
                "observe",
                "--verdict",
                "AUDIT",
                "--last",
                "50",
                "-o",
                "json",
            ],
        )?;
        let text = String::from_utf8_lossy(&flows.stdout);
        Ok(text.lines().filter(|l| l.contains(&pay4)).count() >= PROBES)
    })?;

    // `policy explain` says what the policy decides, and that audit mode
    // lets it through.
    let node1 = c.nodes[1].name.clone();
    let why = cli_json(
        &c,
        0,
        &[
            "policy",
            "explain",
            "--from-endpoint",
            &format!("{node1}/{}", intruder.container_id),
            "--to-endpoint",
            endpoint,
            "--port",
            "8080",
        ],
    )?;
    ensure!(
        why["dropReason"] == 133 && why["datapath"][0]["audit"] == true,
        "{why:#}"
    );

    // Audit off: blocked at once, with no wait after the command.
    c.cli(
        0,
        &["endpoint", "config", endpoint, "--policy-audit-mode=false"],
    )?;
    ensure!(
        blocked(&intruder, &pay4),
        "the intruder still gets in after audit mode ended"
    );
    let off = audit_line(&c, 0)?;
    ensure!(off.starts_with("off"), "{off}");

    // Bad input: an unknown endpoint is named, and nothing changes.
    let out = c
        .cli_command(
            0,
            &["endpoint", "config", "nope", "--policy-audit-mode=true"],
        )
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("\"nope\""), "{err}");
    ensure!(
        blocked(&intruder, &pay4),
        "a failed config changed enforcement"
    );
    Ok(())
}

#[test]
fn the_agents_audit_flag_puts_every_endpoint_of_its_node_in_audit_mode() -> Result<()> {
    let (c, payments, _, intruder) = seeded(ClusterConfig {
        agent_args: vec!["--policy-audit-mode=true".into()],
        ..ClusterConfig::default()
    })?;
    let pay4 = payments.ip.to_string();
    let before = verdict_count(&c, 0, "audit")?;
    ensure!(
        intruder.http("GET", &pay4, 8080, "/").is_some(),
        "the intruder was blocked on a node in audit mode"
    );
    wait_for("an audit verdict counted", Duration::from_secs(5), || {
        Ok(verdict_count(&c, 0, "audit")? > before)
    })?;
    for node in [0, 1] {
        let line = audit_line(&c, node)?;
        ensure!(line.starts_with("on for"), "node {node}: {line}");
    }
    Ok(())
}

#[test]
fn explain_live_attributes_the_seed_flows_and_the_datapath_agrees() -> Result<()> {
    let (c, payments, checkout, intruder) = seeded(ClusterConfig::default())?;
    let pay4 = payments.ip.to_string();
    let node1 = c.nodes[1].name.clone();
    let remote = |p: &CniPod| format!("{node1}/{}", p.container_id);
    let explain = |from: &str, to: &str, port: &str, request: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            "--from-endpoint",
            from,
            "--to-endpoint",
            to,
            "--port",
            port,
        ];
        args.extend(request);
        cli_json(&c, 0, &args)
    };
    let agrees = |v: &serde_json::Value, direction: &str| {
        v["datapath"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["direction"] == direction))
            .is_some_and(|x| x["agrees"] == true)
    };

    // The intruder: default deny at payments, and node 0's datapath says so.
    let v = explain(&remote(&intruder), &payments.container_id, "8080", &[])?;
    ensure!(v["dropReason"] == 133, "{v:#}");
    ensure!(
        v["ingress"]["selectedBy"][0]["policy"] == "CiliumNetworkPolicy default/payments-api",
        "{v:#}"
    );
    ensure!(agrees(&v, "ingress"), "datapath disagrees: {v:#}");
    ensure!(blocked(&intruder, &pay4), "the intruder got through");

    // checkout: its POST matches the HTTP rule, its GET does not (403).
    let post = ["--method", "POST", "--path", "/v1/charge"];
    let v = explain(&remote(&checkout), &payments.container_id, "8080", &post)?;
    ensure!(v["verdict"] == "allowed", "{v:#}");
    ensure!(
        v["http"][0]["matched"]["path"] == "spec.ingress[0].toPorts[0].rules.http[0]",
        "{v:#}"
    );
    ensure!(
        v["datapath"][0]["verdict"] == "http" && agrees(&v, "ingress"),
        "{v:#}"
    );
    ensure!(checkout.http("POST", &pay4, 8080, "/v1/charge") == Some(200));
    let get = ["--method", "GET", "--path", "/v1/charge"];
    let v = explain(&remote(&checkout), &payments.container_id, "8080", &get)?;
    ensure!(v["httpStatus"] == 403, "{v:#}");
    ensure!(checkout.http("GET", &pay4, 8080, "/v1/charge") == Some(403));

    // payments' egress (node 0's endpoint as the source): not enforced.
    let v = explain(&payments.container_id, &remote(&checkout), "80", &[])?;
    ensure!(v["verdict"] == "allowed" && agrees(&v, "egress"), "{v:#}");

    // The human form ends with the datapath's word; an unknown endpoint
    // is named.
    let out = c.cli(
        0,
        &[
            "policy",
            "explain",
            "--from-endpoint",
            &remote(&intruder),
            "--to-endpoint",
            &payments.container_id,
            "--port",
            "8080",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.starts_with("DENIED: dropped, reason 133") && text.contains("datapath (ingress"),
        "{text}"
    );
    let out = c
        .cli_command(
            0,
            &[
                "policy",
                "explain",
                "--from-endpoint",
                "nope",
                "--to-endpoint",
                &payments.container_id,
                "--port",
                "1",
            ],
        )
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("/nope"), "{err}");
    Ok(())
}
