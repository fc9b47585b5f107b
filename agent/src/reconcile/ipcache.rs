//! The ipcache sync unit: every endpoint address of the cluster and the
//! policies' CIDRs, with their identities, into the ipcache trie. Diffed
//! against what it wrote last; after a start or a failed pass, against
//! what the trie holds.

use std::collections::BTreeMap;

use axoneme_bpf_common::IpcacheValue;
use ipnet::IpNet;

use super::writer::MapWriter;
use super::Changes;
use crate::datapath::DatapathError;

#[derive(Default)]
pub struct IpcacheUnit {
    /// What the trie holds, when known.
    have: Option<BTreeMap<IpNet, u32>>,
}

impl IpcacheUnit {
    pub fn invalidate(&mut self) {
        self.have = None;
    }

    pub fn sync(
        &mut self,
        want: &BTreeMap<IpNet, u32>,
        w: &mut impl MapWriter,
    ) -> Result<Changes, DatapathError> {
        let have = match self.have.take() {
            Some(h) => h,
            None => w
                .ipcache_entries()?
                .into_iter()
                .map(|(net, v)| (net, v.identity))
                .collect(),
        };
        let mut changes = Changes::default();
        for (net, id) in want {
            if have.get(net) != Some(id) {
                let value = IpcacheValue {
                    identity: *id,
                    ..IpcacheValue::default()
                };
                w.set_ipcache(net, value)?;
                changes.writes += 1;
            }
        }
        for net in have.keys().filter(|n| !want.contains_key(n)) {
            w.remove_ipcache(net)?;
            changes.removals += 1;
        }
        // Only a whole pass makes `want` the truth (`have` stays unknown
        // after an error).
        self.have = Some(want.clone());
        Ok(changes)
    }
}
