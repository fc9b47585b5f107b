//! Security identities: the label model, Cilium's reserved numbers, the
//! cluster range, the etcd key layout and the watch-fed cache agents use.
//! No Kubernetes types live here.

#![forbid(unsafe_code)]

pub mod cache;
pub mod cidr;
pub mod filter;
pub mod labels;
pub mod layout;
pub mod model;
pub mod numeric;
pub mod peer;

pub use cache::{CacheEvent, Decode, Raw, Subscription, WatchCache};
pub use filter::LabelFilter;
pub use labels::{Label, LabelError, LabelRef, LabelSet, Source};
pub use layout::Layout;
pub use model::{
    check_interface_name, check_port_name, EndpointEnforcement, EndpointIdentity, EndpointRecord,
    IdentityRecord, LeaderRecord, NamedPort, NamedPorts, NamespaceRecord, NodeCidrs,
    NodeEncryption, NodeLabels, NodeRecord, NodeStatusRecord, PolicyStatus, PortProtocol,
};
pub use numeric::{IdentityRange, NumericIdentity, ReservedIdentity};
pub use peer::{Assignment, PeerEndpoint, PeerIdentity};

use axoneme_kvstore::KeyValue;

impl Decode for IdentityRecord {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        serde_json::from_slice(&kv.value).map_err(|e| format!("identity record: {e}"))
    }
}

impl Decode for EndpointIdentity {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        serde_json::from_slice(&kv.value).map_err(|e| format!("endpoint identity: {e}"))
    }
}

impl Decode for PolicyStatus {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        serde_json::from_slice(&kv.value).map_err(|e| format!("policy status: {e}"))
    }
}

impl Decode for EndpointRecord {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        serde_json::from_slice(&kv.value).map_err(|e| format!("endpoint record: {e}"))
    }
}

impl Decode for NodeRecord {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        serde_json::from_slice(&kv.value).map_err(|e| format!("node record: {e}"))
    }
}

impl Decode for NodeCidrs {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        serde_json::from_slice(&kv.value).map_err(|e| format!("node CIDRs: {e}"))
    }
}

impl Decode for NodeStatusRecord {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        serde_json::from_slice(&kv.value).map_err(|e| format!("node status: {e}"))
    }
}

impl Decode for NamespaceRecord {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        serde_json::from_slice(&kv.value).map_err(|e| format!("namespace record: {e}"))
    }
}

impl Decode for NodeLabels {
    fn decode(kv: &KeyValue) -> Result<Self, String> {
        serde_json::from_slice(&kv.value).map_err(|e| format!("node labels: {e}"))
    }
}

/// The agents' view of every identity in the cluster, keyed by etcd key.
pub type IdentityCache = WatchCache<PeerIdentity>;

/// Starts an identity cache on `layout`'s identity prefix.
pub fn identity_cache(kv: axoneme_kvstore::KvStore, layout: &Layout) -> IdentityCache {
    WatchCache::start(kv, layout.identity_ids_prefix())
}
