//! CNI conformance against a real agent: the plugin binary invoked as a
//! runtime does, valid and malformed input, spec-shaped results and
//! errors, and nothing leaked (veths, addresses, records) on failure.

use std::time::Duration;

use anyhow::{Context, Result};
use axoneme_e2e::netns::Netns;
use axoneme_e2e::{Cluster, ClusterConfig};
use serde_json::json;

/// Asserts a CNI error result with `code` whose msg contains `needle`.
fn assert_error(out: &axoneme_e2e::cluster::CniOutput, code: u64, needle: &str) -> Result<()> {
    assert!(!out.success, "expected failure: {out:?}");
    let v = out.json()?;
    assert_eq!(v["code"], code, "{v}");
    let text = format!("{} {}", v["msg"], v["details"]);
    assert!(text.contains(needle), "{needle:?} not in {v}");
    assert!(v["cniVersion"].is_string(), "{v}");
    Ok(())
}

fn cni(
    c: &Cluster,
    cmd: &str,
    id: &str,
    netns: &str,
    stdin: &[u8],
) -> Result<axoneme_e2e::cluster::CniOutput> {
    c.cni(cmd, id, netns, "eth0", "K8S_POD_NAMESPACE=default", stdin)
}

#[test]
fn cni_conformance_and_no_leaks() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig {
        nodes: 1,
        ..ClusterConfig::default()
    })?;
    let links_before = c.node_links(0)?;
    let ns = Netns::create(&format!("{}-pod", c.prefix))?;
    let netns = ns.path().to_string_lossy().into_owned();
    let config = c.cni_config(0, &[("app", "web")]);
    let conf = serde_json::to_vec(&config)?;

    // VERSION.
    let v = cni(&c, "VERSION", "", "", b"")?;
    assert!(v.success, "{v:?}");
    assert!(v.json()?["supportedVersions"]
        .as_array()
        .context("versions")?
        .contains(&json!("1.0.0")));

    // Malformed input first: none of it may take an address or leave a
    // veth behind.
    assert_error(&cni(&c, "ADD", "c1", &netns, b"{not json")?, 6, "decode")?;
    let mut bad_version = config.clone();
    bad_version["cniVersion"] = json!("9.9.9");
    assert_error(
        &cni(&c, "ADD", "c1", &netns, &serde_json::to_vec(&bad_version)?)?,
        1,
        "9.9.9",
    )?;
    assert_error(&cni(&c, "ADD", "c1", "", &conf)?, 4, "CNI_NETNS")?;
    assert_error(
        &cni(&c, "ADD", "c1", "/run/netns/does-not-exist", &conf)?,
        3,
        "does not exist",
    )?;
    let bad_label = serde_json::to_vec(&c.cni_config(0, &[("app", "no spaces allowed")]))?;
    assert_error(&cni(&c, "ADD", "c1", &netns, &bad_label)?, 100, "label")?;
    // DEL of an unknown container succeeds silently.
    let del = cni(&c, "DEL", "never-added", &netns, &conf)?;
    assert!(del.success && del.stdout.is_empty(), "{del:?}");
    assert_eq!(c.node_links(0)?, links_before, "a failed ADD left a link");

    // A valid ADD: spec-shaped result; the first address of the CIDR.
    let add = cni(&c, "ADD", "c1", &netns, &conf)?;
    assert!(add.success, "{add:?}\n{}", c.agent_log(0));
    let result = add.json()?;
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], netns.as_str());
    assert_eq!(result["ips"][0]["interface"], 1);
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    let first: String = result["ips"][0]["address"].as_str().context("ip")?.into();
    assert!(first.ends_with(".1/32"), "{first}");
    assert!(result["ips"][1]["address"]
        .as_str()
        .is_some_and(|a| a.ends_with("/128")));
    // The same container again is refused, and changes nothing.
    assert_error(
        &cni(&c, "ADD", "c1", &netns, &conf)?,
        100,
        "already has an endpoint",
    )?;

    // CHECK with the prevResult passes; with a foreign address it fails.
    let mut with_prev = config.clone();
    with_prev["prevResult"] = result.clone();
    let check = cni(&c, "CHECK", "c1", &netns, &serde_json::to_vec(&with_prev)?)?;
    assert!(check.success, "{check:?}");
    let mut wrong = with_prev.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.99.99.99/32");
    assert_error(
        &cni(&c, "CHECK", "c1", &netns, &serde_json::to_vec(&wrong)?)?,
        102,
        "10.99.99.99",
    )?;
    assert_error(&cni(&c, "CHECK", "c1", &netns, &conf)?, 7, "prevResult")?;

    // Fail closed: with no operator, a new label set gets no identity; the
    // ADD fails after its timeout and undoes everything.
    for op in &mut c.operators {
        op.proc.kill9();
    }
    let ns2 = Netns::create(&format!("{}-pod2", c.prefix))?;
    let mut slow = c.cni_config(0, &[("app", "never-allocated")]);
    slow["timeoutMs"] = json!(1500);
    let links = c.node_links(0)?;
    let out = cni(
        &c,
        "ADD",
        "c2",
        &ns2.path().to_string_lossy(),
        &serde_json::to_vec(&slow)?,
    )?;
    assert_error(&out, 11, "not in place within 1500 ms")?;
    assert!(out.elapsed >= Duration::from_millis(1500), "{out:?}");
    assert_eq!(c.node_links(0)?, links, "the failed ADD left a veth");
    let eps = c.cli(0, &["-o", "json", "endpoint", "list"])?;
    assert!(
        !String::from_utf8_lossy(&eps.stdout).contains("\"c2\""),
        "record left behind"
    );

    // DEL releases: the address comes back for the next pod.
    let del = cni(&c, "DEL", "c1", &netns, &conf)?;
    assert!(del.success, "{del:?}");
    assert_eq!(c.node_links(0)?, links_before);
    let state = std::fs::read_dir(c.nodes[0].state_dir.join("endpoints"))?.count();
    assert_eq!(state, 0, "endpoint state left behind");
    Ok(())
}
