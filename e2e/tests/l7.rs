//! L7 policy end to end, as a matrix: {ingress rule, egress rule} x {client
//! on the server's node, on another node} x {IPv4, IPv6} x {HTTP/1.1,
//! h2c}. In every cell, on one kept-alive connection: an allowed request
//! reaches the backend and returns its 200, a denied one gets the proxy's
//! 403, and the next allowed one still gets through; a peer without any
//! allow gets no connection at all.
//!
//! The same-node cells are the ones local delivery could break: the
//! proxy's upstream connection borrows the client's address, so the
//! server's answers are addressed to a pod of the same node, yet belong
//! to the proxy (docs/architecture.md, "L7 proxy: decisions"). They are
//! also the ones whose bytes go socket to socket (`--proxy-sockmap`, on by
//! default): every cell's answers are checked as they are, and the node's
//! counters show the messages went that way.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axoneme_e2e::cluster::sum_samples;
use axoneme_e2e::{Cluster, ClusterConfig, CniPod};

const H1: u16 = 8080;
const H2C: u16 = 8082;
/// What every cell sends on one connection, and what it must get.
const SESSION: [(&str, Option<u16>); 3] = [
    ("/public/a", Some(200)),
    ("/private", Some(403)),
    ("/public/b", Some(200)),
];

fn policy(name: &str, body: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n{body}")
}

/// The L7 part both policies share: GET /public/... on both ports.
const L7_PORTS: &str = "    toPorts:
    - ports:
      - port: \"8080\"
        protocol: TCP
      - port: \"8082\"
        protocol: TCP
      rules:
        http:
        - method: GET
          path: /public/.*
";

fn ingress_policy() -> String {
    policy(
        "web-ingress-l7",
        &format!(
            "  endpointSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: client\n{L7_PORTS}"
        ),
    )
}

fn egress_policy() -> String {
    policy(
        "client-egress-l7",
        &format!(
            "  endpointSelector:\n    matchLabels:\n      app: client\n  egress:\n  - toEndpoints:\n    - matchLabels:\n        app: web\n{L7_PORTS}"
        ),
    )
}

fn import(c: &Cluster, name: &str, yaml: &str) -> Result<()> {
    let path = c.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    c.import_policy(0, &path)?;
    Ok(())
}

/// Polls until `GET /private` from `from` to `addr:port` gets the proxy's
/// 403 (the policy is enforced on both nodes' proxies' paths).
fn until_enforced(from: &CniPod, addr: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while from.http("GET", addr, port, "/private") != Some(403) {
        if Instant::now() > deadline {
            bail!("{} -> {addr}:{port}: L7 rule not enforced", from.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs every cell of one rule kind: both clients, both families, both
/// protocols. Returns the requests the backend should have seen.
fn cells(clients: &[&CniPod], web: &CniPod, rule: &str, failures: &mut Vec<String>) -> usize {
    let web6 = web.ip6.map(|a| a.to_string()).unwrap_or_default();
    let mut expected = 0;
    for client in clients {
        for addr in [web.ip.to_string(), web6.clone()] {
            for (port, h2c) in [(H1, false), (H2C, true)] {
                let paths: Vec<&str> = SESSION.iter().map(|(p, _)| *p).collect();
                let want: Vec<Option<u16>> = SESSION.iter().map(|(_, w)| *w).collect();
                let cell = format!(
                    "{rule} rule, {} (node {}) -> web (node {}) {addr}:{port} {}",
                    client.name,
                    client.node,
                    web.node,
                    if h2c { "h2c" } else { "HTTP/1.1" }
                );
                match client.http_session(&addr, port, &paths, h2c) {
                    Ok((got, connects)) => {
                        if got != want || connects != 1 {
                            failures.push(format!(
                                "{cell}: got {got:?} on {connects} connections, want {want:?} on 1"
                            ));
                        }
                    }
                    Err(e) => failures.push(format!("{cell}: {e:#}")),
                }
                expected += 2;
            }
        }
    }
    expected
}

/// Messages node `i`'s sockmap handed socket to socket so far.
fn redirected(c: &Cluster, i: usize) -> Result<f64> {
    Ok(sum_samples(
        &c.agent_metrics(i)?,
        "axoneme_proxy_sockmap_messages_total{path=\"redirected\"}",
    ))
}

/// The backend's log: requests that reached it, as `METHOD PATH PROTO`.
fn seen(log: &std::path::Path) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(log)?
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn l7_rules_for_clients_on_the_same_node_and_across_nodes() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let web = c.add_pod(0, "web", &[("app", "web")])?;
    let local = c.add_pod(0, "client-local", &[("app", "client")])?;
    let remote = c.add_pod(1, "client-remote", &[("app", "client")])?;
    let stranger = c.add_pod(0, "stranger", &[("app", "stranger")])?;
    // Declared after the pods: nginx (in web's cgroup) is stopped before
    // their cgroups are removed.
    let (_backend, log) = axoneme_e2e::http::nginx_backend(&web, H1, H2C, &c.dir.join("web"))?;
    c.http_server(&stranger, H1)?;
    let web4 = web.ip.to_string();
    let web6 = web.ip6.context("no IPv6")?.to_string();
    let clients = [&local, &remote];
    let mut failures = Vec::new();

    // No L7 rule yet: the nodes have no routing rule of the proxy's (the
    // kernel keeps their local and main tables merged).
    let proxy_rules = |c: &Cluster| -> Result<Vec<usize>> {
        c.nodes
            .iter()
            .map(|n| {
                let out = n.ns.ip(&["rule", "list"])?;
                let rules = String::from_utf8_lossy(&out.stdout);
                Ok(rules.matches("fwmark 0x1/0x1 lookup 100").count())
            })
            .collect()
    };
    ensure!(
        proxy_rules(&c)? == [0, 0],
        "a proxy rule before any L7 rule"
    );

    // Ingress rule on web: judged by node 0's proxy, for the local client
    // (same node) and the remote one.
    import(&c, "ingress", &ingress_policy())?;
    // (Both families: the first packets of a path wait for neighbour
    // discovery, which must not eat a cell's time.)
    for client in clients {
        until_enforced(client, &web4, H1)?;
        until_enforced(client, &web6, H1)?;
    }
    // Every agent installed the redirect once it had an L7 rule.
    ensure!(
        proxy_rules(&c)? == [1, 1],
        "proxy rules per node: {:?}",
        proxy_rules(&c)?
    );
    std::fs::write(&log, "")?;
    let before = redirected(&c, 0)?;
    let expected = cells(&clients, &web, "ingress", &mut failures);
    // Node 0 holds the local client, the proxy and web: both legs.
    if redirected(&c, 0)? <= before {
        failures.push("ingress rule: node 0 redirected no message socket to socket".into());
    }
    // A peer without any allow: no connection, not a 403.
    for addr in [&web4, &web6] {
        for port in [H1, H2C] {
            let got = stranger.http("GET", addr, port, "/public/a");
            if got.is_some() {
                failures.push(format!(
                    "ingress rule: stranger -> {addr}:{port} got {got:?}"
                ));
            }
        }
    }
    let requests = seen(&log)?;
    if requests.len() != expected || requests.iter().any(|r| !r.starts_with("GET /public/")) {
        failures.push(format!(
            "ingress rule: the backend saw {requests:?}, want {expected} GET /public/..."
        ));
    }
    c.cli(0, &["policy", "delete", "web-ingress-l7"])?;

    // Egress rule on the clients: judged by each client's own node's
    // proxy (node 0's for the local one, node 1's for the remote one).
    import(&c, "egress", &egress_policy())?;
    for client in clients {
        until_enforced(client, &web4, H1)?;
        until_enforced(client, &web6, H1)?;
    }
    std::fs::write(&log, "")?;
    let before = [redirected(&c, 0)?, redirected(&c, 1)?];
    let expected = cells(&clients, &web, "egress", &mut failures);
    // Each client and its own node's proxy: socket to socket on both nodes.
    for (i, before) in before.into_iter().enumerate() {
        if redirected(&c, i)? <= before {
            failures.push(format!(
                "egress rule: node {i} redirected no message socket to socket"
            ));
        }
    }
    // A destination the clients' egress does not allow: no connection.
    let stranger4 = stranger.ip.to_string();
    for client in clients {
        let got = client.http("GET", &stranger4, H1, "/public/a");
        if got.is_some() {
            failures.push(format!(
                "egress rule: {} -> stranger got {got:?}",
                client.name
            ));
        }
    }
    let requests = seen(&log)?;
    if requests.len() != expected || requests.iter().any(|r| !r.starts_with("GET /public/")) {
        failures.push(format!(
            "egress rule: the backend saw {requests:?}, want {expected} GET /public/..."
        ));
    }
    // Both protocols reached the backend as they were sent.
    for proto in ["HTTP/1.1", "HTTP/2.0"] {
        if !requests.iter().any(|r| r.ends_with(proto)) {
            failures.push(format!(
                "egress rule: no {proto} request reached the backend"
            ));
        }
    }
    if !failures.is_empty() {
        bail!("{} failing cells:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}
