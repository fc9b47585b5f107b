//! Per-packet service LB for clients outside the cluster: a host on the
//! nodes' underlay (not a pod, no socket LB) connects to a NodePort. The
//! node's device translates: to a backend on the node, DNAT only (the
//! backend sees the client's address); to a backend on the other node,
//! DNAT and SNAT to the node's address, the reply translated back on the
//! way in and sent out again. Backends are picked by Maglev, so a client
//! gets the same one through either node. UDP datagrams larger than the
//! MTU are translated fragment by fragment, both ways, IPv4 and IPv6.
//! `externalTrafficPolicy: Local` uses only
//! the node's own backends and keeps the client's address; and policy
//! still decides by identity after translation: once the payments policy
//! allows only checkout, the outside client gets nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use axoneme_e2e::cluster::{EXTERNAL_CLIENT_IP, EXTERNAL_CLIENT_IP6};
use axoneme_e2e::expect::seed_policy;
use axoneme_e2e::services::{get_from, get_from_port, udp_request_from, udp_server, until, Answer};
use axoneme_e2e::{Cluster, ClusterConfig};

/// A NodePort Service: HTTP on `node_port`, UDP (5353 in the pods) on
/// `node_port` + 20.
fn service(name: &str, vips: &str, node_port: u16, policy: &str, pods: &[(&str, &str)]) -> String {
    let udp_port = node_port + 20;
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  type: NodePort\n  clusterIPs: [{vips}]\n  externalTrafficPolicy: {policy}\n  \
         ports:\n  - {{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: {node_port}}}\n  \
         - {{name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: {udp_port}}}\n\
         endpoints:\n"
    );
    for (ip, node) in pods {
        y.push_str(&format!("- addresses: [{ip}]\n  nodeName: {node}\n"));
    }
    y
}

/// Whether node `i`'s device has a program at its egress (the device's
/// egress program is there only while an external frontend is).
fn device_egress(c: &Cluster, i: usize) -> Result<bool> {
    let ns = &c.nodes[i].ns.name;
    let out = axoneme_e2e::netns::run(&["tc", "-n", ns, "filter", "show", "dev", "ul0", "egress"])?;
    Ok(!out.stdout.is_empty())
}

/// `n` GETs to `url`; per backend address, the client addresses it saw.
fn tally(
    ns: &axoneme_e2e::netns::Netns,
    url: &str,
    n: usize,
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..n {
        let a: Answer = get_from(ns, url)?;
        anyhow::ensure!(a.status == "200", "{url}: {a:?}");
        let by = a.served_by.context("X-Served-By")?;
        seen.entry(by).or_default().push(a.peer.context("X-Peer")?);
    }
    Ok(seen)
}

#[test]
fn nodeport_from_outside_the_cluster() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let seed = c.seed_pods()?;
    let remote = c.add_pod(1, "payments-1", &[("app", "payments")])?;
    c.logging_backend(&remote, 8080)?;
    let (n0, n1) = (c.nodes[0].name.clone(), c.nodes[1].name.clone());
    let (ip0, ip1) = (c.nodes[0].ip.to_string(), c.nodes[1].ip.to_string());
    let (local_ip, remote_ip) = (seed.payments.ip.to_string(), remote.ip.to_string());
    let (local6, remote6) = (
        seed.payments.ip6.context("IPv6")?.to_string(),
        remote.ip6.context("IPv6")?.to_string(),
    );
    let both = |a: &str, b: &str| format!("{a}, \"{b}\"");
    let addrs = [both(&local_ip, &local6), both(&remote_ip, &remote6)];
    let pods = [
        (addrs[0].as_str(), n0.as_str()),
        (addrs[1].as_str(), n1.as_str()),
    ];
    let yaml = service(
        "web",
        "10.96.0.70, \"fd00:96::70\"",
        30080,
        "Cluster",
        &pods,
    ) + "---\n"
        + &service(
            "web-local",
            "10.96.0.71, \"fd00:96::71\"",
            30081,
            "Local",
            &pods,
        );
    // No external frontend yet: nothing leaving the nodes crosses a
    // program at their devices.
    for i in 0..2 {
        assert!(
            !device_egress(&c, i)?,
            "node {i}: an egress program before any NodePort"
        );
    }
    let file = c.dir.join("nodeport.yaml");
    std::fs::write(&file, yaml)?;
    let out = c.cli(
        0,
        &["service", "create", "-f", file.to_str().context("path")?],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ext = c.external_client("ext")?;
    let client = EXTERNAL_CLIENT_IP.to_string();

    let url = format!("http://{ip0}:30080/");
    until(
        "the NodePort answers from outside",
        Duration::from_secs(15),
        || Ok(get_from(&ext, &url)?.status == "200"),
    )?;
    until(
        "both devices have an egress program with a NodePort",
        Duration::from_secs(10),
        || Ok(device_egress(&c, 0)? && device_egress(&c, 1)?),
    )?;
    // Both backends; the one on the node sees the client, the one on the
    // other node sees the node (SNAT).
    let seen = tally(&ext, &url, 40)?;
    eprintln!("via {ip0}:30080: {seen:?}");
    let local = seen
        .get(&local_ip)
        .context("the node's backend never answered")?;
    let far = seen
        .get(&remote_ip)
        .context("the other node's backend never answered")?;
    assert!(local.iter().all(|p| *p == client), "{seen:?}");
    assert!(far.iter().all(|p| *p == ip0), "{seen:?}");

    let node6 = c.nodes[0].ip6.to_string();
    // Maglev: a client (address and port) gets the same backend whichever
    // node it enters by, with no state shared between the nodes. Its ports
    // are above the kernel's ephemeral range (32768-60999), so no earlier
    // connection of the client's can have used the same tuple (a backend
    // still holding it in TIME_WAIT would refuse the new one).
    let mut same = 0;
    for port in 61000..61020u16 {
        let via = |ip: &str| -> Result<Option<String>> {
            Ok(get_from_port(&ext, ip, 30080, port)?.served_by)
        };
        let (a, b) = (via(&ip0)?, via(&ip1)?);
        assert!(a.is_some(), "port {port}: no answer");
        same += usize::from(a == b);
    }
    assert_eq!(same, 20, "the same backend through both nodes");

    // IPv6: the same, through the node's IPv6 address.
    let seen = tally(&ext, &format!("http://[{node6}]:30080/"), 30)?;
    eprintln!("via [{node6}]:30080: {seen:?}");
    let local = seen
        .get(&local6)
        .context("IPv6: the node's backend never answered")?;
    let far = seen
        .get(&remote6)
        .context("IPv6: the other node's backend never answered")?;
    assert!(
        local.iter().all(|p| *p == EXTERNAL_CLIENT_IP6.to_string()),
        "{seen:?}"
    );
    assert!(far.iter().all(|p| *p == node6), "{seen:?}");

    // UDP datagrams larger than the path's MTU, both ways: every fragment
    // translated (DNAT to the node's backend; DNAT, SNAT and redirect to
    // the other node's), the answer reassembled whole. The client's ports
    // pick both backends (Maglev).
    let _udp = [&seed.payments, &remote]
        .iter()
        .map(|p| {
            udp_server(
                &p.ns,
                5353,
                &p.name,
                &c.dir.join(format!("udp-{}.log", p.name)),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut names = BTreeSet::new();
    for (node, sport) in [(&ip0, 62000u16), (&node6, 62100)] {
        for port in sport..sport + 16 {
            let a = udp_request_from(&ext, node, 30100, 4000, port)?
                .with_context(|| format!("{node}:30100 from port {port}: no answer"))?;
            assert_eq!(a.len, 4000, "{a:?}");
            assert_eq!((a.from.to_string(), a.port), (node.to_string(), 30100));
            names.insert(a.name);
        }
    }
    assert_eq!(
        names,
        BTreeSet::from([seed.payments.name.clone(), remote.name.clone()]),
        "both backends answered"
    );

    // externalTrafficPolicy: Local: each node's own backend, the client's
    // address kept, through either node.
    for (node_ip, own) in [(&ip0, &local_ip), (&ip1, &remote_ip)] {
        let url = format!("http://{node_ip}:30081/");
        until(
            "the Local NodePort answers",
            Duration::from_secs(15),
            || Ok(get_from(&ext, &url)?.status == "200"),
        )?;
        let seen = tally(&ext, &url, 10)?;
        assert_eq!(
            seen,
            BTreeMap::from([(own.clone(), vec![client.clone(); 10])]),
            "via {node_ip}"
        );
    }

    // Policy after translation: the payments policy admits only checkout.
    let policy = seed_policy();
    c.import_policy(0, &policy)?;
    let url = format!("http://{ip0}:30081/");
    until(
        "the outside client is denied",
        Duration::from_secs(10),
        || Ok(get_from(&ext, &url)?.status == "failed"),
    )?;
    // The NodePorts gone: so is the devices' egress program.
    for name in ["web", "web-local"] {
        let out = c.cli(0, &["service", "delete", name])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    until(
        "the devices' egress program is removed",
        Duration::from_secs(10),
        || Ok(!device_egress(&c, 0)? && !device_egress(&c, 1)?),
    )?;
    drop(ext);
    Ok(())
}
