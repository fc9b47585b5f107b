//! The kube-proxy replacement in Kubernetes mode, against the real
//! control plane: a Service with a selector, created with kubectl, gets
//! its EndpointSlice from kube-controller-manager's EndpointSlice
//! controller (the harness marks pods Ready, as the kubelet does); the
//! operator mirrors both into the kvstore and every node's socket LB
//! balances it. No kube-proxy runs.
//!
//! Checked: balance over backends on both nodes; the payments policy
//! decides through the Service address (the intruder gets nothing,
//! checkout's POST passes the L7 proxy, its GET gets 403); a deleted Pod
//! (Terminating: no kubelet finishes it) gets no new connections;
//! `sessionAffinity: ClientIP` keeps a client on one backend and lets it
//! go after its timeout; a deleted Service stops being answered; the
//! CLI's frontend index finds conflicts with the mirrored Services (the
//! operator's writes make the CLI rebuild it).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axoneme_e2e::expect::{seed_policy, wait_condition};
use axoneme_e2e::services::{all_failed, lines, requests, seed_policy_holds, until};
use axoneme_e2e::{Cluster, ClusterConfig};

const VIP: &str = "10.96.0.60";
const STICKY_VIP: &str = "10.96.0.61";

fn service(name: &str, vip: &str, affinity: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "clusterIP": vip,
            "selector": {"app": "payments"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            "sessionAffinity": affinity,
        }
    })
    .to_string()
}

/// `axoneme service create` of a service on `vip` is refused, naming the
/// mirrored Service `holder`.
fn cli_refuses_clash(c: &Cluster, vip: &str, holder: &str) -> Result<()> {
    let path = c.dir.join(format!("clash-{vip}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: clash, namespace: default}}\n\
             spec:\n  clusterIP: {vip}\n  ports: [{{port: 80}}]\n"
        ),
    )?;
    let out = c
        .cli_command(
            0,
            &["service", "create", "-f", path.to_str().context("path")?],
        )
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1)
            && stderr.contains(&format!("{vip} is also the cluster IP of {holder}")),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn services_from_the_api_server_are_balanced_in_ebpf() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig {
        kubernetes: true,
        ..ClusterConfig::default()
    })?;
    let seed = c.seed_pods()?;
    let local = c.add_pod(1, "payments-1", &[("app", "payments")])?;
    let logs = [
        c.dir.join("requests-payments-8080.log"),
        c.logging_backend(&local, 8080)?,
    ];
    let kube = c.kube.as_ref().context("Kubernetes mode")?;
    kube.apply_yaml(&service("payments", VIP, "None"))?;

    // Controller, operator, kvstore, agents: both nodes program it.
    for node in 0..2 {
        until(
            &format!("node {node} programs the Service with both backends"),
            Duration::from_secs(30),
            || {
                let out = c.cli(node, &["-o", "json", "bpf", "lb", "list"])?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                Ok(v["frontends"].as_array().into_iter().flatten().any(|f| {
                    f["service"] == "default/payments"
                        && f["backends"].as_array().is_some_and(|b| {
                            b.iter().filter(|b| b["selected"] == true).count() == 2
                        })
                }))
            },
        )?;
    }
    let list = String::from_utf8(c.cli(0, &["service", "list"])?.stdout)?;
    assert!(
        list.lines().any(|l| l.contains("payments")
            && l.contains(&format!("{VIP}:80/TCP"))
            && l.contains("2/2")),
        "the CLI shows the mirrored Service:\n{list}"
    );
    cli_refuses_clash(&c, VIP, "default/payments")?;

    // 100 new connections from each node, over both backends (50 each
    // expected, sd 5: 20 is 6 sd off).
    for from in [&seed.checkout, &seed.intruder] {
        let before: Vec<usize> = logs.iter().map(|l| lines(l)).collect();
        let got = requests(from, VIP, 80, "GET", "/spread", 100)?;
        assert_eq!(
            got,
            BTreeMap::from([("200".to_string(), 100)]),
            "from {}",
            from.name
        );
        let per: Vec<usize> = logs
            .iter()
            .zip(&before)
            .map(|(l, b)| lines(l) - b)
            .collect();
        eprintln!("from {}: per backend {per:?}", from.name);
        assert!(per.iter().all(|n| *n >= 20), "from {}: {per:?}", from.name);
    }

    // The payments policy, applied with kubectl, through the Service.
    let policy = seed_policy();
    kube.kubectl(["apply", "-f", policy.to_str().context("path")?])?;
    wait_condition(kube, "payments-api", "Enforced", "True")?;
    seed_policy_holds(&seed, VIP, 20, Duration::from_secs(10))?;

    // A deleted Pod stays Terminating (no kubelet confirms it): its
    // endpoint turns terminating and gets no new connections.
    kube.kubectl(["delete", "pod", "payments-1", "--wait=false"])?;
    until(
        "the terminating backend is not selected",
        Duration::from_secs(20),
        || {
            let out = c.cli(1, &["-o", "json", "bpf", "lb", "list"])?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            Ok(v["frontends"].as_array().into_iter().flatten().any(|f| {
                f["service"] == "default/payments"
                    && f["backends"]
                        .as_array()
                        .is_some_and(|b| b.iter().filter(|b| b["selected"] == true).count() == 1)
            }))
        },
    )?;
    let before = lines(&logs[1]);
    let got = requests(&seed.checkout, VIP, 80, "POST", "/v1/charge", 20)?;
    assert_eq!(got, BTreeMap::from([("200".to_string(), 20)]));
    assert_eq!(
        lines(&logs[1]),
        before,
        "the terminating backend got a new connection"
    );
    kube.kubectl(["delete", "pod", "payments-1", "--grace-period=0", "--force"])?;

    // ClientIP affinity (1 s): one backend while requests keep coming;
    // after a pause longer than the timeout, a new pick (which lands on
    // the other backend with probability 1/2 each time).
    let p2 = c.add_pod(1, "payments-2", &[("app", "payments")])?;
    let p2_log = c.logging_backend(&p2, 8080)?;
    let kube = c.kube.as_ref().context("Kubernetes mode")?;
    let mut sticky: serde_json::Value =
        serde_json::from_str(&service("sticky", STICKY_VIP, "ClientIP"))?;
    sticky["spec"]["sessionAffinityConfig"] =
        serde_json::json!({"clientIP": {"timeoutSeconds": 1}});
    kube.apply_yaml(&sticky.to_string())?;
    let sticky_logs = [logs[0].clone(), p2_log];
    until(
        "checkout reaches the sticky Service",
        Duration::from_secs(30),
        || {
            Ok(
                requests(&seed.checkout, STICKY_VIP, 80, "POST", "/v1/charge", 1)?
                    .contains_key("200"),
            )
        },
    )?;
    // Mirrored after the CLI's last command: found all the same.
    cli_refuses_clash(&c, STICKY_VIP, "default/sticky")?;
    let mut picks = Vec::new();
    for round in 0..12 {
        let before: Vec<usize> = sticky_logs.iter().map(|l| lines(l)).collect();
        let got = requests(&seed.checkout, STICKY_VIP, 80, "POST", "/v1/charge", 10)?;
        assert_eq!(
            got,
            BTreeMap::from([("200".to_string(), 10)]),
            "round {round}"
        );
        let per: Vec<usize> = sticky_logs
            .iter()
            .zip(&before)
            .map(|(l, b)| lines(l) - b)
            .collect();
        assert!(
            per.contains(&10),
            "round {round}: one backend for all 10: {per:?}"
        );
        picks.push(per.iter().position(|n| *n == 10));
        if picks.windows(2).any(|w| w[0] != w[1]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2200));
    }
    eprintln!("affinity picks: {picks:?}");
    assert!(
        picks.windows(2).any(|w| w[0] != w[1]),
        "the same backend after 12 expiries: {picks:?}"
    );

    // A deleted Service is withdrawn from every node.
    kube.kubectl(["delete", "service", "payments"])?;
    until(
        "the deleted Service is refused",
        Duration::from_secs(20),
        || {
            Ok(all_failed(&requests(
                &seed.checkout,
                VIP,
                80,
                "POST",
                "/v1/charge",
                1,
            )?))
        },
    )?;
    Ok(())
}
