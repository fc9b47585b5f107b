//! Kubernetes mode's operator side against a real control plane: a
//! kube-apiserver of its own, a 3-member etcd kvstore and two
//! `axoneme-operator --kubernetes` replicas running with a TokenRequest
//! token of their ServiceAccount (bound by `helm/axoneme/files/rbac/`,
//! never as admin, so a missing permission fails this test). The test plays
//! the agents' part in the kvstore: node records, endpoint records of Pods
//! it creates, and the nodes' reports of what they enforce.
//!
//! One control plane, scenarios in sequence: CRDs Established; policies
//! mirrored, judged and conditioned (Valid, Enforced); edits, an invalid
//! edit, deletion; a NetworkPolicy; namespace and node labels; identities,
//! endpoints and nodes shown with kubectl; an API server restart; a missing
//! RBAC verb; the leader killed.

mod endpoints;
mod failover;
mod rbac;

use endpoints::*;
use failover::*;
use rbac::*;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::{bin_path, EtcdCluster, KubeControlPlane, OperatorProc};
use axoneme_identity::{
    EndpointEnforcement, EndpointRecord, Layout, NamespaceRecord, NodeLabels, NodeRecord,
    NodeStatusRecord, PolicyStatus,
};
use axoneme_kvstore::{KeyValue, KvConfig, KvStore};
use serde_json::{json, Value};

const STEP: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seed() -> Result<String> {
    let path = root().join("../shared/testdata/seed-payments-policy.yaml");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Polls `f` until it gives `Some`; on timeout the error says what it last
/// saw.
fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<std::result::Result<T, String>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(seen)) => seen,
            Err(e) => format!("error: {e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what}: not after {timeout:?}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The test's etcd client (the agents' stand-in), synchronous.
struct Kv {
    rt: tokio::runtime::Runtime,
    kv: KvStore,
    layout: Layout,
}

impl Kv {
    fn connect(endpoints: Vec<String>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let kv = rt.block_on(KvStore::connect(KvConfig::new(endpoints)))?;
        Ok(Kv {
            rt,
            kv,
            layout: Layout::default(),
        })
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.rt.block_on(self.kv.get(key))?)
    }

    fn json(&self, key: &str) -> Result<Option<(Value, i64)>> {
        Ok(match self.get(key)? {
            Some(kv) => Some((serde_json::from_slice(&kv.value)?, kv.mod_revision)),
            None => None,
        })
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let (kvs, _) = self.rt.block_on(self.kv.get_prefix(prefix))?;
        Ok(kvs.into_iter().map(|kv| kv.key).collect())
    }

    fn put(&self, key: &str, value: &impl serde::Serialize) -> Result<i64> {
        Ok(self
            .rt
            .block_on(self.kv.put(key, serde_json::to_vec(value)?, 0))?)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.rt.block_on(self.kv.delete(key))?;
        Ok(())
    }

    /// The stored policy at `key` once the operator's judge has marked it
    /// valid at its current revision (what agents enforce): its object and
    /// revision.
    fn enforceable(&self, key: &str) -> Result<std::result::Result<(Value, i64), String>> {
        let Some((obj, rev)) = self.json(key)? else {
            return Ok(Err(format!("{key} absent")));
        };
        let status_key = self.layout.status_for_policy_key(key).expect("policy key");
        let Some(kv) = self.get(&status_key)? else {
            return Ok(Err(format!("{key} at {rev}: no status")));
        };
        let status: PolicyStatus = serde_json::from_slice(&kv.value)?;
        if status.valid && status.observed_revision == rev {
            Ok(Ok((obj, rev)))
        } else {
            Ok(Err(format!("{key} at {rev}: status {status:?}")))
        }
    }
}

struct Setup {
    cp: KubeControlPlane,
    _etcd: EtcdCluster,
    kv: Kv,
    ops: Vec<OperatorProc>,
    dir: tempfile::TempDir,
}

impl Setup {
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.cp.kubectl(args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn get_json(&self, args: &[&str]) -> Result<Option<Value>> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let out = self.cp.kubectl_output(&all)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("NotFound") || err.contains("not found") {
                return Ok(None);
            }
            bail!("kubectl {}: {err}", all.join(" "));
        }
        Ok(Some(serde_json::from_slice(&out.stdout)?))
    }

    /// A condition of a policy: `kind` is `cnp` or `ccnp`.
    fn condition(&self, kind: &str, ns: Option<&str>, name: &str, type_: &str) -> Result<Value> {
        let mut args = vec![kind, name];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let obj = self.get_json(&args)?.unwrap_or(Value::Null);
        Ok(obj["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Waits until `pred` holds for a policy's condition.
    fn wait_condition(
        &self,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        type_: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        eventually(&format!("{kind} {name} {type_}"), STEP, || {
            let c = self.condition(kind, ns, name, type_)?;
            Ok(if pred(&c) { Ok(c) } else { Err(c.to_string()) })
        })
    }

    fn leader(&self) -> Result<usize> {
        eventually("an operator leads", STEP, || {
            for (i, op) in self.ops.iter().enumerate() {
                if let Ok(body) = op.http_get("/healthz") {
                    let v: Value = serde_json::from_str(&body)?;
                    if v["leader"] == true {
                        return Ok(Ok(i));
                    }
                }
            }
            Ok(Err("no replica says it leads".into()))
        })
    }

    fn health(&self, i: usize) -> Result<Value> {
        Ok(serde_json::from_str(&self.ops[i].http_get("/healthz")?)?)
    }

    fn dump(&self) {
        for op in &self.ops {
            eprintln!("== operator {} ==\n{}", op.id, op.proc.log_text());
        }
        eprintln!("{}", self.cp.logs());
    }
}

fn start() -> Result<Setup> {
    let started = Instant::now();
    let cp = KubeControlPlane::start()?;
    eprintln!("control plane ready in {:.1?}", started.elapsed());
    // CRDs from the chart, Established; RBAC from the chart: the
    // operators run as their ServiceAccount.
    cp.install_crds()?;
    cp.install_rbac()?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-", axoneme_e2e::run_prefix("kop")))
        .tempdir()?;
    let kubeconfig = cp.service_account_kubeconfig(
        "kube-system",
        "axoneme-operator",
        &dir.path().join("operator.kubeconfig"),
    )?;
    let etcd = EtcdCluster::start(3)?;
    let kv = Kv::connect(etcd.endpoints())?;
    let binary = bin_path("axoneme-operator");
    let mut ops = Vec::new();
    for id in ["kop-a", "kop-b"] {
        let extra: Vec<String> = [
            "--kubernetes",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--lease-ttl",
            "2",
            "--identity-gc-grace",
            "2s",
            "--identity-gc-interval",
            "1s",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let mut op = OperatorProc::start(&binary, id, &etcd.endpoints(), &extra, dir.path())?;
        op.wait_up(STEP)?;
        ops.push(op);
    }
    eprintln!("operators up in {:.1?}", started.elapsed());
    Ok(Setup {
        cp,
        _etcd: etcd,
        kv,
        ops,
        dir,
    })
}

#[test]
fn kube_operator() -> Result<()> {
    let started = Instant::now();
    let mut s = start()?;
    // Assertions panic: catch them too, to dump the logs.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenarios(&mut s)))
        .unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
                .unwrap_or_default();
            Err(anyhow::anyhow!("panicked: {msg}"))
        });
    if result.is_err() {
        s.dump();
        if axoneme_e2e::keep() {
            eprintln!("AXONEME_KEEP: operator logs in {}", s.dir.keep().display());
        }
    }
    eprintln!("kube_operator: {:.1?}", started.elapsed());
    result
}

fn step(name: &str, since: &mut Instant) {
    eprintln!("[{:>6.1?}] {name}", since.elapsed());
}

fn scenarios(s: &mut Setup) -> Result<()> {
    let t = &mut Instant::now();
    let layout = Layout::default();
    let seed_key = layout.policy("cnp", Some("default"), "payments-api");

    step("agent RBAC", t);
    agent_rbac(s)?;

    step("nodes and their labels", t);
    let nodes = ["ax-n1", "ax-n2"];
    for (i, n) in (1u8..).zip(nodes) {
        s.cp.create_node(n, Ipv4Addr::new(192, 168, 77, i), None)?;
        // The agent announces the node.
        s.kv.put(
            &layout.node(n),
            &NodeRecord {
                name: n.to_string(),
                addresses: vec![format!("192.168.77.{i}").parse()?],
                pod_cidrs: vec![],
                encryption: None,
            },
        )?;
    }
    s.kubectl(&["label", "node", "ax-n1", "zone=a"])?;
    eventually("node labels mirrored", STEP, || {
        let rec: Option<NodeLabels> =
            s.kv.json(&layout.node_labels("ax-n1"))?
                .map(|(v, _)| serde_json::from_value(v))
                .transpose()?;
        Ok(match rec {
            Some(r) if r.labels.get("zone").map(String::as_str) == Some("a") => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })?;
    eventually("CiliumNodes", STEP, || {
        let v = s.get_json(&["ciliumnode", "ax-n2"])?;
        let Some(v) = v else {
            return Ok(Err("absent".into()));
        };
        // IPAM gave the announced node a pod CIDR from the cluster pool.
        let ok = v["spec"]["addresses"][0]["ip"] == "192.168.77.2"
            && v["spec"]["ipam"]["podCIDRs"][0]
                .as_str()
                .is_some_and(|c| c.starts_with("10.200."))
            && v["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "AgentAnnounced" && c["status"] == "True")
            });
        Ok(if ok { Ok(()) } else { Err(v.to_string()) })
    })?;

    step("namespace labels", t);
    s.kubectl(&["create", "namespace", "shop"])?;
    s.kubectl(&["label", "namespace", "shop", "team=payments"])?;
    eventually("namespace labels mirrored", STEP, || {
        let rec: Option<NamespaceRecord> =
            s.kv.json(&layout.namespace("shop"))?
                .map(|(v, _)| serde_json::from_value(v))
                .transpose()?;
        Ok(match rec {
            Some(r) if r.labels.get("team").map(String::as_str) == Some("payments") => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })?;

    step("the seed policy: Valid, mirrored, judged valid", t);
    s.cp.apply_yaml(&seed()?)?;
    let valid = s.wait_condition("cnp", Some("default"), "payments-api", "Valid", |c| {
        c["status"] == "True"
    })?;
    assert_eq!(valid["observedGeneration"], 1, "{valid}");
    let (stored, rev1) = eventually("seed enforceable", STEP, || s.kv.enforceable(&seed_key))?;
    assert_eq!(stored["metadata"]["generation"], 1, "{stored}");
    assert_eq!(
        stored["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"][0]["path"],
        "/v1/charge"
    );
    assert!(stored.get("status").is_none(), "{stored}");

    step("Enforced: lagging nodes named, then True", t);
    let enforced = s.wait_condition("cnp", Some("default"), "payments-api", "Enforced", |c| {
        c["status"] == "False" && c["reason"] == "Lagging"
    })?;
    let msg = enforced["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("ax-n1 (not reported)") && msg.contains("ax-n2 (not reported)"),
        "{msg}"
    );
    report(s, "ax-n1", &[(&seed_key, rev1)], &[])?;
    let enforced = s.wait_condition("cnp", Some("default"), "payments-api", "Enforced", |c| {
        c["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("enforced on 1/2"))
    })?;
    assert_eq!(
        enforced["message"],
        format!("enforced on 1/2 nodes (revision {rev1}); lagging: ax-n2 (not reported)")
    );
    report(s, "ax-n2", &[(&seed_key, rev1)], &[])?;
    let enforced = s.wait_condition("cnp", Some("default"), "payments-api", "Enforced", |c| {
        c["status"] == "True"
    })?;
    assert_eq!(
        enforced["message"],
        format!("enforced on 2/2 nodes (revision {rev1})")
    );
    eventually("CiliumNode PolicyCurrent", STEP, || {
        let v = s.get_json(&["ciliumnode", "ax-n1"])?.unwrap_or_default();
        let c = v["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PolicyCurrent").cloned())
            .unwrap_or_default();
        Ok(if c["status"] == "True" {
            Ok(())
        } else {
            Err(c.to_string())
        })
    })?;

    step(
        "an invalid CNP: Valid=False with the field path, not mirrored",
        t,
    );
    let bad = seed()?
        .replace("payments-api", "bad-port")
        .replace("\"8080\"", "\"80800\"");
    s.cp.apply_yaml(&bad)?;
    let valid = s.wait_condition("cnp", Some("default"), "bad-port", "Valid", |c| {
        c["status"] == "False"
    })?;
    let msg = valid["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with(
            "bad-port: spec.ingress[0].toPorts[0].ports[0].port: 80800 is not a valid port (1-65535)"
        ),
        "{msg}"
    );
    assert!(msg.contains("no generation has been valid"), "{msg}");
    assert!(s
        .kv
        .get(&layout.policy("cnp", Some("default"), "bad-port"))?
        .is_none());

    step("an edit: observedGeneration 2, mirrored", t);
    let edited = seed()?.replace("/v1/charge", "/v1/charge2");
    s.cp.apply_yaml(&edited)?;
    s.wait_condition("cnp", Some("default"), "payments-api", "Valid", |c| {
        c["status"] == "True" && c["observedGeneration"] == 2
    })?;
    let (stored, rev2) = eventually("generation 2 enforceable", STEP, || {
        Ok(match s.kv.enforceable(&seed_key)? {
            Ok((v, r)) if v["metadata"]["generation"] == 2 => Ok((v, r)),
            Ok((v, r)) => Err(format!("revision {r}: {v}")),
            Err(e) => Err(e),
        })
    })?;
    assert_eq!(
        stored["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"][0]["path"],
        "/v1/charge2"
    );
    // The nodes still run revision 1: Enforced says so, then catches up.
    let lagging = s.wait_condition("cnp", Some("default"), "payments-api", "Enforced", |c| {
        c["reason"] == "Lagging" && c["observedGeneration"] == 2
    })?;
    assert!(
        lagging["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("ax-n1 (revision {rev1})"))),
        "{lagging}"
    );
    report(s, "ax-n1", &[(&seed_key, rev2)], &[])?;
    report(s, "ax-n2", &[(&seed_key, rev2)], &[])?;
    s.wait_condition("cnp", Some("default"), "payments-api", "Enforced", |c| {
        c["status"] == "True" && c["message"] == format!("enforced on 2/2 nodes (revision {rev2})")
    })?;

    step("an edit into invalid: generation 2 stays enforced", t);
    s.cp.apply_yaml(&edited.replace("\"8080\"", "\"80800\""))?;
    let valid = s.wait_condition("cnp", Some("default"), "payments-api", "Valid", |c| {
        c["status"] == "False" && c["observedGeneration"] == 3
    })?;
    let msg = valid["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("payments-api: spec.ingress[0].toPorts[0].ports[0].port: 80800"),
        "{msg}"
    );
    assert!(
        msg.ends_with("generation 2, the last valid one, stays enforced"),
        "{msg}"
    );
    let enforced = s.wait_condition("cnp", Some("default"), "payments-api", "Enforced", |c| {
        c["observedGeneration"] == 3
    })?;
    assert_eq!(
        enforced["message"],
        format!("generation 2, the last valid one, is enforced on 2/2 nodes (revision {rev2})")
    );
    let (kept, rev) = s.kv.enforceable(&seed_key)?.map_err(anyhow::Error::msg)?;
    assert_eq!(
        (kept["metadata"]["generation"].clone(), rev),
        (json!(2), rev2)
    );

    step("a NetworkPolicy and a CCNP are mirrored", t);
    s.cp.apply_yaml(KNP)?;
    s.cp.apply_yaml(CCNP)?;
    let knp_key = layout.policy("knp", Some("shop"), "allow-web");
    let (knp, _) = eventually("NetworkPolicy enforceable", STEP, || {
        s.kv.enforceable(&knp_key)
    })?;
    assert_eq!(knp["kind"], "NetworkPolicy");
    assert_eq!(knp["apiVersion"], "networking.k8s.io/v1");
    let ccnp_key = layout.policy("ccnp", None, "deny-world");
    eventually("CCNP enforceable", STEP, || s.kv.enforceable(&ccnp_key))?;
    s.wait_condition("ccnp", None, "deny-world", "Valid", |c| {
        c["status"] == "True"
    })?;

    step("identities and endpoints of Pods", t);
    endpoints_and_identities(s, &layout)?;

    step("a deleted policy leaves the store", t);
    s.kubectl(&["delete", "cnp", "bad-port", "payments-api"])?;
    eventually("seed removed from the store", STEP, || {
        Ok(match s.kv.get(&seed_key)? {
            None => Ok(()),
            Some(kv) => Err(format!("still at revision {}", kv.mod_revision)),
        })
    })?;

    step(
        "the API server restarts: nothing deleted, watches resume",
        t,
    );
    let before = s.kv.keys(&format!("{}/", layout.root()))?;
    let policies_before = s.kv.keys(&layout.policies_prefix())?;
    s.cp.stop_apiserver();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.kv.keys(&layout.policies_prefix())?, policies_before);
    let restarted = Instant::now();
    s.cp.start_apiserver()?;
    eprintln!("  apiserver back in {:.1?}", restarted.elapsed());
    let after_key = layout.policy("cnp", Some("shop"), "after-restart");
    s.cp.apply_yaml(&seed()?.replace(
        "name: payments-api",
        "name: after-restart\n  namespace: shop",
    ))?;
    eventually(
        "a policy applied after the restart is mirrored",
        Duration::from_secs(30),
        || s.kv.enforceable(&after_key),
    )?;
    eprintln!("  mirrored {:.1?} after the restart", restarted.elapsed());
    s.wait_condition("cnp", Some("shop"), "after-restart", "Valid", |c| {
        c["status"] == "True"
    })?;
    let after = s.kv.keys(&format!("{}/", layout.root()))?;
    for key in &before {
        // Only what the test itself changed may be gone (nothing is).
        assert!(
            after.contains(key) || key.contains("/leader"),
            "{key} vanished over the restart"
        );
    }

    step("a missing RBAC verb is a loud, visible error", t);
    missing_verb(s)?;

    step("kubectl shows every kind's columns", t);
    let table = s.kubectl(&["get", "cnp,ccnp,ciliumid,cep,ciliumnode", "-A"])?;
    eprintln!("{table}");
    for column in [
        "VALID",
        "ENFORCED",
        "ENDPOINT ID",
        "IDENTITY ID",
        "INGRESS ENFORCEMENT",
        "ENDPOINT STATE",
        "IPV4",
        "INTERNALIP",
        "AGENT",
        "POLICYCURRENT",
    ] {
        assert!(table.contains(column), "no {column} column:\n{table}");
    }

    step("a node goes: its CiliumNode and labels go", t);
    s.kubectl(&["delete", "node", "ax-n2"])?;
    s.kv.delete(&layout.node("ax-n2"))?;
    eventually("CiliumNode ax-n2 gone", STEP, || {
        Ok(match s.get_json(&["ciliumnode", "ax-n2"])? {
            None => Ok(()),
            Some(_) => Err("present".into()),
        })
    })?;
    eventually("node labels of ax-n2 gone", STEP, || {
        Ok(match s.kv.get(&layout.node_labels("ax-n2"))? {
            None => Ok(()),
            Some(_) => Err("present".into()),
        })
    })?;

    step(
        "the leader is killed: the standby takes over status writes",
        t,
    );
    failover(s)?;
    step("done", t);
    Ok(())
}

const KNP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: client
    ports:
    - port: 80
      protocol: TCP
"#;

const CCNP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: deny-world
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEntities: [world]
"#;

/// Writes node `node`'s report, as its agent would: the policies it
/// enforces at which revision, its endpoints' enforcement.
fn report(
    s: &Setup,
    node: &str,
    policies: &[(&str, i64)],
    endpoints: &[(&str, EndpointEnforcement)],
) -> Result<()> {
    let layout = &s.kv.layout;
    let record = NodeStatusRecord {
        node: node.to_string(),
        policies: policies
            .iter()
            .map(|(k, r)| (k.to_string(), *r))
            .collect::<BTreeMap<_, _>>(),
        endpoints: endpoints
            .iter()
            .map(|(k, e)| (k.to_string(), e.clone()))
            .collect(),
        updated_ms: 1_800_000_000_000,
    };
    s.kv.put(&layout.node_status(node), &record)?;
    Ok(())
}
