//! The encryption maps (written by the encryption unit alone, through
//! [`EncryptMaps`]): `ENCRYPT` (other nodes' pod CIDRs → the SPI their
//! pods' traffic is encrypted with, and the node's decrypt index) and
//! `ENCRYPT_NODES` (other nodes' addresses → their index in decrypt
//! marks). See
//! `bpf/programs/src/encrypt.rs`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axoneme_bpf_common::map_names::{ENCRYPT, ENCRYPT_NODES, ENCRYPT_NODE_SLOTS};
use axoneme_bpf_common::{EncryptValue, IpcacheKey};
use aya::maps::{LpmTrie, MapData};
use ipnet::IpNet;

use super::maps::{address_key, ipcache_key, ipcache_net, typed};
use super::slots::AddrIndex;
use super::{map_error, Datapath, DatapathError};
use crate::encrypt::sync::EncryptWriter;

/// Handles on the encryption maps.
pub struct EncryptMaps {
    prefixes: LpmTrie<MapData, IpcacheKey, EncryptValue>,
    nodes: AddrIndex,
}

impl std::fmt::Debug for EncryptMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptMaps").finish_non_exhaustive()
    }
}

impl Datapath {
    /// The encryption maps' handles, for their one writer (once).
    pub fn take_encrypt_maps(&mut self) -> Result<EncryptMaps, DatapathError> {
        Ok(EncryptMaps {
            prefixes: typed(&mut self.ebpf, ENCRYPT)?,
            nodes: AddrIndex::take(&mut self.ebpf, ENCRYPT_NODES, ENCRYPT_NODE_SLOTS)?,
        })
    }
}

/// The address an `ENCRYPT_NODES` key stands for.
fn key_addr(key: &IpcacheKey) -> Option<IpAddr> {
    let bits = if key.family == axoneme_bpf_common::family::IPV4 {
        32
    } else {
        128
    };
    ipcache_net(&aya::maps::lpm_trie::Key::new(
        IpcacheKey::prefix_len(bits),
        *key,
    ))
    .map(|n| n.addr())
}

impl EncryptWriter for EncryptMaps {
    fn prefixes(&self) -> Result<BTreeMap<IpNet, EncryptValue>, DatapathError> {
        let mut out = BTreeMap::new();
        for item in self.prefixes.iter() {
            let (key, value) = item.map_err(|s| map_error(ENCRYPT, "iterate", s))?;
            if let Some(net) = ipcache_net(&key) {
                out.insert(net, value);
            }
        }
        Ok(out)
    }

    fn nodes(&self) -> Result<BTreeMap<IpAddr, u16>, DatapathError> {
        let mut out = BTreeMap::new();
        for (key, index) in self.nodes.entries()? {
            if let (Some(addr), Ok(index)) = (key_addr(&key), u16::try_from(index)) {
                out.insert(addr, index);
            }
        }
        Ok(out)
    }

    fn set_prefix(&mut self, net: IpNet, value: EncryptValue) -> Result<(), DatapathError> {
        self.prefixes
            .insert(&ipcache_key(&net), value, 0)
            .map_err(|s| map_error(ENCRYPT, "update", s))
    }

    fn remove_prefix(&mut self, net: IpNet) -> Result<(), DatapathError> {
        self.prefixes
            .remove(&ipcache_key(&net))
            .map_err(|s| map_error(ENCRYPT, "delete", s))
    }

    fn set_node(&mut self, addr: IpAddr, index: u16) -> Result<(), DatapathError> {
        self.nodes.insert(address_key(addr), u32::from(index))
    }

    fn remove_node(&mut self, addr: IpAddr) -> Result<(), DatapathError> {
        self.nodes.remove(&address_key(addr))
    }
}
