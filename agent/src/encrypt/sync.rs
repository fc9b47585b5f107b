//! The encryption sync unit: brings the kernel (XFRM over netlink, the
//! datapath's `ENCRYPT` and `ENCRYPT_NODES` maps) to [`Desired`], through
//! two seams with in-memory fakes, so its ordering is unit-tested.
//!
//! Order (nothing in clear that should not be, nothing lost):
//! 1. peers' decrypt indices (`ENCRYPT_NODES`), so their ESP finds its
//!    inbound state as soon as it exists;
//! 2. new states (inbound and outbound), then policies (replaced in place:
//!    no moment without one);
//! 3. `ENCRYPT`: which SPI each peer's pods are sent with: only once the
//!    states and policies for it are there;
//! 4. then what is no longer wanted, in reverse: prefixes, policies,
//!    states, indices.
//!
//! A state the kernel holds under a wanted identity but with another key
//! (a peer's boot id changed: per pair keys change) is replaced; one with
//! the wanted key is kept (an agent restart changes nothing). Every step
//! is tried; failures are counted and returned.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use axoneme_bpf_common::EncryptValue;
use axoneme_ipsec::xfrm::{
    ListedState, Mode, PolicyId, PolicySpec, StateId, StateSpec, Xfrm, XfrmError,
};
use ipnet::IpNet;

use super::desired::{Desired, WantState, REQID};
use crate::datapath::DatapathError;

/// XFRM as the unit uses it.
pub trait XfrmOps {
    fn states(&mut self) -> Result<Vec<ListedState>, XfrmError>;
    fn policies(&mut self) -> Result<Vec<PolicyId>, XfrmError>;
    fn add_state(&mut self, s: &StateSpec<'_>) -> Result<(), XfrmError>;
    fn delete_state(&mut self, id: &StateId) -> Result<(), XfrmError>;
    fn upsert_policy(&mut self, p: &PolicySpec) -> Result<(), XfrmError>;
    fn delete_policy(&mut self, id: &PolicyId) -> Result<(), XfrmError>;
}

impl XfrmOps for Xfrm {
    fn states(&mut self) -> Result<Vec<ListedState>, XfrmError> {
        Xfrm::states(self)
    }
    fn policies(&mut self) -> Result<Vec<PolicyId>, XfrmError> {
        Xfrm::policies(self)
    }
    fn add_state(&mut self, s: &StateSpec<'_>) -> Result<(), XfrmError> {
        Xfrm::add_state(self, s)
    }
    fn delete_state(&mut self, id: &StateId) -> Result<(), XfrmError> {
        Xfrm::delete_state(self, id.dst, id.spi, id.mark)
    }
    fn upsert_policy(&mut self, p: &PolicySpec) -> Result<(), XfrmError> {
        Xfrm::upsert_policy(self, p)
    }
    fn delete_policy(&mut self, id: &PolicyId) -> Result<(), XfrmError> {
        Xfrm::delete_policy(self, id.src, id.dst, id.dir, id.mark)
    }
}

/// The datapath's encryption maps as the unit uses them.
pub trait EncryptWriter {
    fn prefixes(&self) -> Result<BTreeMap<IpNet, EncryptValue>, DatapathError>;
    fn nodes(&self) -> Result<BTreeMap<IpAddr, u16>, DatapathError>;
    fn set_prefix(&mut self, net: IpNet, value: EncryptValue) -> Result<(), DatapathError>;
    fn remove_prefix(&mut self, net: IpNet) -> Result<(), DatapathError>;
    fn set_node(&mut self, addr: IpAddr, index: u16) -> Result<(), DatapathError>;
    fn remove_node(&mut self, addr: IpAddr) -> Result<(), DatapathError>;
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub states_in: usize,
    pub states_out: usize,
    pub policies: usize,
    /// The keys (their SPIs) of inbound states the kernel refused: this
    /// node does not accept them, and says so (not announced).
    pub refused: BTreeSet<u8>,
    pub errors: Vec<String>,
}

/// One pass towards `want`. Nothing is kept between passes: the kernel's
/// listing, keys included, is the truth.
pub fn sync(x: &mut impl XfrmOps, maps: &mut impl EncryptWriter, want: &Desired) -> Pass {
    let mut errors = Vec::new();
    let mut fail = |e: String| errors.push(e);
    let have_states: BTreeMap<StateId, Vec<u8>> = match x.states() {
        Ok(s) => s
            .into_iter()
            .filter(|s| s.id.reqid == REQID)
            .map(|s| (s.id, s.key))
            .collect(),
        Err(e) => {
            fail(crate::error_chain(&e));
            return Pass {
                errors,
                ..Pass::default()
            };
        }
    };
    let have_policies: BTreeSet<PolicyId> = match x.policies() {
        Ok(p) => p.into_iter().filter(|p| p.reqid == REQID).collect(),
        Err(e) => {
            fail(crate::error_chain(&e));
            BTreeSet::new()
        }
    };
    let have_prefixes = maps.prefixes().unwrap_or_else(|e| {
        fail(e.to_string());
        BTreeMap::new()
    });
    let have_nodes = maps.nodes().unwrap_or_else(|e| {
        fail(e.to_string());
        BTreeMap::new()
    });

    // 1. Indices.
    for (addr, index) in &want.nodes {
        if have_nodes.get(addr) != Some(index) {
            if let Err(e) = maps.set_node(*addr, *index) {
                fail(e.to_string());
            }
        }
    }
    // 2. States (those with another key out first: a marked state of
    // an SPI cannot be added beside an unmarked one), then policies.
    let stale: Vec<&WantState> = want
        .states
        .iter()
        .filter(|s| have_states.get(&s.id()).is_some_and(|k| *k != s.key.key))
        .collect();
    for s in &stale {
        if let Err(e) = x.delete_state(&s.id()) {
            fail(crate::error_chain(&e));
        }
    }
    // What the kernel holds after the pass, for the status: a state or
    // policy it refused is not counted.
    let (mut states_in, mut states_out, mut policies) = (0, 0, 0);
    let mut refused = BTreeSet::new();
    for s in &want.states {
        let current = have_states.get(&s.id()) == Some(&s.key.key);
        let held = current
            || x.add_state(&spec(s))
                .map_err(|e| fail(crate::error_chain(&e)))
                .is_ok();
        match (held, s.outbound) {
            (true, true) => states_out += 1,
            (true, false) => states_in += 1,
            (false, false) => {
                refused.insert(s.key.spi);
            }
            (false, true) => {}
        }
    }
    for p in &want.policies {
        let spec = PolicySpec {
            src: p.src,
            dst: p.dst,
            dir: p.dir,
            tmpl_src: p.tmpl_src,
            tmpl_dst: p.tmpl_dst,
            reqid: REQID,
            mode: Mode::Tunnel,
            mark: p.mark,
            optional: p.optional,
            priority: p.priority,
        };
        match x.upsert_policy(&spec) {
            Ok(()) => policies += 1,
            Err(e) => fail(crate::error_chain(&e)),
        }
    }
    // 3. What each peer's pods are sent with.
    for (net, value) in &want.prefixes {
        if have_prefixes.get(net) != Some(value) {
            if let Err(e) = maps.set_prefix(*net, *value) {
                fail(e.to_string());
            }
        }
    }
    // 4. The rest, in reverse.
    for net in have_prefixes.keys() {
        if !want.prefixes.contains_key(net) {
            if let Err(e) = maps.remove_prefix(*net) {
                fail(e.to_string());
            }
        }
    }
    let wanted_policies: BTreeSet<PolicyId> = want.policies.iter().map(|p| p.id()).collect();
    for id in have_policies.difference(&wanted_policies) {
        if let Err(e) = x.delete_policy(id) {
            fail(crate::error_chain(&e));
        }
    }
    let wanted_states: BTreeSet<StateId> = want.states.iter().map(WantState::id).collect();
    for id in have_states.keys().filter(|id| !wanted_states.contains(*id)) {
        if let Err(e) = x.delete_state(id) {
            fail(crate::error_chain(&e));
        }
    }
    for addr in have_nodes.keys() {
        if !want.nodes.contains_key(addr) {
            if let Err(e) = maps.remove_node(*addr) {
                fail(e.to_string());
            }
        }
    }
    Pass {
        states_in,
        states_out,
        policies,
        refused,
        errors,
    }
}

fn spec(s: &WantState) -> StateSpec<'_> {
    StateSpec {
        src: s.src,
        dst: s.dst,
        spi: s.spi,
        reqid: REQID,
        key: &s.key,
        mode: Mode::Tunnel,
        mark: s.mark,
    }
}

/// In-memory fakes of both seams, recording the order of their writes.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The writes of both fakes, in order.
    pub type Log = Arc<Mutex<Vec<String>>>;

    #[derive(Default)]
    pub struct FakeXfrm {
        pub states: BTreeMap<StateId, Vec<u8>>,
        pub policies: BTreeMap<PolicyId, bool>,
        pub log: Log,
        /// Refuse every state, as a kernel without ESP does.
        pub no_esp: bool,
    }

    impl XfrmOps for FakeXfrm {
        fn states(&mut self) -> Result<Vec<ListedState>, XfrmError> {
            Ok(self
                .states
                .iter()
                .map(|(id, key)| ListedState {
                    id: id.clone(),
                    key: key.clone(),
                })
                .collect())
        }
        fn policies(&mut self) -> Result<Vec<PolicyId>, XfrmError> {
            Ok(self.policies.keys().cloned().collect())
        }
        fn add_state(&mut self, s: &StateSpec<'_>) -> Result<(), XfrmError> {
            let id = StateId {
                src: s.src,
                dst: s.dst,
                spi: s.spi,
                reqid: s.reqid,
                mark: s.mark,
            };
            if self.states.contains_key(&id) || self.no_esp {
                return Err(XfrmError::Request {
                    what: format!("adding the XFRM state {} -> {}", s.src, s.dst),
                    // EEXIST; ENOPROTOOPT for a kernel without ESP.
                    source: std::io::Error::from_raw_os_error(if self.no_esp { 92 } else { 17 }),
                });
            }
            self.log
                .lock()
                .unwrap()
                .push(format!("add state {} -> {} spi {}", s.src, s.dst, s.spi));
            self.states.insert(id, s.key.key.clone());
            Ok(())
        }
        fn delete_state(&mut self, id: &StateId) -> Result<(), XfrmError> {
            self.log.lock().unwrap().push(format!(
                "delete state {} -> {} spi {}",
                id.src, id.dst, id.spi
            ));
            self.states.remove(id);
            Ok(())
        }
        fn upsert_policy(&mut self, p: &PolicySpec) -> Result<(), XfrmError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("policy {} -> {} {:?}", p.src, p.dst, p.dir));
            let id = PolicyId {
                src: p.src,
                dst: p.dst,
                dir: p.dir,
                mark: p.mark,
                reqid: p.reqid,
            };
            self.policies.insert(id, p.optional);
            Ok(())
        }
        fn delete_policy(&mut self, id: &PolicyId) -> Result<(), XfrmError> {
            self.log.lock().unwrap().push(format!(
                "delete policy {} -> {} {:?}",
                id.src, id.dst, id.dir
            ));
            self.policies.remove(id);
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct FakeMaps {
        pub prefixes: BTreeMap<IpNet, EncryptValue>,
        pub nodes: BTreeMap<IpAddr, u16>,
        pub log: Log,
    }

    impl EncryptWriter for FakeMaps {
        fn prefixes(&self) -> Result<BTreeMap<IpNet, EncryptValue>, DatapathError> {
            Ok(self.prefixes.clone())
        }
        fn nodes(&self) -> Result<BTreeMap<IpAddr, u16>, DatapathError> {
            Ok(self.nodes.clone())
        }
        fn set_prefix(&mut self, net: IpNet, value: EncryptValue) -> Result<(), DatapathError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("prefix {net} spi {}", value.spi));
            self.prefixes.insert(net, value);
            Ok(())
        }
        fn remove_prefix(&mut self, net: IpNet) -> Result<(), DatapathError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("remove prefix {net}"));
            self.prefixes.remove(&net);
            Ok(())
        }
        fn set_node(&mut self, addr: IpAddr, index: u16) -> Result<(), DatapathError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("node {addr} index {index}"));
            self.nodes.insert(addr, index);
            Ok(())
        }
        fn remove_node(&mut self, addr: IpAddr) -> Result<(), DatapathError> {
            self.log.lock().unwrap().push(format!("remove node {addr}"));
            self.nodes.remove(&addr);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeMaps, FakeXfrm, Log};
    use super::*;
    use crate::encrypt::desired::{desired, Me};
    use axoneme_identity::{NodeEncryption, NodeRecord};
    use axoneme_ipsec::keys::parse;

    fn peer(spis: &[u8], boot: &str) -> NodeRecord {
        NodeRecord {
            name: "b".into(),
            addresses: vec!["192.168.0.2".parse().unwrap()],
            pod_cidrs: vec!["10.0.2.0/24".parse().unwrap()],
            encryption: Some(NodeEncryption {
                boot_id: boot.into(),
                spis: spis.to_vec(),
            }),
        }
    }

    fn want(keys: &str, nodes: &[NodeRecord]) -> Desired {
        let addresses = ["192.168.0.1".parse().unwrap()];
        let cidrs = ["10.0.1.0/24".parse().unwrap()];
        let me = Me {
            name: "a",
            addresses: &addresses,
            pod_cidrs: &cidrs,
            boot_id: "boot-a",
            strict: true,
        };
        desired(&me, &parse(keys).unwrap().keys, nodes, &mut |_| 7)
    }

    const K3: &str = "3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n";

    fn fakes() -> (FakeXfrm, FakeMaps, Log) {
        let log = Log::default();
        (
            FakeXfrm {
                log: log.clone(),
                ..Default::default()
            },
            FakeMaps {
                log: log.clone(),
                ..Default::default()
            },
            log,
        )
    }

    fn position(log: &Log, prefix: &str) -> usize {
        let log = log.lock().unwrap();
        log.iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {log:#?}"))
    }

    #[test]
    fn states_and_policies_come_before_the_datapath_marks_traffic() {
        let (mut x, mut m, log) = fakes();
        let pass = sync(&mut x, &mut m, &want(K3, &[peer(&[3], "boot-b")]));
        assert!(pass.errors.is_empty(), "{:?}", pass.errors);
        assert_eq!((pass.states_in, pass.states_out, pass.policies), (2, 2, 4));
        let node = position(&log, "node ");
        let state = position(&log, "add state");
        let policy = position(&log, "policy ");
        let prefix = position(&log, "prefix ");
        assert!(
            node < state && state < policy && policy < prefix,
            "{log:#?}"
        );
        assert_eq!(
            m.prefixes.values().map(|v| v.spi).collect::<Vec<_>>(),
            vec![3]
        );
    }

    #[test]
    fn a_peer_that_leaves_is_unmarked_before_its_states_go() {
        let (mut x, mut m, log) = fakes();
        sync(&mut x, &mut m, &want(K3, &[peer(&[3], "boot-b")]));
        log.lock().unwrap().clear();
        let pass = sync(&mut x, &mut m, &want(K3, &[]));
        assert!(pass.errors.is_empty());
        assert!(x.states.is_empty() && x.policies.is_empty());
        assert!(m.prefixes.is_empty() && m.nodes.is_empty());
        let prefix = position(&log, "remove prefix");
        let policy = position(&log, "delete policy");
        let state = position(&log, "delete state");
        let node = position(&log, "remove node");
        assert!(
            prefix < policy && policy < state && state < node,
            "{log:#?}"
        );
    }

    #[test]
    fn a_second_pass_changes_nothing_and_a_new_boot_id_replaces_the_states() {
        let (mut x, mut m, log) = fakes();
        sync(&mut x, &mut m, &want(K3, &[peer(&[3], "boot-b")]));
        let before = x.states.clone();
        log.lock().unwrap().clear();
        sync(&mut x, &mut m, &want(K3, &[peer(&[3], "boot-b")]));
        assert!(
            log.lock().unwrap().iter().all(|l| l.starts_with("policy")),
            "{log:?}"
        );
        // The peer rebooted: per pair keys change, and so do the states.
        sync(&mut x, &mut m, &want(K3, &[peer(&[3], "boot-b2")]));
        assert_eq!(x.states.len(), 4);
        assert_ne!(x.states, before);
    }

    #[test]
    fn after_a_restart_nothing_is_replaced_and_stale_states_are_removed() {
        let (mut x, mut m, log) = fakes();
        sync(&mut x, &mut m, &want(K3, &[peer(&[3], "boot-b")]));
        // Left behind by a run that knew a node now gone.
        let stale = StateId {
            src: "192.168.0.1".parse().unwrap(),
            dst: "192.168.0.9".parse().unwrap(),
            spi: 3,
            reqid: REQID,
            mark: Some((0x3e00, 0xff00)),
        };
        x.states.insert(stale.clone(), vec![0; 20]);
        let foreign = StateId {
            reqid: 1,
            ..stale.clone()
        };
        x.states.insert(foreign.clone(), vec![0; 20]);
        // A new run adopts what is there: nothing added again.
        log.lock().unwrap().clear();
        let pass = sync(&mut x, &mut m, &want(K3, &[peer(&[3], "boot-b")]));
        assert!(
            !log.lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("add state")),
            "{log:?}"
        );
        assert!(pass.errors.is_empty(), "{:?}", pass.errors);
        assert!(!x.states.contains_key(&stale));
        assert!(x.states.contains_key(&foreign), "not Axoneme's: left alone");
        assert_eq!(x.states.len(), 5);
    }

    #[test]
    fn states_the_kernel_refuses_are_not_counted_and_the_errors_say_why() {
        let (mut x, mut m, _) = fakes();
        x.no_esp = true;
        let pass = sync(&mut x, &mut m, &want(K3, &[peer(&[3], "boot-b")]));
        assert_eq!((pass.states_in, pass.states_out, pass.policies), (0, 0, 4));
        assert_eq!(
            pass.refused,
            BTreeSet::from([3]),
            "not accepted: not announced"
        );
        assert_eq!(pass.errors.len(), 4, "{:?}", pass.errors);
        assert!(
            pass.errors
                .iter()
                .all(|e| e.starts_with("adding the XFRM state 192.168.0.")
                    && e.contains("(os error 92)")),
            "{:?}",
            pass.errors
        );
    }
}
