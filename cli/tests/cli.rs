//! The `axoneme` binary against a real etcd and a real operator process.
//!
//! Needs the operator binary next to the test binaries: run
//! `cargo build -p axoneme-operator` first (`cargo xtask test` builds every
//! binary before running tests). A test that needs it and cannot find it
//! fails and says so. `AXONEME_KEEP=1` keeps etcd and its logs.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axoneme_e2e::{bin_path, free_port, EtcdCluster, OperatorProc};
use serde_json::Value;

const AXONEME: &str = env!("CARGO_BIN_EXE_axoneme");
const OPERATOR_ID: &str = "op-cli";

/// The outcome of one `axoneme` run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn ok(self) -> Result<Self> {
        ensure!(self.code == 0, "axoneme failed: {self:#?}");
        Ok(self)
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {self:#?}"))
    }
}

/// Runs `axoneme` against `endpoints`, with no settings from the environment.
fn axoneme(endpoints: &str, args: &[&str]) -> Result<Run> {
    let started = Instant::now();
    let out = Command::new(AXONEME)
        .args(["--etcd-endpoints", endpoints])
        .args(args)
        .env_remove("AXONEME_ETCD_ENDPOINTS")
        .env_remove("AXONEME_ETCD_CA")
        .env_remove("AXONEME_ETCD_CERT")
        .env_remove("AXONEME_ETCD_KEY")
        .env_remove("AXONEME_KVSTORE_PREFIX")
        .env_remove("AXONEME_TIMEOUT")
        // No agent on this "host": status reports that, without failing.
        .env(
            "AXONEME_AGENT_SOCKET",
            "/nonexistent/axoneme-test/agent.sock",
        )
        .output()
        .context("running axoneme")?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    })
}

fn operator_binary() -> Result<PathBuf> {
    let path = bin_path("axoneme-operator");
    if !path.is_file() {
        bail!(
            "operator binary {} not found: run `cargo build -p axoneme-operator` before these \
             tests (`cargo xtask test` builds every binary first)",
            path.display()
        );
    }
    Ok(path)
}

/// One etcd member and one operator; logs are printed if the test fails.
struct Cluster {
    etcd: EtcdCluster,
    op: OperatorProc,
    endpoints: String,
}

impl Cluster {
    fn start() -> Result<Self> {
        let binary = operator_binary()?;
        let etcd = EtcdCluster::start(1)?;
        let mut op = OperatorProc::start(
            &binary,
            OPERATOR_ID,
            &etcd.endpoints(),
            &["--lease-ttl".into(), "2".into()],
            etcd.dir(),
        )?;
        op.wait_up(Duration::from_secs(10))?;
        let endpoints = etcd.endpoints().join(",");
        Ok(Cluster {
            etcd,
            op,
            endpoints,
        })
    }

    fn run(&self, args: &[&str]) -> Result<Run> {
        axoneme(&self.endpoints, args)
    }

    /// Runs a scenario; if it fails, the panic makes `Drop` print the logs.
    fn check(&self, scenario: impl FnOnce(&Cluster) -> Result<()>) {
        if let Err(e) = scenario(self) {
            panic!("{e:?}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("== operator log ==\n{}", self.op.proc.log_text());
            eprintln!("{}", self.etcd.logs());
        }
    }
}

/// `endpoint put --wait` and return the identity it printed (JSON).
fn put_wait(c: &Cluster, node: &str, id: &str, labels: &[&str]) -> Result<u64> {
    let mut args = vec!["endpoint", "put", "--node", node, "--id", id];
    for l in labels {
        args.extend(["--label", l]);
    }
    args.extend(["--wait", "20", "-o", "json"]);
    let run = c.run(&args)?.ok()?;
    let v = run.json()?;
    ensure!(v["status"] == "ready", "not ready: {v}");
    v["identity"]
        .as_u64()
        .with_context(|| format!("no identity in {v}"))
}

#[test]
fn endpoints_get_identities_from_the_operator() {
    Cluster::start().expect("cluster").check(|c| {
        let started = Instant::now();
        let web = put_wait(c, "node-a", "ep1", &["k8s:app=web", "zone=a"])?;
        println!("first put --wait answered in {:?}", started.elapsed());
        assert!(web >= 256, "cluster-range identity, got {web}");

        // Same identity-relevant labels (pod-template-hash is filtered): same identity.
        let run = c
            .run(&[
                "endpoint",
                "put",
                "--node",
                "node-a",
                "--id",
                "ep2",
                "-l",
                "app=web",
                "-l",
                "zone=a",
                "-l",
                "pod-template-hash=abc123",
                "--wait",
                "20",
            ])?
            .ok()?;
        let mut lines = run.stdout.lines();
        let header = lines.next().unwrap_or_default();
        assert!(
            header.starts_with("NODE") && header.ends_with("STATUS"),
            "{run:#?}"
        );
        let row: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(row[..3], ["node-a", "ep2", &web.to_string()], "{run:#?}");
        assert_eq!(row.last(), Some(&"ready"), "{run:#?}");

        let db = put_wait(c, "node-b", "ep3", &["k8s:app=db"])?;
        assert_ne!(db, web);

        let list = c.run(&["endpoint", "list", "-o", "json"])?.ok()?.json()?;
        let items = list.as_array().context("a JSON list")?;
        assert_eq!(items.len(), 3, "{list:#}");
        let ep1 = &items[0];
        assert_eq!(ep1["node"], "node-a");
        assert_eq!(ep1["endpoint"], "ep1");
        assert_eq!(ep1["identity"], web);
        assert_eq!(ep1["status"], "ready");
        assert_eq!(
            ep1["labels"],
            serde_json::json!(["k8s:app=web", "k8s:zone=a"])
        );
        assert_eq!(ep1["identityLabels"], "k8s:app=web;k8s:zone=a;");
        assert!(ep1["revision"].as_i64().is_some_and(|r| r > 0));
        assert_eq!(items[2]["identity"], db);

        let node_b = c
            .run(&["endpoint", "list", "--node", "node-b", "-o", "json"])?
            .ok()?
            .json()?;
        assert_eq!(node_b.as_array().map(Vec::len), Some(1), "{node_b:#}");
        let none = c.run(&["endpoint", "list", "--node", "node-z"])?.ok()?;
        assert_eq!(none.stdout, "No endpoints found.\n");

        let yaml = c
            .run(&["endpoint", "get", "node-a/ep1", "-o", "yaml"])?
            .ok()?;
        assert!(
            yaml.stdout.contains(&format!("identity: {web}\n")),
            "{yaml:#?}"
        );

        // Deleting a record; a deleted endpoint is not found.
        let del = c
            .run(&["endpoint", "delete", "--node", "node-a", "--id", "ep2"])?
            .ok()?;
        assert_eq!(del.stdout, "endpoint node-a/ep2 deleted\n");
        let gone = c.run(&["endpoint", "get", "node-a/ep2"])?;
        assert_eq!(gone.code, 1, "{gone:#?}");
        assert_eq!(
            gone.stderr,
            "axoneme: error: endpoint node-a/ep2 not found\n"
        );
        let again = c.run(&["endpoint", "delete", "--node", "node-a", "--id", "ep2"])?;
        assert_eq!(again.code, 1, "{again:#?}");

        // The operator's error is printed and fails the command; list shows it.
        let rejected = c.run(&[
            "endpoint",
            "put",
            "--node",
            "node-a",
            "--id",
            "ep4",
            "--label",
            "pod-template-hash=abc",
            "--wait",
            "20",
        ])?;
        assert_eq!(rejected.code, 1, "{rejected:#?}");
        assert!(
            rejected.stderr.starts_with(
                "axoneme: error: the operator assigned no identity to node-a/ep4: \
                 endpoint has no identity-relevant labels"
            ),
            "{rejected:#?}"
        );
        let list = c.run(&["endpoint", "list", "--node", "node-a"])?.ok()?;
        let ep4 = list
            .stdout
            .lines()
            .find(|l| l.contains("ep4"))
            .context("ep4 listed")?;
        assert!(
            ep4.ends_with("endpoint has no identity-relevant labels (see the label filter)"),
            "{list:#?}"
        );
        Ok(())
    });
}

#[test]
fn identities_reserved_and_allocated() {
    Cluster::start().expect("cluster").check(|c| {
        let id = put_wait(c, "node-a", "ep1", &["k8s:app=web"])?;

        let table = c.run(&["identity", "list"])?.ok()?;
        let lines: Vec<Vec<&str>> = table
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["ID", "LABELS", "KIND"], "{table:#?}");
        assert_eq!(lines[1], ["1", "reserved:host", "reserved"], "{table:#?}");
        assert_eq!(
            lines[10],
            ["10", "reserved:world-ipv6", "reserved"],
            "{table:#?}"
        );
        assert!(
            lines.contains(&vec![id.to_string().as_str(), "k8s:app=web", "allocated"]),
            "{table:#?}"
        );

        let all = c.run(&["identity", "list", "-o", "json"])?.ok()?.json()?;
        let all = all.as_array().context("a JSON list")?;
        assert_eq!(all.len(), 11, "{all:#?}");
        assert!(all[..10].iter().all(|v| v["kind"] == "reserved"));
        assert_eq!(all[1]["labels"], serde_json::json!(["reserved:world"]));

        let allocated = c
            .run(&["identity", "list", "--allocated-only", "-o", "json"])?
            .ok()?
            .json()?;
        assert_eq!(
            allocated,
            serde_json::json!([{
                "id": id, "labels": ["k8s:app=web"], "kind": "allocated", "allocator": OPERATOR_ID
            }])
        );

        let one = c
            .run(&["identity", "get", &id.to_string(), "-o", "json"])?
            .ok()?
            .json()?;
        assert_eq!(one["labels"], serde_json::json!(["k8s:app=web"]));
        let host = c.run(&["identity", "get", "1"])?.ok()?;
        assert!(host.stdout.contains("reserved:host"), "{host:#?}");

        let missing = c.run(&["identity", "get", "99999"])?;
        assert_eq!(missing.code, 1, "{missing:#?}");
        assert_eq!(missing.stderr, "axoneme: error: identity 99999 not found\n");
        assert!(missing.stdout.is_empty());
        Ok(())
    });
}

#[test]
fn status_reports_the_operator_leader() {
    Cluster::start().expect("cluster").check(|c| {
        // The operator may still be campaigning: wait for a passing status.
        let deadline = Instant::now() + Duration::from_secs(15);
        let run = loop {
            let run = c.run(&["status"])?;
            if run.code == 0 {
                break run;
            }
            ensure!(Instant::now() < deadline, "status never OK: {run:#?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), 4, "{run:#?}");
        assert!(
            lines[3].starts_with("Agent:") && lines[3].contains("OK   no agent on this host"),
            "{run:#?}"
        );
        assert!(
            lines[0].starts_with("KVStore:")
                && lines[0].contains("OK")
                && lines[0].contains("1/1 members healthy, raft leader http://127.0.0.1:"),
            "{run:#?}"
        );
        let operator: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            operator[..4],
            ["Operator:", "OK", "leader", OPERATOR_ID],
            "{run:#?}"
        );
        assert!(
            lines[2].starts_with("Identities:") && lines[2].contains("0 allocated"),
            "{run:#?}"
        );

        let verbose = c.run(&["status", "--verbose"])?.ok()?;
        let member = c.etcd.endpoints()[0].clone();
        assert!(
            verbose
                .stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&member) && l.contains("yes")),
            "{verbose:#?}"
        );

        let json = c.run(&["status", "-o", "json"])?.ok()?.json()?;
        assert_eq!(json["ok"], true);
        assert_eq!(json["operator"]["leader"], OPERATOR_ID);
        assert_eq!(json["kvstore"]["healthy"], 1);
        assert_eq!(json["kvstore"]["leader"], member.as_str());
        assert_eq!(json["kvstore"]["members"][0]["is_leader"], true);
        assert_eq!(json["identities"]["allocated"], 0);
        Ok(())
    });
}

#[test]
fn status_fails_fast_when_etcd_is_unreachable() -> Result<()> {
    let nowhere = format!("http://127.0.0.1:{}", free_port()?);
    let run = axoneme(&nowhere, &["status"])?;
    println!("status against a dead endpoint took {:?}", run.elapsed);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.elapsed < Duration::from_secs(2), "{run:#?}");
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("KVStore:")
            && first.contains("FAIL")
            && first.contains(&format!("{nowhere}: connection refused")),
        "{run:#?}"
    );

    let json = axoneme(&nowhere, &["status", "-o", "json"])?;
    assert_eq!(json.code, 1, "{json:#?}");
    let v = json.json()?;
    assert_eq!(
        (v["ok"].clone(), v["kvstore"]["ok"].clone()),
        (false.into(), false.into())
    );

    // Other commands give up within --timeout, in one line saying what
    // failed and why; exit 3 (unavailable).
    let list = axoneme(&nowhere, &["endpoint", "list", "--timeout", "2s"])?;
    println!(
        "endpoint list against a dead endpoint took {:?}",
        list.elapsed
    );
    assert_eq!(list.code, 3, "{list:#?}");
    assert!(list.elapsed < Duration::from_secs(3), "{list:#?}");
    assert_eq!(list.stderr.lines().count(), 1, "{list:#?}");
    assert!(
        list.stderr
            .starts_with("axoneme: error: listing identity assignments: etcd unavailable: ")
            && list
                .stderr
                .contains(&format!("{nowhere}: connection refused")),
        "{list:#?}"
    );

    // A member that accepts connections and never answers (hung): the
    // same, within the default 5 s.
    let hole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let hole = format!("http://{}", hole.local_addr()?);
    for args in [&["identity", "list"][..], &["policy", "list"]] {
        let run = axoneme(&hole, args)?;
        println!("{args:?} against a hung member took {:?}", run.elapsed);
        assert_eq!(run.code, 3, "{run:#?}");
        assert!(run.elapsed < Duration::from_secs(6), "{run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
        assert!(run.stderr.contains("etcd unavailable"), "{run:#?}");
    }
    let run = axoneme(&hole, &["status"])?;
    assert!(run.elapsed < Duration::from_secs(2), "{run:#?}");
    assert_eq!(run.code, 1, "{run:#?}");
    // A bad --timeout is invalid input.
    let run = axoneme(&nowhere, &["policy", "list", "--timeout", "soon"])?;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("--timeout"), "{run:#?}");
    Ok(())
}

#[test]
fn bad_input_is_refused_before_etcd_is_contacted() -> Result<()> {
    // Nothing listens here: validation must fail first, and fast.
    let nowhere = format!("http://127.0.0.1:{}", free_port()?);
    let run = axoneme(
        &nowhere,
        &[
            "endpoint",
            "put",
            "--node",
            "n1",
            "--id",
            "ep1",
            "--label",
            "k8s:app=web",
            "--label",
            "k8s:tier=bad value",
        ],
    )?;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr
            .starts_with("axoneme: error: invalid label \"k8s:tier=bad value\": "),
        "{run:#?}"
    );
    assert!(run.stdout.is_empty());

    let run = axoneme(&nowhere, &["endpoint", "get", "no-slash"])?;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("want NODE/ENDPOINT"), "{run:#?}");

    // Bad flags are clap's usage errors: exit 2.
    let run = axoneme(&nowhere, &["endpoint", "list", "--bogus"])?;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("--bogus"), "{run:#?}");
    let run = axoneme(&nowhere, &["status", "-o", "xml"])?;
    assert_eq!(run.code, 2, "{run:#?}");
    Ok(())
}

#[test]
fn policies_are_imported_judged_listed_and_deleted() {
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/seed-payments-policy.yaml"
    );
    Cluster::start().expect("cluster").check(|c| {
        let run = c.run(&["policy", "import", seed, "--wait", "10", "-o", "json"])?.ok()?;
        let v = run.json()?;
        ensure!(v[0]["name"] == "payments-api" && v[0]["valid"] == true, "{v}");
        let list = c.run(&["policy", "list"])?.ok()?;
        ensure!(
            list.stdout.lines().nth(1).is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["cnp", "default", "payments-api", "True"]),
            "{list:#?}"
        );
        let get = c.run(&["policy", "get", "payments-api", "-o", "json"])?.ok()?;
        let v = get.json()?;
        ensure!(v["object"]["spec"]["endpointSelector"]["matchLabels"]["app"] == "payments", "{v}");
        // An invalid document is refused as a whole; nothing is stored.
        let dir = tempfile_dir()?;
        let bad = dir.join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: other}\n\
             spec: {endpointSelector: {}}\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
             metadata: {name: bad}\nspec: {endpointSelector: {}, ingress: [{fromEntities: [moon]}]}\n",
        )?;
        let run = c.run(&["policy", "import", bad.to_str().unwrap()])?;
        std::fs::remove_dir_all(&dir)?;
        ensure!(run.code == 1 && run.stdout.contains("bad: spec.ingress[0].fromEntities[0]"), "{run:#?}");
        let list = c.run(&["policy", "list", "-o", "json"])?.ok()?.json()?;
        ensure!(list.as_array().map(Vec::len) == Some(1), "nothing else stored: {list}");
        c.run(&["policy", "delete", "payments-api"])?.ok()?;
        let run = c.run(&["policy", "get", "payments-api"])?;
        ensure!(run.code == 1 && run.stderr.contains("policy payments-api not found"), "{run:#?}");
        Ok(())
    });
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("axoneme-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
