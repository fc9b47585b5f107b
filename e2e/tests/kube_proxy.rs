//! `kubeProxyReplacement: false`: Kubernetes mode with the real kube-proxy
//! (iptables mode, built from the same Kubernetes release) in every node's
//! namespace. Services work through kube-proxy's rules, from a client on
//! the backend's node (its replies must go back up the node's stack,
//! where kube-proxy's reverse NAT is: `ct_flags::VIA_STACK`) and from
//! another node, and Axoneme's policy still decides, by the backend's
//! identity after kube-proxy's DNAT, with its L7 rule through the proxy of
//! either node (`bpf/programs/src/kube_proxy.rs`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use axoneme_e2e::expect::seed_policy;
use axoneme_e2e::services::{all_failed, lines, requests, seed_policy_holds, until};
use axoneme_e2e::{kube_proxy, Cluster, ClusterConfig};

const VIP: &str = "10.96.0.50";

/// The requests each backend logged since it had logged `before`.
fn since(logs: &[std::path::PathBuf], before: &[usize]) -> Vec<usize> {
    logs.iter().zip(before).map(|(l, b)| lines(l) - b).collect()
}

#[test]
fn services_through_kube_proxy_with_axoneme_policy() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig {
        kubernetes: true,
        agent_args: vec!["--kube-proxy-replacement=false".into()],
        ..ClusterConfig::default()
    })?;
    let seed = c.seed_pods()?;
    // A second backend on checkout's node: the same-node path.
    let local = c.add_pod(1, "payments-1", &[("app", "payments")])?;
    let logs = [
        c.dir.join("requests-payments-8080.log"),
        c.logging_backend(&local, 8080)?,
    ];
    let kube = c.kube.as_ref().context("Kubernetes mode")?;
    let mut proxies = Vec::new();
    for n in &c.nodes {
        let log = c.dir.join(format!("kube-proxy-{}.log", n.name));
        proxies.push(kube_proxy::start(kube, &n.ns, &n.name, "iptables", &log)?);
    }
    let backends: Vec<IpAddr> = [&seed.payments, &local]
        .iter()
        .map(|p| IpAddr::V4(p.ip))
        .collect();
    let objects = kube_proxy::service_objects(
        "payments",
        VIP.parse()?,
        80,
        8080,
        &backends,
        &c.nodes[0].name,
    );
    kube_proxy::create(kube, &objects)?;
    for n in &c.nodes {
        until(
            "kube-proxy programs the Service",
            Duration::from_secs(20),
            || Ok(kube_proxy::iptables_services(&n.ns)? >= 1),
        )?;
    }

    // Both backends answer checkout: the one on its node too.
    let before: Vec<usize> = logs.iter().map(|l| lines(l)).collect();
    let got = requests(&seed.checkout, VIP, 80, "GET", "/", 60)?;
    assert_eq!(
        got,
        BTreeMap::from([("200".to_string(), 60)]),
        "through kube-proxy"
    );
    let per = since(&logs, &before);
    eprintln!("per backend (node 0, node 1): {per:?}");
    assert!(per.iter().all(|n| *n >= 10), "{per:?}");

    // The payments policy, applied through the API, decides through
    // kube-proxy's Service address. Its L7 rule sends checkout's requests
    // through the backend node's proxy: the other node's for the backend
    // there, checkout's own node's for the backend beside it, whose
    // answers must still come from the Service's address (the datapath
    // gives the redirected packets their Service address back, so that
    // kube-proxy's conntrack entry translates the proxy's answers).
    let policy = seed_policy();
    kube.kubectl(["apply", "-f", policy.to_str().context("path")?])?;
    let before: Vec<usize> = logs.iter().map(|l| lines(l)).collect();
    seed_policy_holds(&seed, VIP, 40, Duration::from_secs(15))?;
    let per = since(&logs, &before);
    eprintln!("POSTs per backend through the proxies (node 0, node 1): {per:?}");
    assert!(per.iter().all(|n| *n >= 5), "{per:?}");
    let got = requests(&seed.intruder, VIP, 80, "POST", "/v1/charge", 2)?;
    assert!(all_failed(&got), "{got:?}");
    for mut p in proxies {
        p.terminate(Duration::from_secs(5));
    }
    for n in &c.nodes {
        kube_proxy::cleanup(&n.ns);
    }
    Ok(())
}
