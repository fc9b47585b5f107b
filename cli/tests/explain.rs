//! `axoneme policy explain` offline (no etcd, no cluster): the seed's five
//! flows get the verdicts the datapath and the proxy give them, each
//! attributed to the rule that decided; deny rules, requirements, CIDR
//! peers and bad input are named.

use std::process::Command;

use serde_json::Value;

const AXONEME: &str = env!("CARGO_BIN_EXE_axoneme");

fn seed() -> String {
    format!(
        "{}/../../shared/testdata/seed-payments-policy.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs `policy explain` with `args`: exit code, stdout, stderr.
fn explain(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(AXONEME)
        .args(["policy", "explain"])
        .args(args)
        // Nothing listens here: explaining must not need etcd.
        .env("AXONEME_ETCD_ENDPOINTS", "http://127.0.0.1:1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (code, out, err) = explain(&all);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

const SEED_RULE: &str = "spec.ingress[0].toPorts[0].rules.http[0]";
const POLICY: &str = "CiliumNetworkPolicy default/payments-api";

#[test]
fn the_seed_flows_get_their_verdicts_and_the_rules_that_decided() {
    let seed = seed();
    let flow = |from: &str, to: &str, port: &str, request: &[&str]| {
        let mut args = vec!["-f", &seed, "--from", from, "--to", to, "--port", port];
        args.extend(request);
        json(&args)
    };
    // checkout POST /v1/charge: allowed by the HTTP rule, through the proxy.
    let v = flow(
        "app=checkout",
        "app=payments",
        "8080",
        &["--method", "POST", "--path", "/v1/charge"],
    );
    assert_eq!(v["verdict"], "allowed", "{v:#}");
    assert_eq!(v["ingress"]["verdict"], "http");
    assert_eq!(v["http"][0]["direction"], "ingress");
    assert_eq!(v["http"][0]["matched"]["policy"], POLICY);
    assert_eq!(v["http"][0]["matched"]["path"], SEED_RULE);
    assert_eq!(
        v["http"][0]["matched"]["peer"],
        "spec.ingress[0].fromEndpoints[0]"
    );
    assert_eq!(v["egress"]["enforced"], false);
    // checkout GET /v1/charge and POST /v1/refund: 403, no rule matched.
    for (method, path) in [("GET", "/v1/charge"), ("POST", "/v1/refund")] {
        let v = flow(
            "app=checkout",
            "app=payments",
            "8080",
            &["--method", method, "--path", path],
        );
        assert_eq!(v["verdict"], "denied", "{method} {path}: {v:#}");
        assert_eq!(v["httpStatus"], 403);
        assert!(v["http"][0]["matched"].is_null(), "{v:#}");
    }
    // The intruder: default deny at payments' ingress, because the seed
    // policy selects payments.
    let v = flow("app=intruder", "app=payments", "8080", &[]);
    assert_eq!(v["verdict"], "denied");
    assert_eq!(v["dropReason"], 133);
    assert_eq!(v["ingress"]["selectedBy"][0]["policy"], POLICY);
    let reason = v["ingress"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("default deny: ingress is enforced on the destination because")
            && reason.contains(POLICY)
            && reason.contains("no rule allows this peer and port"),
        "{reason}"
    );
    // payments' own egress: nothing selects it for egress.
    let v = flow("app=payments", "app=checkout", "80", &[]);
    assert_eq!(v["verdict"], "allowed");
    assert_eq!(
        v["egress"]["reason"],
        "not enforced: no policy selects the source for egress"
    );
    // Without a request, checkout's flow is sent to the proxy.
    let v = flow("app=checkout", "app=payments", "8080", &[]);
    assert_eq!(v["verdict"], "redirected");

    // The human form says the same in words.
    let (code, out, _) = explain(&[
        "-f",
        &seed,
        "--from",
        "app=intruder",
        "--to",
        "app=payments",
        "--port",
        "8080",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("DENIED: dropped, reason 133 (policy denied)"),
        "{out}"
    );
}

#[test]
fn deny_rules_requirements_and_addresses_are_attributed() {
    let dir = std::env::temp_dir().join(format!("axoneme-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  - fromCIDR: [192.0.2.0/24]
  - fromRequires: [{matchLabels: {env: prod}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: api, debug: "true"}}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: egress-lock}
specs:
- endpointSelector: {matchLabels: {app: api}}
  egress:
  - toEndpoints: [{}]
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let v = |args: &[&str]| {
        let mut all = vec![
            "-f",
            f,
            "--from-namespace",
            "shop",
            "--to-namespace",
            "shop",
        ];
        all.extend(args);
        json(&all)
    };
    // An api pod in prod: allowed by ingress[0], egress by the CCNP.
    let ok = v(&[
        "--from",
        "app=api,env=prod",
        "--to",
        "app=db",
        "--port",
        "5432",
    ]);
    assert_eq!(ok["verdict"], "allowed", "{ok:#}");
    assert_eq!(
        ok["ingress"]["allowedBy"][0]["path"],
        "spec.ingress[0].toPorts[0].ports[0]"
    );
    assert_eq!(
        ok["egress"]["allowedBy"][0]["policy"],
        "CiliumClusterwideNetworkPolicy egress-lock"
    );
    assert_eq!(
        ok["egress"]["allowedBy"][0]["peer"],
        "specs[0].egress[0].toEndpoints[0]"
    );
    // The same pod with debug=true: the deny rule, reason 181.
    let denied = v(&[
        "--from",
        "app=api,env=prod,debug=true",
        "--to",
        "app=db",
        "--port",
        "5432",
    ]);
    assert_eq!(denied["dropReason"], 181, "{denied:#}");
    assert_eq!(
        denied["ingress"]["deniedBy"][0]["peer"],
        "spec.ingressDeny[0].fromEndpoints[0]"
    );
    // Not in prod: the requirement is named.
    let unmet = v(&["--from", "app=api", "--to", "app=db", "--port", "5432"]);
    assert_eq!(unmet["dropReason"], 133);
    assert_eq!(
        unmet["ingress"]["unmetRequires"][0]["path"],
        "spec.ingress[2].fromRequires[0]"
    );
    // An address in the CIDR: its CIDR identity; outside it: world.
    let inside = v(&["--from-ip", "192.0.2.7", "--to", "app=db", "--port", "80"]);
    assert_eq!(
        inside["verdict"], "denied",
        "requirements apply to CIDR peers too: {inside:#}"
    );
    let world = v(&[
        "--from-ip",
        "198.51.100.1",
        "--to",
        "app=db",
        "--port",
        "80",
    ]);
    assert!(
        world["source"].as_str().unwrap().contains("reserved:world"),
        "{world:#}"
    );

    // Bad input is named.
    for (args, says) in [
        (
            vec![
                "--from",
                "app=a",
                "--to",
                "app=db",
                "--port",
                "1",
                "--protocol",
                "GRE",
            ],
            "--protocol",
        ),
        (
            vec!["--from", "reserved:nope", "--to", "app=db", "--port", "1"],
            "reserved:nope",
        ),
        (
            vec!["--from", "a b=c", "--to", "app=db", "--port", "1"],
            "labels",
        ),
        (
            vec![
                "--from", "app=a", "--to", "app=db", "--port", "1", "--method", "GET", "--header",
                "nocolon",
            ],
            "--header",
        ),
    ] {
        let mut all = vec!["-f", f];
        all.extend(&args);
        let (code, _, err) = explain(&all);
        assert_eq!(code, 2, "invalid input: {args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, _, err) = explain(&[
        "-f",
        "/nonexistent.yaml",
        "--from",
        "a=b",
        "--to",
        "c=d",
        "--port",
        "1",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent.yaml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
