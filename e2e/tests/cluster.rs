//! The local cluster end to end: two nodes, pods plugged in by the real
//! CNI plugin, the seed policy's L3/L4 part enforced across nodes, policy
//! propagation, pod deletion, an agent restart (which costs nothing) and a
//! node's deletion (which is felt at once).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::expect::seed_policy;
use axoneme_e2e::expect::wait_for;
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};

/// Polls until `curl` gives `want`, within `timeout`.
fn eventually(from: &CniPod, addr: &str, port: u16, want: bool, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if from.http_ok(addr, port) == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} -> {addr}:{port}: still {} after {timeout:?}",
                from.name,
                if want { "blocked" } else { "connecting" }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls until `POST /v1/charge` from `from` to `addr:8080` answers
/// `want` (`None`: no answer, blocked).
fn eventually_post(from: &CniPod, addr: &str, want: Option<u16>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = from.http("POST", addr, 8080, "/v1/charge");
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} -> {addr}:8080: {got:?}, not {want:?}, after {timeout:?}",
                from.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(c: &Cluster, node: usize, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = c.cli(node, &all)?;
    serde_json::from_slice(&out.stdout).context("CLI JSON")
}

fn ipcache_has(c: &Cluster, node: usize, ip: &str) -> Result<bool> {
    let v = json(c, node, &["bpf", "ipcache", "list"])?;
    Ok(v.as_array().into_iter().flatten().any(|e| {
        e["prefix"]
            .as_str()
            .is_some_and(|p| p.split('/').next() == Some(ip))
    }))
}

/// How many L7 events in `events` (`axoneme events -o json`) from `src`,
/// at or after `since_ms`, have (direction, verdict, "METHOD path", status).
fn http_events(
    events: &serde_json::Value,
    want: (&str, &str, &str, u64),
    src: &str,
    since_ms: u64,
) -> usize {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            let request = format!(
                "{} {}",
                e["http"]["method"].as_str().unwrap_or(""),
                e["http"]["path"].as_str().unwrap_or("")
            );
            e["direction"] == want.0
                && e["verdict"] == want.1
                && request == want.2
                && e["http"]["status"] == want.3
                && e["src"] == src
                && e["time_ms"].as_u64().is_some_and(|t| t >= since_ms)
        })
        .count()
}

#[test]
fn seed_policy_across_two_nodes() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let payments = c.add_pod(0, "payments", &[("app", "payments")])?;
    let checkout = c.add_pod(1, "checkout", &[("app", "checkout")])?;
    let intruder = c.add_pod(1, "intruder", &[("app", "intruder")])?;
    // Different nodes get different pod CIDRs.
    assert_ne!(payments.ip.octets()[2], checkout.ip.octets()[2]);
    let requests = c.logging_backend(&payments, 8080)?;
    c.http_server(&intruder, 9090)?;
    let pay4 = payments.ip.to_string();
    let pay6 = payments.ip6.context("no IPv6")?.to_string();

    // No policy: everything connects, across nodes, both families.
    for from in [&checkout, &intruder] {
        eventually(from, &pay4, 8080, true, Duration::from_secs(5))?;
        eventually(from, &pay6, 8080, true, Duration::from_secs(5))?;
    }

    // The seed policy: only checkout reaches payments:8080.
    let seed = seed_policy();
    c.import_policy(0, &seed)?;
    eventually(&intruder, &pay4, 8080, false, Duration::from_secs(5))?;
    eventually(&intruder, &pay6, 8080, false, Duration::from_secs(5))?;
    // L7 across nodes, through node 0's proxy: only POST /v1/charge; the
    // others get Cilium's 403 on a working connection. The intruder gets
    // no answer at all (blocked at L3/L4, not a 403).
    std::fs::write(&requests, "")?;
    for addr in [&pay4, &pay6] {
        assert_eq!(
            checkout.http("POST", addr, 8080, "/v1/charge"),
            Some(200),
            "{addr}"
        );
        assert_eq!(
            checkout.http("GET", addr, 8080, "/v1/charge"),
            Some(403),
            "{addr}"
        );
        assert_eq!(
            checkout.http("POST", addr, 8080, "/v1/refund"),
            Some(403),
            "{addr}"
        );
        assert_eq!(
            intruder.http("POST", addr, 8080, "/v1/charge"),
            None,
            "{addr}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&requests)?,
        "POST /v1/charge\nPOST /v1/charge\n",
        "the backend saw a denied request"
    );
    let http = json(&c, 0, &["events", "--type", "http"])?;
    assert!(
        http.as_array()
            .into_iter()
            .flatten()
            .any(|e| e["http"]["status"] == 403
                && e["http"]["path"] == "/v1/refund"
                && e["verdict"] == "denied"
                && e["src"] == checkout.ip.to_string().as_str()),
        "no L7 event for the denied request: {http}"
    );
    // Payments' egress is not restricted (and the replies come back).
    assert!(
        payments.http_ok(&intruder.ip.to_string(), 9090),
        "payments egress"
    );

    // The drop is visible through the CLI: an event with reason 133 from
    // the intruder on payments' node; and the allow entry counted the
    // checkout flows.
    let intruder4 = intruder.ip.to_string();
    wait_for(
        "drop event 133 in `axoneme events`",
        Duration::from_secs(3),
        || {
            let ev = json(&c, 0, &["events", "--type", "drop"])?;
            Ok(ev.as_array().into_iter().flatten().any(|e| {
                e["reason"] == 133
                    && e["src"] == intruder4.as_str()
                    && e["dport"] == 8080
                    && e["reason_text"] == "Policy denied"
            }))
        },
    )?;
    let entries = json(&c, 0, &["bpf", "policy", "get", &payments.container_id])?;
    let allow = entries
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["direction"] == "ingress" && e["ports"] == "8080" && e["protocol"] == "TCP")
        .with_context(|| format!("no TCP/8080 entry in {entries}"))?;
    assert!(allow["packets"].as_u64().unwrap_or(0) > 0, "{allow}");
    assert_eq!(allow["verdict"], "redirect", "{allow}");
    assert_eq!(
        allow["proxy_port"],
        axoneme_e2e::cluster::PROXY_PORT,
        "{allow}"
    );

    // Under load (wrk, 2 keep-alive connections, 1 s; after the event
    // checks: its thousands of L7 events fill the ring): every allowed
    // request is answered by the backend, every denied one by the proxy
    // with 403 on a connection that stays usable (no socket errors), and
    // the backend never sees a GET.
    std::fs::write(&requests, "")?;
    let url = format!("http://{pay4}:8080/v1/charge");
    let posts = axoneme_e2e::http::wrk(&checkout.ns, "POST", &url, 2, 1)?;
    assert!(posts.requests > 0, "{posts:?}");
    assert_eq!((posts.non_2xx, posts.socket_errors), (0, 0), "{posts:?}");
    let gets = axoneme_e2e::http::wrk(&checkout.ns, "GET", &url, 2, 1)?;
    assert!(gets.requests > 0, "{gets:?}");
    assert_eq!(
        (gets.non_2xx, gets.socket_errors),
        (gets.requests, 0),
        "{gets:?}"
    );
    let seen = std::fs::read_to_string(&requests)?;
    let lines = seen.lines().count() as u64;
    assert!(
        seen.lines().all(|l| l == "POST /v1/charge")
            && (posts.requests..=posts.requests + 2).contains(&lines),
        "wrk sent {} POSTs; the backend saw {lines} requests, {:?}...",
        posts.requests,
        seen.lines().find(|l| *l != "POST /v1/charge")
    );
    // Propagation: delete and re-import while traffic runs.
    c.cli(0, &["policy", "delete", "payments-api"])?;
    eventually(&intruder, &pay4, 8080, true, Duration::from_secs(5))?;
    c.import_policy(0, &seed)?;
    eventually(&intruder, &pay4, 8080, false, Duration::from_secs(5))?;

    // Propagation to the other node, and egress L7: a policy for checkout
    // (node 1) lets it reach payments:8080 only, with `POST /v1/.*`.
    // checkout -> intruder (same node) stops; node 1's proxy answers GET
    // itself (403, its egress rules); POST /v1/refund passes node 1 and is
    // refused by node 0's ingress rules; POST /v1/charge passes both. The
    // proxy's upstream connection keeps checkout's address, so node 0
    // still sees checkout (the seed admits no one else).
    let egress = c.dir.join("checkout-egress.yaml");
    std::fs::write(
        &egress,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: checkout-egress\nspec:\n  endpointSelector:\n    matchLabels:\n      app: checkout\n  egress:\n  - toEndpoints:\n    - matchLabels:\n        app: payments\n    toPorts:\n    - ports:\n      - port: \"8080\"\n        protocol: TCP\n      rules:\n        http:\n        - method: POST\n          path: /v1/.*\n",
    )?;
    let intr4 = intruder.ip.to_string();
    assert!(
        checkout.http_ok(&intr4, 9090),
        "checkout -> intruder before"
    );
    c.import_policy(1, &egress)?;
    eventually(&checkout, &intr4, 9090, false, Duration::from_secs(5))?;
    std::fs::write(&requests, "")?;
    let chk4 = checkout.ip.to_string();
    let since = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    for addr in [&pay4, &pay6] {
        for (method, path, want) in [
            ("POST", "/v1/charge", 200),
            ("GET", "/v1/charge", 403),
            ("POST", "/v1/refund", 403),
        ] {
            assert_eq!(
                checkout.http(method, addr, 8080, path),
                Some(want),
                "checkout {method} {path} to {addr} under its egress L7 policy"
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(&requests)?,
        "POST /v1/charge\nPOST /v1/charge\n",
        "the backend saw a denied request"
    );
    let node1 = json(&c, 1, &["events", "--type", "http"])?;
    for want in [
        ("egress", "denied", "GET /v1/charge", 403),
        ("egress", "forwarded", "POST /v1/refund", 403),
        ("egress", "forwarded", "POST /v1/charge", 200),
    ] {
        assert!(
            http_events(&node1, want, &chk4, since) > 0,
            "node 1 has no event {want:?}: {node1}"
        );
    }
    let node0 = json(&c, 0, &["events", "--type", "http"])?;
    assert_eq!(
        http_events(
            &node0,
            ("ingress", "denied", "POST /v1/refund", 403),
            &chk4,
            since
        ),
        1,
        "node 0 did not refuse checkout's POST /v1/refund itself: {node0}"
    );
    assert_eq!(
        http_events(
            &node0,
            ("ingress", "denied", "GET /v1/charge", 403),
            &chk4,
            since
        ),
        0,
        "a GET that node 1 refused reached node 0: {node0}"
    );
    c.cli(1, &["policy", "delete", "checkout-egress"])?;
    eventually(&checkout, &intr4, 9090, true, Duration::from_secs(5))?;

    // Deleting a pod removes its ipcache entries everywhere, its etcd
    // record, its veth and its state.
    let host_if = intruder.result["interfaces"][0]["name"]
        .as_str()
        .context("host interface")?
        .to_string();
    assert!(c.node_links(1)?.contains(&host_if));
    let intruder_ip = intruder.ip.to_string();
    c.delete_pod(&intruder)?;
    for node in [0, 1] {
        wait_for(
            "intruder gone from the ipcache",
            Duration::from_secs(5),
            || Ok(!ipcache_has(&c, node, &intruder_ip)?),
        )?;
    }
    assert!(!c.node_links(1)?.contains(&host_if), "veth leaked");
    let eps = json(&c, 0, &["endpoint", "list"])?;
    assert!(
        !eps.to_string().contains(&intruder.container_id),
        "record left: {eps}"
    );
    // DEL again is fine (idempotent).
    c.delete_pod(&intruder)?;

    // An agent restart is not a node death: with node 1's agent killed
    // (-9) for longer than a restart takes, node 0 still trusts checkout,
    // and its allowed cross-node request still passes node 0's L7 proxy.
    let checkout_ip = checkout.ip.to_string();
    assert!(ipcache_has(&c, 0, &checkout_ip)?);
    c.nodes[1].agent.as_mut().context("agent 1")?.kill9();
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(6) {
        assert_eq!(
            checkout.http("POST", &pay4, 8080, "/v1/charge"),
            Some(200),
            "checkout lost its allowed flow {:?} after its agent died",
            killed.elapsed()
        );
        assert!(ipcache_has(&c, 0, &checkout_ip)?, "node 0 forgot checkout");
        std::thread::sleep(Duration::from_millis(300));
    }
    c.start_agent(1)?;
    c.wait_node_ready(1, Duration::from_secs(20))?;
    eventually_post(&checkout, &pay4, Some(200), Duration::from_secs(5))?;
    assert!(
        c.agent_log(1)
            .contains("node lease of the previous run resumed"),
        "the restarted agent did not resume its lease"
    );

    // A node gone for good: `axoneme node delete` revokes its lease; node
    // 0 forgets its pods at once (checkout is then "world" to payments).
    c.nodes[1].agent.as_mut().context("agent 1")?.kill9();
    let node1 = c.nodes[1].name.clone();
    c.cli(0, &["node", "delete", &node1])?;
    let deleted = Instant::now();
    wait_for(
        "checkout gone from node 0's ipcache",
        Duration::from_secs(5),
        || Ok(!ipcache_has(&c, 0, &checkout_ip)?),
    )?;
    eprintln!(
        "deleted node's pods untrusted after {:?}",
        deleted.elapsed()
    );
    // Its node record went with the lease; its pod CIDRs stay reserved.
    let nodes = json(&c, 0, &["node", "list"])?;
    let n1 = nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == node1.as_str())
        .with_context(|| format!("node 1 missing from {nodes}"))?;
    assert_eq!(n1["alive"], false, "{nodes}");
    assert_eq!(n1["podCidrs"].as_array().map_or(0, Vec::len), 2, "{nodes}");
    eventually_post(&checkout, &pay4, None, Duration::from_secs(5))?;

    // The agent comes back: it re-announces its endpoints on a new lease,
    // and checkout is trusted again.
    c.start_agent(1)?;
    c.wait_node_ready(1, Duration::from_secs(20))?;
    eventually_post(&checkout, &pay4, Some(200), Duration::from_secs(10))?;
    Ok(())
}
