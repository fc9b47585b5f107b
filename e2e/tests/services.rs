//! Services in standalone mode, end to end: `axoneme service` stores them,
//! every node's agent programs its LB maps, and the socket-LB programs on
//! the node's cgroup translate the pods' connections (the harness puts
//! each pod's processes in a cgroup under its node's, as a kubelet does).
//!
//! The seed scenario behind a ClusterIP: three payments backends on both
//! nodes, clients on both nodes, TCP and UDP, IPv4 and IPv6; the payments
//! policy still decides through the service address (the flow is judged
//! by the backend's identity after translation); and a continuous request
//! loop that sees no failure while a backend turns terminating, leaves, a
//! bad update is refused, and the client's agent restarts. Switching
//! `--kube-proxy-replacement` off and on again (agent restarts) keeps an
//! established connection through the service.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use axoneme_e2e::expect::seed_policy;
use axoneme_e2e::services::{
    all_failed, lines, requests, seed_policy_holds, service_yaml, udp_request, udp_server, until,
    Endpoint, RequestLoop,
};
use axoneme_e2e::{Cluster, ClusterConfig, CniPod, SeedPods};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
const PORTS: [(&str, &str, u16, u16); 2] = [("http", "TCP", 80, 8080), ("dns", "UDP", 53, 5353)];

/// Whether `n` new connections from `from` to the service all reached one
/// of the backends logging to `logs`.
fn one_backend(from: &CniPod, logs: &[std::path::PathBuf], n: u32) -> Result<bool> {
    let before: Vec<usize> = logs.iter().map(|l| lines(l)).collect();
    let got = requests(from, VIP4, 80, "GET", "/sticky", n)?;
    assert_eq!(got, BTreeMap::from([("200".to_string(), u64::from(n))]));
    let per: Vec<usize> = logs
        .iter()
        .zip(&before)
        .map(|(l, b)| lines(l) - b)
        .collect();
    Ok(per.contains(&(n as usize)))
}

fn apply(c: &Cluster, verb: &str, name: &str, yaml: &str) -> Result<std::process::Output> {
    let path = c.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(
        c.cli_command(0, &["service", verb, "-f", path.to_str().context("path")?])
            .output()?,
    )
}

/// `n` new connections to the IPv4 VIP from each of `from`, all answered,
/// spread over the backends whose request logs are `logs`: at least `min`
/// each.
fn spread(from: &[&CniPod], logs: &[std::path::PathBuf], n: u32, min: usize) -> Result<()> {
    for from in from {
        let before: Vec<usize> = logs.iter().map(|l| lines(l)).collect();
        let got = requests(from, VIP4, 80, "GET", "/spread", n)?;
        assert_eq!(
            got,
            BTreeMap::from([("200".to_string(), u64::from(n))]),
            "from {}",
            from.name
        );
        let per: Vec<usize> = logs
            .iter()
            .zip(&before)
            .map(|(l, b)| lines(l) - b)
            .collect();
        eprintln!("from {}: per backend {per:?}", from.name);
        assert_eq!(per.iter().sum::<usize>(), usize::try_from(n)?);
        assert!(per.iter().all(|k| *k >= min), "from {}: {per:?}", from.name);
    }
    Ok(())
}

/// UDP through each `(pod, VIP)`: answered by one of `backends`, the reply
/// from the service's address and port.
fn udp_through(pairs: &[(&CniPod, &str)], backends: &[&CniPod]) -> Result<()> {
    for (from, vip) in pairs {
        let a = udp_request(from, vip, 53)?.context("no UDP answer")?;
        assert!(backends.iter().any(|b| b.name == a.name), "{a:?}");
        assert_eq!((a.from.to_string(), a.port), (vip.to_string(), 53));
    }
    Ok(())
}

/// The payments policy imported, then holding through the service
/// address.
fn seed_policy_through_vip(c: &Cluster, seed: &SeedPods, posts: u32) -> Result<()> {
    let policy = seed_policy();
    c.import_policy(0, &policy)?;
    seed_policy_holds(seed, VIP4, posts, Duration::from_secs(10))
}

#[test]
fn cluster_ip_balances_across_nodes_and_policy_still_applies() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let seed = c.seed_pods()?;
    let p2 = c.add_pod(1, "payments-2", &[("app", "payments")])?;
    let p3 = c.add_pod(0, "payments-3", &[("app", "payments")])?;
    let client = c.add_pod(0, "client", &[("app", "client")])?;
    let logs = [
        c.dir.join("requests-payments-8080.log"),
        c.logging_backend(&p2, 8080)?,
        c.logging_backend(&p3, 8080)?,
    ];
    let backends: [&CniPod; 3] = [&seed.payments, &p2, &p3];
    for b in backends {
        let log = c.dir.join(format!("udp-{}.log", b.name));
        let p = udp_server(&b.ns, 5353, &b.name, &log)?;
        c.extra.push(p);
    }
    let nodes = [c.nodes[0].name.clone(), c.nodes[1].name.clone()];
    let endpoints = |terminating: Option<&str>, without: Option<&str>| -> Vec<Endpoint<'_>> {
        backends
            .iter()
            .filter(|b| Some(b.name.as_str()) != without)
            .map(|b| Endpoint {
                pod: b,
                node: &nodes[b.node],
                terminating: Some(b.name.as_str()) == terminating,
            })
            .collect()
    };
    let svc = |terminating, without| {
        service_yaml(
            "payments",
            &[VIP4, VIP6],
            &PORTS,
            &endpoints(terminating, without),
            "",
        )
    };
    let out = apply(&c, "create", "payments", &svc(None, None))?;
    assert!(
        out.status.success(),
        "service create: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Both nodes program it.
    for from in [&client, &seed.checkout] {
        until(
            &format!("{} reaches the service", from.name),
            Duration::from_secs(10),
            || Ok(requests(from, VIP4, 80, "GET", "/", 1)?.contains_key("200")),
        )?;
    }

    // What each node's datapath has: 2 addresses x 2 ports, 3 backends
    // each with a slot; the CLI's list shows it beside the stored service,
    // and `status` counts it.
    for node in 0..2 {
        let out = c.cli(node, &["-o", "json", "bpf", "lb", "list"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(v["enabled"], true);
        let frontends = v["frontends"].as_array().context("frontends")?;
        assert_eq!(frontends.len(), 4, "{v}");
        for f in frontends {
            let selected = f["backends"]
                .as_array()
                .context("backends")?
                .iter()
                .filter(|b| b["selected"] == true)
                .count();
            assert_eq!(selected, 3, "{f}");
        }
        let list = String::from_utf8(c.cli(node, &["service", "list"])?.stdout)?;
        assert!(list.contains("4/4"), "{list}");
        let st: serde_json::Value =
            serde_json::from_slice(&c.cli(node, &["-o", "json", "status"])?.stdout)?;
        let services = st["agent"]["status"]["components"]
            .as_array()
            .context("components")?
            .iter()
            .find(|c| c["name"] == "services")
            .context("a services component")?
            .clone();
        assert_eq!(services["ok"], true, "{services}");
        assert!(
            services["message"]
                .as_str()
                .unwrap_or_default()
                .contains("4 frontends"),
            "{services}"
        );
    }

    // 300 new connections from each node spread over the three backends
    // (uniform: 100 each expected, sd ≈ 8.2 per backend; 60 is ~5 sd off).
    spread(&[&client, &seed.checkout], &logs, 300, 60)?;

    // IPv6, and UDP with the reply shown as coming from the service.
    let got = requests(&client, VIP6, 80, "GET", "/v6", 20)?;
    assert_eq!(got, BTreeMap::from([("200".to_string(), 20)]));
    udp_through(&[(&client, VIP4), (&seed.checkout, VIP6)], &backends)?;

    seed_policy_through_vip(&c, &seed, 30)?;
    let got = requests(&seed.intruder, VIP6, 80, "POST", "/v1/charge", 2)?;
    assert!(all_failed(&got), "intruder over IPv6: {got:?}");

    // Changes under load: checkout POSTs through the VIP every 5 ms.
    let load = RequestLoop::start(&seed.checkout, VIP4, 80, "POST", "/v1/charge", &c.dir)?;
    std::thread::sleep(Duration::from_millis(500));
    // payments-2 terminates: no new connections reach it.
    let out = apply(&c, "update", "payments", &svc(Some("payments-2"), None))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let at = lines(&logs[1]);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        lines(&logs[1]),
        at,
        "a terminating backend got new connections"
    );
    // A bad update is refused by name and changes nothing.
    let bad = svc(Some("payments-2"), None).replace("port: 80,", "port: 0,");
    let out = apply(&c, "update", "payments", &bad)?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.ports[0].port"), "{err}");
    // payments-2 leaves; then checkout's agent restarts (its socket LB
    // stays attached, pinned).
    let out = apply(&c, "update", "payments", &svc(None, Some("payments-2")))?;
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(500));
    c.restart_agent(1)?;
    std::thread::sleep(Duration::from_millis(500));
    let got = load.finish()?;
    eprintln!("under changes: {got:?}");
    assert_eq!(got.len(), 1, "every request answered 200: {got:?}");
    assert!(got["200"] > 20, "{got:?}");

    // Deleted: the address is no service any more.
    let out = c.cli(0, &["service", "delete", "payments"])?;
    assert!(out.status.success());
    until(
        "the deleted service stops answering",
        Duration::from_secs(10),
        || Ok(all_failed(&requests(&client, VIP4, 80, "GET", "/", 1)?)),
    )?;
    Ok(())
}

/// A connection kept open through the VIP: one TCP socket from `pod`,
/// a GET every 50 ms; prints each status, and `error ...` and stops when
/// the connection breaks; stops at the stop file.
const KEPT: &str = r#"
import os, socket, sys, time
vip, stop = sys.argv[1], sys.argv[2]
s = socket.create_connection((vip, 80), timeout=2)
print("peer", s.getpeername()[0], flush=True)
while not os.path.exists(stop):
    try:
        s.sendall(b"GET /kept HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"ok GET /kept\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed")
            data += chunk
        print(data.split(b" ")[1].decode(), flush=True)
    except OSError as e:
        print("error", e, flush=True)
        break
    time.sleep(0.05)
"#;

#[test]
fn switching_kube_proxy_replacement_drains_nothing_established() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let seed = c.seed_pods()?;
    let nodes = [c.nodes[0].name.clone(), c.nodes[1].name.clone()];
    let yaml = service_yaml(
        "payments",
        &[VIP4, VIP6],
        &PORTS[..1],
        &[Endpoint {
            pod: &seed.payments,
            node: &nodes[0],
            terminating: false,
        }],
        "",
    );
    let out = apply(&c, "create", "payments", &yaml)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until(
        "checkout reaches the service",
        Duration::from_secs(10),
        || Ok(requests(&seed.checkout, VIP4, 80, "GET", "/", 1)?.contains_key("200")),
    )?;
    let stop = c.dir.join("stop-kept");
    let kept = seed
        .checkout
        .command(&["python3", "-c", KEPT, VIP4, stop.to_str().context("path")?])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));

    // Off: the socket-LB programs are removed; the kept connection (which
    // holds the backend's address) goes on, new ones to the VIP have
    // nothing to translate them.
    c.restart_agent_with(1, &["--kube-proxy-replacement=false"])?;
    until(
        "new connections to the VIP fail",
        Duration::from_secs(10),
        || {
            Ok(all_failed(&requests(
                &seed.checkout,
                VIP4,
                80,
                "GET",
                "/",
                1,
            )?))
        },
    )?;
    let out = c.cli(1, &["-o", "json", "bpf", "lb", "list"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["enabled"], false, "{v}");
    std::thread::sleep(Duration::from_millis(500));

    // On again: new connections are translated again.
    c.restart_agent_with(1, &[])?;
    until(
        "new connections to the VIP work again",
        Duration::from_secs(10),
        || Ok(requests(&seed.checkout, VIP4, 80, "GET", "/", 1)?.contains_key("200")),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, "")?;
    let out = kept.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = text.lines().skip(1).collect();
    eprintln!("kept connection: {} answers", answers.len());
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l == format!("peer {VIP4}")),
        "getpeername shows the service: {text}"
    );
    assert!(answers.len() > 20, "{text}");
    assert!(
        answers.iter().all(|a| *a == "200"),
        "the kept connection broke: {text}"
    );
    Ok(())
}

/// Without socket LB (`--socket-lb=false`) the pods' veth programs
/// translate per packet: the same service from both nodes, TCP and UDP
/// (the reply from the service's address), IPv6, the spread over the
/// backends, `ClientIP` affinity (each client's new connections on one
/// backend), and the payments policy judged by the backend (intruder
/// blocked, checkout's POST through the L7 proxy, its GET 403).
#[test]
fn per_packet_lb_at_the_pods_veths_without_socket_lb() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig {
        agent_args: vec!["--socket-lb=false".into()],
        ..ClusterConfig::default()
    })?;
    let seed = c.seed_pods()?;
    let p2 = c.add_pod(1, "payments-2", &[("app", "payments")])?;
    let client = c.add_pod(0, "client", &[("app", "client")])?;
    let logs = [
        c.dir.join("requests-payments-8080.log"),
        c.logging_backend(&p2, 8080)?,
    ];
    let backends: [&CniPod; 2] = [&seed.payments, &p2];
    for b in backends {
        let log = c.dir.join(format!("udp-{}.log", b.name));
        let p = udp_server(&b.ns, 5353, &b.name, &log)?;
        c.extra.push(p);
    }
    let nodes = [c.nodes[0].name.clone(), c.nodes[1].name.clone()];
    let endpoints: Vec<Endpoint<'_>> = backends
        .iter()
        .map(|b| Endpoint {
            pod: b,
            node: &nodes[b.node],
            terminating: false,
        })
        .collect();
    let yaml = service_yaml("payments", &[VIP4, VIP6], &PORTS, &endpoints, "");
    let out = apply(&c, "create", "payments", &yaml)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in 0..2 {
        let st: serde_json::Value =
            serde_json::from_slice(&c.cli(node, &["-o", "json", "status"])?.stdout)?;
        let services = st["agent"]["status"]["components"]
            .as_array()
            .context("components")?
            .iter()
            .find(|c| c["name"] == "services")
            .context("a services component")?
            .clone();
        assert!(
            services["message"]
                .as_str()
                .unwrap_or_default()
                .contains("per-packet LB at the pods' veths"),
            "{services}"
        );
    }
    // No socket-LB link: the translation is the veths'.
    for n in &c.nodes {
        assert!(
            !n.pin_dir.join("links").exists(),
            "{}: socket-LB links",
            n.name
        );
    }

    // From both nodes, over both backends (one per node: 150 new
    // connections, 75 each expected, sd ≈ 6.1; 40 is ~5.7 sd off).
    for from in [&client, &seed.checkout] {
        until(
            &format!("{} reaches the service", from.name),
            Duration::from_secs(10),
            || Ok(requests(from, VIP4, 80, "GET", "/", 1)?.contains_key("200")),
        )?;
    }
    spread(&[&client, &seed.checkout], &logs, 150, 40)?;
    let got = requests(&client, VIP6, 80, "GET", "/v6", 20)?;
    assert_eq!(got, BTreeMap::from([("200".to_string(), 20)]));
    udp_through(&[(&client, VIP4), (&seed.checkout, VIP6)], &backends)?;

    // ClientIP affinity per packet (by the client's address): each
    // client's new connections stay on one backend.
    let sticky = service_yaml(
        "payments",
        &[VIP4, VIP6],
        &PORTS,
        &endpoints,
        "  sessionAffinity: ClientIP\n",
    );
    let out = apply(&c, "update", "payments", &sticky)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for from in [&client, &seed.checkout] {
        // The first connections may come before the agents programmed it.
        until(
            &format!("{}'s connections stay on one backend", from.name),
            Duration::from_secs(10),
            || one_backend(from, &logs, 10),
        )?;
        assert!(
            one_backend(from, &logs, 40)?,
            "{}: 40 new connections over both backends",
            from.name
        );
    }

    seed_policy_through_vip(&c, &seed, 20)?;

    // Deleted: nothing translates the address any more.
    let out = c.cli(0, &["service", "delete", "payments"])?;
    assert!(out.status.success());
    until(
        "the deleted service stops answering",
        Duration::from_secs(10),
        || {
            Ok(all_failed(&requests(
                &seed.checkout,
                VIP4,
                80,
                "POST",
                "/v1/charge",
                1,
            )?))
        },
    )?;
    Ok(())
}
