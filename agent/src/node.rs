//! The node's view of the cluster, fed by etcd watches: every identity, and
//! the operator's identity assignments for this node's endpoints.
//!
//! Both views are `WatchCache`s (one writer task each, resynced after a
//! broken watch or compaction); `NodeState` adds the lookups the datapath
//! needs and a change logger. `Mirror` (in `node/mirror.rs`) turns a
//! cache's events into added/updated/removed changes for one consumer,
//! surviving resyncs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axoneme_identity::{
    identity_cache, Assignment, EndpointRecord, IdentityCache, Label, LabelSet, Layout, NodeLabels,
    NodeRecord, NumericIdentity, PeerEndpoint, PeerIdentity, PolicyStatus, Raw, ReservedIdentity,
    Source, Subscription, WatchCache,
};
use axoneme_kvstore::KvStore;
use axoneme_policy::Policy;
use tracing::{debug, info, warn, Instrument};

mod mirror;
use mirror::follow;
pub use mirror::{Change, Mirror};

/// Why a node name is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node name {name:?}: {reason}")]
pub struct NodeNameError {
    pub name: String,
    pub reason: &'static str,
}

/// Checks a node name: it is one segment of the endpoint keys.
pub fn validate_node_name(name: &str) -> Result<(), NodeNameError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 253 {
        "longer than 253 bytes"
    } else if name.contains('/') {
        "must not contain '/'"
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "must not contain spaces or control characters"
    } else {
        return Ok(());
    };
    Err(NodeNameError {
        name: name.to_string(),
        reason,
    })
}

/// The prefix of one node's assignments: `<root>/endpoint-identities/v1/<node>/`.
pub fn node_assignments_prefix(layout: &Layout, node: &str) -> String {
    format!("{}{node}/", layout.endpoint_identities_prefix())
}

/// Subscriptions to the caches [`NodeState`] is made of.
pub struct StateChanges {
    identities: Subscription<PeerIdentity>,
    assignments: Subscription<Assignment>,
    records: Subscription<PeerEndpoint>,
    policies: Subscription<Raw>,
    policy_status: Subscription<PolicyStatus>,
    nodes: Subscription<NodeRecord>,
    node_labels: Subscription<NodeLabels>,
}

impl crate::reconcile::StateEvents for StateChanges {
    /// Completes at the next change of any of them.
    async fn changed(&mut self) {
        tokio::select! {
            _ = self.identities.recv() => {}
            _ = self.assignments.recv() => {}
            _ = self.records.recv() => {}
            _ = self.policies.recv() => {}
            _ = self.policy_status.recv() => {}
            _ = self.nodes.recv() => {}
            _ = self.node_labels.recv() => {}
        }
    }

    fn drain(&mut self) {
        while self.identities.try_recv().is_some() {}
        while self.assignments.try_recv().is_some() {}
        while self.records.try_recv().is_some() {}
        while self.policies.try_recv().is_some() {}
        while self.policy_status.try_recv().is_some() {}
        while self.nodes.try_recv().is_some() {}
        while self.node_labels.try_recv().is_some() {}
    }
}

/// What one node knows: identities, every endpoint record and assignment
/// in the cluster (for the ipcache; its own endpoints among them), and the
/// stored policies with the operator's verdicts on them.
#[derive(Clone)]
pub struct NodeState {
    node: String,
    layout: Layout,
    identities: IdentityCache,
    /// Every endpoint's assignment and record, as agents keep them
    /// (`axoneme_identity::peer`: they are most of an agent's memory).
    assignments: WatchCache<Assignment>,
    records: WatchCache<PeerEndpoint>,
    /// This node's endpoint records whole (the API lists their labels).
    local_records: WatchCache<EndpointRecord>,
    policies: WatchCache<Raw>,
    policy_status: WatchCache<PolicyStatus>,
    /// Every node's record (their addresses are `remote-node`, this
    /// node's `host`) and labels (host policies select by them).
    nodes: WatchCache<NodeRecord>,
    node_labels: WatchCache<NodeLabels>,
    /// This node's host endpoint, with the host firewall on.
    host: Option<Arc<crate::host::HostEndpoint>>,
    /// `--node-labels`: this node's labels over the stored ones.
    flag_labels: Arc<crate::config::Labels>,
    parsed: Arc<Mutex<ParseCache>>,
}

/// Policies parsed by store key at a revision, so a pass parses only what
/// changed: re-parsing every policy on every pass made a burst of N
/// policies cost O(N²) parses (1,000 CNPs applied at once kept both agents
/// busy for half a minute).
#[derive(Default)]
struct ParseCache {
    /// Key → (revision, the parse, the pass that last used it).
    parsed: HashMap<String, (i64, Arc<Policy>, u64)>,
    /// The current pass.
    pass: u64,
}

impl ParseCache {
    /// The policy stored at `key` at `revision`, parsed once per revision;
    /// `None` if it does not parse.
    fn get(&mut self, key: &str, revision: i64, value: &[u8]) -> Option<Arc<Policy>> {
        let pass = self.pass;
        if let Some((rev, p, used)) = self.parsed.get_mut(key) {
            if *rev == revision {
                *used = pass;
                return Some(p.clone());
            }
        }
        let text = std::str::from_utf8(value).ok()?;
        let mut policy = axoneme_policy::parse_documents(text)
            .into_iter()
            .next()?
            .ok()?;
        // The agent enforces the rules; the object as given (for storing
        // it) would only double what each policy costs.
        policy.object = serde_json::Value::Null;
        let policy = Arc::new(policy);
        self.parsed
            .insert(key.to_string(), (revision, policy.clone(), pass));
        Some(policy)
    }

    /// Ends a pass: forgets policies it did not use.
    fn finish(&mut self) {
        let pass = self.pass;
        self.parsed.retain(|_, (_, _, used)| *used == pass);
        self.pass += 1;
    }
}

impl NodeState {
    /// Starts the caches and waits until each has its first list (this
    /// waits as long as etcd is unreachable; the caches retry on their own).
    pub async fn start(kv: KvStore, layout: Layout, node: &str) -> Self {
        let identities = identity_cache(kv.clone(), &layout);
        let assignments = WatchCache::start(kv.clone(), layout.endpoint_identities_prefix());
        let records = WatchCache::start(kv.clone(), layout.endpoints_prefix());
        let local_records = WatchCache::start(kv.clone(), layout.node_endpoints_prefix(node));
        let policies = WatchCache::start(kv.clone(), layout.policies_prefix());
        let policy_status = WatchCache::start(kv.clone(), layout.policy_status_prefix());
        let nodes = WatchCache::start(kv.clone(), layout.nodes_prefix());
        let node_labels = WatchCache::start(kv, layout.node_labels_prefix());
        tokio::join!(
            identities.ready(),
            assignments.ready(),
            records.ready(),
            local_records.ready(),
            policies.ready(),
            policy_status.ready(),
            nodes.ready(),
            node_labels.ready()
        );
        NodeState {
            node: node.to_string(),
            layout,
            identities,
            assignments,
            records,
            local_records,
            policies,
            policy_status,
            nodes,
            node_labels,
            host: None,
            flag_labels: Arc::default(),
            parsed: Arc::default(),
        }
    }

    /// This node is an endpoint too: its host endpoint (the host
    /// firewall).
    pub fn with_host(mut self, host: crate::host::HostEndpoint) -> Self {
        self.host = Some(Arc::new(host));
        self
    }

    pub fn host(&self) -> Option<&crate::host::HostEndpoint> {
        self.host.as_deref()
    }

    /// This node's labels from `--node-labels`, over the stored ones.
    pub fn with_flag_labels(mut self, labels: crate::config::Labels) -> Self {
        self.flag_labels = Arc::new(labels);
        self
    }

    /// The nodes' identities and their addresses', as this node sees them
    /// (`crate::host::node_identities`).
    pub fn node_identities(&self) -> crate::host::NodeIdentities {
        self.nodes.read(|nodes| {
            let labelled: Vec<_> = nodes
                .values()
                .map(|n| {
                    let labels = self.labels_of_node(&n.name);
                    (n.name.as_str(), n.addresses.as_slice(), labels)
                })
                .collect();
            crate::host::node_identities(&self.node, labelled.into_iter())
        })
    }

    /// Node `name`'s labels: the stored ones (`axoneme node label`, or the
    /// Node's), and for this node `--node-labels` over them.
    pub fn labels_of_node(&self, name: &str) -> crate::config::Labels {
        let empty = crate::config::Labels::new();
        let flags = if name == self.node {
            &*self.flag_labels
        } else {
            &empty
        };
        crate::host::node_labels(&self.node_labels, &self.layout.node_labels(name), flags)
    }

    /// Every node's record.
    pub fn nodes(&self) -> &WatchCache<NodeRecord> {
        &self.nodes
    }

    /// Every node's labels (as the operator mirrors them from Kubernetes,
    /// or `axoneme node label` sets them).
    pub fn node_labels(&self) -> &WatchCache<NodeLabels> {
        &self.node_labels
    }

    /// Notice of every change to what the datapath is computed from
    /// (identities, assignments, endpoint records, policies, statuses).
    pub fn subscribe(&self) -> StateChanges {
        StateChanges {
            identities: self.identities.subscribe(),
            assignments: self.assignments.subscribe(),
            records: self.records.subscribe(),
            policies: self.policies.subscribe(),
            policy_status: self.policy_status.subscribe(),
            nodes: self.nodes.subscribe(),
            node_labels: self.node_labels.subscribe(),
        }
    }

    /// Every endpoint in the cluster, keyed by its record's etcd key.
    pub fn records(&self) -> &WatchCache<PeerEndpoint> {
        &self.records
    }

    /// This node's endpoint records, whole, keyed by etcd key.
    pub fn local_records(&self) -> &WatchCache<EndpointRecord> {
        &self.local_records
    }

    /// The policy store and the operator's statuses (to wait for changes).
    pub fn policy_caches(&self) -> (&WatchCache<Raw>, &WatchCache<PolicyStatus>) {
        (&self.policies, &self.policy_status)
    }

    /// The policies to enforce: those the operator judged valid at their
    /// current revision. A policy not judged yet, judged at an older
    /// revision, or invalid is left out, and the last good state stays with
    /// whoever holds it (the datapath keeps its maps until told otherwise).
    pub fn valid_policies(&self) -> Vec<Policy> {
        self.valid_policies_by_key()
            .into_values()
            .map(Arc::unwrap_or_clone)
            .collect()
    }

    /// `valid_policies`, keyed by their etcd key; each parsed once per
    /// revision and shared (a pass copies pointers, not policies).
    pub fn valid_policies_by_key(&self) -> BTreeMap<String, Arc<Policy>> {
        // Read in place, one status key buffer: a pass runs for every
        // change, so with N policies this is O(N) per pass and its
        // allocations counted during a burst of 1,000.
        let policies_prefix = self.layout.policies_prefix();
        let mut status_key = self.layout.policy_status_prefix();
        let status_prefix_len = status_key.len();
        let mut parsed = self.parsed.lock().expect("parse cache poisoned");
        let valid = self.policy_status.read(|statuses| {
            self.policies.read(|policies| {
                policies
                    .iter()
                    .filter(|(key, raw)| {
                        let Some(rest) = key.strip_prefix(&policies_prefix) else {
                            return false;
                        };
                        status_key.truncate(status_prefix_len);
                        status_key.push_str(rest);
                        statuses
                            .get(&status_key)
                            .is_some_and(|s| s.valid && s.observed_revision == raw.mod_revision)
                    })
                    .filter_map(|(key, raw)| {
                        match parsed.get(key, raw.mod_revision, &raw.value) {
                            Some(p) => Some((key.clone(), p)),
                            // The operator said valid but this agent cannot
                            // parse it (version skew): leave it out and say so.
                            None => {
                                warn!(policy = %key, "policy judged valid does not parse here; skipped");
                                None
                            }
                        }
                    })
                    .collect()
            })
        });
        parsed.finish();
        valid
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Every identity in the cluster, keyed by etcd key.
    pub fn identities(&self) -> &IdentityCache {
        &self.identities
    }

    /// Every endpoint's assignment in the cluster, keyed by etcd key.
    pub fn assignments(&self) -> &WatchCache<Assignment> {
        &self.assignments
    }

    /// The operator's latest answer for one of this node's endpoints.
    pub fn assignment(&self, endpoint: &str) -> Option<Arc<Assignment>> {
        self.assignments
            .get(&self.layout.endpoint_identity(&self.node, endpoint))
    }

    /// The identity of one of this node's endpoints (none while the operator
    /// has not assigned one, or reported an error).
    pub fn identity_of(&self, endpoint: &str) -> Option<NumericIdentity> {
        self.assignment(endpoint).and_then(|a| a.identity)
    }

    /// The labels an identity stands for: `reserved:<name>` for reserved
    /// numbers (but `unknown`), else the identity record's labels.
    pub fn labels_of(&self, id: NumericIdentity) -> Option<LabelSet> {
        if let Some(r) = id.reserved() {
            if r == ReservedIdentity::Unknown {
                return None;
            }
            let label = Label::new(Source::Reserved, r.name(), "").ok()?;
            return LabelSet::from_labels([label]).ok();
        }
        if id.is_node_scope() {
            return self.node_identities().identities.remove(&id);
        }
        self.identities
            .get(&self.layout.identity_id(id))
            .filter(|rec| rec.id == id)
            .map(|rec| rec.labels.clone())
    }

    /// This node's assignments by endpoint name.
    pub fn endpoints(&self) -> BTreeMap<String, Arc<Assignment>> {
        let prefix = node_assignments_prefix(&self.layout, &self.node);
        self.assignments
            .snapshot_prefix(&prefix)
            .into_iter()
            .filter_map(|(key, a)| {
                let (_, endpoint) = self.layout.split_endpoint_key(&key)?;
                Some((endpoint.to_string(), a))
            })
            .collect()
    }

    /// Logs every identity added or removed and every assignment of this
    /// node's endpoints, until dropped. The identities present at start are
    /// summed up (each at debug level); the endpoints are each logged.
    pub async fn log_changes(&self) {
        let layout = &self.layout;
        let identities = follow(&self.identities, "", |change, initial| {
            log_identity(change, initial)
        })
        .instrument(tracing::info_span!("identities"));
        let mine = node_assignments_prefix(layout, &self.node);
        let assignments = follow(&self.assignments, &mine, |change, _| {
            log_assignment(layout, change)
        })
        .instrument(tracing::info_span!("assignments"));
        tokio::join!(identities, assignments);
    }
}

fn log_identity(change: Change<Arc<PeerIdentity>>, initial: bool) {
    match change {
        Change::Added { value, .. } if initial => {
            debug!(id = %value.id, labels = %value.labels, "identity present");
        }
        Change::Added { value, .. } => {
            info!(id = %value.id, labels = %value.labels, "identity added");
        }
        Change::Updated { old, new, .. } => {
            info!(id = %new.id, labels = %new.labels, old_labels = %old.labels, "identity changed");
        }
        Change::Removed { old, .. } => {
            info!(id = %old.id, labels = %old.labels, "identity removed");
        }
    }
}

fn log_assignment(layout: &Layout, change: Change<Arc<Assignment>>) {
    let endpoint = |key: &str| {
        layout
            .split_endpoint_key(key)
            .map(|(_, e)| e.to_string())
            .unwrap_or_else(|| key.to_string())
    };
    match change {
        Change::Added { key, value: a } | Change::Updated { key, new: a, .. } => {
            let endpoint = endpoint(&key);
            match (&a.identity, &a.error) {
                (Some(id), _) => info!(
                    %endpoint, identity = %id,
                    endpoint_revision = a.endpoint_revision, "endpoint assigned identity"
                ),
                (None, error) => warn!(
                    %endpoint, error = error.as_deref().unwrap_or("none given"),
                    endpoint_revision = a.endpoint_revision, "operator assigned no identity"
                ),
            }
        }
        Change::Removed { key, old } => {
            let identity = old
                .identity
                .map_or_else(|| "-".to_string(), |i| i.to_string());
            info!(endpoint = %endpoint(&key), %identity, "endpoint assignment removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"default"},"spec":{"endpointSelector":{"matchLabels":{"app":"a"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"b"}}]}]}}"#;

    #[test]
    fn parse_cache_parses_once_per_revision_and_forgets_unused_keys() {
        let mut c = ParseCache::default();
        let p = c.get("k", 5, POLICY.as_bytes()).expect("parses");
        c.finish();
        // Same revision: the cached parse, whatever the bytes say now.
        assert_eq!(c.get("k", 5, b"not a policy"), Some(p.clone()));
        c.finish();
        // A new revision is parsed again.
        assert_eq!(c.get("k", 6, b"not a policy"), None);
        assert_eq!(c.get("j", 1, POLICY.as_bytes()), Some(p));
        c.finish();
        assert!(c.parsed.contains_key("j") && !c.parsed.contains_key("k"));
        // A pass without j drops it.
        c.finish();
        assert!(c.parsed.is_empty());
    }

    #[test]
    fn node_names() {
        assert!(validate_node_name("node-a.example").is_ok());
        for bad in ["", "a/b", "a b", "a\n"] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            node_assignments_prefix(&Layout::default(), "n1"),
            "axoneme/state/endpoint-identities/v1/n1/"
        );
    }
}
