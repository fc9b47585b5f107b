//! Kubernetes-mode encryption, installed with the chart, against the real
//! kube-apiserver: the agents take their keys from the Secret the chart
//! mounts (the harness plays the kubelet), the nodes that encrypt are
//! chosen by their Node objects' labels (`encryption.nodeSelector`; the
//! operator mirrors them), a change of the Secret is a key rotation, and
//! with `encryption.strictMode` two selected nodes never talk in clear.
//!
//! This machine's kernel has XFRM but no ESP: it takes the policies and
//! refuses the states, so two selected nodes cannot encrypt here, and the
//! test shows that they fail closed and say why. The encrypted path itself
//! (ESP on the wire, rotation without loss) runs in the IPsec VM
//! (`ipsec_cluster.rs`).

use std::time::Duration;

use anyhow::{Context, Result};
use axoneme_e2e::expect::until_http;
use axoneme_e2e::helm::{apply_secret, mount_agent_secrets};
use axoneme_e2e::services::until;
use axoneme_e2e::{Cluster, ClusterConfig};
use serde_json::Value;

const SECRET: &str = "axoneme-ipsec-keys";
const KEY_3: &str = "3 rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n";
const KEY_4: &str = "4 rfc4106(gcm(aes)) 89abcdef0123456789abcdef0123456789abcdef 128\n";

/// Node `i`'s `axoneme encrypt status -o json` (which exits non-zero
/// while the last pass had errors).
fn status(c: &Cluster, i: usize) -> Result<Value> {
    let out = c
        .cli_command(i, &["-o", "json", "encrypt", "status"])
        .output()?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "encrypt status on node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits until node `i`'s status satisfies `ok`.
fn until_status(c: &Cluster, i: usize, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
    let mut last = Value::Null;
    until(what, Duration::from_secs(20), || {
        last = status(c, i)?;
        Ok(ok(&last))
    })
    .with_context(|| format!("node {i}: {last:#}"))?;
    Ok(last)
}

fn encrypts(v: &Value) -> bool {
    v["nodeEncrypts"] == true
}

#[test]
fn kubernetes_mode_takes_keys_from_a_secret_and_nodes_by_their_labels() -> Result<()> {
    let keys_dir = std::env::temp_dir().join(axoneme_e2e::run_prefix("ipsec"));
    let values = [
        "encryption.enabled=true".to_string(),
        "encryption.strictMode=true".to_string(),
        "encryption.nodeSelector.encrypt=yes".to_string(),
        format!("encryption.ipsec.secretName={SECRET}"),
        format!("encryption.ipsec.mountPath={}", keys_dir.display()),
        "encryption.ipsec.keyRotationDuration=2s".to_string(),
    ];
    let mut c = Cluster::start(&ClusterConfig {
        helm: Some(
            values
                .iter()
                .flat_map(|v| ["--set".to_string(), v.clone()])
                .collect(),
        ),
        helm_secrets: vec![(SECRET.into(), vec![("keys".into(), KEY_3.into())])],
        ..ClusterConfig::default()
    })?;
    let result = scenario(&mut c);
    let _ = std::fs::remove_dir_all(&keys_dir);
    result
}

fn scenario(c: &mut Cluster) -> Result<()> {
    let payments = c.add_pod(0, "payments", &[("app", "payments")])?;
    let checkout = c.add_pod(1, "checkout", &[("app", "checkout")])?;
    c.http_server(&payments, 8080)?;
    let pay = payments.ip.to_string();
    let ten = Duration::from_secs(10);
    let [n0, n1] = [0, 1].map(|i| c.nodes[i].name.clone());
    let kube = c.kube.as_ref().context("control plane")?;

    // The key came from the Secret; no Node has the label yet: nobody
    // encrypts, and the pods talk.
    for i in 0..2 {
        until_status(c, i, "the Secret's key, no node selected", |v| {
            v["enabled"] == true && v["spi"] == 3 && v["nodeEncrypts"] == false
        })?;
    }
    until_http(&checkout, "GET", &pay, "/", Some(200), ten)?;

    // Node 0 labelled: it encrypts, node 1 does not, and between the two
    // traffic stays in clear (the documented rule).
    kube.kubectl(["label", "node", &n0, "encrypt=yes"])?;
    until_status(c, 0, "node 0 selected by its Node's label", encrypts)?;
    assert!(!encrypts(&status(c, 1)?), "node 1 has no label");
    until_http(&checkout, "GET", &pay, "/", Some(200), ten)?;

    // Both labelled: they would encrypt, and this kernel cannot (no ESP).
    // Strict: not one request in clear, and the status says why.
    kube.kubectl(["label", "node", &n1, "encrypt=yes"])?;
    for i in 0..2 {
        until_status(c, i, "both nodes selected", encrypts)?;
    }
    until_http(&checkout, "GET", &pay, "/", None, ten)?;
    let st = until_status(c, 0, "the kernel's refusal reported", |v| {
        v["errors"].as_array().is_some_and(|e| !e.is_empty())
    })?;
    eprintln!("node 0, both selected: {st:#}");
    // The kernel's refusal, with its reason; what it does hold counted.
    let errors = st["errors"].to_string();
    assert!(
        errors.contains("adding the XFRM state") && errors.contains("os error"),
        "{errors}"
    );
    assert_eq!(
        (st["statesIn"].as_u64(), st["statesOut"].as_u64()),
        (Some(0), Some(0)),
        "{st:#}"
    );
    assert!(st["policies"].as_u64() > Some(0), "{st:#}");
    // Neither accepts a key it could not install, so they share none, and
    // checkout's packets are dropped as they leave it, with the reason.
    until_status(c, 0, "no key in common with node 1", |v| {
        v["peers"].get(&n1) == Some(&Value::Null)
    })?;
    let flows = c.cli(
        1,
        &[
            "observe",
            "--verdict",
            "DROPPED",
            "--last",
            "100",
            "-o",
            "json",
        ],
    )?;
    let flows = String::from_utf8_lossy(&flows.stdout);
    let to_payments = format!("\"destination\":\"{pay}\"");
    assert!(
        flows.lines().any(|l| l.contains(&to_payments)
            && l.contains("\"drop_reason_desc\":\"UNENCRYPTED_TRAFFIC\"")),
        "no drop of checkout's traffic as unencrypted:\n{flows}"
    );
    for _ in 0..5 {
        assert_eq!(
            checkout.http("GET", &pay, 8080, "/"),
            None,
            "strict mode let a request through in clear"
        );
    }

    // A new key in the Secret is a rotation: the agents take it without a
    // restart.
    apply_secret(kube, SECRET, &[("keys".into(), format!("{KEY_3}{KEY_4}"))])?;
    mount_agent_secrets(kube, &[SECRET])?;
    for i in 0..2 {
        until_status(c, i, "the Secret's new key in use", |v| v["spi"] == 4)?;
    }

    // Node 1's label removed: it stops encrypting, node 0 forgets it as a
    // peer, and the pair talks in clear again.
    kube.kubectl(["label", "node", &n1, "encrypt-"])?;
    until_status(c, 1, "node 1 no longer selected", |v| !encrypts(v))?;
    until_status(c, 0, "node 0 forgets node 1", |v| {
        v["peers"].as_object().is_some_and(|p| !p.contains_key(&n1))
    })?;
    until_http(&checkout, "GET", &pay, "/", Some(200), ten)?;
    Ok(())
}
