//! The etcd key layout (documented in docs/etcd-layout.md).
//!
//! One root prefix, versioned sub-prefixes, JSON values, one writer per key:
//!
//! | key | value | writer | lease |
//! |---|---|---|---|
//! | `<root>/identities/v1/id/<ID>` | `IdentityRecord` | operator leader (fenced) | none; removed by GC |
//! | `<root>/identities/v1/labels/<canonical labels>` | the ID, decimal | operator leader (fenced) | none; removed by GC with the id key |
//! | `<root>/endpoints/v1/<node>/<endpoint>` | `EndpointRecord` | the node's agent (or a CLI/test writer) | the agent's |
//! | `<root>/endpoint-identities/v1/<node>/<endpoint>` | `EndpointIdentity` | operator leader (fenced) | none; deleted with the endpoint |
//! | `<root>/operator/v1/leader` | `LeaderRecord` | the elected operator | the leader's |
//! | `<root>/policies/v1/<cnp|ccnp|knp>/<namespace or _>/<name>` | the policy object (JSON) | `axoneme policy import` (standalone mode) | none |
//! | `<root>/policy-status/v1/<cnp|ccnp|knp>/<namespace or _>/<name>` | `PolicyStatus` | operator leader (fenced) | none; deleted with the policy |
//! | `<root>/services/v1/<namespace>/<name>` | `ServiceRecord` (axoneme-service, JSON) | `axoneme service` (standalone mode); the operator (Kubernetes mode) | none |
//! | `<root>/nodes/v1/<node>` | `NodeRecord` | the node's agent | the agent's |
//! | `<root>/node-cidrs/v1/<node>` | `NodeCidrs` | operator leader (fenced) | none; released after the node has been gone for a grace period |

use crate::numeric::NumericIdentity;

pub const DEFAULT_ROOT: &str = "axoneme/state";

/// Key builder for one root prefix (tests and the demo may use their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout::new(DEFAULT_ROOT)
    }
}

impl Layout {
    pub fn new(root: &str) -> Self {
        Layout {
            root: root.trim_end_matches('/').to_string(),
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn identity_ids_prefix(&self) -> String {
        format!("{}/identities/v1/id/", self.root)
    }

    pub fn identity_id(&self, id: NumericIdentity) -> String {
        format!("{}{}", self.identity_ids_prefix(), id.0)
    }

    pub fn identity_labels_prefix(&self) -> String {
        format!("{}/identities/v1/labels/", self.root)
    }

    pub fn identity_labels(&self, canonical: &str) -> String {
        format!("{}{}", self.identity_labels_prefix(), canonical)
    }

    pub fn endpoints_prefix(&self) -> String {
        format!("{}/endpoints/v1/", self.root)
    }

    pub fn node_endpoints_prefix(&self, node: &str) -> String {
        format!("{}{}/", self.endpoints_prefix(), node)
    }

    pub fn endpoint(&self, node: &str, endpoint: &str) -> String {
        format!("{}{}/{}", self.endpoints_prefix(), node, endpoint)
    }

    pub fn endpoint_identities_prefix(&self) -> String {
        format!("{}/endpoint-identities/v1/", self.root)
    }

    pub fn endpoint_identity(&self, node: &str, endpoint: &str) -> String {
        format!("{}{}/{}", self.endpoint_identities_prefix(), node, endpoint)
    }

    /// Maps an endpoint record key to the key of its identity assignment.
    pub fn assignment_for_endpoint_key(&self, endpoint_key: &str) -> Option<String> {
        let rest = endpoint_key.strip_prefix(&self.endpoints_prefix())?;
        Some(format!("{}{}", self.endpoint_identities_prefix(), rest))
    }

    /// `(node, endpoint)` from an endpoint or assignment key.
    pub fn split_endpoint_key<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key
            .strip_prefix(&self.endpoints_prefix())
            .or_else(|| key.strip_prefix(&self.endpoint_identities_prefix()))?;
        rest.split_once('/')
    }

    pub fn policies_prefix(&self) -> String {
        format!("{}/policies/v1/", self.root)
    }

    /// `kind` is `cnp`, `ccnp` or `knp` (Kubernetes NetworkPolicy);
    /// cluster-wide policies use namespace `_`.
    pub fn policy(&self, kind: &str, namespace: Option<&str>, name: &str) -> String {
        format!(
            "{}{kind}/{}/{name}",
            self.policies_prefix(),
            namespace.unwrap_or("_")
        )
    }

    pub fn policy_status_prefix(&self) -> String {
        format!("{}/policy-status/v1/", self.root)
    }

    /// Maps a policy key to the key of its status.
    pub fn status_for_policy_key(&self, policy_key: &str) -> Option<String> {
        let rest = policy_key.strip_prefix(&self.policies_prefix())?;
        Some(format!("{}{rest}", self.policy_status_prefix()))
    }

    /// Services and their endpoints (`axoneme_service::ServiceRecord`).
    pub fn services_prefix(&self) -> String {
        format!("{}/services/v1/", self.root)
    }

    pub fn service(&self, namespace: &str, name: &str) -> String {
        format!("{}{namespace}/{name}", self.services_prefix())
    }

    /// The services' frontend index: which service holds a cluster IP or
    /// a frontend (`axoneme_service::claims`), one key per name, the
    /// holder's `namespace/name` as value.
    pub fn services_index_prefix(&self) -> String {
        format!("{}/services-index/v1/", self.root)
    }

    pub fn service_claim(&self, name: &str) -> String {
        format!("{}{name}", self.services_index_prefix())
    }

    /// Present while the index is complete: every writer of the index
    /// rewrites it, every other writer of services deletes it.
    pub fn services_index_marker(&self) -> String {
        format!("{}/services-index/v1.complete", self.root)
    }

    /// `(namespace, name)` from a service key.
    pub fn split_service_key<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        key.strip_prefix(&self.services_prefix())?.split_once('/')
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/v1/", self.root)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}{node}", self.nodes_prefix())
    }

    pub fn node_cidrs_prefix(&self) -> String {
        format!("{}/node-cidrs/v1/", self.root)
    }

    pub fn node_cidrs(&self, node: &str) -> String {
        format!("{}{node}", self.node_cidrs_prefix())
    }

    /// What each node's agent has enforced ([`crate::NodeStatusRecord`]).
    pub fn node_status_prefix(&self) -> String {
        format!("{}/node-status/v1/", self.root)
    }

    pub fn node_status(&self, node: &str) -> String {
        format!("{}{node}", self.node_status_prefix())
    }

    /// Kubernetes Namespaces' labels ([`crate::NamespaceRecord`]).
    pub fn namespaces_prefix(&self) -> String {
        format!("{}/namespaces/v1/", self.root)
    }

    pub fn namespace(&self, name: &str) -> String {
        format!("{}{name}", self.namespaces_prefix())
    }

    /// Nodes' labels ([`crate::NodeLabels`]).
    pub fn node_labels_prefix(&self) -> String {
        format!("{}/node-labels/v1/", self.root)
    }

    pub fn node_labels(&self, node: &str) -> String {
        format!("{}{node}", self.node_labels_prefix())
    }

    pub fn operator_leader(&self) -> String {
        format!("{}/operator/v1/leader", self.root)
    }

    /// Parses the numeric id at the end of an identity key.
    pub fn parse_identity_key(&self, key: &str) -> Option<NumericIdentity> {
        key.strip_prefix(&self.identity_ids_prefix())?
            .parse()
            .ok()
            .map(NumericIdentity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let l = Layout::default();
        assert_eq!(
            l.identity_id(NumericIdentity(300)),
            "axoneme/state/identities/v1/id/300"
        );
        assert_eq!(
            l.parse_identity_key("axoneme/state/identities/v1/id/300"),
            Some(NumericIdentity(300))
        );
        let ep = l.endpoint("node-a", "ep1");
        assert_eq!(ep, "axoneme/state/endpoints/v1/node-a/ep1");
        assert_eq!(
            l.assignment_for_endpoint_key(&ep).unwrap(),
            "axoneme/state/endpoint-identities/v1/node-a/ep1"
        );
        assert_eq!(l.split_endpoint_key(&ep), Some(("node-a", "ep1")));
        assert_eq!(Layout::new("t/").operator_leader(), "t/operator/v1/leader");
        assert_eq!(l.node("n1"), "axoneme/state/nodes/v1/n1");
        assert_eq!(l.node_cidrs("n1"), "axoneme/state/node-cidrs/v1/n1");
        assert_eq!(l.services_prefix(), "axoneme/state/services/v1/");
        let svc = l.service("default", "payments");
        assert_eq!(svc, "axoneme/state/services/v1/default/payments");
        assert_eq!(l.split_service_key(&svc), Some(("default", "payments")));
        assert_eq!(l.split_service_key(&ep), None);
    }
}
