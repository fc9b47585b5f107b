//! What the agent keeps of its endpoints on disk: one JSON file per
//! container under `<state dir>/endpoints/` (and the orphans' files beside
//! them, `orphans.rs`), read back by a restarted agent.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use axoneme_api::{AddResponse, IpConfig, RouteConfig};
use axoneme_identity::EndpointRecord;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::netdev::{GATEWAY_V4, GATEWAY_V6};

/// What the agent remembers about an endpoint it created (one JSON file
/// per container under `<state dir>/endpoints/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointState {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub host_interface: String,
    pub host_mac: String,
    pub mac: String,
    pub addresses: Vec<IpAddr>,
    pub labels: Vec<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    /// Kubernetes mode: the Pod's UID.
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// Its containers' named ports (Kubernetes mode: from the Pod spec).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub named_ports: axoneme_identity::NamedPorts,
    /// Policy audit mode asked for this endpoint (`axoneme endpoint
    /// config`; Kubernetes mode: the Pod's annotation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub policy_audit_mode: bool,
}

impl EndpointState {
    /// The endpoint's name in etcd: the container ID.
    pub fn name(&self) -> &str {
        &self.container_id
    }

    pub(super) fn record(&self, node: &str) -> EndpointRecord {
        EndpointRecord {
            id: self.container_id.clone(),
            node: node.to_string(),
            labels: self.labels.clone(),
            addresses: self.addresses.iter().map(IpAddr::to_string).collect(),
            namespace: self.namespace.clone(),
            interface: Some(self.host_interface.clone()),
            pod_name: self.pod_name.clone(),
            pod_uid: self.pod_uid.clone(),
            named_ports: self.named_ports.clone(),
            policy_audit_mode: self.policy_audit_mode,
        }
    }

    pub(super) fn response(&self, identity: u32) -> AddResponse {
        let mut ips = Vec::new();
        let mut routes = Vec::new();
        for a in &self.addresses {
            let (len, gw, any) = match a {
                IpAddr::V4(_) => (32, GATEWAY_V4, "0.0.0.0/0"),
                IpAddr::V6(_) => (128, GATEWAY_V6, "::/0"),
            };
            ips.push(IpConfig {
                address: format!("{a}/{len}"),
                gateway: gw.to_string(),
            });
            routes.push(RouteConfig {
                dst: any.to_string(),
                gw: Some(gw.to_string()),
            });
        }
        AddResponse {
            endpoint: self.container_id.clone(),
            identity,
            host_interface: self.host_interface.clone(),
            host_mac: self.host_mac.clone(),
            mac: self.mac.clone(),
            ips,
            routes,
        }
    }
}

/// Endpoint state files under `dir`, with a warning for each unreadable
/// one (it is left in place for a human to look at).
pub fn load_states(dir: &Path) -> Vec<EndpointState> {
    read_json_files(dir, "json", "endpoint state")
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

pub(super) fn state_path(dir: &Path, container_id: &str) -> PathBuf {
    dir.join(format!("{container_id}.json"))
}

/// Every file `NAME.ext` in `dir` parsed as JSON, with its name; a file
/// that cannot be read or parsed is skipped with a warning naming `what`
/// (and left in place for a human to look at).
pub(super) fn read_json_files<T: DeserializeOwned>(
    dir: &Path,
    ext: &str,
    what: &str,
) -> Vec<(String, T)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some(ext) {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
            continue;
        };
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => out.push((name.to_string(), v)),
            Err(e) => warn!(file = %path.display(), error = %e, "unreadable {what}; skipped"),
        }
    }
    out
}
