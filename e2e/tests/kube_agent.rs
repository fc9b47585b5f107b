//! The agent in Kubernetes mode against a real kube-apiserver: pods are
//! Pod objects first, and their endpoints take their labels (and so their
//! identity) from the Pod, not from the runtime: the Pod's labels, its
//! namespace, its service account and the cluster. A label change moves a
//! running pod to another identity within a second; a CNI ADD for a Pod
//! the API does not have, or with the API server gone, fails closed and
//! leaves nothing behind. Policies applied with kubectl (CNPs, an invalid
//! edit, a delete, a NetworkPolicy, namespace-label and service-account
//! selectors) are enforced in the datapath of every node, through an API
//! server restart; labels that would spoof what Axoneme derives are
//! refused. A Node labelled with kubectl is selected by a host policy
//! applied with kubectl (the host firewall), the API server among the
//! agent's lifelines.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axoneme_e2e::expect::{seed_policy, stays, until_http, until_post, wait_condition, wait_for};
use axoneme_e2e::probe::{echo_server_in, exchange};
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};

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

/// A CNI ADD of `name` on node 1 that must be refused: its error
/// message (with its details) and how long the refusal took.
fn refused_add(
    c: &Cluster,
    name: &str,
    cni_args: &str,
    config: &serde_json::Value,
) -> Result<(String, Duration)> {
    let id = format!("{}-{name}", c.prefix);
    let netns = axoneme_e2e::netns::Netns::create(&id)?;
    let started = Instant::now();
    let out = c.cni(
        "ADD",
        &id,
        &netns.path().to_string_lossy(),
        "eth0",
        cni_args,
        &serde_json::to_vec(config)?,
    )?;
    let took = started.elapsed();
    if out.success {
        bail!("the ADD of {name} succeeded: {}", out.stdout);
    }
    let err = out.json()?;
    let msg = err["msg"].as_str().unwrap_or_default().to_string()
        + " "
        + err["details"].as_str().unwrap_or_default();
    Ok((msg, took))
}

/// How long the API server stays down (issue 22: a minute).
const API_SERVER_OUTAGE: Duration = Duration::from_secs(60);

/// What the kvstore holds that an API server outage must not take away:
/// every endpoint with its identity, and how many policies there are.
/// (Identities no endpoint uses may be collected meanwhile: that is GC.)
fn stored(c: &Cluster) -> Result<(Vec<String>, usize)> {
    let list = |what: &str| -> Result<Vec<serde_json::Value>> {
        let out = c.cli(0, &["-o", "json", what, "list"])?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).with_context(|| format!("{what} list -o json"))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    };
    let mut endpoints: Vec<String> = list("endpoint")?
        .iter()
        .map(|e| format!("{}/{} {}", e["node"], e["endpoint"], e["identity"]))
        .collect();
    endpoints.sort();
    Ok((endpoints, list("policy")?.len()))
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
    wait_condition(kube, "payments-api", "Valid", "True")?;
    wait_condition(kube, "payments-api", "Enforced", "True")?;
    let pay = payments.ip.to_string();
    until_post(&intruder, &pay, None, Duration::from_secs(10))?;
    until_post(&checkout, &pay, Some(200), Duration::from_secs(10))?;
    // The rest of the scenario, as in standalone mode, in both families.
    let pay6 = payments.ip6.context("payments' IPv6 address")?.to_string();
    let second = Duration::from_secs(1);
    until_post(&checkout, &pay6, Some(200), second)?;
    until_http(&checkout, "GET", &pay, "/v1/charge", Some(403), second)?;
    until_http(&checkout, "POST", &pay6, "/v1/refund", Some(403), second)?;
    until_post(&intruder, &pay6, None, second)?;

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

    // Policy audit mode from the Pod's annotation: the intruder gets in
    // while payments is annotated (its flows reported as `audit`), and is
    // blocked again once the annotation goes. The standalone command is
    // refused here, saying to annotate the Pod.
    let audit = "axoneme.io/policy-audit-mode";
    kube.kubectl(["annotate", "pod", "payments", &format!("{audit}=true")])?;
    until_post(&intruder, &pay, Some(200), Duration::from_secs(3))?;
    let out = c
        .cli_command(
            0,
            &[
                "endpoint",
                "config",
                &payments.container_id,
                "--policy-audit-mode=false",
            ],
        )
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(audit), "{err}");
    kube.kubectl(["annotate", "pod", "payments", &format!("{audit}-")])?;
    until_post(&intruder, &pay, None, Duration::from_secs(3))?;
    // Why, by Pod name (`policy explain` on payments' node): the default
    // deny of the seed policy, as its datapath has it.
    let out = c.cli(
        0,
        &[
            "policy",
            "explain",
            "--from-pod",
            "default/intruder",
            "--to-pod",
            "payments",
            "--port",
            "8080",
            "-o",
            "json",
        ],
    )?;
    let why: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(why["dropReason"], 133, "{why:#}");
    assert_eq!(why["datapath"][0]["agrees"], true, "{why:#}");

    // What the agents run, as kubectl shows it: checkout's CiliumEndpoint
    // with its identity and addresses, the CiliumIdentity, both nodes'
    // CiliumNodes; a deleted pod's CiliumEndpoint goes.
    let id = ipcache_identity(&c, 0, &checkout.ip.to_string())?.context("checkout's identity")?;
    let cep = |name: &str| -> Result<String> {
        let out = kube.kubectl_output([
            "get",
            "cep",
            name,
            "-o",
            "jsonpath={.status.identity.id} {.status.networking.addressing[*].ipv4} {.status.networking.node} {.status.state}",
        ])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let want = format!("{id} {} ", checkout.ip);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cep("checkout")?.starts_with(&want) {
        if Instant::now() > deadline {
            bail!(
                "checkout's CiliumEndpoint is {:?}, not {want}...",
                cep("checkout")?
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("CiliumEndpoint checkout: {}", cep("checkout")?);
    let ciliumid = kube.kubectl(["get", "ciliumid", &id.to_string(), "-o", "json"])?;
    let ciliumid: serde_json::Value = serde_json::from_slice(&ciliumid.stdout)?;
    assert_eq!(
        ciliumid["security-labels"]["k8s:app"], "checkout",
        "CiliumIdentity {id}: {ciliumid}"
    );
    let nodes = kube.kubectl(["get", "ciliumnode", "-o", "name"])?;
    for n in &c.nodes {
        assert!(
            String::from_utf8_lossy(&nodes.stdout).contains(&n.name),
            "no CiliumNode {}",
            n.name
        );
    }
    let gone = c.add_pod(1, "short-lived", &[("app", "short-lived")])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cep("short-lived")?.is_empty() {
        if Instant::now() > deadline {
            bail!("no CiliumEndpoint short-lived");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    c.delete_pod(&gone)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cep("short-lived")?.is_empty() {
        if Instant::now() > deadline {
            bail!("the CiliumEndpoint of deleted pod short-lived stays");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // A CNI ADD for a Pod the API does not have: a CNI error naming it,
    // and nothing left behind.
    let links = c.node_links(1)?;
    let mut config = c.cni_config(1, &[]);
    config["timeoutMs"] = serde_json::json!(2000);
    let (msg, _) = refused_add(
        &c,
        "ghost",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=ghost",
        &config,
    )?;
    assert!(msg.contains("Pod default/ghost does not exist"), "{msg}");
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
    let (msg, took) = refused_add(
        &c,
        "late",
        &format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=late-missing;K8S_POD_UID={uid}"
        ),
        &config,
    )?;
    assert!(
        msg.contains("Kubernetes API server is unreachable"),
        "{msg}"
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

const KNP_TEAM_A: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: payments-from-team-a, namespace: default}
spec:
  podSelector: {matchLabels: {app: payments}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
    ports:
    - {protocol: TCP, port: 8080}
"#;

/// A CNP admitting pods by the labels in `from` (YAML flow mapping).
fn cnp(name: &str, from: &str) -> String {
    format!(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: payments}}}}
  ingress:
  - fromEndpoints:
    - matchLabels: {from}
    toPorts:
    - ports: [{{port: "8080", protocol: TCP}}]
"#
    )
}

#[test]
fn policies_applied_with_kubectl_are_enforced() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig {
        kubernetes: true,
        agent_args: vec!["--enable-host-firewall=true".into()],
        ..ClusterConfig::default()
    })?;
    c.kube.as_ref().context("control plane")?.apply_yaml(
        r#"{"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team-a", "labels": {"team": "a"}}}"#,
    )?;
    let payments = c.add_pod(0, "payments", &[("app", "payments")])?;
    let local = c.add_pod(0, "local", &[("app", "local")])?;
    let intruder = c.add_pod(1, "intruder", &[("app", "intruder")])?;
    let client = c.add_pod_in(1, "team-a", "client", &[("app", "client")])?;
    let billing = c.add_pod_as(
        1,
        "default",
        "billing",
        &[("app", "billing")],
        Some("billing"),
    )?;
    c.logging_backend(&payments, 8080)?;
    let pay = payments.ip.to_string();
    let (post, ok) = ("/v1/charge", Some(200));
    let soon = Duration::from_secs(10);
    let a_while = Duration::from_secs(2);
    until_post(&intruder, &pay, ok, soon)?;
    let kube = c.kube.as_ref().context("control plane")?;

    // The seed policy, then an edit that makes it invalid: the last valid
    // version stays enforced; deleted, traffic opens on both nodes.
    let seed = std::fs::read_to_string(seed_policy())?;
    kube.apply_yaml(&seed)?;
    wait_condition(kube, "payments-api", "Enforced", "True")?;
    until_post(&intruder, &pay, None, soon)?;
    until_post(&local, &pay, None, soon)?;
    kube.apply_yaml(&seed.replace("\"8080\"", "\"80800\""))?;
    let valid = wait_condition(kube, "payments-api", "Valid", "False")?;
    assert!(
        valid.contains("spec.ingress[0].toPorts[0].ports[0].port: 80800"),
        "{valid}"
    );
    stays(&intruder, "POST", &pay, post, None, a_while)?;
    stays(&local, "POST", &pay, post, None, Duration::from_millis(500))?;
    kube.kubectl(["delete", "cnp", "payments-api"])?;
    let took = until_post(&intruder, &pay, ok, soon)?;
    eprintln!("delete: node 1's intruder admitted after {took:?}");
    until_post(&local, &pay, ok, soon)?;

    // A Kubernetes NetworkPolicy with a namespace selector: only pods of
    // namespaces labelled team=a.
    kube.apply_yaml(KNP_TEAM_A)?;
    until_post(&intruder, &pay, None, soon)?;
    until_post(&client, &pay, ok, Duration::from_secs(1))?;
    until_post(&local, &pay, None, Duration::from_secs(1))?;
    until_post(&billing, &pay, None, Duration::from_secs(1))?;
    // A service-account selector admits billing's pod beside them.
    kube.apply_yaml(&cnp(
        "payments-from-billing",
        "{io.cilium.k8s.policy.serviceaccount: billing}",
    ))?;
    let took = until_post(&billing, &pay, ok, soon)?;
    eprintln!("service-account selector: enforced {took:?} after kubectl apply");
    until_post(&client, &pay, ok, Duration::from_secs(1))?;
    // The namespace's labels are identity labels of its pods.
    kube.kubectl(["label", "namespace", "team-a", "team=b", "--overwrite"])?;
    let took = until_post(&client, &pay, None, soon)?;
    eprintln!("namespace relabelled: its pod no longer admitted after {took:?}");
    kube.kubectl(["label", "namespace", "team-a", "team=a", "--overwrite"])?;
    until_post(&client, &pay, ok, soon)?;

    // A Pod label that would spoof what Axoneme derives (the service
    // account, here billing's): a running pod keeps its last good labels,
    // a new pod is refused naming the key, and nothing is left behind.
    kube.kubectl([
        "label",
        "pod",
        "intruder",
        "io.cilium.k8s.policy.serviceaccount=billing",
    ])?;
    stays(&intruder, "POST", &pay, post, None, a_while)?;
    assert!(
        endpoint_labels(&c, 1, &intruder)?
            .contains(&"k8s:io.cilium.k8s.policy.serviceaccount=default".to_string()),
        "intruder's labels changed"
    );
    assert!(
        c.agent_log(1).contains("not valid identity labels"),
        "no warning in the agent's log"
    );
    kube.kubectl([
        "label",
        "pod",
        "intruder",
        "io.cilium.k8s.policy.serviceaccount-",
    ])?;
    let links = c.node_links(1)?;
    let uid = kube.create_pod(
        "default",
        "spoofer",
        &c.nodes[1].name,
        &[
            ("app", "spoofer"),
            ("io.kubernetes.pod.namespace", "kube-system"),
        ],
    )?;
    let (msg, _) = refused_add(
        &c,
        "spoofer",
        &format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=spoofer;K8S_POD_UID={uid}"
        ),
        &c.cni_config(1, &[]),
    )?;
    assert!(
        msg.contains("io.kubernetes.pod.namespace") && msg.contains("twice"),
        "{msg}"
    );
    assert_eq!(c.node_links(1)?, links, "an interface was left behind");

    // The API server goes away for a minute: enforcement does not stop
    // and nothing is deleted from the kvstore. Back, the watches resume: a
    // policy applied after the restart and a label change after it are
    // both enforced.
    let before = stored(&c)?;
    c.kube.as_mut().context("control plane")?.stop_apiserver();
    let down = Instant::now();
    let mut rounds = 0;
    while down.elapsed() < API_SERVER_OUTAGE {
        assert_eq!(client.http("POST", &pay, 8080, post), ok, "client");
        assert_eq!(billing.http("POST", &pay, 8080, post), ok, "billing");
        assert_eq!(intruder.http("POST", &pay, 8080, post), None, "intruder");
        rounds += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        stored(&c)?,
        before,
        "the kvstore lost state with the API server down"
    );
    eprintln!(
        "API server down {:?}: {rounds} rounds of probes held",
        down.elapsed()
    );
    c.kube
        .as_mut()
        .context("control plane")?
        .start_apiserver()?;
    let kube = c.kube.as_ref().context("control plane")?;
    kube.apply_yaml(&cnp("payments-from-trusted", "{app: trusted}"))?;
    wait_condition(kube, "payments-from-trusted", "Enforced", "True")?;
    stays(
        &intruder,
        "POST",
        &pay,
        post,
        None,
        Duration::from_millis(500),
    )?;
    kube.kubectl(["label", "pod", "intruder", "app=trusted", "--overwrite"])?;
    let took = until_post(&intruder, &pay, ok, soon)?;
    eprintln!("after the API server's restart: relabelled intruder admitted after {took:?}");
    until_post(&local, &pay, None, Duration::from_secs(1))?;

    // The host firewall: a Node labelled with kubectl is selected by a
    // host policy applied with kubectl; the other node is kept out of its
    // other ports; the agent keeps its API server (a lifeline).
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    echo_server_in(&n0.ns, 8080)?;
    let reaches = || {
        n1.ns
            .enter(|| exchange(n0.ip, 8080, Duration::from_millis(500)).is_ok())
    };
    ensure!(reaches()?, "node 1 to node 0:8080 before any host policy");
    kube.kubectl(["label", "node", &n0.name, "env=dev"])?;
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/host-policies/lock-down-dev-nodes.yaml"
    );
    kube.kubectl(["apply", "-f", example])?;
    wait_for("node 0 locked down", soon, || Ok(!reaches()?))?;
    let (_, body, _) = c.agent_get(0, "/v1/status")?;
    let line = serde_json::from_str::<serde_json::Value>(&body)?["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "host-firewall")
        .map(ToString::to_string)
        .unwrap_or_default();
    // The API server's address among the lifelines (`https://HOST:PORT`).
    let api = kube
        .server()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    ensure!(
        line.contains("env=dev") && line.contains("ingress enforced") && line.contains(api),
        "node 0's host-firewall line (API server {api}): {line}"
    );
    kube.kubectl(["delete", "-f", example])?;
    wait_for("node 0 open again", soon, reaches)?;
    Ok(())
}
