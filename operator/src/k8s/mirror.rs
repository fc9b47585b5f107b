//! The leader's mirror of the API into the kvstore: valid policies into
//! the policy store (`policies/v1/{cnp,ccnp,knp}/...`, in the form
//! standalone mode's `axoneme policy import` writes, so that standalone
//! mode's policy-status judge marks them valid and agents enforce them
//! exactly as in standalone mode), namespace labels (`namespaces/v1/`) and
//! node labels (`node-labels/v1/`), and Services with their EndpointSlices
//! (`services/v1/`, the record standalone mode's `axoneme service` writes;
//! see [`super::services`]).
//!
//! Each pass diffs what the watched objects ask for against what the
//! kvstore holds and writes the difference in fenced transactions:
//! - a valid policy's stored object is put when it differs;
//! - a policy edited into an invalid state keeps its stored (last valid)
//!   version, as Cilium keeps enforcing it, as long as that version is of
//!   the same object (uid); the status loop says so in the condition;
//! - a key whose object is gone is deleted — but only once that kind's
//!   watch has a complete list: an API server that is down, a watch that
//!   errors, a kind the operator may not list, never delete anything;
//! - a Service the record cannot take keeps its stored (last good) record.

use std::collections::{BTreeMap, HashMap, HashSet};

use axoneme_crds::kube::api::DynamicObject;
use axoneme_identity::{Layout, NamespaceRecord, NodeLabels, Raw, WatchCache};
use axoneme_kvstore::{KvStore, Txn, TxnOp};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::index::Reflected;
use super::judge::{self, KINDS};
use super::pace::Pacer;
use super::services;
use super::{labels, Kube};
use crate::allocator::LeaderExit;
use crate::election::Leadership;

/// Most operations per transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 64;

/// What one key should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Put(Vec<u8>),
    /// Leave the stored value alone (an invalid edit of a valid policy).
    Keep,
}

/// A kvstore write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String, Vec<u8>),
    Delete(String),
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Put(k, _) | Write::Delete(k) => k,
        }
    }
}

/// The writes that take `current` (one managed store's keys) to `desired`.
/// Keys under a prefix of `complete` (whose watched kind has a complete
/// list) and absent from `desired` are deleted; others are left alone.
pub fn diff(
    desired: &BTreeMap<String, Want>,
    current: &BTreeMap<String, Vec<u8>>,
    complete: &[String],
) -> Vec<Write> {
    let mut out = Vec::new();
    for (key, want) in desired {
        if let Want::Put(v) = want {
            if current.get(key) != Some(v) {
                out.push(Write::Put(key.clone(), v.clone()));
            }
        }
    }
    for key in current.keys() {
        if !desired.contains_key(key) && complete.iter().any(|p| key.starts_with(p.as_str())) {
            out.push(Write::Delete(key.clone()));
        }
    }
    out
}

/// What the policy objects ask for: a valid one its stored object; an
/// invalid one `Keep`, if the stored version is of the same object.
pub fn desired_policies(
    kube: &Kube,
    layout: &Layout,
    current: &BTreeMap<String, Vec<u8>>,
) -> (BTreeMap<String, Want>, Vec<String>) {
    let mut desired = BTreeMap::new();
    let mut complete = Vec::new();
    let mut live = HashSet::new();
    let reflected: [&Reflected<DynamicObject, _>; 3] =
        [&kube.index.cnp, &kube.index.ccnp, &kube.index.knp];
    for (kind, objects) in KINDS.into_iter().zip(reflected) {
        if objects.ready() {
            complete.push(format!(
                "{}{}/",
                layout.policies_prefix(),
                kind.short_name()
            ));
        }
        for obj in objects.state() {
            let Some(j) = kube.judge.judge(layout, kind, &obj) else {
                continue;
            };
            live.insert(j.key.clone());
            match &j.verdict {
                Ok(v) => {
                    desired.insert(j.key.clone(), Want::Put(v.clone()));
                }
                Err(_) => {
                    let same_object = current
                        .get(&j.key)
                        .is_some_and(|v| judge::stored_identity(v).0.as_deref() == Some(&j.uid));
                    if same_object {
                        desired.insert(j.key.clone(), Want::Keep);
                    }
                }
            }
        }
    }
    kube.judge.retain(&live);
    (desired, complete)
}

/// What the Services and their EndpointSlices ask for, and the problems
/// (`namespace/name` → what is wrong) of those that keep their stored
/// record. Deletions are safe once both kinds have a complete list.
pub fn desired_services(
    kube: &Kube,
    layout: &Layout,
    current: &BTreeMap<String, Vec<u8>>,
) -> (
    BTreeMap<String, Want>,
    Vec<String>,
    BTreeMap<String, String>,
) {
    let index = &kube.index;
    let slices = services::slices_by_service(&index.endpoint_slices.state());
    let mut desired = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for svc in index.services.state() {
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            continue;
        };
        let key = layout.service(ns, name);
        let own = slices
            .get(&(ns.clone(), name.clone()))
            .map_or(&[][..], Vec::as_slice);
        match services::record(&svc, own) {
            Ok(services::Mirrored::Record(r)) => {
                let errors = axoneme_service::validate::service(&r);
                if errors.is_empty() {
                    desired.insert(key, Want::Put(serde_json::to_vec(&r).expect("serializes")));
                    continue;
                }
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                problems.insert(r.id(), text.join("; "));
            }
            Ok(services::Mirrored::Skipped(_)) => continue,
            Err(e) => {
                problems.insert(format!("{ns}/{name}"), e);
            }
        }
        if current.contains_key(&key) {
            desired.insert(key, Want::Keep);
        }
    }
    let complete = if index.services.ready() && index.endpoint_slices.ready() {
        vec![layout.services_prefix()]
    } else {
        vec![]
    };
    (desired, complete, problems)
}

/// What one kind's objects' labels ask for (`record` gives the key and the
/// value of an object's name and labels), and the store prefix whose
/// deletions are safe (empty until the kind has a complete list).
fn desired_labels<K>(
    objects: &Reflected<K>,
    prefix: &str,
    record: impl Fn(&str, BTreeMap<String, String>) -> (String, Vec<u8>),
) -> (BTreeMap<String, Want>, Vec<String>)
where
    K: axoneme_crds::kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let desired = objects
        .state()
        .iter()
        .filter_map(|o| {
            let meta = o.meta();
            let (key, value) = record(
                meta.name.as_deref()?,
                meta.labels.clone().unwrap_or_default(),
            );
            Some((key, Want::Put(value)))
        })
        .collect();
    let complete = if objects.ready() {
        vec![prefix.to_string()]
    } else {
        vec![]
    };
    (desired, complete)
}

/// A kvstore prefix the mirror owns, with the writes not yet seen by its
/// cache (so a pass that runs before the watch delivers them does not
/// write them again).
struct Store {
    name: &'static str,
    prefix: String,
    cache: WatchCache<Raw>,
    /// Key → (value written, `None` for deleted; revision of the write).
    pending: HashMap<String, (Option<Vec<u8>>, i64)>,
}

impl Store {
    fn new(name: &'static str, prefix: String, cache: WatchCache<Raw>) -> Self {
        Store {
            name,
            prefix,
            cache,
            pending: HashMap::new(),
        }
    }

    /// The store's content as of our last writes.
    fn current(&mut self) -> BTreeMap<String, Vec<u8>> {
        let revision = self.cache.stats().revision;
        let mut map: BTreeMap<String, Vec<u8>> = self
            .cache
            .snapshot()
            .into_iter()
            .map(|(k, raw)| (k, raw.value.clone()))
            .collect();
        self.pending.retain(|_, (_, rev)| *rev > revision);
        for (key, (value, _)) in &self.pending {
            match value {
                Some(v) => {
                    map.insert(key.clone(), v.clone());
                }
                None => {
                    map.remove(key);
                }
            }
        }
        map
    }
}

struct Mirror<'a> {
    kube: &'a Kube,
    kv: &'a KvStore,
    layout: &'a Layout,
    lead: &'a Leadership,
    policies: Store,
    namespaces: Store,
    node_labels: Store,
    services: Store,
    /// The Services' problems last logged (logged again only when changed).
    service_problems: BTreeMap<String, String>,
}

/// Runs the mirror until `term` is cancelled or a write is fenced or fails.
pub async fn run(
    kube: &Kube,
    kv: &KvStore,
    layout: &Layout,
    lead: &Leadership,
    term: &CancellationToken,
) -> LeaderExit {
    let mut m = Mirror {
        kube,
        kv,
        layout,
        lead,
        policies: Store::new(
            "policies",
            layout.policies_prefix(),
            kube.kv.policies.clone(),
        ),
        namespaces: Store::new(
            "namespaces",
            layout.namespaces_prefix(),
            kube.kv.namespaces.clone(),
        ),
        node_labels: Store::new(
            "node-labels",
            layout.node_labels_prefix(),
            kube.kv.node_labels.clone(),
        ),
        services: Store::new(
            "services",
            layout.services_prefix(),
            kube.kv.services.clone(),
        ),
        service_problems: BTreeMap::new(),
    };
    let mut pacer = Pacer::new(kube.changes());
    info!("mirroring policies, namespace and node labels, and services into the kvstore");
    while pacer.wait(term).await {
        match m.pass().await {
            Ok(()) => pacer.succeeded(),
            Err(exit) => return exit,
        }
    }
    LeaderExit::Cancelled
}

impl Mirror<'_> {
    async fn pass(&mut self) -> Result<(), LeaderExit> {
        let current = self.policies.current();
        let (desired, complete) = desired_policies(self.kube, self.layout, &current);
        let writes = diff(&desired, &current, &complete);
        self.write(Which::Policies, writes).await?;

        let index = &self.kube.index;
        let layout = self.layout;
        let (desired, complete) = desired_labels(
            &index.namespaces,
            &self.namespaces.prefix,
            |name, labels| {
                let record = NamespaceRecord {
                    name: name.to_string(),
                    labels,
                };
                (
                    layout.namespace(name),
                    serde_json::to_vec(&record).expect("serializes"),
                )
            },
        );
        let writes = diff(&desired, &self.namespaces.current(), &complete);
        self.write(Which::Namespaces, writes).await?;

        let (desired, complete) =
            desired_labels(&index.nodes, &self.node_labels.prefix, |name, labels| {
                let record = NodeLabels {
                    name: name.to_string(),
                    labels,
                };
                (
                    layout.node_labels(name),
                    serde_json::to_vec(&record).expect("serializes"),
                )
            });
        let writes = diff(&desired, &self.node_labels.current(), &complete);
        self.write(Which::NodeLabels, writes).await?;

        let current = self.services.current();
        let (desired, complete, problems) = desired_services(self.kube, layout, &current);
        for (service, problem) in &problems {
            if self.service_problems.get(service) != Some(problem) {
                warn!(%service, %problem, "Service not load-balanced as changed; its last good record stays");
            }
        }
        self.service_problems = problems;
        let writes = diff(&desired, &current, &complete);
        self.write(Which::Services, writes).await
    }

    async fn write(&mut self, which: Which, writes: Vec<Write>) -> Result<(), LeaderExit> {
        // Services written here are not in the CLI's frontend index: each
        // write also deletes its marker, so the next `axoneme service`
        // command rebuilds the index first (cli/src/service/store.rs).
        let index_marker =
            matches!(which, Which::Services).then(|| self.layout.services_index_marker());
        for chunk in writes.chunks(TXN_OPS - 1) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|w| match w {
                    Write::Put(k, v) => TxnOp::put(k.clone(), v.clone(), None),
                    Write::Delete(k) => TxnOp::delete(k.clone(), None),
                })
                .chain(index_marker.iter().map(|m| TxnOp::delete(m.clone(), None)))
                .collect();
            let result = self
                .kv
                .txn(Txn::new().when([self.lead.fence()]).and_then(ops))
                .await;
            let revision = match result {
                Ok(r) if r.succeeded => r.revision,
                Ok(_) => {
                    self.kube.metrics.fenced_writes_rejected.inc();
                    return Err(LeaderExit::Fenced);
                }
                Err(e) => {
                    warn!(error = %e, "kvstore write failed");
                    return Err(LeaderExit::Failed(e));
                }
            };
            let store = match which {
                Which::Policies => &mut self.policies,
                Which::Namespaces => &mut self.namespaces,
                Which::NodeLabels => &mut self.node_labels,
                Which::Services => &mut self.services,
            };
            for w in chunk {
                let (op, value) = match w {
                    Write::Put(_, v) => ("put", Some(v.clone())),
                    Write::Delete(_) => ("delete", None),
                };
                info!(store = store.name, key = %w.key(), op, revision, "mirrored");
                self.kube
                    .metrics
                    .kube
                    .mirror_writes
                    .get_or_create(&labels([("store", store.name), ("op", op)]))
                    .inc();
                store.pending.insert(w.key().to_string(), (value, revision));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Which {
    Policies,
    Namespaces,
    NodeLabels,
    Services,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn diff_puts_changes_keeps_kept_and_deletes_only_complete_kinds() {
        let current = map(&[
            ("p/cnp/a/same", "1"),
            ("p/cnp/a/changed", "1"),
            ("p/cnp/a/kept", "old"),
            ("p/cnp/a/gone", "1"),
            ("p/knp/a/gone", "1"),
        ]);
        let mut desired = BTreeMap::new();
        desired.insert("p/cnp/a/same".to_string(), Want::Put(b"1".to_vec()));
        desired.insert("p/cnp/a/changed".to_string(), Want::Put(b"2".to_vec()));
        desired.insert("p/cnp/a/new".to_string(), Want::Put(b"3".to_vec()));
        desired.insert("p/cnp/a/kept".to_string(), Want::Keep);
        // knp's list is not complete: its missing key stays.
        let writes = diff(&desired, &current, &["p/cnp/".to_string()]);
        assert_eq!(
            writes,
            vec![
                Write::Put("p/cnp/a/changed".into(), b"2".to_vec()),
                Write::Put("p/cnp/a/new".into(), b"3".to_vec()),
                Write::Delete("p/cnp/a/gone".into()),
            ]
        );
        // Nothing complete (the API server never answered): no deletes.
        assert!(diff(&BTreeMap::new(), &current, &[]).is_empty());
    }
}
