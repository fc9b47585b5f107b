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
    let (code, _, err) = validate(&["/nonexistent/p.yaml"], None);
    assert_eq!(code, 1);
    assert!(err.contains("reading /nonexistent/p.yaml"), "{err}");
    let (code, out, _) = validate(&["-"], Some(""));
    assert_eq!(code, 1);
    assert!(out.contains("no policy documents found"));
    let (code, _, err) = validate(&[], None);
    assert_eq!(code, 2, "clap usage error: {err}");
}
