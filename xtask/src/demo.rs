//! `cargo xtask demo`: a real little Axoneme cluster on this machine — a
//! 3-member etcd, two leader-elected operators, two nodes (network
//! namespaces, each with a real agent and the eBPF datapath), pods plugged
//! in by the real CNI plugin — enforcing the seed CiliumNetworkPolicy
//! across nodes, with a verdict table of real connections.
//!
//! With `--kubernetes`, the same against a real Kubernetes control plane
//! (kube-apiserver and kube-controller-manager from `cargo xtask setup`):
//! pods are Pod objects whose labels the agents take, the policy is applied
//! with kubectl, and kubectl shows its conditions, the CiliumEndpoints and
//! the CiliumIdentities.
//!
//! The cluster stays up afterwards (tear it down with `--down`) unless
//! `--once` is given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::cluster::{teardown, Leftovers};
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Tear the cluster down at the end instead of leaving it running.
    #[arg(long)]
    once: bool,
    /// Tear down a cluster a previous demo left running, then exit.
    #[arg(long)]
    down: bool,
    /// Kubernetes mode: a real kube-apiserver, pods as Pod objects, the
    /// policy applied with kubectl.
    #[arg(long)]
    kubernetes: bool,
}

fn state_file(root: &Path) -> PathBuf {
    root.join("target").join("demo").join("cluster.json")
}

fn down(root: &Path) -> Result<()> {
    let path = state_file(root);
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("demo: nothing to tear down ({} not found)", path.display());
        return Ok(());
    };
    let left: Leftovers = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a demo state file", path.display()))?;
    teardown(&left);
    std::fs::remove_file(&path)?;
    println!(
        "demo: torn down ({} processes, {} namespaces)",
        left.pids.len(),
        left.netns.len()
    );
    Ok(())
}

/// One probe of the verdict table: a real HTTP request with curl.
struct Probe<'a> {
    from: &'a CniPod,
    to: &'a CniPod,
    method: &'static str,
    addr: String,
    port: u16,
    path: &'static str,
    /// The status expected; `None`: blocked (no answer).
    expect: Option<u16>,
}

fn verdicts(probes: &[Probe<'_>]) -> bool {
    println!(
        "      {:<9} {:<9} {:<42} {:<9} {:<9}",
        "FROM", "TO", "REQUEST", "EXPECTED", "OBSERVED"
    );
    let word = |s: Option<u16>| s.map_or("blocked".to_string(), |c| c.to_string());
    let mut all = true;
    for p in probes {
        let got = p.from.http(p.method, &p.addr, p.port, p.path);
        let ok = got == p.expect;
        all &= ok;
        let target = if p.addr.contains(':') {
            format!("[{}]:{}", p.addr, p.port)
        } else {
            format!("{}:{}", p.addr, p.port)
        };
        println!(
            "      {:<9} {:<9} {:<42} {:<9} {:<9} {}",
            p.from.name,
            p.to.name,
            format!("{} {target}{}", p.method, p.path),
            word(p.expect),
            word(got),
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    all
}

fn show(c: &Cluster, node: usize, args: &[&str]) -> Result<()> {
    println!("\n$ axoneme {}", args.join(" "));
    let out = c.cli_command(node, args).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn show_kubectl(c: &Cluster, args: &[&str]) -> Result<()> {
    let kube = c.kube.as_ref().context("not in Kubernetes mode")?;
    println!("\n$ kubectl {}", args.join(" "));
    let out = kube.kubectl_output(args)?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Waits until the seed policy's `Enforced` condition is True (every
/// node runs it), as `kubectl wait` would.
fn wait_enforced(c: &Cluster, name: &str) -> Result<()> {
    let kube = c.kube.as_ref().context("not in Kubernetes mode")?;
    let out = kube.kubectl_output([
        "wait",
        "--for=condition=Enforced",
        "--timeout=20s",
        "cnp",
        name,
    ])?;
    if !out.status.success() {
        bail!(
            "{name} was not Enforced within 20 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn run(root: &Path, args: DemoArgs) -> Result<()> {
    if args.down {
        return down(root);
    }
    if state_file(root).exists() {
        println!("demo: a previous demo is still up; tearing it down first");
        down(root)?;
    }
    super::build_all(root, false)?;
    std::env::set_var("AXONEME_BIN_DIR", root.join("target").join("debug"));

    let k8s = args.kubernetes;
    if k8s {
        println!("\n[1/5] cluster: a Kubernetes control plane (kube-apiserver, kube-controller-manager, their etcd), a 3-member etcd for Axoneme, 2 operators and 2 nodes (network namespaces with a real agent each) in Kubernetes mode");
    } else {
        println!("\n[1/5] cluster: 3-member etcd, 2 operators, 2 nodes (network namespaces with a real agent each)");
    }
    let started = Instant::now();
    let mut c = Cluster::start(&ClusterConfig {
        node_grace: 300,
        kubernetes: k8s,
        // Kubernetes mode is installed as a user installs it: with the chart.
        helm: k8s.then(|| vec!["hostFirewall.enabled=true".to_string()]),
        // The README's host firewall walkthrough runs on it.
        agent_args: vec!["--enable-host-firewall=true".to_string()],
        ..ClusterConfig::default()
    })?;
    println!(
        "      up in {:.1} s; etcd {}",
        started.elapsed().as_secs_f64(),
        c.etcd().endpoints().join(" ")
    );
    if k8s {
        println!("      installed with `helm install axoneme ./helm/axoneme -n kube-system`; the processes read its ConfigMap:");
        show_kubectl(
            &c,
            &[
                "-n",
                "kube-system",
                "get",
                "ds,deploy,cm",
                "-l",
                "app.kubernetes.io/part-of=axoneme",
            ],
        )?;
    }
    for (i, n) in c.nodes.iter().enumerate() {
        println!(
            "      node {i}: {} underlay {} / {}, agent socket {}",
            n.name,
            n.ip,
            n.ip6,
            n.socket.display()
        );
    }

    if let Some(kube) = &c.kube {
        println!(
            "      kube-apiserver {} (kubeconfig {})",
            kube.server(),
            kube.kubeconfig().display()
        );
    }
    println!(
        "\n[2/5] pods through the CNI plugin (ADD returns once identity and policy are enforced)"
    );
    if k8s {
        println!("      each a Pod object first; the agent takes its labels from the Pod, and the harness sets status.podIPs as a kubelet would");
    }
    let mut pods = Vec::new();
    for (node, name, app) in [
        (0, "payments", "payments"),
        (1, "checkout", "checkout"),
        (1, "intruder", "intruder"),
        // A second checkout pod, on payments' node: L7 between two pods of
        // one node.
        (0, "checkout2", "checkout"),
    ] {
        let pod = c.add_pod(node, name, &[("app", app)])?;
        // The CNI ADD's own duration (in Kubernetes mode the harness's
        // kubectl calls around it are not the pod's start-up).
        println!(
            "      {name:<9} node {node}  {:<14} {:<22} app={app}  ready in {} ms",
            pod.ip,
            pod.ip6.map(|a| a.to_string()).unwrap_or_default(),
            pod.ready.as_millis()
        );
        pods.push(pod);
    }
    let (payments, checkout, intruder, checkout2) = (&pods[0], &pods[1], &pods[2], &pods[3]);
    let requests = c.logging_backend(payments, 8080)?;
    c.http_server(intruder, 9090)?;
    println!("      HTTP servers: payments :8080 (logs every request it receives), intruder :9090");

    let pay4 = payments.ip.to_string();
    let pay6 = payments.ip6.map(|a| a.to_string()).unwrap_or_default();
    let table = |policy: bool| {
        let l7 = |code| if policy { Some(code) } else { Some(200) };
        let probe = |from, to, method, addr: &String, port, path, expect| Probe {
            from,
            to,
            method,
            addr: addr.clone(),
            port,
            path,
            expect,
        };
        vec![
            probe(
                checkout,
                payments,
                "POST",
                &pay4,
                8080,
                "/v1/charge",
                Some(200),
            ),
            probe(
                checkout,
                payments,
                "POST",
                &pay6,
                8080,
                "/v1/charge",
                Some(200),
            ),
            probe(
                checkout,
                payments,
                "GET",
                &pay4,
                8080,
                "/v1/charge",
                l7(403),
            ),
            probe(
                checkout,
                payments,
                "POST",
                &pay6,
                8080,
                "/v1/refund",
                l7(403),
            ),
            probe(
                checkout2,
                payments,
                "POST",
                &pay4,
                8080,
                "/v1/charge",
                Some(200),
            ),
            probe(
                checkout2,
                payments,
                "GET",
                &pay6,
                8080,
                "/v1/charge",
                l7(403),
            ),
            probe(
                intruder,
                payments,
                "POST",
                &pay4,
                8080,
                "/v1/charge",
                if policy { None } else { Some(200) },
            ),
            probe(
                intruder,
                payments,
                "POST",
                &pay6,
                8080,
                "/v1/charge",
                if policy { None } else { Some(200) },
            ),
            probe(
                payments,
                intruder,
                "GET",
                &intruder.ip.to_string(),
                9090,
                "/",
                Some(200),
            ),
        ]
    };
    // The first packets of a path wait for neighbour discovery (IPv6 can
    // take a second while new links finish duplicate address detection).
    let warm = Instant::now();
    for addr in [&pay4, &pay6] {
        while !checkout.http_ok(addr, 8080) && warm.elapsed() < Duration::from_secs(10) {}
    }
    std::fs::write(&requests, "")?;
    println!(
        "      paths between the nodes answer after {} ms",
        warm.elapsed().as_millis()
    );
    println!("\n[3/5] no policy yet: every flow is allowed");
    let mut ok = verdicts(&table(false));

    println!("\n[4/5] the seed policy ../shared/testdata/seed-payments-policy.yaml");
    let seed = root.join("../shared/testdata/seed-payments-policy.yaml");
    let seed = seed.to_str().context("seed path")?;
    show(&c, 0, &["policy", "validate", seed])?;
    let imported = Instant::now();
    if k8s {
        show_kubectl(&c, &["apply", "-f", seed])?;
    } else {
        show(&c, 0, &["policy", "import", seed, "--wait", "10"])?;
    }
    while intruder.http("POST", &pay4, 8080, "/v1/charge").is_some() {
        if imported.elapsed() > Duration::from_secs(10) {
            bail!("the policy was not enforced within 10 s");
        }
    }
    println!(
        "      enforced on payments' node {} ms after import (first intruder probe that failed)",
        imported.elapsed().as_millis()
    );
    if k8s {
        wait_enforced(&c, "payments-api")?;
        show_kubectl(&c, &["get", "cnp", "-A"])?;
    }
    // From here on the backend's log shows only what the policy let through.
    std::fs::write(&requests, "")?;
    ok &= verdicts(&table(true));
    println!(
        "      checkout's and checkout2's requests went through node 0's L7 proxy (403 = Cilium's \"Access denied\"),\n      \
         checkout from node 1, checkout2 from payments' own node; the intruder never got a connection"
    );
    println!("\n      requests the payments backend received under the policy (a denied one never arrives):");
    for l in std::fs::read_to_string(&requests)?.lines() {
        println!("        {l}");
    }

    println!("\n      drops seen by payments' agent (reason 133 = policy denied):");
    show(&c, 0, &["events", "--type", "drop", "--last", "4"])?;
    println!("\n      the L7 proxy's decisions on payments' node:");
    show(&c, 0, &["events", "--type", "http", "--last", "4"])?;
    show(&c, 0, &["bpf", "policy", "get", &payments.container_id])?;
    show(&c, 0, &["endpoint", "list"])?;
    show(&c, 0, &["node", "list"])?;
    if k8s {
        println!("\n      what the operator mirrors back for kubectl:");
        show_kubectl(&c, &["get", "cnp,cep,ciliumid", "-A"])?;
    }

    println!("\n[5/5] status of node 0");
    show(&c, 0, &["status", "--verbose"])?;
    println!(
        "\n      why, from payments' agent (`policy explain`: the rule that decided, and its datapath's word):"
    );
    let (to, from_node) = (&payments.container_id, &c.nodes[1].name);
    for (pod, request) in [
        (intruder, &[][..]),
        (checkout, &["--method", "GET", "--path", "/v1/charge"][..]),
    ] {
        let from = format!("{from_node}/{}", pod.container_id);
        let mut args = vec![
            "policy",
            "explain",
            "--from-endpoint",
            &from,
            "--to-endpoint",
            to,
            "--port",
            "8080",
        ];
        args.extend(request);
        show(&c, 0, &args)?;
    }
    if !ok {
        bail!("some observed verdicts differ from the expected ones (see MISMATCH above)");
    }

    if args.once {
        println!("\ndemo: done; tearing down (--once)");
        drop(pods);
        return Ok(());
    }
    let sockets: Vec<PathBuf> = c.nodes.iter().map(|n| n.socket.clone()).collect();
    let kubectl = c.kube.as_ref().map(|k| {
        format!(
            "\n  export KUBECONFIG={}\
             \n  {} get cnp,cep,ciliumid,ciliumnode -A\
             \n  {1} label pod checkout app=other --overwrite   # checkout gets a new identity; its POST is blocked\
             \n  {1} delete cnp payments-api                    # and watch the intruder get through",
            k.kubeconfig().display(),
            k.kubectl_bin().display()
        )
    });
    let payments_id = payments.container_id.clone();
    let left = c.detach(pods);
    let state = state_file(root);
    std::fs::create_dir_all(state.parent().expect("has parent"))?;
    std::fs::write(&state, serde_json::to_string_pretty(&left)?)?;
    println!(
        "\nThe cluster is still running. Try:\n\
         \n  export AXONEME_ETCD_ENDPOINTS={}\
         \n  export AXONEME_AGENT_SOCKET={}     # node 0 (node 1: {})\
         \n  target/debug/axoneme status --verbose\
         \n  target/debug/axoneme endpoint list\
         \n  target/debug/axoneme bpf policy get {payments_id}\
         \n  target/debug/axoneme bpf ipcache list\
         \n  target/debug/axoneme bpf ct list\
         \n  {}\
         \n  ip netns exec {} curl -s http://{pay4}:8080/ >/dev/null && echo allowed{}\
         \n\nTear down: cargo xtask demo --down",
        left.etcd_endpoints.join(","),
        sockets[0].display(),
        sockets[1].display(),
        if k8s {
            "target/debug/axoneme policy list"
        } else {
            "target/debug/axoneme policy delete payments-api      # and watch the intruder get through"
        },
        left.netns
            .iter()
            .find(|n| n.ends_with("-intruder"))
            .cloned()
            .unwrap_or_default(),
        kubectl.unwrap_or_default(),
    );
    Ok(())
}
