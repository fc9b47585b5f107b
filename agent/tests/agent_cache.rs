//! `NodeState` in-process against a real 3-member etcd and a real operator
//! process: assignments and identities reach the node, deletions leave it,
//! and the caches converge after the etcd member they watch is killed.
//!
//! Needs the operator binary next to the test binaries: run
//! `cargo build -p axoneme-operator` first (`cargo xtask test` builds every
//! binary before running tests).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axoneme_agent::node::NodeState;
use axoneme_e2e::{bin_path, EtcdCluster, OperatorProc};
use axoneme_identity::{EndpointRecord, LabelSet, Layout, NumericIdentity, Source};
use axoneme_kvstore::{KvConfig, KvStore};

const NODE: &str = "node-a";

struct Fixture {
    etcd: EtcdCluster,
    op: OperatorProc,
    /// Writes endpoint records, as another node's agent or the CLI would.
    writer: KvStore,
    layout: Layout,
}

impl Fixture {
    async fn start() -> Result<Self> {
        let binary = bin_path("axoneme-operator");
        if !binary.is_file() {
            bail!(
                "operator binary {} not found: run `cargo build -p axoneme-operator` before \
                 these tests (`cargo xtask test` builds every binary first)",
                binary.display()
            );
        }
        let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await??;
        let mut op = OperatorProc::start(
            &binary,
            "op-agent",
            &etcd.endpoints(),
            &["--lease-ttl".into(), "2".into()],
            etcd.dir(),
        )?;
        tokio::task::block_in_place(|| op.wait_up(Duration::from_secs(10)))?;
        let writer = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
        Ok(Fixture {
            etcd,
            op,
            writer,
            layout: Layout::default(),
        })
    }

    /// A client on every member, in order: member 0 is the one it uses first.
    async fn node_state(&self) -> Result<NodeState> {
        let kv = KvStore::connect(KvConfig::new(self.etcd.endpoints())).await?;
        tokio::time::timeout(
            Duration::from_secs(10),
            NodeState::start(kv, self.layout.clone(), NODE),
        )
        .await
        .context("node state not ready after 10s")
    }

    fn dump(&self) {
        eprintln!("== operator log ==\n{}", self.op.proc.log_text());
        eprintln!("{}", self.etcd.logs());
    }

    /// Runs the scenario; on failure prints the operator's and etcd's logs.
    async fn check<F: Future<Output = Result<()>>>(&self, scenario: F) {
        if let Err(e) = scenario.await {
            self.dump();
            panic!("{e:?}");
        }
    }
}

async fn put_endpoint(
    kv: &KvStore,
    layout: &Layout,
    node: &str,
    id: &str,
    labels: &[&str],
) -> Result<i64> {
    let record = EndpointRecord {
        id: id.into(),
        node: node.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        addresses: vec![],
        namespace: None,
        interface: None,
        pod_name: None,
        pod_uid: None,
        named_ports: Default::default(),
        policy_audit_mode: false,
    };
    Ok(kv
        .put(&layout.endpoint(node, id), serde_json::to_vec(&record)?, 0)
        .await?)
}

/// Polls `cond` every 10 ms until it holds.
async fn eventually(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    while !cond() {
        ensure!(started.elapsed() < timeout, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

fn labels(items: &[&str]) -> LabelSet {
    LabelSet::parse(items, Source::K8s).expect("valid labels")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_and_identities_reach_the_node() {
    let f = Fixture::start().await.expect("fixture");
    f.check(async {
        let node = f.node_state().await?;
        assert_eq!(node.node(), NODE);
        assert!(node.endpoints().is_empty());

        // Record written -> the node has the assignment, then the identity.
        let started = Instant::now();
        let rev = put_endpoint(&f.writer, &f.layout, NODE, "ep1", &["k8s:app=web"]).await?;
        let key = f.layout.endpoint_identity(NODE, "ep1");
        let assignment = node
            .assignments()
            .wait_for(&key, Duration::from_secs(20), |a| {
                a.is_some_and(|a| a.endpoint_revision == rev && a.identity.is_some())
            })
            .await
            .context("assignment did not reach the node")?
            .expect("present");
        let to_assignment = started.elapsed();
        let id = assignment.identity.expect("identity");
        node.identities()
            .wait_for(&f.layout.identity_id(id), Duration::from_secs(20), |r| {
                r.is_some()
            })
            .await
            .context("identity did not reach the node")?;
        let to_identity = started.elapsed();
        println!(
            "endpoint record -> assignment in the node's cache: {to_assignment:?}; \
             -> identity too: {to_identity:?}"
        );
        assert_eq!(node.identity_of("ep1"), Some(id));
        assert_eq!(node.labels_of(id), Some(labels(&["k8s:app=web"])));
        assert_eq!(
            node.labels_of(NumericIdentity(1)).map(|l| l.to_string()),
            Some("reserved:host".into())
        );
        assert_eq!(node.labels_of(NumericIdentity(0)), None);
        assert_eq!(node.identity_of("nope"), None);

        // Another node's endpoint: its identity is known, its assignment is not ours.
        let rev_b = put_endpoint(&f.writer, &f.layout, "node-b", "ep9", &["k8s:app=db"]).await?;
        let key_b = f.layout.endpoint_identity("node-b", "ep9");
        let deadline = Instant::now() + Duration::from_secs(20);
        let id_b = loop {
            let answer = f.writer.get(&key_b).await?.and_then(|kv| {
                serde_json::from_slice::<axoneme_identity::EndpointIdentity>(&kv.value).ok()
            });
            if let Some(a) = answer.filter(|a| a.endpoint_revision == rev_b) {
                break a.identity.context("node-b/ep9 got no identity")?;
            }
            ensure!(Instant::now() < deadline, "node-b/ep9 never assigned");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        eventually(
            "node-b's identity in the node's cache",
            Duration::from_secs(10),
            || node.labels_of(id_b).is_some(),
        )
        .await?;
        assert_eq!(node.endpoints().keys().collect::<Vec<_>>(), ["ep1"]);

        // Record deleted -> the operator deletes the assignment -> gone here.
        let started = Instant::now();
        f.writer.delete(&f.layout.endpoint(NODE, "ep1")).await?;
        node.assignments()
            .wait_for(&key, Duration::from_secs(20), |a| a.is_none())
            .await
            .context("assignment not removed from the node")?;
        println!(
            "endpoint record deleted -> assignment gone from the node: {:?}",
            started.elapsed()
        );
        assert_eq!(node.identity_of("ep1"), None);
        assert!(node.endpoints().is_empty());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_state_converges_after_its_etcd_member_dies() {
    let mut f = Fixture::start().await.expect("fixture");
    let node = f.node_state().await.expect("node state");
    let setup = async {
        for ep in ["ep-old", "ep-stay"] {
            put_endpoint(&f.writer, &f.layout, NODE, ep, &[&format!("k8s:app={ep}")]).await?;
        }
        eventually("both endpoints assigned", Duration::from_secs(20), || {
            node.identity_of("ep-old").is_some() && node.identity_of("ep-stay").is_some()
        })
        .await?;
        ensure!(node.assignments().stats().resyncs == 0, "no resync yet");
        Ok(())
    };
    if let Err(e) = setup.await {
        f.dump();
        panic!("{e:?}");
    }
    let stay = node.identity_of("ep-stay");

    // Kill the member both caches watch; write through the survivors.
    let raft_leader = tokio::task::block_in_place(|| f.etcd.leader())
        .ok()
        .flatten();
    tokio::task::block_in_place(|| f.etcd.kill(0));
    let killed = Instant::now();
    f.check(async {
        let survivors = KvStore::connect(KvConfig::new(f.etcd.live_endpoints())).await?;
        survivors.delete(&f.layout.endpoint(NODE, "ep-old")).await?;
        let deleted = killed.elapsed();
        put_endpoint(&survivors, &f.layout, NODE, "ep-new", &["k8s:app=ep-new"]).await?;
        let wrote = killed.elapsed();
        // A write sent while raft elects a new leader can hang until the
        // per-attempt request timeout (3 s) before it is retried.
        println!(
            "raft leader before the kill: member {raft_leader:?}; delete done after \
             {deleted:?}, put after {wrote:?}"
        );

        let converged = eventually("node state converges", Duration::from_secs(45), || {
            node.identity_of("ep-old").is_none()
                && node
                    .identity_of("ep-new")
                    .is_some_and(|id| node.labels_of(id).is_some())
                && node.assignments().stats().resyncs >= 1
        })
        .await?;
        let (a, i) = (node.assignments().stats(), node.identities().stats());
        println!(
            "member 0 killed; writes done after {wrote:?}; node converged {:?} after the kill \
             (assignments: {a:?}; identities: {i:?})",
            wrote + converged
        );
        assert!(a.resyncs >= 1, "{a:?}");
        assert!(
            i.resyncs >= 1,
            "the identity cache watched member 0 too: {i:?}"
        );
        assert_eq!(
            node.identity_of("ep-stay"),
            stay,
            "untouched endpoint kept its identity"
        );
        assert_eq!(
            node.endpoints().keys().collect::<Vec<_>>(),
            ["ep-new", "ep-stay"]
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_takes_only_policies_judged_valid() {
    let f = Fixture::start().await.expect("fixture");
    f.check(async {
        let node = f.node_state().await?;
        let good = br#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy",
            "metadata":{"name":"good","namespace":"default"},
            "spec":{"endpointSelector":{"matchLabels":{"app":"db"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"api"}}]}]}}"#;
        let bad = br#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy",
            "metadata":{"name":"bad","namespace":"default"},
            "spec":{"endpointSelector":{},"ingress":[{"fromEntities":["moon"]}]}}"#;
        f.writer
            .put(&f.layout.policy("cnp", Some("default"), "good"), good.to_vec(), 0)
            .await?;
        f.writer
            .put(&f.layout.policy("cnp", Some("default"), "bad"), bad.to_vec(), 0)
            .await?;
        // The operator judges both; the node takes the valid one only.
        eventually("the operator judged both policies", Duration::from_secs(10), || {
            node.valid_policies().len() == 1
        })
        .await?;
        let names: Vec<String> = node.valid_policies().into_iter().map(|p| p.name).collect();
        ensure!(names == ["good"], "{names:?}");
        // A new revision is left out until the operator has judged it too;
        // once judged invalid, it stays out.
        let broken = String::from_utf8_lossy(good).replace("\"api\"", "\"-api\"");
        f.writer
            .put(&f.layout.policy("cnp", Some("default"), "good"), broken.into_bytes(), 0)
            .await?;
        eventually("the broken revision is not enforced", Duration::from_secs(10), || {
            node.valid_policies().is_empty()
        })
        .await?;
        Ok(())
    })
    .await;
}
