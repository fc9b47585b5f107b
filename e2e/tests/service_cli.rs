//! `axoneme service ...` against a real etcd: create, list, get, update,
//! delete, and what it refuses (an invalid file, a service that exists or
//! does not, a cluster IP another service holds), with nothing written
//! when it refuses.
//!
//! Needs the `axoneme` binary next to the test binaries: run `cargo build
//! -p axoneme-cli` first (`cargo xtask test` builds every binary).
//! `AXONEME_KEEP=1` keeps etcd and its logs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use axoneme_e2e::{bin_path, EtcdCluster};
use serde_json::Value;

/// The outcome of one `axoneme` run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
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

/// One etcd member, a key prefix of this test's own, and a directory for
/// service files.
struct Env {
    etcd: EtcdCluster,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Result<Self> {
        let binary = bin_path("axoneme");
        if !binary.is_file() {
            bail!(
                "{} not found: run `cargo build -p axoneme-cli` before these tests",
                binary.display()
            );
        }
        Ok(Env {
            etcd: EtcdCluster::start(1)?,
            prefix: axoneme_e2e::run_prefix("svc"),
            dir: tempfile::tempdir()?,
        })
    }

    /// Runs `axoneme` with `stdin`, no settings from the environment.
    fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Result<Run> {
        let mut child = Command::new(bin_path("axoneme"))
            .args(["--etcd-endpoints", &self.etcd.endpoints().join(",")])
            .args(["--kvstore-prefix", &self.prefix])
            .args(args)
            .env_remove("AXONEME_ETCD_ENDPOINTS")
            .env_remove("AXONEME_KVSTORE_PREFIX")
            .env_remove("AXONEME_TIMEOUT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running axoneme")?;
        let mut input = child.stdin.take().expect("piped");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes())?;
        }
        drop(input);
        let out = child.wait_with_output()?;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn run(&self, args: &[&str]) -> Result<Run> {
        self.run_with(args, None)
    }

    fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }

    /// The stored services as `list -o json` shows them.
    fn stored(&self) -> Result<Vec<Value>> {
        let v = self.run(&["service", "list", "-o", "json"])?.ok()?.json()?;
        Ok(v.as_array().context("a list")?.clone())
    }

    /// Fails with etcd's log if `scenario` fails.
    fn check(&self, scenario: impl FnOnce(&Env) -> Result<()>) {
        if let Err(e) = scenario(self) {
            panic!("{e:?}\n{}", self.etcd.logs());
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A ClusterIP service with `backends` (`(address, node)`) on `targetPort`.
fn service(name: &str, cluster_ip: &str, target: u16, backends: &[(&str, &str)]) -> String {
    let mut text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  clusterIP: {cluster_ip}\n  ports:\n  - {{name: http, port: 80, targetPort: {target}}}\n\
         endpoints:\n"
    );
    for (addr, node) in backends {
        text.push_str(&format!("- {{addresses: [{addr}], nodeName: {node}}}\n"));
    }
    text
}

#[test]
fn create_list_get_update_delete() {
    let env = Env::start().unwrap();
    env.check(|env| {
        let web = service(
            "web",
            "10.96.7.1",
            8080,
            &[("10.200.7.11", "node-a"), ("10.200.7.12", "node-b")],
        );
        let api = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\n\
                   spec:\n  type: NodePort\n  clusterIPs: [10.96.7.2, \"fd00:96::7:2\"]\n  \
                   ports: [{port: 443, targetPort: 8443, nodePort: 30443}]\n\
                   endpoints: [{addresses: [10.200.7.21, \"fd00:200::7:21\"], nodeName: node-a}]\n";
        let both = env.file("both.yaml", &format!("{web}---\n{api}"))?;

        // Both in one transaction.
        let run = env.run(&["service", "create", "-f", path(&both)])?.ok()?;
        ensure!(
            run.stdout.starts_with("NAMESPACE   NAME   TYPE"),
            "{}",
            run.stdout
        );
        let list = env.run(&["service", "list"])?.ok()?;
        let lines: Vec<&str> = list.stdout.lines().collect();
        ensure!(lines.len() == 3, "{}", list.stdout);
        let api_row: Vec<&str> = lines[1].split_whitespace().collect();
        ensure!(
            api_row
                == [
                    "shop",
                    "api",
                    "NodePort",
                    "10.96.7.2:443/TCP,[fd00:96::7:2]:443/TCP,*:30443/TCP,[*]:30443/TCP",
                    "2/2",
                    // NODE: this host has no agent to ask.
                    "no",
                    "agent"
                ],
            "{}",
            list.stdout
        );
        let web_row: Vec<&str> = lines[2].split_whitespace().collect();
        ensure!(
            web_row
                == [
                    "shop",
                    "web",
                    "ClusterIP",
                    "10.96.7.1:80/TCP",
                    "2/2",
                    "no",
                    "agent"
                ],
            "{}",
            list.stdout
        );

        // get -o json: the stored record and every frontend's backends.
        let v = env
            .run(&["service", "get", "web", "-n", "shop", "-o", "json"])?
            .ok()?
            .json()?;
        ensure!(v["record"]["spec"]["clusterIPs"][0] == "10.96.7.1", "{v}");
        ensure!(v["record"]["spec"]["ports"][0]["targetPort"] == 8080, "{v}");
        let backends = &v["resolved"][0]["backends"];
        ensure!(backends[0]["addr"] == "10.200.7.11", "{v}");
        ensure!(backends[0]["port"] == 8080, "{v}");
        ensure!(backends[1]["node"] == "node-b", "{v}");
        ensure!(backends[1]["state"] == "Active", "{v}");
        let created_at = v["revision"].as_i64().context("revision")?;

        // Update from standard input: a backend terminating, another port.
        let changed = service(
            "web",
            "10.96.7.1",
            9090,
            &[("10.200.7.11", "node-a"), ("10.200.7.13", "node-b")],
        )
        .replace(
            "nodeName: node-b}",
            "nodeName: node-b, conditions: {ready: false, serving: true, terminating: true}}",
        );
        env.run_with(&["service", "update", "-f", "-"], Some(&changed))?
            .ok()?;
        let v = env
            .run(&["service", "get", "web", "-n", "shop", "-o", "json"])?
            .ok()?
            .json()?;
        ensure!(v["revision"].as_i64() > Some(created_at), "{v}");
        let backends = &v["resolved"][0]["backends"];
        ensure!(backends[0]["port"] == 9090, "{v}");
        ensure!(backends[1]["addr"] == "10.200.7.13", "{v}");
        ensure!(backends[1]["state"] == "Terminating", "{v}");
        ensure!(
            v["backends"] == serde_json::json!({"active": 1, "total": 2}),
            "{v}"
        );
        let human = env.run(&["service", "get", "web", "-n", "shop"])?.ok()?;
        ensure!(
            human
                .stdout
                .contains("10.200.7.11:9090 (node-a), 10.200.7.13:9090 (node-b, terminating)"),
            "{}",
            human.stdout
        );

        // Delete one; the other stays.
        let run = env
            .run(&["service", "delete", "web", "-n", "shop", "-o", "yaml"])?
            .ok()?;
        ensure!(run.stdout.contains("name: web"), "{}", run.stdout);
        let stored = env.stored()?;
        ensure!(
            stored.len() == 1 && stored[0]["name"] == "api",
            "{stored:?}"
        );
        let run = env.run(&["service", "get", "web", "-n", "shop"])?;
        ensure!(run.code == 1, "{run:#?}");
        ensure!(
            run.stderr == "axoneme: error: service shop/web not found\n",
            "{run:#?}"
        );
        Ok(())
    });
}

#[test]
fn refusals_write_nothing() {
    let env = Env::start().unwrap();
    env.check(|env| {
        let good = env.file(
            "good.yaml",
            &service("web", "10.96.8.1", 8080, &[("10.200.8.11", "node-a")]),
        )?;
        // An invalid document beside a valid one: every error, exit 1, nothing stored.
        let bad = env.file(
            "bad.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: payments}\n\
             spec:\n  clusterIP: 10.96.8.2\n  ports:\n  - {name: a, port: 80}\n  \
             - {name: b, port: 80800}\n  selector: {app: payments}\n",
        )?;
        let run = env.run(&["service", "create", "-f", path(&good), path(&bad)])?;
        ensure!(run.code == 1, "{run:#?}");
        let b = path(&bad);
        ensure!(
            run.stderr
                == format!(
                    "axoneme: error: 2 problems in the service documents, nothing written:\n  \
                     {b}: default/payments: spec.selector: is not supported: standalone mode \
                     selects no pods; list the backends under `endpoints` (beside `spec`)\n  \
                     {b}: default/payments: spec.ports[1].port: must be 1-65535\n"
                ),
            "{run:#?}"
        );
        ensure!(run.stdout.is_empty(), "{run:#?}");
        ensure!(env.stored()?.is_empty(), "stored despite an invalid file");
        // validate says the same on standard output, offline (nothing
        // listens here), with the valid one.
        let offline = Command::new(bin_path("axoneme"))
            .args([
                "--etcd-endpoints",
                "http://127.0.0.1:1",
                "service",
                "validate",
            ])
            .args(["-f", path(&good), "-f", path(&bad), "-o", "json"])
            .output()?;
        ensure!(offline.status.code() == Some(1), "{offline:?}");
        let v: Value = serde_json::from_slice(&offline.stdout)?;
        ensure!(v[0]["valid"] == true && v[1]["valid"] == false, "{v}");
        ensure!(v[0]["service"] == "shop/web", "{v}");
        ensure!(
            v[1]["errors"][1] == "spec.ports[1].port: must be 1-65535",
            "{v}"
        );

        // Create, then create again: the existing one is named, nothing changes.
        env.run(&["service", "create", "-f", path(&good)])?.ok()?;
        let before = env.stored()?;
        let run = env.run(&["service", "create", "-f", path(&good)])?;
        ensure!(run.code == 1, "{run:#?}");
        ensure!(
            run.stderr
                == "axoneme: error: service shop/web already exists (change it with `axoneme \
                    service update`)\n",
            "{run:#?}"
        );
        ensure!(env.stored()? == before, "changed by a failed create");

        // Update of a missing one, with an existing one in the same
        // transaction: nothing written.
        let other = env.file(
            "other.yaml",
            &format!(
                "{}---\n{}",
                service("web", "10.96.8.1", 9999, &[("10.200.8.11", "node-a")]),
                service("cart", "10.96.8.3", 8080, &[])
            ),
        )?;
        let run = env.run(&["service", "update", "-f", path(&other)])?;
        ensure!(run.code == 1, "{run:#?}");
        ensure!(
            run.stderr == "axoneme: error: service shop/cart not found\n",
            "{run:#?}"
        );
        ensure!(env.stored()? == before, "changed by a failed update");

        // A cluster IP another stored service holds.
        let clash = env.file("clash.yaml", &service("cart", "10.96.8.1", 8080, &[]))?;
        let run = env.run(&["service", "create", "-f", path(&clash)])?;
        ensure!(run.code == 1, "{run:#?}");
        ensure!(
            run.stderr
                == format!(
                    "axoneme: error: {}: shop/cart: spec.clusterIPs[0]: 10.96.8.1 is also the \
                     cluster IP of shop/web (nothing written)\n",
                    path(&clash)
                ),
            "{run:#?}"
        );
        ensure!(env.stored()? == before, "changed by a refused create");

        // Deleting a missing one; a bad name is invalid input (exit 2).
        let run = env.run(&["service", "delete", "cart", "-n", "shop"])?;
        ensure!(run.code == 1, "{run:#?}");
        ensure!(
            run.stderr == "axoneme: error: service shop/cart not found\n",
            "{run:#?}"
        );
        let run = env.run(&["service", "get", "Cart"])?;
        ensure!(run.code == 2, "{run:#?}");
        ensure!(env.stored()? == before, "changed by a failed delete");
        Ok(())
    });
}

/// The kvstore as the tests see it behind the CLI's back.
struct Raw {
    rt: tokio::runtime::Runtime,
    kv: axoneme_kvstore::KvStore,
    layout: axoneme_identity::Layout,
}

impl Raw {
    fn connect(env: &Env) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let kv = rt.block_on(axoneme_kvstore::KvStore::connect(
            axoneme_kvstore::KvConfig::new(env.etcd.endpoints()),
        ))?;
        Ok(Raw {
            rt,
            kv,
            layout: axoneme_identity::Layout::new(&env.prefix),
        })
    }

    /// Who holds the index name `name`, if anyone.
    fn holder(&self, name: &str) -> Result<Option<String>> {
        let kv = self
            .rt
            .block_on(self.kv.get(&self.layout.service_claim(name)))?;
        Ok(kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    fn marked(&self) -> Result<bool> {
        let marker = self.layout.services_index_marker();
        Ok(self.rt.block_on(self.kv.get(&marker))?.is_some())
    }
}

#[test]
fn the_frontend_index_finds_conflicts_and_heals_after_other_writers() {
    let env = Env::start().unwrap();
    env.check(|env| {
        let raw = Raw::connect(env)?;
        let create = |name: &str, text: &str| -> Result<Run> {
            let f = env.file(&format!("{name}.yaml"), text)?;
            env.run(&["service", "create", "-f", path(&f)])
        };
        create("web", &service("web", "10.96.9.1", 8080, &[]))?.ok()?;
        ensure!(raw.marked()?, "no index marker after a create");
        ensure!(raw.holder("ip/10.96.9.1")?.as_deref() == Some("shop/web"));

        // A service written by another writer (as the operator mirrors
        // Kubernetes, or a store from before the index): no names, and
        // the marker deleted. The next command rebuilds the index.
        let mut legacy = env
            .run(&["service", "get", "web", "-n", "shop", "-o", "json"])?
            .ok()?
            .json()?["record"]
            .clone();
        legacy["name"] = "legacy".into();
        legacy["spec"]["clusterIPs"] = serde_json::json!(["10.96.9.2"]);
        let legacy_key = raw.layout.service("shop", "legacy");
        raw.rt.block_on(async {
            raw.kv
                .put(&legacy_key, serde_json::to_vec(&legacy)?, 0)
                .await?;
            raw.kv.delete(&raw.layout.services_index_marker()).await?;
            anyhow::Ok(())
        })?;
        let run = create("clash", &service("clash", "10.96.9.2", 8080, &[]))?;
        ensure!(run.code == 1, "{run:#?}");
        ensure!(
            run.stderr.contains(
                "shop/clash: spec.clusterIPs[0]: 10.96.9.2 is also the cluster IP of shop/legacy"
            ),
            "{run:#?}"
        );
        ensure!(raw.marked()?, "the index was not rebuilt");
        ensure!(raw.holder("ip/10.96.9.2")?.as_deref() == Some("shop/legacy"));

        // Its record deleted behind the index's back: the stale name does
        // not refuse a new holder, which takes it over.
        raw.rt.block_on(raw.kv.delete(&legacy_key))?;
        create("reuse", &service("reuse", "10.96.9.2", 8080, &[]))?.ok()?;
        ensure!(raw.holder("ip/10.96.9.2")?.as_deref() == Some("shop/reuse"));

        // An update releases the names the service no longer holds.
        let moved = env.file("moved.yaml", &service("reuse", "10.96.9.3", 8080, &[]))?;
        env.run(&["service", "update", "-f", path(&moved)])?.ok()?;
        ensure!(
            raw.holder("ip/10.96.9.2")?.is_none(),
            "a released name stays"
        );
        ensure!(raw.holder("ip/10.96.9.3")?.as_deref() == Some("shop/reuse"));

        // An external address on another service's cluster IP and port:
        // found through the names it probes.
        let ext = service("ext", "10.96.9.4", 8080, &[]).replace(
            "  clusterIP: 10.96.9.4\n",
            "  clusterIP: 10.96.9.4\n  externalIPs: [10.96.9.3]\n",
        );
        let run = create("ext", &ext)?;
        ensure!(run.code == 1, "{run:#?}");
        ensure!(
            run.stderr.contains("shop/ext: spec.externalIPs[0]")
                && run.stderr.contains("shop/reuse"),
            "{run:#?}"
        );
        // A delete frees its names: the same file goes through.
        env.run(&["service", "delete", "reuse", "-n", "shop"])?
            .ok()?;
        ensure!(
            raw.holder("ip/10.96.9.3")?.is_none(),
            "a deleted service's name stays"
        );
        create("ext", &ext)?.ok()?;
        ensure!(raw.holder("fe/10.96.9.3/80/TCP")?.as_deref() == Some("shop/ext"));

        // More than one transaction can hold: refused before anything is read.
        let many: Vec<String> = (0..64)
            .map(|i| service(&format!("m{i}"), &format!("10.96.10.{i}"), 8080, &[]))
            .collect();
        let run = create("many", &many.join("---\n"))?;
        ensure!(run.code == 2, "{run:#?}");
        ensure!(
            run.stderr
                .contains("64 services in one command need 129 operations"),
            "{run:#?}"
        );
        Ok(())
    });
}
