//! The host firewall end to end: Cilium's "lock down dev VMs" advice on a
//! two-node cluster whose agents run with `--enable-host-firewall`.
//!
//! Node 0 is labelled `env=dev` (`axoneme node label`); a host policy
//! selecting `env=dev` allows ingress only to SSH (22) and the kvstore's
//! ports from the underlay's CIDR, and to the kvstore's client port from
//! the other nodes (`remote-node`), with egress open. From a host on the
//! underlay, node 0's other ports are dropped (reason 133, with events
//! naming the host identity), its allowed ports and node 1 (unlabelled)
//! answer, IPv4 and IPv6; node 0's own connections out work (their
//! answers pass by conntrack); its agent stays connected to etcd
//! throughout; the node label `axoneme.io/policy-audit-mode=true` lets the
//! dropped flows through as `audit` verdicts; deleting the policy opens the node again.
//!
//! Node 0's own pods reach it (by its address or their gateway), and it
//! reaches them, only as the host policy says.
//!
//! Entities in a pod policy: a pod that admits only `host` is reached
//! from its own node and not from the other node or the underlay; one
//! that admits `remote-node` the other way round; one that admits
//! `fromNodes: role=worker` from the labelled nodes only, as labels change.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axoneme_e2e::cluster::{EXTERNAL_CLIENT_IP, EXTERNAL_CLIENT_IP6};
use axoneme_e2e::expect::wait_for;
use axoneme_e2e::netns::Netns;
use axoneme_e2e::probe::{echo_server, echo_server_in, exchange};
use axoneme_e2e::{Cluster, ClusterConfig};

const SSH: u16 = 22;
const ETCD: u16 = 2379;
const OTHER: u16 = 8080;
/// The external host's echo server (node 0 connects out to it).
const OUTSIDE: u16 = 7000;

/// The README's example (`examples/host-policies/`).
const LOCK_DOWN_DEV: &str = include_str!("../../examples/host-policies/lock-down-dev-nodes.yaml");

/// Node 0 may only connect to the other nodes.
const DEV_EGRESS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: dev-egress
spec:
  nodeSelector:
    matchLabels:
      env: dev
  egress:
  - toEntities: [remote-node]
"#;

fn reaches(from: &Netns, to: impl Into<IpAddr> + Send, port: u16) -> Result<bool> {
    from.enter(|| exchange(to, port, Duration::from_millis(500)).is_ok())
}

fn write_policy(c: &Cluster, name: &str, yaml: &str) -> Result<std::path::PathBuf> {
    let path = c.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// Node 0's drop events for its host endpoint (identity 1) on `port`.
fn host_drops(c: &Cluster, port: u16) -> Result<usize> {
    let out = c.cli(
        0,
        &["events", "--type", "drop", "--last", "500", "-o", "json"],
    )?;
    let events: serde_json::Value = serde_json::from_slice(&out.stdout).context("events")?;
    Ok(events
        .as_array()
        .context("events")?
        .iter()
        .filter(|e| e["reason"] == 133 && e["dst_identity"] == 1 && e["dport"] == port)
        .count())
}

/// Node `i`'s status line `name`: whether it is fine, and its message.
fn component(c: &Cluster, i: usize, name: &str) -> Result<(bool, String)> {
    let (_, body, _) = c.agent_get(i, "/v1/status")?;
    let st: serde_json::Value = serde_json::from_str(&body).context("status")?;
    let line = st["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .with_context(|| format!("no {name} line: {st}"))?;
    Ok((
        line["ok"] == true,
        line["message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Whether node `i`'s agent says its kvstore is reachable.
fn kvstore_ok(c: &Cluster, i: usize) -> Result<bool> {
    Ok(component(c, i, "kvstore")?.0)
}

#[test]
fn a_host_policy_locks_down_the_labelled_node_only_and_never_its_lifelines() -> Result<()> {
    let c = Cluster::start(&ClusterConfig {
        nodes: 2,
        agent_args: vec!["--enable-host-firewall=true".into()],
        ..ClusterConfig::default()
    })?;
    let client = c.external_client("out")?;
    for n in &c.nodes {
        for port in [SSH, ETCD, OTHER] {
            echo_server_in(&n.ns, port)?;
        }
    }
    echo_server_in(&client, OUTSIDE)?;
    // A pod of node 0: what it sends its node is the host's ingress too.
    let pod = c.add_pod(0, "local", &[("app", "local")])?;
    echo_server(&pod, OTHER)?;
    let gateway: IpAddr = "169.254.1.1".parse()?;
    let (n0, n1) = (c.nodes[0].ip, c.nodes[1].ip);
    let n0v6 = c.nodes[0].ip6;
    let status = c.cli(0, &["node", "label", &c.nodes[0].name, "env=dev"])?;
    ensure!(status.status.success(), "node label: {status:?}");
    let listed = String::from_utf8_lossy(&c.cli(0, &["node", "list"])?.stdout).into_owned();
    ensure!(listed.contains("env=dev"), "node list: {listed}");
    for port in [SSH, OTHER] {
        ensure!(
            reaches(&client, n0, port)?,
            "node 0:{port} before any policy"
        );
    }

    let policy = write_policy(&c, "lock-down", LOCK_DOWN_DEV)?;
    c.import_policy(0, &policy)?;
    wait_for("node 0 locked down", Duration::from_secs(15), || {
        Ok(!reaches(&client, n0, OTHER)?)
    })?;
    // From the underlay: only SSH and the kvstore's ports, IPv4 and IPv6.
    ensure!(reaches(&client, n0, SSH)?, "SSH to the dev node");
    ensure!(
        reaches(&client, n0, ETCD)?,
        "the kvstore port on the dev node"
    );
    ensure!(
        reaches(&client, n0v6, SSH)?,
        "SSH to the dev node over IPv6"
    );
    ensure!(!reaches(&client, n0v6, OTHER)?, "node 0:{OTHER} over IPv6");
    // The other node is not `env=dev`: untouched.
    ensure!(reaches(&client, n1, OTHER)?, "node 1 is not a dev node");
    // From the other node's own address (remote-node): the kvstore port only.
    let ns1 = &c.nodes[1].ns;
    ensure!(reaches(ns1, n0, ETCD)?, "node 1 to node 0's kvstore port");
    ensure!(!reaches(ns1, n0, OTHER)?, "node 1 to node 0:{OTHER}");
    // From its own pod, by the node's address or the pods' gateway: no rule
    // admits pods.
    ensure!(!reaches(&pod.ns, n0, OTHER)?, "a pod to its node");
    ensure!(
        !reaches(&pod.ns, gateway, SSH)?,
        "a pod to its node's gateway"
    );
    // Egress is open: node 0's own connections out, answered by conntrack.
    ensure!(
        reaches(&c.nodes[0].ns, EXTERNAL_CLIENT_IP, OUTSIDE)?,
        "node 0 out"
    );
    ensure!(
        reaches(&c.nodes[0].ns, EXTERNAL_CLIENT_IP6, OUTSIDE)?,
        "node 0 out over IPv6"
    );
    // Drops are reported against the host endpoint with reason 133.
    wait_for("drop events of the host", Duration::from_secs(5), || {
        Ok(host_drops(&c, OTHER)? >= 2)
    })?;
    ensure!(kvstore_ok(&c, 0)?, "node 0's agent lost etcd");
    let (ok, line) = component(&c, 0, "host-firewall")?;
    ensure!(
        ok && line.contains("ingress enforced, egress enforced")
            && line.contains("env=dev")
            && line.contains("127.0.0.1:"),
        "node 0's host-firewall line: {line}"
    );
    let (_, line) = component(&c, 1, "host-firewall")?;
    ensure!(line.contains("ingress open, egress open"), "node 1: {line}");
    // `policy explain` on node 0: why the drop, and its datapath agrees.
    let (client_ip, n0s) = (EXTERNAL_CLIENT_IP.to_string(), n0.to_string());
    let out = c.cli(
        0,
        &[
            "policy",
            "explain",
            "--from-ip",
            &client_ip,
            "--to-ip",
            &n0s,
            "--port",
            "8080",
            "-o",
            "json",
        ],
    )?;
    let why: serde_json::Value = serde_json::from_slice(&out.stdout).context("explain")?;
    ensure!(
        why["dropReason"] == 133
            && why["ingress"]["selectedBy"][0]["policy"]
                == "CiliumClusterwideNetworkPolicy lock-down-dev-vms"
            && why["datapath"][0]["endpoint"] == "host"
            && why["datapath"][0]["agrees"] == true,
        "explain: {why:#}"
    );

    // The node's audit mode (a node label): the drops become audit
    // verdicts, at once.
    let name0 = c.nodes[0].name.clone();
    let label = |l: &str| -> Result<()> {
        let out = c.cli(0, &["node", "label", &name0, l])?;
        ensure!(out.status.success(), "node label {l}: {out:?}");
        Ok(())
    };
    label("axoneme.io/policy-audit-mode=true")?;
    wait_for("audit lets it through", Duration::from_secs(15), || {
        reaches(&client, n0, OTHER)
    })?;
    // The agent drains the datapath's events every 100 ms.
    wait_for(
        "an audit verdict for the host",
        Duration::from_secs(5),
        || {
            let out = c.cli(
                0,
                &[
                    "events",
                    "--type",
                    "policy-verdict",
                    "--last",
                    "500",
                    "-o",
                    "json",
                ],
            )?;
            let events: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            Ok(events
                .as_array()
                .context("events")?
                .iter()
                .any(|e| e["verdict"] == "audit" && e["dst_identity"] == 1 && e["dport"] == OTHER))
        },
    )?;
    let (_, line) = component(&c, 0, "host-firewall")?;
    ensure!(line.contains("(audit mode)"), "{line}");
    label("axoneme.io/policy-audit-mode-")?;
    wait_for("enforced again", Duration::from_secs(15), || {
        Ok(!reaches(&client, n0, OTHER)?)
    })?;

    // The policy goes: the node opens.
    let delete = |name: &str| -> Result<()> {
        let deleted = c.cli(0, &["policy", "delete", "--clusterwide", name])?;
        ensure!(deleted.status.success(), "policy delete: {deleted:?}");
        Ok(())
    };
    delete("lock-down-dev-vms")?;
    wait_for("node 0 open again", Duration::from_secs(15), || {
        reaches(&client, n0, OTHER)
    })?;
    ensure!(reaches(&pod.ns, n0, OTHER)?, "a pod to its node, open");
    ensure!(
        reaches(&pod.ns, gateway, SSH)?,
        "a pod to its gateway, open"
    );

    // Egress narrowed to the other nodes: node 0's connections out are
    // dropped, the kvstore's (a lifeline) are not, and the import and
    // status warn that the policy would deny them.
    let p = write_policy(&c, "dev-egress", DEV_EGRESS)?;
    let imported = c.cli(0, &["policy", "import", &p.display().to_string()])?;
    let said = String::from_utf8_lossy(&imported.stderr);
    ensure!(
        imported.status.success()
            && said.contains(&format!(
                "warning: node {}: egress to the kvstore member 127.0.0.1:",
                c.nodes[0].name
            )),
        "import named no lifeline: {said}"
    );
    let ns0 = &c.nodes[0].ns;
    wait_for("node 0's egress narrowed", Duration::from_secs(15), || {
        Ok(!reaches(ns0, EXTERNAL_CLIENT_IP, OUTSIDE)?)
    })?;
    ensure!(reaches(ns0, n1, OTHER)?, "node 0 to node 1");
    ensure!(reaches(&client, n0, OTHER)?, "ingress stays open");
    // Its own pod is no remote node either: the host's egress to it is
    // judged there, and dropped.
    ensure!(!reaches(ns0, pod.ip, OTHER)?, "node 0 to its own pod");
    let (ok, line) = component(&c, 0, "host-firewall")?;
    ensure!(
        ok && line.contains("would deny egress to 127.0.0.1:"),
        "no lifeline warning: {line}"
    );
    delete("dev-egress")?;
    wait_for(
        "node 0's egress open again",
        Duration::from_secs(15),
        || reaches(ns0, EXTERNAL_CLIENT_IP, OUTSIDE),
    )?;
    ensure!(reaches(ns0, pod.ip, OTHER)?, "node 0 to its own pod, open");
    ensure!(kvstore_ok(&c, 0)?, "node 0's agent lost etcd");
    Ok(())
}

fn admit_entity(name: &str, app: &str, entity: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: {app}}}}}\n  ingress:\n  \
         - fromEntities: [{entity}]\n    toPorts: [{{ports: [{{port: \"{OTHER}\", protocol: TCP}}]}}]\n"
    )
}

#[test]
fn node_entities_and_node_selectors_in_pod_policies_mean_the_nodes_own_addresses() -> Result<()> {
    let c = Cluster::start(&ClusterConfig {
        nodes: 3,
        ..ClusterConfig::default()
    })?;
    let client = c.external_client("out")?;
    let local = c.add_pod(0, "local", &[("app", "local")])?;
    let remote = c.add_pod(0, "remote", &[("app", "remote")])?;
    echo_server(&local, OTHER)?;
    echo_server(&remote, OTHER)?;
    for (name, app, entity) in [
        ("host-only", "local", "host"),
        ("nodes-only", "remote", "remote-node"),
    ] {
        let p = write_policy(&c, name, &admit_entity(name, app, entity))?;
        c.import_policy(0, &p)?;
    }
    let (ns0, ns1) = (&c.nodes[0].ns, &c.nodes[1].ns);
    let (ok, line) = component(&c, 0, "host-firewall")?;
    ensure!(
        ok && line == "disabled",
        "host-firewall without the flag: {line}"
    );
    // A host policy for this node, which cannot enforce it: status says so.
    let every_node = LOCK_DOWN_DEV.replace("matchLabels:\n      env: dev", "{}");
    let p = write_policy(&c, "every-node", &every_node)?;
    c.import_policy(0, &p)?;
    wait_for(
        "status naming the unenforced host policy",
        Duration::from_secs(10),
        || {
            let (ok, line) = component(&c, 0, "host-firewall")?;
            Ok(!ok && line.contains("NOT enforced") && line.contains("lock-down-dev-vms"))
        },
    )?;
    wait_for("the policies enforced", Duration::from_secs(15), || {
        Ok(!reaches(&client, local.ip, OTHER)? && !reaches(&client, remote.ip, OTHER)?)
    })?;
    // `host`: the pod's own node, not the other one.
    ensure!(reaches(ns0, local.ip, OTHER)?, "node 0 to its pod (host)");
    ensure!(!reaches(ns1, local.ip, OTHER)?, "node 1 to a host-only pod");
    // `remote-node`: the other node, not its own.
    ensure!(
        reaches(ns1, remote.ip, OTHER)?,
        "node 1 to a remote-node pod"
    );
    ensure!(
        !reaches(ns0, remote.ip, OTHER)?,
        "node 0 to a remote-node-only pod"
    );

    // `fromNodes`: only the nodes labelled role=worker, this one included
    // when it is; a label change counts at once.
    let workers = c.add_pod(0, "workers", &[("app", "workers")])?;
    echo_server(&workers, OTHER)?;
    let p = write_policy(&c, "from-workers", FROM_WORKERS)?;
    c.import_policy(0, &p)?;
    let label = |node: usize, l: &str| -> Result<()> {
        let out = c.cli(0, &["node", "label", &c.nodes[node].name, l])?;
        ensure!(out.status.success(), "node label {l}: {out:?}");
        Ok(())
    };
    label(1, "role=worker")?;
    let ns2 = &c.nodes[2].ns;
    wait_for(
        "node 1, a worker, admitted",
        Duration::from_secs(15),
        || reaches(ns1, workers.ip, OTHER),
    )?;
    ensure!(!reaches(ns2, workers.ip, OTHER)?, "node 2 is no worker");
    ensure!(!reaches(ns0, workers.ip, OTHER)?, "node 0 is no worker yet");
    label(0, "role=worker")?;
    label(1, "role-")?;
    wait_for(
        "node 0 admitted, node 1 not",
        Duration::from_secs(15),
        || Ok(reaches(ns0, workers.ip, OTHER)? && !reaches(ns1, workers.ip, OTHER)?),
    )?;
    Ok(())
}

const FROM_WORKERS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: from-workers
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: workers
  ingress:
  - fromNodes:
    - matchLabels:
        role: worker
"#;
