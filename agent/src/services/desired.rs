//! The LB maps' desired content, kept up to date record by record: a
//! changed service record replaces only its own entries (its
//! [`Fragment`]), so a pass costs what changed, not the whole table.
//!
//! Entries several records share are reference-counted: a backend (by
//! address and port) used by several frontends, a reverse-NAT entry (by
//! frontend address and port, shared by its protocols), an affinity pair.
//! Each frontend (address, port, protocol) has one owner, the record that
//! claimed it first; a record naming a frontend another one owns is
//! *shadowed* there (reported, not programmed) and is retried when the
//! owner lets go, so the outcome does not depend on the order records
//! came in beyond who was first.
//!
//! What changed goes into a [`Touched`] set of map keys, which the sync
//! ([`super::sync::sync_touched`]) brings over to the maps.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use axoneme_bpf_common::lb::{
    backend_flags, svc_flags, AffinityMatchKey, LbBackend, LbKey, LbRevNat, LbService,
};
use axoneme_service::{Frontend, FrontendKind};

use super::table::{addr_bytes, proto_number, Ids, IdsExhausted, MaglevCache, Table};

/// A frontend as the maps key it: address, port, protocol.
type FrontendKey = (IpAddr, u16, u8);

/// Map keys a change touched: the sync compares only these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<LbKey>,
    pub backends: BTreeSet<u32>,
    pub revnat: BTreeSet<u32>,
    pub affinity: BTreeSet<AffinityMatchKey>,
    pub maglev: BTreeSet<u32>,
}

impl Touched {
    /// Every key either table holds: a full comparison.
    pub fn everything(have: &Table, want: &Table) -> Self {
        let mut t = Touched::default();
        for table in [have, want] {
            t.services.extend(table.services.keys());
            t.backends.extend(table.backends.keys());
            t.revnat.extend(table.revnat.keys());
            t.affinity.extend(table.affinity.iter());
            t.maglev.extend(table.maglev.keys());
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.backends.is_empty()
            && self.revnat.is_empty()
            && self.affinity.is_empty()
            && self.maglev.is_empty()
    }

    pub fn extend(&mut self, other: Touched) {
        self.services.extend(other.services);
        self.backends.extend(other.backends);
        self.revnat.extend(other.revnat);
        self.affinity.extend(other.affinity);
        self.maglev.extend(other.maglev);
    }
}

/// One record's entries (shared ones once per use).
#[derive(Debug, Default)]
struct Fragment {
    frontends: Vec<FrontendKey>,
    services: Vec<(LbKey, LbService)>,
    backends: Vec<(u32, LbBackend)>,
    revnat: Vec<(u32, LbRevNat)>,
    affinity: Vec<AffinityMatchKey>,
    maglev: Vec<(u32, Vec<u32>)>,
}

/// The desired table and what each record contributes to it.
#[derive(Debug)]
pub struct Desired {
    table: Table,
    ids: Ids,
    node: String,
    node_ips: Vec<IpAddr>,
    records: HashMap<String, Fragment>,
    backend_refs: HashMap<u32, u32>,
    revnat_refs: HashMap<u32, u32>,
    affinity_refs: HashMap<AffinityMatchKey, u32>,
    owners: HashMap<FrontendKey, String>,
    /// Records with a frontend another record owns.
    shadowed: BTreeSet<String>,
    /// Whether an update let go of a frontend since the last retry.
    released: bool,
}

/// A record's frontends another record owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    pub frontends: Vec<String>,
    pub owner: String,
}

impl Desired {
    /// Nothing desired yet, on node `node` whose addresses (for NodePort
    /// frontends, which stand for every address of the node) are
    /// `node_ips`; `ids` as a previous run left them ([`Ids::adopt`]).
    pub fn new(node: String, node_ips: Vec<IpAddr>, ids: Ids) -> Self {
        Desired {
            table: Table::default(),
            ids,
            node,
            node_ips,
            records: HashMap::new(),
            backend_refs: HashMap::new(),
            revnat_refs: HashMap::new(),
            affinity_refs: HashMap::new(),
            owners: HashMap::new(),
            shadowed: BTreeSet::new(),
            released: false,
        }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn into_ids(self) -> Ids {
        self.ids
    }

    /// Frees the ids nothing desired uses (those adopted from a previous
    /// run's maps that no record claimed): once every record is set.
    pub fn settle(&mut self) {
        self.ids.retain_used(&self.table);
    }

    /// Sets record `key`'s frontends (empty: the record is gone); the map
    /// keys whose desired content changed go into `touched`. On error
    /// (ids exhausted) the record keeps its previous entries.
    pub fn set(
        &mut self,
        key: &str,
        frontends: &[Frontend],
        touched: &mut Touched,
    ) -> Result<Option<Shadowed>, IdsExhausted> {
        let (new, shadowed) = match self.fragment(key, frontends) {
            Ok(f) => f,
            Err(e) => {
                self.release_unreferenced();
                return Err(e);
            }
        };
        let old = self.records.remove(key).unwrap_or_default();
        self.add(key, &new, touched);
        self.remove(&old, &new, touched);
        if shadowed.is_some() {
            self.shadowed.insert(key.to_string());
        } else {
            self.shadowed.remove(key);
        }
        if !new.frontends.is_empty() || shadowed.is_some() {
            self.records.insert(key.to_string(), new);
        }
        Ok(shadowed)
    }

    /// The shadowed records to set again because an owner let go of a
    /// frontend since the last call (none otherwise).
    pub fn retry_shadowed(&mut self) -> Vec<String> {
        if std::mem::take(&mut self.released) {
            self.shadowed.iter().cloned().collect()
        } else {
            Vec::new()
        }
    }

    /// Computes `key`'s entries (allocating ids) without changing the
    /// table.
    fn fragment(
        &mut self,
        key: &str,
        frontends: &[Frontend],
    ) -> Result<(Fragment, Option<Shadowed>), IdsExhausted> {
        let mut out = Fragment::default();
        let mut shadowed: Option<Shadowed> = None;
        let mut claimed = HashSet::new();
        let mut cache = MaglevCache::new();
        for f in frontends {
            let addrs: Vec<IpAddr> = if f.addr.is_unspecified() {
                self.node_ips
                    .iter()
                    .copied()
                    .filter(|ip| ip.is_ipv4() == f.addr.is_ipv4())
                    .collect()
            } else {
                vec![f.addr]
            };
            for addr in addrs {
                let fk = (addr, f.port, proto_number(f.protocol));
                match self.owners.get(&fk) {
                    Some(owner) if owner != key => {
                        let s = shadowed.get_or_insert_with(|| Shadowed {
                            frontends: Vec::new(),
                            owner: owner.clone(),
                        });
                        s.frontends.push(f.display_addr());
                        continue;
                    }
                    _ => {}
                }
                if claimed.insert(fk) {
                    self.frontend(f, fk, &mut out, &mut cache)?;
                }
            }
        }
        Ok((out, shadowed))
    }

    /// Frontend `f` at `fk`: its reverse-NAT entry, a slot per
    /// selectable backend, its Maglev row when external, its master.
    fn frontend(
        &mut self,
        f: &Frontend,
        fk: FrontendKey,
        out: &mut Fragment,
        cache: &mut MaglevCache,
    ) -> Result<(), IdsExhausted> {
        let (addr, port, proto) = fk;
        let (bytes, fam) = addr_bytes(addr);
        let rev_nat = self.ids.frontend(addr, port)?;
        out.frontends.push(fk);
        out.revnat.push((
            u32::from(rev_nat),
            LbRevNat {
                addr: bytes,
                port: port.to_be(),
                family: fam,
                pad: [0; 5],
            },
        ));
        let key = |slot: u16| LbKey {
            addr: bytes,
            port: port.to_be(),
            proto,
            family: fam,
            slot,
            pad: [0; 2],
        };
        let selectable = f.selectable(&self.node);
        let mut slot = 0u16;
        let mut slot_ids = Vec::with_capacity(selectable.len());
        for b in &selectable {
            if slot == u16::MAX {
                break;
            }
            let (baddr, bfam) = addr_bytes(b.addr);
            let id = self.ids.backend(b.addr, b.port)?;
            out.backends.push((
                id,
                LbBackend {
                    addr: baddr,
                    port: b.port.to_be(),
                    family: bfam,
                    flags: if b.node.as_deref() == Some(self.node.as_str()) {
                        backend_flags::LOCAL
                    } else {
                        0
                    },
                    pad: [0; 4],
                },
            ));
            slot += 1;
            slot_ids.push((*b, id));
            out.services.push((
                key(slot),
                LbService {
                    backend_id: id,
                    count: 0,
                    rev_nat,
                    affinity_timeout: 0,
                    flags: 0,
                    pad: [0; 3],
                },
            ));
            if f.affinity_timeout.is_some() {
                out.affinity.push(AffinityMatchKey {
                    backend_id: id,
                    rev_nat: u32::from(rev_nat),
                });
            }
        }
        let flags = master_flags(f);
        let row = if flags & svc_flags::EXTERNAL != 0 {
            self.ids.maglev_row(fk, &slot_ids, cache)
        } else {
            None
        };
        let row = row.map_or(0, |(row, entries)| {
            out.maglev.push((row, entries));
            row
        });
        out.services.push((
            key(0),
            LbService {
                backend_id: row,
                count: slot,
                rev_nat,
                affinity_timeout: f.affinity_timeout.unwrap_or(0),
                flags,
                pad: [0; 3],
            },
        ));
        Ok(())
    }

    /// Adds `new`'s entries (before the old ones are removed, so shared
    /// entries never drop to zero references in between and keep their
    /// ids).
    fn add(&mut self, key: &str, new: &Fragment, touched: &mut Touched) {
        for fk in &new.frontends {
            self.owners.insert(*fk, key.to_string());
        }
        for (k, v) in &new.services {
            if self.table.services.insert(*k, *v) != Some(*v) {
                touched.services.insert(*k);
            }
        }
        for (id, b) in &new.backends {
            *self.backend_refs.entry(*id).or_default() += 1;
            if self.table.backends.insert(*id, *b) != Some(*b) {
                touched.backends.insert(*id);
            }
        }
        for (id, r) in &new.revnat {
            *self.revnat_refs.entry(*id).or_default() += 1;
            if self.table.revnat.insert(*id, *r) != Some(*r) {
                touched.revnat.insert(*id);
            }
        }
        for a in &new.affinity {
            *self.affinity_refs.entry(*a).or_default() += 1;
            if self.table.affinity.insert(*a) {
                touched.affinity.insert(*a);
            }
        }
        for (row, entries) in &new.maglev {
            if self.table.maglev.get(row) != Some(entries) {
                self.table.maglev.insert(*row, entries.clone());
                touched.maglev.insert(*row);
            }
        }
    }

    /// Drops `old`'s entries that `new` no longer has, and one reference
    /// per use of the shared ones.
    fn remove(&mut self, old: &Fragment, new: &Fragment, touched: &mut Touched) {
        let kept: HashSet<&FrontendKey> = new.frontends.iter().collect();
        for fk in old.frontends.iter().filter(|fk| !kept.contains(fk)) {
            self.owners.remove(fk);
            self.released = true;
        }
        let kept: HashSet<&LbKey> = new.services.iter().map(|(k, _)| k).collect();
        for (k, _) in old.services.iter().filter(|(k, _)| !kept.contains(k)) {
            self.table.services.remove(k);
            touched.services.insert(*k);
        }
        for (id, _) in &old.backends {
            if release(&mut self.backend_refs, id) {
                self.table.backends.remove(id);
                self.ids.release_backend(*id);
                touched.backends.insert(*id);
            }
        }
        for (id, _) in &old.revnat {
            if release(&mut self.revnat_refs, id) {
                self.table.revnat.remove(id);
                self.ids.release_frontend(*id);
                touched.revnat.insert(*id);
            }
        }
        for a in &old.affinity {
            if release(&mut self.affinity_refs, a) {
                self.table.affinity.remove(a);
                touched.affinity.insert(*a);
            }
        }
        let kept: HashSet<u32> = new.maglev.iter().map(|(row, _)| *row).collect();
        for (row, _) in old.maglev.iter().filter(|(row, _)| !kept.contains(row)) {
            self.table.maglev.remove(row);
            self.ids.release_row(*row);
            touched.maglev.insert(*row);
        }
    }

    /// After a failed [`Self::fragment`]: frees the ids it gave out that
    /// nothing references.
    fn release_unreferenced(&mut self) {
        self.ids.retain_used(&self.table);
    }
}

/// Drops one reference; whether it was the last.
fn release<K: std::hash::Hash + Eq>(refs: &mut HashMap<K, u32>, key: &K) -> bool {
    match refs.get_mut(key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            refs.remove(key);
            true
        }
        None => false,
    }
}

/// What the per-packet LB on the node's device needs to know of a
/// frontend: whether it is reachable from outside the node, and whether
/// its traffic policy keeps the client's address.
fn master_flags(f: &Frontend) -> u8 {
    if f.kind == FrontendKind::ClusterIP {
        return 0;
    }
    svc_flags::EXTERNAL
        | if f.local_only {
            svc_flags::LOCAL_ONLY
        } else {
            0
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::sync::{sync_touched, FakeLb};
    use crate::services::table::{build, Maglev};
    use axoneme_service::{Backend, BackendState, Protocol};
    use proptest::prelude::*;

    const NODE_IPS: [&str; 2] = ["192.168.7.1", "fd07::1"];

    fn desired() -> Desired {
        let ips = NODE_IPS.iter().map(|a| a.parse().unwrap()).collect();
        Desired::new(
            "a".into(),
            ips,
            Ids::new().with_maglev(Maglev { m: 7, seed: 3 }),
        )
    }

    fn frontend(addr: &str, port: u16, backends: &[(u8, BackendState)]) -> Frontend {
        Frontend {
            service: "default/s".into(),
            port_name: String::new(),
            kind: FrontendKind::ClusterIP,
            addr: addr.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            backends: backends
                .iter()
                .map(|(b, state)| Backend {
                    addr: IpAddr::from([10, 200, 0, *b]),
                    port: 8080,
                    node: Some(if b % 2 == 0 { "a" } else { "b" }.into()),
                    state: *state,
                })
                .collect(),
            affinity_timeout: None,
            local_only: false,
        }
    }

    /// A generated frontend: VIP index, NodePort?, affinity?, backends
    /// (pool index, state index).
    type Spec = (u8, bool, bool, Vec<(u8, u8)>);

    /// Record `r`'s frontends from generated choices: ClusterIPs of its
    /// own (no two records share a frontend), NodePorts of its own port,
    /// backends from a pool every record draws from (shared backends).
    fn record(r: usize, spec: &[Spec]) -> Vec<Frontend> {
        spec.iter()
            .map(|(vip, nodeport, affinity, backends)| {
                let states = [
                    BackendState::Active,
                    BackendState::Active,
                    BackendState::Terminating,
                    BackendState::NotReady,
                ];
                let mut backends: Vec<(u8, BackendState)> = backends
                    .iter()
                    .map(|(b, s)| (*b, states[usize::from(*s)]))
                    .collect();
                backends.sort_by_key(|b| b.0);
                backends.dedup_by_key(|b| b.0);
                let mut f = frontend(&format!("10.96.{r}.{vip}"), 80, &backends);
                if *nodeport {
                    f.kind = FrontendKind::NodePort;
                    f.addr = "0.0.0.0".parse().unwrap();
                    f.port = 30000 + u16::try_from(r).unwrap() * 10 + u16::from(*vip);
                }
                f.affinity_timeout = affinity.then_some(30);
                f
            })
            .collect()
    }

    /// Applies what the unit applies for one changed record.
    fn apply(
        d: &mut Desired,
        key: &str,
        fs: &[Frontend],
        all: &BTreeMap<String, Vec<Frontend>>,
    ) -> Touched {
        let mut touched = Touched::default();
        d.set(key, fs, &mut touched).unwrap();
        for k in d.retry_shadowed() {
            d.set(&k, all.get(&k).map_or(&[][..], Vec::as_slice), &mut touched)
                .unwrap();
        }
        touched
    }

    use std::collections::BTreeMap;

    /// What the fake maps hold, without the Maglev rows no master names
    /// (an array keeps a row's entries when its frontend goes).
    fn programmed(lb: &FakeLb) -> Table {
        let mut t = lb.maps.clone();
        t.maglev.retain(|row, _| {
            t.services
                .iter()
                .any(|(k, m)| k.slot == 0 && m.backend_id == *row)
        });
        t
    }

    proptest! {
        /// Record by record, the desired table is what a whole build of
        /// the same frontends gives, and syncing only the touched keys
        /// leaves the maps holding exactly it, usable at every step.
        #[test]
        fn per_record_updates_equal_a_whole_build(
            ops in prop::collection::vec(
                (0usize..4, prop::collection::vec(
                    (0u8..3, any::<bool>(), any::<bool>(),
                     prop::collection::vec((0u8..6, 0u8..4), 0..4)),
                    0..3)),
                1..24)
        ) {
            let mut d = desired();
            let mut lb = FakeLb::default();
            let mut have = Table::default();
            let mut all: BTreeMap<String, Vec<Frontend>> = BTreeMap::new();
            for (r, spec) in ops {
                let key = format!("r{r}");
                let fs = record(r, &spec);
                all.insert(key.clone(), fs.clone());
                let touched = apply(&mut d, &key, &fs, &all);
                sync_touched(&mut lb, &mut have, d.table(), &touched).unwrap();
                prop_assert_eq!(&have, d.table());
                prop_assert_eq!(&programmed(&lb), d.table());
                prop_assert!(lb.consistent());
                let mut ids = d.ids.clone();
                let whole = build(all.values().flatten(), "a", &d.node_ips, &mut ids).unwrap();
                prop_assert_eq!(&whole, d.table());
            }
            // Every record gone: nothing left, no id held.
            for key in all.keys() {
                let touched = apply(&mut d, key, &[], &all);
                sync_touched(&mut lb, &mut have, d.table(), &touched).unwrap();
            }
            prop_assert_eq!(&programmed(&lb), &Table::default());
            prop_assert_eq!(d.ids.in_use(), 0);
            prop_assert!(d.backend_refs.is_empty() && d.revnat_refs.is_empty());
            prop_assert!(d.owners.is_empty() && d.records.is_empty());
        }
    }

    #[test]
    fn a_frontend_has_one_owner_and_passes_on_when_it_leaves() {
        let mut d = desired();
        let one = vec![frontend("10.96.0.10", 80, &[(1, BackendState::Active)])];
        let two = vec![frontend("10.96.0.10", 80, &[(2, BackendState::Active)])];
        let mut t = Touched::default();
        assert_eq!(d.set("one", &one, &mut t).unwrap(), None);
        let s = d.set("two", &two, &mut t).unwrap().expect("shadowed");
        assert_eq!(s.owner, "one");
        assert_eq!(s.frontends, ["10.96.0.10:80/TCP"]);
        assert_eq!(
            d.table(),
            &build(&one, "a", &d.node_ips.clone(), &mut d.ids.clone()).unwrap()
        );
        assert!(d.retry_shadowed().is_empty(), "nothing was let go");
        d.set("one", &[], &mut t).unwrap();
        assert_eq!(d.retry_shadowed(), ["two"]);
        assert_eq!(d.set("two", &two, &mut t).unwrap(), None);
        assert_eq!(
            d.table(),
            &build(&two, "a", &d.node_ips.clone(), &mut d.ids.clone()).unwrap()
        );
    }

    #[test]
    fn a_change_touches_only_its_own_keys() {
        let mut d = desired();
        let mut t = Touched::default();
        for i in 0..100u8 {
            let f = frontend(
                &format!("10.96.1.{i}"),
                80,
                &[(i % 6, BackendState::Active)],
            );
            d.set(&format!("r{i}"), &[f], &mut t).unwrap();
        }
        // A backend added to one Service: its new slot, its master, the
        // new backend; the backend it already had and shares is untouched.
        let f = frontend(
            "10.96.1.7",
            80,
            &[(1, BackendState::Active), (200, BackendState::Active)],
        );
        let mut t = Touched::default();
        d.set("r7", &[f], &mut t).unwrap();
        assert_eq!(
            (t.services.len(), t.backends.len(), t.revnat.len()),
            (2, 1, 0)
        );
    }
}
