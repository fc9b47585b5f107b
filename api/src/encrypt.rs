//! `GET /v1/encrypt`: transparent IPsec on this node.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What `axoneme encrypt status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptStatus {
    /// `--enable-ipsec`.
    pub enabled: bool,
    /// This node's labels match `--encryption-node-selector`.
    pub node_encrypts: bool,
    pub strict: bool,
    /// The SPI of the key in use.
    pub spi: Option<u8>,
    /// The SPIs of every key installed (replaced ones in their grace).
    pub keys: Vec<u8>,
    pub key_file: Option<PathBuf>,
    /// Why the key file's last change was not taken.
    pub key_error: Option<String>,
    /// Other nodes that encrypt → the SPI their pods' traffic is sent
    /// with (`null`: no key in common).
    pub peers: BTreeMap<String, Option<u8>>,
    pub states_in: usize,
    pub states_out: usize,
    pub policies: usize,
    /// The last pass's failures.
    pub errors: Vec<String>,
    /// The kernel's XFRM error counters (`/proc/net/xfrm_stat` in the
    /// node's namespace) that are not zero.
    pub xfrm_errors: BTreeMap<String, u64>,
}
