//! Brings the LB maps from what they hold to a [`Table`], in an order
//! every reader can live with (see `bpf/common/src/lb.rs`): backends,
//! reverse-NAT and affinity entries first, then backend slots, then the
//! masters; then what is no longer wanted, masters before their slots, and
//! backends last. A connect racing a pass therefore always finds a master
//! whose slots exist and name backends that exist: removing a backend never
//! blackholes a service that still has another.
//!
//! The device's egress program, which gives the replies of this node's
//! backends of external frontends their frontend back, is attached only
//! while such a frontend exists ([`LbWriter::device_egress`]): before the
//! first master of one is written, so no reply of its flows can leave
//! untranslated, and removed after the last one goes. Every other packet
//! leaving the node then crosses no program there.
//!
//! [`LbWriter`] is the seam: [`FakeLb`] holds the maps in memory and logs
//! every operation, for the ordering tests.

use axoneme_bpf_common::lb::{AffinityMatchKey, LbBackend, LbKey, LbRevNat, LbService};

use super::desired::Touched;
use super::table::Table;
use crate::datapath::DatapathError;

/// The LB maps, as the services unit (their one writer) sees them.
pub trait LbWriter {
    /// Everything the maps hold (after a restart: the previous run's).
    fn read(&self) -> Result<Table, DatapathError>;
    fn set_service(&mut self, key: &LbKey, value: &LbService) -> Result<(), DatapathError>;
    fn remove_service(&mut self, key: &LbKey) -> Result<(), DatapathError>;
    fn set_backend(&mut self, id: u32, value: &LbBackend) -> Result<(), DatapathError>;
    fn remove_backend(&mut self, id: u32) -> Result<(), DatapathError>;
    fn set_revnat(&mut self, id: u32, value: &LbRevNat) -> Result<(), DatapathError>;
    fn remove_revnat(&mut self, id: u32) -> Result<(), DatapathError>;
    fn set_affinity(&mut self, key: &AffinityMatchKey) -> Result<(), DatapathError>;
    fn remove_affinity(&mut self, key: &AffinityMatchKey) -> Result<(), DatapathError>;
    /// Attaches (`on`) or removes the device's egress program; nothing if
    /// it is so already (or the writer does not own it: the host firewall
    /// keeps it attached).
    fn device_egress(&mut self, on: bool) -> Result<(), DatapathError>;
    /// Entry `i` of Maglev row `row` (rows of `m` entries).
    fn set_maglev(
        &mut self,
        row: u32,
        m: u32,
        i: u32,
        backend_id: u32,
    ) -> Result<(), DatapathError>;
}

/// How many map operations a pass made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub written: usize,
    pub removed: usize,
}

/// Applies `want` over `have` (what the maps hold; updated as operations
/// succeed, so a failed pass leaves it true and the next one resumes),
/// comparing every key.
pub fn sync<W: LbWriter>(
    w: &mut W,
    have: &mut Table,
    want: &Table,
) -> Result<Changes, DatapathError> {
    let everything = Touched::everything(have, want);
    sync_touched(w, have, want, &everything)
}

/// [`sync`] over the keys in `touched` only (the rest is taken to be
/// equal already).
pub fn sync_touched<W: LbWriter>(
    w: &mut W,
    have: &mut Table,
    want: &Table,
    touched: &Touched,
) -> Result<Changes, DatapathError> {
    let mut c = Changes::default();
    // Only a pass that touches masters can change whether one is external.
    let external = (!touched.services.is_empty()).then(|| want.external());
    if external == Some(true) {
        w.device_egress(true)?;
    }
    for id in &touched.backends {
        if let Some(b) = want.backends.get(id) {
            if have.backends.get(id) != Some(b) {
                w.set_backend(*id, b)?;
                have.backends.insert(*id, *b);
                c.written += 1;
            }
        }
    }
    for id in &touched.revnat {
        if let Some(r) = want.revnat.get(id) {
            if have.revnat.get(id) != Some(r) {
                w.set_revnat(*id, r)?;
                have.revnat.insert(*id, *r);
                c.written += 1;
            }
        }
    }
    // Maglev rows before the masters that name them; only the entries
    // that changed (a backend's coming or going moves few). A row no
    // longer named is left as it is (arrays keep their entries).
    for row in &touched.maglev {
        let Some(entries) = want.maglev.get(row) else {
            have.maglev.remove(row);
            continue;
        };
        let m = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        // (Backend ids are never 0: a fresh row is all "unwritten".)
        let held = have.maglev.entry(*row).or_default();
        held.resize(entries.len(), 0);
        for ((i, id), h) in (0u32..).zip(entries).zip(held.iter_mut()) {
            if h != id {
                w.set_maglev(*row, m, i, *id)?;
                *h = *id;
                c.written += 1;
            }
        }
    }
    for k in &touched.affinity {
        if want.affinity.contains(k) && !have.affinity.contains(k) {
            w.set_affinity(k)?;
            have.affinity.insert(*k);
            c.written += 1;
        }
    }
    // Slots before masters.
    for masters in [false, true] {
        for k in touched.services.iter().filter(|k| (k.slot == 0) == masters) {
            if let Some(v) = want.services.get(k) {
                if have.services.get(k) != Some(v) {
                    w.set_service(k, v)?;
                    have.services.insert(*k, *v);
                    c.written += 1;
                }
            }
        }
    }
    // Then removals: masters before slots, backends last.
    for masters in [true, false] {
        for k in touched.services.iter().filter(|k| (k.slot == 0) == masters) {
            if !want.services.contains_key(k) && have.services.contains_key(k) {
                w.remove_service(k)?;
                have.services.remove(k);
                c.removed += 1;
            }
        }
    }
    for k in &touched.affinity {
        if !want.affinity.contains(k) && have.affinity.contains(k) {
            w.remove_affinity(k)?;
            have.affinity.remove(k);
            c.removed += 1;
        }
    }
    for id in &touched.revnat {
        if !want.revnat.contains_key(id) && have.revnat.contains_key(id) {
            w.remove_revnat(*id)?;
            have.revnat.remove(id);
            c.removed += 1;
        }
    }
    for id in &touched.backends {
        if !want.backends.contains_key(id) && have.backends.contains_key(id) {
            w.remove_backend(*id)?;
            have.backends.remove(id);
            c.removed += 1;
        }
    }
    if external == Some(false) {
        w.device_egress(false)?;
    }
    Ok(c)
}

/// In-memory LB maps that log every operation (and can be told to fail).
#[derive(Debug, Default)]
pub struct FakeLb {
    pub maps: Table,
    /// Whether the device's egress program is attached.
    pub egress: bool,
    pub log: Vec<String>,
    /// Fail the n-th operation from now (1 = the next).
    pub fail_at: Option<usize>,
}

impl FakeLb {
    fn op(&mut self, what: String) -> Result<(), DatapathError> {
        if let Some(n) = self.fail_at.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.fail_at = None;
                return Err(DatapathError::MapNotFound { name: "fake" });
            }
        }
        self.log.push(what);
        Ok(())
    }

    /// Whether every master's slots exist and name existing backends: what
    /// a connect at this moment relies on; and the device's egress program
    /// is attached while an external master is there (its replies).
    pub fn consistent(&self) -> bool {
        (self.egress || !self.maps.external())
            && self
                .maps
                .services
                .iter()
                .filter(|(k, _)| k.slot == 0)
                .all(|(k, m)| {
                    let row_usable = m.backend_id == 0
                        || self.maps.maglev.get(&m.backend_id).is_some_and(|row| {
                            !row.is_empty()
                                && row.iter().all(|id| self.maps.backends.contains_key(id))
                        });
                    row_usable
                        && (1..=m.count).all(|slot| {
                            self.maps
                                .services
                                .get(&LbKey { slot, ..*k })
                                .is_some_and(|s| self.maps.backends.contains_key(&s.backend_id))
                        })
                })
    }
}

impl LbWriter for FakeLb {
    fn read(&self) -> Result<Table, DatapathError> {
        Ok(self.maps.clone())
    }
    fn device_egress(&mut self, on: bool) -> Result<(), DatapathError> {
        if self.egress != on {
            self.op(format!("egress {}", if on { "on" } else { "off" }))?;
            self.egress = on;
        }
        Ok(())
    }
    fn set_maglev(
        &mut self,
        row: u32,
        m: u32,
        i: u32,
        backend_id: u32,
    ) -> Result<(), DatapathError> {
        self.op(format!("set maglev {row}[{i}]"))?;
        let entries = self.maps.maglev.entry(row).or_default();
        entries.resize(m as usize, 0);
        entries[i as usize] = backend_id;
        Ok(())
    }
    fn set_service(&mut self, key: &LbKey, value: &LbService) -> Result<(), DatapathError> {
        self.op(format!("set {} slot {}", key.port.swap_bytes(), key.slot))?;
        self.maps.services.insert(*key, *value);
        Ok(())
    }
    fn remove_service(&mut self, key: &LbKey) -> Result<(), DatapathError> {
        self.op(format!(
            "remove {} slot {}",
            key.port.swap_bytes(),
            key.slot
        ))?;
        self.maps.services.remove(key);
        Ok(())
    }
    fn set_backend(&mut self, id: u32, value: &LbBackend) -> Result<(), DatapathError> {
        self.op(format!("set backend {id}"))?;
        self.maps.backends.insert(id, *value);
        Ok(())
    }
    fn remove_backend(&mut self, id: u32) -> Result<(), DatapathError> {
        self.op(format!("remove backend {id}"))?;
        self.maps.backends.remove(&id);
        Ok(())
    }
    fn set_revnat(&mut self, id: u32, value: &LbRevNat) -> Result<(), DatapathError> {
        self.op(format!("set revnat {id}"))?;
        self.maps.revnat.insert(id, *value);
        Ok(())
    }
    fn remove_revnat(&mut self, id: u32) -> Result<(), DatapathError> {
        self.op(format!("remove revnat {id}"))?;
        self.maps.revnat.remove(&id);
        Ok(())
    }
    fn set_affinity(&mut self, key: &AffinityMatchKey) -> Result<(), DatapathError> {
        self.op(format!("set affinity {}/{}", key.backend_id, key.rev_nat))?;
        self.maps.affinity.insert(*key);
        Ok(())
    }
    fn remove_affinity(&mut self, key: &AffinityMatchKey) -> Result<(), DatapathError> {
        self.op(format!(
            "remove affinity {}/{}",
            key.backend_id, key.rev_nat
        ))?;
        self.maps.affinity.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::table::{build, Ids};
    use axoneme_service::{Backend, BackendState, Frontend, FrontendKind, Protocol};

    fn frontend(backends: &[&str]) -> Frontend {
        Frontend {
            service: "default/payments".into(),
            port_name: String::new(),
            kind: FrontendKind::ClusterIP,
            addr: "10.96.0.10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            backends: backends
                .iter()
                .map(|a| Backend {
                    addr: a.parse().unwrap(),
                    port: 8080,
                    node: None,
                    state: BackendState::Active,
                })
                .collect(),
            affinity_timeout: None,
            local_only: false,
        }
    }

    /// Applies `want` one operation at a time, checking after each that a
    /// connect would find a usable backend whenever the master counts any.
    fn step_through(lb: &mut FakeLb, have: &mut Table, want: &Table) {
        loop {
            lb.fail_at = Some(2);
            let r = sync(lb, have, want);
            assert!(lb.consistent(), "inconsistent after {:?}", lb.log.last());
            if r.is_ok() {
                lb.fail_at = None;
                return;
            }
        }
    }

    #[test]
    fn every_intermediate_state_is_usable() {
        let mut ids = Ids::default();
        let mut lb = FakeLb::default();
        let mut have = Table::default();
        for backends in [
            &["10.200.0.1", "10.200.0.2", "10.200.0.3"][..],
            &["10.200.0.2"],
            &["10.200.0.4", "10.200.0.5", "10.200.0.2", "10.200.0.6"],
            &[],
            &["10.200.0.7"],
        ] {
            let want = build(&[frontend(backends)], "a", &[], &mut ids).unwrap();
            step_through(&mut lb, &mut have, &want);
            assert_eq!(lb.maps, want);
            assert_eq!(have, want);
        }
        let want = build(&[] as &[Frontend], "a", &[], &mut ids).unwrap();
        step_through(&mut lb, &mut have, &want);
        assert_eq!(lb.maps, Table::default());
    }

    #[test]
    fn maglev_rows_are_whole_before_their_master_names_them() {
        let mut ids = Ids::default().with_maglev(crate::services::table::Maglev { m: 7, seed: 1 });
        let mut lb = FakeLb::default();
        let mut have = Table::default();
        let node_ip = ["192.168.7.1".parse().unwrap()];
        for backends in [
            &["10.200.0.1", "10.200.0.2", "10.200.0.3"][..],
            &["10.200.0.2"],
            &["10.200.0.4", "10.200.0.2"],
            &[],
            &["10.200.0.7"],
        ] {
            let mut f = frontend(backends);
            f.kind = FrontendKind::NodePort;
            f.addr = "0.0.0.0".parse().unwrap();
            let want = build(&[f], "a", &node_ip, &mut ids).unwrap();
            assert_eq!(want.maglev.len(), usize::from(!backends.is_empty()));
            step_through(&mut lb, &mut have, &want);
            assert_eq!(have, want);
            for (row, entries) in &want.maglev {
                assert_eq!(entries.len(), 7);
                assert_eq!(&lb.maps.maglev[row], entries);
            }
        }
    }

    #[test]
    fn growing_writes_slots_before_the_master_and_shrinking_after() {
        let mut ids = Ids::default();
        let mut lb = FakeLb::default();
        let mut have = Table::default();
        let want = build(
            &[frontend(&["10.200.0.1", "10.200.0.2"])],
            "a",
            &[],
            &mut ids,
        )
        .unwrap();
        sync(&mut lb, &mut have, &want).unwrap();
        assert_eq!(
            lb.log,
            [
                "set backend 1",
                "set backend 2",
                "set revnat 1",
                "set 80 slot 1",
                "set 80 slot 2",
                "set 80 slot 0"
            ]
        );
        lb.log.clear();
        let want = build(&[frontend(&["10.200.0.2"])], "a", &[], &mut ids).unwrap();
        let c = sync(&mut lb, &mut have, &want).unwrap();
        assert_eq!(
            lb.log,
            [
                "set 80 slot 1",
                "set 80 slot 0",
                "remove 80 slot 2",
                "remove backend 1"
            ]
        );
        assert_eq!(
            c,
            Changes {
                written: 2,
                removed: 2
            }
        );
        // Nothing changed: nothing written.
        lb.log.clear();
        assert_eq!(sync(&mut lb, &mut have, &want).unwrap(), Changes::default());
        assert!(lb.log.is_empty());
    }

    #[test]
    fn the_device_egress_program_comes_before_external_frontends_and_goes_after_them() {
        let mut ids = Ids::default();
        let mut lb = FakeLb::default();
        let mut have = Table::default();
        let node_ip = ["192.168.7.1".parse().unwrap()];
        let internal = frontend(&["10.200.0.1"]);
        let nodeport = || Frontend {
            kind: FrontendKind::NodePort,
            addr: "0.0.0.0".parse().unwrap(),
            port: 30080,
            ..frontend(&["10.200.0.1"])
        };
        let position = |log: &[String], what: &str| log.iter().position(|l| l.starts_with(what));
        // A ClusterIP frontend alone: no program on the device.
        let want = build(std::slice::from_ref(&internal), "a", &node_ip, &mut ids).unwrap();
        sync(&mut lb, &mut have, &want).unwrap();
        assert_eq!(position(&lb.log, "egress"), None, "{:?}", lb.log);
        // A NodePort beside it: attached before its first entry.
        lb.log.clear();
        let want = build(&[internal.clone(), nodeport()], "a", &node_ip, &mut ids).unwrap();
        sync(&mut lb, &mut have, &want).unwrap();
        assert_eq!(position(&lb.log, "egress on"), Some(0), "{:?}", lb.log);
        assert!(
            position(&lb.log, "set 30080 slot 0").is_some(),
            "{:?}",
            lb.log
        );
        assert!(lb.egress);
        // A pass touching only the ClusterIP frontend keeps it.
        lb.log.clear();
        let mut moved = internal.clone();
        moved.backends[0].port = 8081;
        let want = build(&[moved, nodeport()], "a", &node_ip, &mut ids).unwrap();
        sync(&mut lb, &mut have, &want).unwrap();
        assert_eq!(position(&lb.log, "egress"), None, "{:?}", lb.log);
        // The NodePort gone: removed after its entries.
        lb.log.clear();
        let want = build(&[internal], "a", &node_ip, &mut ids).unwrap();
        sync(&mut lb, &mut have, &want).unwrap();
        assert_eq!(
            lb.log.last().map(String::as_str),
            Some("egress off"),
            "{:?}",
            lb.log
        );
        assert!(
            position(&lb.log, "remove 30080 slot 0").is_some(),
            "{:?}",
            lb.log
        );
        assert!(!lb.egress);
    }
}
