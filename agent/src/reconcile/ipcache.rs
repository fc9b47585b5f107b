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
        // Fail-closed order: removals first (an address gone from the
        // cluster is `world` a moment sooner, and a full trie gets room),
        // then the addresses whose identity changed (rewriting a key needs
        // no room, so a full trie never keeps an address's old identity),
        // then the new ones (past the trie's size they stay `world`).
        let mut changes = Changes::default();
        for net in have.keys().filter(|n| !want.contains_key(n)) {
            w.remove_ipcache(net)?;
            changes.removals += 1;
        }
        let (changed, new): (Vec<_>, Vec<_>) = want
            .iter()
            .filter(|(net, id)| have.get(net) != Some(id))
            .partition(|(net, _)| have.contains_key(net));
        for (net, id) in changed.into_iter().chain(new) {
            let value = IpcacheValue {
                identity: *id,
                ..IpcacheValue::default()
            };
            w.set_ipcache(net, value)?;
            changes.writes += 1;
        }
        // Only a whole pass makes `want` the truth (`have` stays unknown
        // after an error).
        self.have = Some(want.clone());
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::fake::{FakeMaps, Op};

    fn net(s: &str) -> IpNet {
        s.parse().expect("a prefix")
    }

    #[test]
    fn a_full_trie_frees_room_first_and_never_keeps_an_old_identity() {
        let (a, b, c, d, e) = (
            net("10.0.0.1/32"),
            net("10.0.0.2/32"),
            net("10.0.0.3/32"),
            net("10.0.0.4/32"),
            net("10.0.0.5/32"),
        );
        let mut maps = FakeMaps {
            ipcache_max: Some(3),
            ..FakeMaps::default()
        };
        let mut unit = IpcacheUnit::default();
        unit.sync(&BTreeMap::from([(a, 1), (b, 2), (c, 3)]), &mut maps)
            .expect("fits");
        maps.take_log();

        // c leaves, b's address now stands for identity 5 (a new pod took
        // it), d and e arrive: one of them fits.
        let want = BTreeMap::from([(a, 1), (b, 5), (d, 4), (e, 6)]);
        assert!(unit.sync(&want, &mut maps).is_err(), "e does not fit");
        assert_eq!(
            maps.take_log(),
            [Op::RemoveIpcache(c), Op::SetIpcache(b), Op::SetIpcache(d)]
        );
        let held: BTreeMap<IpNet, u32> =
            maps.ipcache.iter().map(|(n, v)| (*n, v.identity)).collect();
        assert_eq!(held, BTreeMap::from([(a, 1), (b, 5), (d, 4)]));

        // Room again: the next pass (against what the trie holds) adds e.
        maps.ipcache_max = Some(4);
        let changes = unit.sync(&want, &mut maps).expect("fits now");
        assert_eq!((changes.writes, changes.removals), (1, 0));
        assert_eq!(maps.ipcache.get(&e).map(|v| v.identity), Some(6));
    }
}
