//! Kubernetes mode (`axoneme-operator --kubernetes`): one bridge from the
//! API into the kvstore, and a read-only view back.
//!
//! ```text
//!  kube-apiserver ──watch (every replica: index)──▶ leader ──▶ etcd kvstore ──▶ agents
//!    CNP, CCNP, NetworkPolicy   judge (judge)        mirror    policies/v1/{cnp,ccnp,knp}/...
//!    Namespaces, Nodes                                         namespaces/v1/, node-labels/v1/
//!                         ◀── status: Valid, Enforced (SSA /status) ◀── node-status/v1/ (agents)
//!                         ◀── views: CiliumIdentity, CiliumEndpoint, CiliumNode ◀── identities,
//!                                    endpoints, nodes, node-cidrs, node-status
//! ```
//!
//! Every replica runs the reflectors ([`index`]) and the kvstore caches
//! ([`KvView`]), so a takeover starts warm; only the leader runs the three
//! loops of [`Kube::lead`], inside its etcd leadership term: [`mirror`]
//! (fenced kvstore writes), [`status`] (policy conditions) and [`views`]
//! (the cilium.io objects kubectl shows). Each loop is level-triggered: on
//! any change it diffs what should be against what is, writes the
//! difference, and on a failure retries the whole diff with backoff. A
//! failed Kubernetes request is a problem in [`health`]; a failed or fenced
//! kvstore write ends the term as the other leader tasks' do.

pub mod health;
pub mod index;
pub mod judge;
pub mod mirror;
pub mod pace;
pub mod services;
pub mod status;
pub mod views;

use std::collections::BTreeMap;
use std::sync::Arc;

use axoneme_crds::kube::Client;
use axoneme_identity::{
    Decode, EndpointIdentity, EndpointRecord, IdentityRecord, Layout, NodeCidrs, NodeRecord,
    NodeStatusRecord, Raw, WatchCache,
};
use axoneme_kvstore::KvStore;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::allocator::LeaderExit;
use crate::election::Leadership;
use crate::metrics::Metrics;

pub use health::ApiHealth;
pub use index::Index;

type Labels = Vec<(String, String)>;

/// The field manager of every write to the API: the operator owns the
/// fields it applies (conditions are maps keyed by `type`, so other
/// managers' conditions are left alone).
pub const FIELD_MANAGER: &str = "axoneme-operator";

/// Label on every object the operator creates (CiliumIdentity,
/// CiliumEndpoint, CiliumNode); it deletes only objects that carry it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "axoneme-operator");

/// Kubernetes mode's metrics, registered with the operator's others.
#[derive(Default)]
pub struct KubeMetrics {
    /// Failed API requests and current problems.
    pub health: Arc<ApiHealth>,
    /// `kube_policy_validations{kind, result}`.
    pub validations: Family<Labels, Counter>,
    /// `kube_mirror_writes{store, op}`: kvstore puts and deletes.
    pub mirror_writes: Family<Labels, Counter>,
    /// `kube_object_writes{resource, op}`: API writes that succeeded.
    pub object_writes: Family<Labels, Counter>,
}

pub(crate) fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The kvstore state the leader's Kubernetes work reads, kept warm on
/// every replica.
#[derive(Clone)]
pub struct KvView {
    pub policies: WatchCache<Raw>,
    pub namespaces: WatchCache<Raw>,
    pub node_labels: WatchCache<Raw>,
    pub identities: WatchCache<IdentityRecord>,
    pub endpoints: WatchCache<EndpointRecord>,
    pub assignments: WatchCache<EndpointIdentity>,
    pub nodes: WatchCache<NodeRecord>,
    pub node_cidrs: WatchCache<NodeCidrs>,
    pub node_status: WatchCache<NodeStatusRecord>,
    pub services: WatchCache<Raw>,
}

impl KvView {
    fn start(kv: &KvStore, layout: &Layout, policies: WatchCache<Raw>) -> Self {
        KvView {
            policies,
            namespaces: WatchCache::start(kv.clone(), layout.namespaces_prefix()),
            node_labels: WatchCache::start(kv.clone(), layout.node_labels_prefix()),
            identities: WatchCache::start(kv.clone(), layout.identity_ids_prefix()),
            endpoints: WatchCache::start(kv.clone(), layout.endpoints_prefix()),
            assignments: WatchCache::start(kv.clone(), layout.endpoint_identities_prefix()),
            nodes: WatchCache::start(kv.clone(), layout.nodes_prefix()),
            node_cidrs: WatchCache::start(kv.clone(), layout.node_cidrs_prefix()),
            node_status: WatchCache::start(kv.clone(), layout.node_status_prefix()),
            services: WatchCache::start(kv.clone(), layout.services_prefix()),
        }
    }

    /// Waits until every cache has its first list.
    pub async fn ready(&self) {
        self.policies.ready().await;
        self.namespaces.ready().await;
        self.node_labels.ready().await;
        self.identities.ready().await;
        self.endpoints.ready().await;
        self.assignments.ready().await;
        self.nodes.ready().await;
        self.node_cidrs.ready().await;
        self.node_status.ready().await;
        self.services.ready().await;
    }

    /// Node records by node name (the nodes with an agent).
    pub fn node_records(&self) -> BTreeMap<String, Arc<NodeRecord>> {
        self.nodes
            .snapshot()
            .into_values()
            .map(|n| (n.name.clone(), n))
            .collect()
    }

    /// The nodes' reports of what they enforce, by node name.
    pub fn node_reports(&self) -> BTreeMap<String, Arc<NodeStatusRecord>> {
        self.node_status
            .snapshot()
            .into_values()
            .map(|r| (r.node.clone(), r))
            .collect()
    }

    /// Forwards every change of every cache into `changes`.
    fn forward(&self, changes: &Arc<index::Changes>, cancel: &CancellationToken) {
        fn fwd<V: Decode>(
            cache: &WatchCache<V>,
            changes: &Arc<index::Changes>,
            cancel: &CancellationToken,
        ) {
            let mut sub = cache.subscribe();
            let (changes, cancel) = (changes.clone(), cancel.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = sub.recv() => index::bump(&changes),
                    }
                }
            });
        }
        fwd(&self.policies, changes, cancel);
        fwd(&self.namespaces, changes, cancel);
        fwd(&self.node_labels, changes, cancel);
        fwd(&self.identities, changes, cancel);
        fwd(&self.endpoints, changes, cancel);
        fwd(&self.assignments, changes, cancel);
        fwd(&self.nodes, changes, cancel);
        fwd(&self.node_cidrs, changes, cancel);
        fwd(&self.node_status, changes, cancel);
        fwd(&self.services, changes, cancel);
    }
}

/// Kubernetes mode's state on one replica.
pub struct Kube {
    pub client: Client,
    pub index: Index,
    pub kv: KvView,
    pub judge: judge::Judge,
    pub metrics: Arc<Metrics>,
    changes: Arc<index::Changes>,
}

impl Kube {
    /// Starts the reflectors and the kvstore caches (every replica).
    pub fn start(
        client: Client,
        kv: &KvStore,
        layout: &Layout,
        policies: WatchCache<Raw>,
        metrics: Arc<Metrics>,
        cancel: &CancellationToken,
    ) -> Self {
        let (changes, _) = watch::channel(0u64);
        let changes = Arc::new(changes);
        let index = Index::start(&client, &metrics.kube.health, &changes, cancel);
        let view = KvView::start(kv, layout, policies);
        view.forward(&changes, cancel);
        Kube {
            client,
            index,
            kv: view,
            judge: judge::Judge::new(metrics.kube.validations.clone()),
            metrics,
            changes,
        }
    }

    /// A receiver of the change counter (see [`pace::Pacer`]).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn health(&self) -> &ApiHealth {
        &self.metrics.kube.health
    }

    /// The leader's Kubernetes work, for one leadership term: returns when
    /// `term` is cancelled, or when a kvstore write is fenced or fails.
    pub async fn lead(
        &self,
        kv: &KvStore,
        layout: &Layout,
        lead: &Leadership,
        term: &CancellationToken,
    ) -> LeaderExit {
        self.kv.ready().await;
        let mirror = mirror::run(self, kv, layout, lead, term)
            .instrument(tracing::info_span!("kube-mirror"));
        let status = status::run(self, layout, term).instrument(tracing::info_span!("kube-status"));
        let views = views::run(self, layout, term).instrument(tracing::info_span!("kube-views"));
        tokio::select! {
            exit = mirror => exit,
            () = status => LeaderExit::Cancelled,
            () = views => LeaderExit::Cancelled,
        }
    }
}
