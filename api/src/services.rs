//! `GET /v1/services`: what the node's services unit (kube-proxy
//! replacement) has programmed.

use serde::{Deserialize, Serialize};

use crate::MapStatus;

/// A backend as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    /// `addr:port`.
    pub address: String,
    pub node: Option<String>,
    /// `active`, `terminating` or `not-ready`.
    pub state: String,
    /// Whether new connections on this node may use it (it has a slot).
    pub selected: bool,
}

/// A frontend as this node programs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendView {
    /// `namespace/name`.
    pub service: String,
    /// `ClusterIP`, `NodePort`, `ExternalIP` or `LoadBalancer`.
    pub kind: String,
    /// `addr:port/PROTO` (`*:port/PROTO` for a NodePort).
    pub frontend: String,
    pub backends: Vec<BackendView>,
    pub affinity_timeout: Option<u32>,
    pub local_only: bool,
}

/// What the services unit programmed, as of its last pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesView {
    /// Whether the unit runs (kube-proxy replacement on).
    pub enabled: bool,
    pub passes: u64,
    /// The maps hold what the records ask for.
    pub synced: bool,
    /// The last pass's error, if it failed.
    pub error: Option<String>,
    pub frontends: Vec<FrontendView>,
    /// The LB maps' use.
    pub maps: Vec<MapStatus>,
    /// Records that do not parse: (key, error).
    pub invalid: Vec<(String, String)>,
    /// Records naming a frontend another record owns (that frontend is not
    /// programmed for them): (key, what).
    #[serde(default)]
    pub conflicts: Vec<(String, String)>,
}
