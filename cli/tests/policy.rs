//! `axoneme policy validate` works offline: no etcd, no cluster.

use std::io::Write;
use std::process::{Command, Stdio};

const AXONEME: &str = env!("CARGO_BIN_EXE_axoneme");

fn validate(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(AXONEME)
        .args(["policy", "validate"])
        .args(args)
        // Nothing listens here: validation must not need etcd.
        .env("AXONEME_ETCD_ENDPOINTS", "http://127.0.0.1:1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn seed() -> String {
    format!(
        "{}/../../shared/testdata/seed-payments-policy.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn the_seed_policy_is_valid() {
    let (code, out, err) = validate(&[&seed()], None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "payments-api: valid (CiliumNetworkPolicy, 1 rule)\n");
}

#[test]
fn errors_name_policy_and_field_and_exit_1() {
    let bad = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: payments-api}\n\
               spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80800\"}]\n";
    let (code, out, _) = validate(&["-"], Some(bad));
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "payments-api: spec.ingress[0].toPorts[0].ports[0].port: 80800 is not a valid port (1-65535)\n"
    );
    // Valid and invalid together: still exit 1, every document reported.
    let both = format!("{}\n---\n{bad}", std::fs::read_to_string(seed()).unwrap());
    let (code, out, _) = validate(&["-o", "json", "-"], Some(&both));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["valid"], true);
    assert_eq!(v[1]["valid"], false);
    assert_eq!(
        v[1]["errors"][0],
        "spec.ingress[0].toPorts[0].ports[0].port: 80800 is not a valid port (1-65535)"
    );
}

#[test]
fn unreadable_files_and_empty_input_fail() {
    // A file that cannot be read is invalid input (exit 2); an invalid
    // policy is a verdict (exit 1).
    let (code, _, err) = validate(&["/nonexistent/p.yaml"], None);
    assert_eq!(code, 2);
    assert!(err.contains("reading /nonexistent/p.yaml"), "{err}");
    let (code, out, _) = validate(&["-"], Some(""));
    assert_eq!(code, 1);
    assert!(out.contains("no policy documents found"));
    let (code, _, err) = validate(&[], None);
    assert_eq!(code, 2, "clap usage error: {err}");
}

#[test]
fn other_objects_are_skipped_and_named_ports_warned_about() {
    let manifest = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 1}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
description: Cilium's examples carry one of these
metadata: {name: web-in}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: http, protocol: TCP}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
";
    let (code, out, err) = validate(&["-"], Some(manifest));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "Deployment/web: skipped (not a policy)\n\
         web-in: valid (CiliumNetworkPolicy, 1 rule)\n\
         web-in: warning: spec.ingress[0].toPorts[0].ports[0].port: named port \"http\" matches \
         only where the pods the rule selects declare a container port of that name and \
         protocol TCP; where none does, it matches nothing\n\
         Service/web: skipped (not a policy)\n"
    );
    let (code, out, _) = validate(&["-o", "json", "-"], Some(manifest));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v[0]["skipped"],
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"})
    );
    assert_eq!(v[1]["valid"], true);
    assert_eq!(v[1]["warnings"].as_array().unwrap().len(), 1);
    assert_eq!(v[2]["skipped"]["kind"], "Service");
    assert_eq!(v[2]["skipped"]["namespace"], "shop");
    // Only other objects: nothing to validate, which is a failure.
    let only = manifest.split("---").next().unwrap();
    let (code, out, _) = validate(&["-"], Some(only));
    assert_eq!(code, 1);
    assert!(out.ends_with("no policy documents found\n"), "{out}");
}
