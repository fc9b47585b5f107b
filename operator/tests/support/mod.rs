//! Shared fixture: a real 3-member etcd, real operator processes, and a
//! test writer of endpoint records.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axoneme_e2e::{EtcdCluster, OperatorProc};
use axoneme_identity::{
    EndpointIdentity, EndpointRecord, IdentityRange, IdentityRecord, LabelSet, Layout,
    LeaderRecord, NumericIdentity,
};
use axoneme_kvstore::{KvConfig, KvStore};

pub const OPERATOR: &str = env!("CARGO_BIN_EXE_axoneme-operator");

pub struct Fixture {
    pub etcd: EtcdCluster,
    pub kv: KvStore,
    pub layout: Layout,
    pub ops: Vec<OperatorProc>,
}

impl Fixture {
    /// A 3-member etcd and `n` operator replicas with `extra` flags.
    pub async fn new(n: usize, extra: &[&str]) -> Result<Self> {
        let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await??;
        Self::with_etcd(etcd, n, extra).await
    }

    pub async fn with_etcd(etcd: EtcdCluster, n: usize, extra: &[&str]) -> Result<Self> {
        let mut config = KvConfig::new(etcd.endpoints());
        config.tls = etcd.certs().map(|c| axoneme_kvstore::TlsFiles {
            ca: c.ca_cert.clone(),
            cert: Some(c.client_cert.clone()),
            key: Some(c.client_key.clone()),
            domain: Some("localhost".into()),
        });
        let kv = KvStore::connect(config).await?;
        let mut f = Fixture {
            etcd,
            kv,
            layout: Layout::default(),
            ops: Vec::new(),
        };
        for i in 0..n {
            f.start_operator(&format!("op{i}"), extra)?;
        }
        Ok(f)
    }

    pub fn start_operator(&mut self, id: &str, extra: &[&str]) -> Result<()> {
        let mut args: Vec<String> = vec!["--lease-ttl".into(), "2".into()];
        if let Some(c) = self.etcd.certs() {
            args.extend(c.client_flags());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut op = OperatorProc::start(
            &PathBuf::from(OPERATOR),
            id,
            &self.etcd.endpoints(),
            &args,
            self.etcd.dir(),
        )?;
        op.wait_up(Duration::from_secs(10))?;
        self.ops.push(op);
        Ok(())
    }

    pub fn op(&mut self, id: &str) -> &mut OperatorProc {
        self.ops
            .iter_mut()
            .find(|o| o.id == id)
            .expect("operator exists")
    }

    /// The current leader's holder name and fence revision.
    pub async fn leader(&self) -> Result<Option<(String, i64)>> {
        Ok(self
            .kv
            .get(&self.layout.operator_leader())
            .await?
            .map(|kv| {
                let rec: LeaderRecord = serde_json::from_slice(&kv.value).expect("leader record");
                (rec.holder, kv.create_revision)
            }))
    }

    pub async fn wait_leader(&self, timeout: Duration) -> Result<(String, i64)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await? {
                return Ok(l);
            }
            ensure!(
                Instant::now() < deadline,
                "no operator leader after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn put_endpoint(&self, node: &str, id: &str, labels: &[String]) -> Result<i64> {
        let rec = EndpointRecord {
            id: id.into(),
            node: node.into(),
            labels: labels.to_vec(),
            addresses: vec![],
            namespace: None,
            interface: None,
            pod_name: None,
            pod_uid: None,
            named_ports: Default::default(),
            policy_audit_mode: false,
        };
        Ok(self
            .kv
            .put(
                &self.layout.endpoint(node, id),
                serde_json::to_vec(&rec)?,
                0,
            )
            .await?)
    }

    pub async fn put_raw(&self, node: &str, id: &str, value: &[u8]) -> Result<i64> {
        Ok(self
            .kv
            .put(&self.layout.endpoint(node, id), value.to_vec(), 0)
            .await?)
    }

    pub async fn delete_endpoint(&self, node: &str, id: &str) -> Result<()> {
        self.kv.delete(&self.layout.endpoint(node, id)).await?;
        Ok(())
    }

    /// Endpoint key → (record mod revision).
    pub async fn endpoint_revisions(&self) -> Result<HashMap<String, i64>> {
        let (kvs, _) = self.kv.get_prefix(&self.layout.endpoints_prefix()).await?;
        Ok(kvs
            .into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect())
    }

    /// Endpoint key → assignment (keyed like the endpoint record).
    pub async fn assignments(&self) -> Result<HashMap<String, (EndpointIdentity, i64)>> {
        let (kvs, _) = self
            .kv
            .get_prefix(&self.layout.endpoint_identities_prefix())
            .await?;
        kvs.into_iter()
            .map(|kv| {
                let key = kv.key.replacen(
                    &self.layout.endpoint_identities_prefix(),
                    &self.layout.endpoints_prefix(),
                    1,
                );
                let a: EndpointIdentity = serde_json::from_slice(&kv.value)
                    .with_context(|| format!("assignment {}", kv.key))?;
                Ok((key, (a, kv.mod_revision)))
            })
            .collect()
    }

    pub async fn assignment(&self, node: &str, id: &str) -> Result<Option<EndpointIdentity>> {
        Ok(self
            .kv
            .get(&self.layout.endpoint_identity(node, id))
            .await?
            .map(|kv| serde_json::from_slice(&kv.value).expect("assignment JSON")))
    }

    /// Waits until the endpoint's assignment answers its current record.
    pub async fn wait_assignment(
        &self,
        node: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<EndpointIdentity> {
        let deadline = Instant::now() + timeout;
        loop {
            let rev = self
                .kv
                .get(&self.layout.endpoint(node, id))
                .await?
                .map(|kv| kv.mod_revision);
            if let (Some(rev), Some(a)) = (rev, self.assignment(node, id).await?) {
                if a.endpoint_revision == rev {
                    return Ok(a);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no current assignment for {node}/{id} after {timeout:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Identity id → (record, mod revision).
    pub async fn identities(&self) -> Result<BTreeMap<u32, (IdentityRecord, i64)>> {
        let (kvs, _) = self
            .kv
            .get_prefix(&self.layout.identity_ids_prefix())
            .await?;
        kvs.into_iter()
            .map(|kv| {
                let rec: IdentityRecord = serde_json::from_slice(&kv.value)?;
                Ok((rec.id.0, (rec, kv.mod_revision)))
            })
            .collect()
    }

    /// Waits until every endpoint record has a current assignment with an identity.
    pub async fn wait_all_assigned(&self, expected: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let revs = self.endpoint_revisions().await?;
            let assigned = self.assignments().await?;
            let done = revs
                .iter()
                .filter(|(k, rev)| {
                    assigned
                        .get(*k)
                        .is_some_and(|(a, _)| a.identity.is_some() && a.endpoint_revision == **rev)
                })
                .count();
            if revs.len() == expected && done == expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{done}/{expected} endpoints assigned ({} records) after {timeout:?}\n{}",
                    revs.len(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The allocation invariants: one identity per label set, one label set
    /// per identity, all in range and none reserved; every endpoint's
    /// identity carries the endpoint's labels; the labels index agrees.
    pub async fn check_invariants(&self, expected_identities: usize) -> Result<()> {
        let ids = self.identities().await?;
        let range = IdentityRange::default();
        let mut seen = HashMap::new();
        for (id, (rec, _)) in &ids {
            ensure!(
                range.contains(NumericIdentity(*id)),
                "identity {id} out of range"
            );
            ensure!(
                !NumericIdentity(*id).is_reserved(),
                "identity {id} is reserved"
            );
            if let Some(other) = seen.insert(rec.labels.canonical(), *id) {
                bail!(
                    "label set {} has two identities: {other} and {id}",
                    rec.labels
                );
            }
            let idx = self
                .kv
                .get(&self.layout.identity_labels(&rec.labels.canonical()))
                .await?
                .with_context(|| format!("labels index missing for {id}"))?;
            ensure!(
                String::from_utf8_lossy(&idx.value) == id.to_string(),
                "labels index of {id} points elsewhere"
            );
        }
        let (index, _) = self
            .kv
            .get_prefix(&self.layout.identity_labels_prefix())
            .await?;
        ensure!(
            index.len() == ids.len(),
            "{} index keys for {} identities",
            index.len(),
            ids.len()
        );
        ensure!(
            ids.len() == expected_identities,
            "{} identities, expected {expected_identities}",
            ids.len()
        );
        let revs = self.endpoint_revisions().await?;
        let assigned = self.assignments().await?;
        ensure!(
            assigned.len() == revs.len(),
            "{} assignments for {} endpoints",
            assigned.len(),
            revs.len()
        );
        let mut ids_in_use = HashSet::new();
        for (ep, rev) in &revs {
            let (a, _) = assigned
                .get(ep)
                .with_context(|| format!("{ep} has no assignment"))?;
            let id = a
                .identity
                .with_context(|| format!("{ep} has no identity: {:?}", a.error))?;
            ensure!(a.endpoint_revision == *rev, "{ep}: assignment is stale");
            let (rec, _) = ids
                .get(&id.0)
                .with_context(|| format!("{ep}: identity {id} does not exist"))?;
            ensure!(
                rec.labels.canonical() == a.labels,
                "{ep}: identity {id} has other labels"
            );
            ids_in_use.insert(id.0);
        }
        Ok(())
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for op in &self.ops {
            let log = op.proc.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("== operator {} (last 40 lines) ==\n", op.id));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Labels of storm endpoint `i`: one of `sets` label sets, plus a label the
/// default filter drops (so equal sets must collapse to one identity).
pub fn storm_labels(i: usize, sets: usize) -> Vec<String> {
    let set = i % sets;
    vec![
        format!("app=svc-{set}"),
        format!("k8s:tier=t{}", set % 5),
        format!("pod-template-hash=h{i}"),
    ]
}

pub fn storm_key(i: usize) -> (String, String) {
    (format!("node-{}", i % 4), format!("ep-{i}"))
}

/// Writes endpoint records `range` with `writers` concurrent writers.
pub async fn storm(
    kv: &KvStore,
    range: std::ops::Range<usize>,
    sets: usize,
    writers: usize,
) -> Result<()> {
    let layout = Layout::default();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let kv = kv.clone();
        let layout = layout.clone();
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            for i in range.filter(|i| i % writers == w) {
                let (node, id) = storm_key(i);
                let rec = EndpointRecord {
                    id: id.clone(),
                    node: node.clone(),
                    labels: storm_labels(i, sets),
                    addresses: vec![],
                    namespace: None,
                    interface: None,
                    pod_name: None,
                    pod_uid: None,
                    named_ports: Default::default(),
                    policy_audit_mode: false,
                };
                kv.put(&layout.endpoint(&node, &id), serde_json::to_vec(&rec)?, 0)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Canonical label set of storm set `set`, as the operator derives it.
pub fn storm_canonical(set: usize, sets: usize) -> String {
    let labels = LabelSet::parse(storm_labels(set, sets), axoneme_identity::Source::K8s).unwrap();
    axoneme_identity::LabelFilter::default()
        .filter(&labels)
        .canonical()
}
