//! The agent in Kubernetes mode against a real kube-apiserver: pods are
//! Pod objects first, and their endpoints take their labels (and so their
//! identity) from the Pod, not from the runtime: the Pod's labels, its
//! namespace, its service account and the cluster. A label change moves a
//! running pod to another identity within a second; a CNI ADD for a Pod
//! the API does not have, or with the API server gone, fails closed and
//! leaves nothing behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};

fn seed_policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/seed-payments-policy.yaml")
}

/// Polls every 50 ms until checkout's `POST /v1/charge` answers `want`;
/// how long that took.
fn until_post(from: &CniPod, addr: &str, want: Option<u16>, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let got = from.http("POST", addr, 8080, "/v1/charge");
        if got == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!(
                "{}: POST /v1/charge got {got:?}, not {want:?}, after {within:?}",
                from.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The identity node `node`'s ipcache gives `ip`.
fn ipcache_identity(c: &Cluster, node: usize, ip: &str) -> Result<Option<u64>> {
    let out = c.cli(node, &["-o", "json", "bpf", "ipcache", "list"])?;
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(entries
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["prefix"].as_str().and_then(|p| p.split('/').next()) == Some(ip))
        .and_then(|e| e["identity"].as_u64()))
}

/// Polls payments' node (0) until `pod`'s identity there satisfies `ok`.
fn until_identity(c: &Cluster, pod: &CniPod, ok: impl Fn(Option<u64>) -> bool) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if ok(ipcache_identity(c, 0, &pod.ip.to_string())?) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("{}'s identity on node 0 did not change", pod.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn endpoint_labels(c: &Cluster, node: usize, pod: &CniPod) -> Result<Vec<String>> {
    let out = c.cli(node, &["-o", "json", "endpoint", "list"])?;
    let eps: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ep = eps
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["endpoint"] == pod.container_id.as_str())
        .with_context(|| format!("no endpoint {} in {eps}", pod.container_id))?;
    Ok(ep["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect())
}

#[test]
fn pods_take_their_labels_from_the_api_server() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig {
        kubernetes: true,
        ..ClusterConfig::default()
    })?;
    let payments = c.add_pod(0, "payments", &[("app", "payments")])?;
    let checkout = c.add_pod(1, "checkout", &[("app", "checkout")])?;
    let intruder = c.add_pod(1, "intruder", &[("app", "intruder")])?;
    c.logging_backend(&payments, 8080)?;

    // The labels are the Pod's, with its namespace, service account and
    // cluster, as Cilium derives them.
    let labels = endpoint_labels(&c, 1, &checkout)?;
    for want in [
        "k8s:app=checkout",
        "k8s:io.kubernetes.pod.namespace=default",
        "k8s:io.cilium.k8s.policy.serviceaccount=default",
        "k8s:io.cilium.k8s.policy.cluster=default",
    ] {
        assert!(
            labels.iter().any(|l| l == want),
            "{want} missing: {labels:?}"
        );
    }
    let kube = c.kube.as_ref().context("control plane")?;
    let ips = kube.kubectl([
        "get",
        "pod",
        "checkout",
        "-o",
        "jsonpath={.status.podIPs[*].ip}",
    ])?;
    assert!(
        String::from_utf8_lossy(&ips.stdout).contains(&checkout.ip.to_string()),
        "the Pod's status.podIPs"
    );

    // The seed policy, as a user applies it: Valid, then Enforced on both
    // nodes (what each agent reports it runs).
    let seed = seed_policy();
    kube.kubectl(["apply", "-f", seed.to_str().unwrap()])?;
    for (condition, want) in [("Valid", "True"), ("Enforced", "True")] {
        let deadline = Instant::now() + Duration::from_secs(15);
        let jsonpath = format!(
            "jsonpath={{.status.conditions[?(@.type==\"{condition}\")].status}} {{.status.conditions[?(@.type==\"{condition}\")].message}}"
        );
        loop {
            let out = kube.kubectl(["get", "cnp", "payments-api", "-o", &jsonpath])?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if text.starts_with(want) {
                eprintln!("payments-api {condition}: {text}");
                break;
            }
            if Instant::now() > deadline {
                bail!("payments-api {condition} is {text:?}, not {want}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let pay = payments.ip.to_string();
    until_post(&intruder, &pay, None, Duration::from_secs(10))?;
    until_post(&checkout, &pay, Some(200), Duration::from_secs(10))?;

    // A label change moves checkout to another identity: payments' node
    // sees it within a second, and the policy stops admitting checkout;
    // labelled back, it is admitted again.
    let before = ipcache_identity(&c, 0, &checkout.ip.to_string())?;
    let kube = c.kube.as_ref().context("control plane")?;
    kube.kubectl(["label", "pod", "checkout", "app=other", "--overwrite"])?;
    let took = until_identity(&c, &checkout, |id| id != before)?;
    eprintln!("relabel: payments' node has checkout's new identity {took:?} after `kubectl label`");
    assert!(took < Duration::from_secs(1), "relabel took {took:?}");
    until_post(&checkout, &pay, None, Duration::from_secs(3))?;
    kube.kubectl(["label", "pod", "checkout", "app=checkout", "--overwrite"])?;
    let took = until_identity(&c, &checkout, |id| id == before)?;
    eprintln!("relabel back: {took:?}");
    assert!(took < Duration::from_secs(1), "relabel back took {took:?}");
    until_post(&checkout, &pay, Some(200), Duration::from_secs(3))?;
    assert!(endpoint_labels(&c, 1, &checkout)?.contains(&"k8s:app=checkout".to_string()));

    // A CNI ADD for a Pod the API does not have: a CNI error naming it,
    // and nothing left behind.
    let links = c.node_links(1)?;
    let netns = axoneme_e2e::netns::Netns::create(&format!("{}-ghost", c.prefix))?;
    let mut config = c.cni_config(1, &[]);
    config["timeoutMs"] = serde_json::json!(2000);
    let out = c.cni(
        "ADD",
        &format!("{}-ghost", c.prefix),
        &netns.path().to_string_lossy(),
        "eth0",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=ghost",
        &serde_json::to_vec(&config)?,
    )?;
    assert!(!out.success, "{}", out.stdout);
    let err = out.json()?;
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or("")
            .contains("Pod default/ghost does not exist"),
        "{err}"
    );
    assert_eq!(c.node_links(1)?, links, "an interface was left behind");
    let eps = c.cli(1, &["-o", "json", "endpoint", "list"])?;
    assert!(!String::from_utf8_lossy(&eps.stdout).contains("ghost"));

    // With the API server gone, an ADD fails closed within its timeout
    // with an error that says so; running pods keep their enforcement.
    let uid = {
        let kube = c.kube.as_ref().context("control plane")?;
        kube.create_pod("default", "late", &c.nodes[1].name, &[("app", "late")])?
    };
    c.kube.as_mut().context("control plane")?.stop_apiserver();
    // (The agent's Pod watch notices at its next request.)
    std::thread::sleep(Duration::from_secs(1));
    let netns = axoneme_e2e::netns::Netns::create(&format!("{}-late", c.prefix))?;
    let started = Instant::now();
    let out = c.cni(
        "ADD",
        &format!("{}-late2", c.prefix),
        &netns.path().to_string_lossy(),
        "eth0",
        &format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=late-missing;K8S_POD_UID={uid}"
        ),
        &serde_json::to_vec(&config)?,
    )?;
    let took = started.elapsed();
    assert!(!out.success, "{}", out.stdout);
    let err = out.json()?;
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or("")
            .contains("Kubernetes API server is unreachable"),
        "{err}"
    );
    assert!(took < Duration::from_secs(4), "the ADD took {took:?}");
    assert_eq!(c.node_links(1)?, links, "an interface was left behind");
    until_post(&checkout, &pay, Some(200), Duration::from_secs(1))?;
    until_post(&intruder, &pay, None, Duration::from_secs(1))?;
    c.kube
        .as_mut()
        .context("control plane")?
        .start_apiserver()?;
    Ok(())
}
