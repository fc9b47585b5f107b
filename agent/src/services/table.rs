//! The LB maps' desired content, computed from the services' frontends:
//! a master and `count` backend slots per frontend, the backends by id,
//! each frontend's reverse-NAT entry and, under `ClientIP` affinity, the
//! (backend, frontend) pairs affinity may keep. Pure: the unit tests check
//! it without a kernel.
//!
//! The table is kept per record by [`Desired`](super::desired::Desired).
//! Ids are stable across passes (a backend keeps its id while any frontend
//! uses it; a frontend address keeps its reverse-NAT id), so a pass
//! rewrites only what changed, and are re-learnt from the maps after a
//! restart ([`Ids::adopt`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use axoneme_bpf_common::family;
use axoneme_bpf_common::lb::{svc_flags, AffinityMatchKey, LbBackend, LbKey, LbRevNat, LbService};
use axoneme_service::{Frontend, Protocol};

/// What the LB maps should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Masters (slot 0) and backend slots.
    pub services: BTreeMap<LbKey, LbService>,
    pub backends: BTreeMap<u32, LbBackend>,
    pub revnat: BTreeMap<u32, LbRevNat>,
    pub affinity: BTreeSet<AffinityMatchKey>,
    /// Maglev rows (1-based) → their entries' backend ids.
    pub maglev: BTreeMap<u32, Vec<u32>>,
}

impl Table {
    /// Whether a master is of a frontend clients outside the node reach
    /// (NodePort, ExternalIP, LoadBalancer): the replies of its backends
    /// on this node need the device's egress program.
    pub fn external(&self) -> bool {
        self.services
            .iter()
            .any(|(k, v)| k.slot == 0 && v.flags & svc_flags::EXTERNAL != 0)
    }
}

/// An address as the LB maps hold it: 16 bytes (IPv4 in the first 4) and
/// its family.
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut addr = [0u8; 16];
    match ip {
        IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            (addr, family::IPV4)
        }
        IpAddr::V6(a) => {
            addr.copy_from_slice(&a.octets());
            (addr, family::IPV6)
        }
    }
}

/// The inverse of [`addr_bytes`].
pub fn addr_ip(addr: &[u8; 16], fam: u8) -> IpAddr {
    if fam == family::IPV4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

pub fn proto_number(p: Protocol) -> u8 {
    use axoneme_bpf_common::lb::proto;
    match p {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
        Protocol::Sctp => proto::SCTP,
    }
}

/// Backend and reverse-NAT ids, kept stable across passes.
#[derive(Debug, Clone)]
pub struct Ids {
    backends: IdSpace<(IpAddr, u16)>,
    frontends: IdSpace<(IpAddr, u16)>,
    /// External frontends' Maglev rows (by address, port, protocol).
    rows: IdSpace<(IpAddr, u16, u8)>,
    maglev: Option<Maglev>,
}

/// The cluster-wide Maglev settings (every node must use the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maglev {
    /// Entries per row (prime).
    pub m: u32,
    pub seed: u64,
}

/// Maglev tables computed during one update, by their backends' names:
/// the frontends of one Service (every node address, every external
/// address) share their backends and so their table.
pub type MaglevCache = std::collections::HashMap<Vec<String>, Vec<u32>>;

/// Ids in `1..=max` given to keys.
#[derive(Debug, Clone)]
struct IdSpace<K> {
    by_key: BTreeMap<K, u32>,
    by_id: BTreeMap<u32, K>,
    max: u32,
}

impl<K> Default for IdSpace<K> {
    fn default() -> Self {
        IdSpace {
            by_key: BTreeMap::new(),
            by_id: BTreeMap::new(),
            max: u32::MAX,
        }
    }
}

impl<K: Ord + Copy> IdSpace<K> {
    fn with_max(max: u32) -> Self {
        IdSpace {
            max,
            ..Self::default()
        }
    }

    fn insert(&mut self, key: K, id: u32) {
        if id != 0 && id <= self.max {
            self.by_key.insert(key, id);
            self.by_id.insert(id, key);
        }
    }

    /// `key`'s id, or a free one: one past the highest in use, or when
    /// that is past `max`, the lowest gap.
    fn get(&mut self, key: K, what: &'static str) -> Result<u32, IdsExhausted> {
        if let Some(id) = self.by_key.get(&key) {
            return Ok(*id);
        }
        let next = self
            .by_id
            .last_key_value()
            .map_or(1, |(l, _)| l.saturating_add(1));
        let id = if next <= self.max && next != 0 {
            next
        } else {
            (1..=self.max)
                .find(|id| !self.by_id.contains_key(id))
                .ok_or(IdsExhausted(what))?
        };
        self.insert(key, id);
        Ok(id)
    }

    /// Frees `id`.
    fn release(&mut self, id: u32) {
        if let Some(key) = self.by_id.remove(&id) {
            self.by_key.remove(&key);
        }
    }

    /// Forgets the ids not in `keep`.
    fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.by_key.retain(|_, id| keep(*id));
        self.by_id.retain(|id, _| keep(*id));
    }
}

/// Too many backends or frontend addresses for the id space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free {0} id: too many distinct {0}s")]
pub struct IdsExhausted(&'static str);

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

impl Ids {
    pub fn new() -> Self {
        Ids {
            backends: IdSpace::default(),
            frontends: IdSpace::with_max(u32::from(u16::MAX)),
            rows: IdSpace::with_max(0),
            maglev: None,
        }
    }

    /// Maglev rows for external frontends, as many as `LB_MAGLEV` holds
    /// rows of `maglev.m` entries (frontends beyond pick at random).
    pub fn with_maglev(mut self, maglev: Maglev) -> Self {
        if let Some(rows) = axoneme_bpf_common::lb::LB_MAGLEV_MAX.checked_div(maglev.m) {
            self.rows = IdSpace::with_max(rows);
            self.maglev = Some(maglev);
        }
        self
    }

    /// The Maglev row of an external frontend whose selectable backends
    /// are `backends` (with their ids), and the row's entries; `None`
    /// without Maglev, without backends, or with every row taken.
    pub(super) fn maglev_row(
        &mut self,
        frontend: (IpAddr, u16, u8),
        backends: &[(&axoneme_service::Backend, u32)],
        cache: &mut MaglevCache,
    ) -> Option<(u32, Vec<u32>)> {
        let maglev = self.maglev?;
        if backends.is_empty() {
            return None;
        }
        let row = self.rows.get(frontend, "maglev row").ok()?;
        let names: Vec<String> = backends
            .iter()
            .map(|(b, _)| std::net::SocketAddr::new(b.addr, b.port).to_string())
            .collect();
        let table = cache.entry(names).or_insert_with_key(|names| {
            axoneme_service::maglev::table(names, maglev.m, maglev.seed)
        });
        Some((row, table.iter().map(|i| backends[*i as usize].1).collect()))
    }

    /// The ids the maps of a previous run hold.
    pub fn adopt(backends: &BTreeMap<u32, LbBackend>, revnat: &BTreeMap<u32, LbRevNat>) -> Self {
        let mut ids = Ids::new();
        for (id, b) in backends {
            ids.backends
                .insert((addr_ip(&b.addr, b.family), u16::from_be(b.port)), *id);
        }
        for (id, f) in revnat {
            ids.frontends
                .insert((addr_ip(&f.addr, f.family), u16::from_be(f.port)), *id);
        }
        ids
    }

    pub(super) fn backend(&mut self, addr: IpAddr, port: u16) -> Result<u32, IdsExhausted> {
        self.backends.get((addr, port), "backend")
    }

    pub(super) fn frontend(&mut self, addr: IpAddr, port: u16) -> Result<u16, IdsExhausted> {
        let id = self.frontends.get((addr, port), "frontend")?;
        u16::try_from(id).map_err(|_| IdsExhausted("frontend"))
    }

    pub(super) fn release_backend(&mut self, id: u32) {
        self.backends.release(id);
    }

    pub(super) fn release_frontend(&mut self, id: u32) {
        self.frontends.release(id);
    }

    pub(super) fn release_row(&mut self, id: u32) {
        self.rows.release(id);
    }

    /// How many ids are given out (of every kind).
    pub fn in_use(&self) -> usize {
        self.backends.by_id.len() + self.frontends.by_id.len() + self.rows.by_id.len()
    }

    /// Forgets the ids `table` does not use.
    pub(super) fn retain_used(&mut self, table: &Table) {
        self.backends.retain(|id| table.backends.contains_key(&id));
        self.frontends.retain(|id| table.revnat.contains_key(&id));
        self.rows.retain(|id| table.maglev.contains_key(&id));
    }
}

/// The whole table for `frontends` at once (each frontend its own
/// record), for tests and tools; the services unit keeps a
/// [`Desired`](super::desired::Desired) and updates it per record.
pub fn build<'a>(
    frontends: impl IntoIterator<Item = &'a Frontend>,
    node: &str,
    node_ips: &[IpAddr],
    ids: &mut Ids,
) -> Result<Table, IdsExhausted> {
    use super::desired::{Desired, Touched};
    let mut d = Desired::new(node.to_string(), node_ips.to_vec(), std::mem::take(ids));
    let mut touched = Touched::default();
    let result = frontends.into_iter().enumerate().try_for_each(|(i, f)| {
        d.set(&format!("{i:010}"), std::slice::from_ref(f), &mut touched)
            .map(drop)
    });
    d.settle();
    let table = d.table().clone();
    *ids = d.into_ids();
    result.map(|()| table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_bpf_common::lb::{backend_flags, svc_flags};
    use axoneme_service::{Backend, BackendState, FrontendKind};

    fn backend(addr: &str, node: &str, state: BackendState) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            port: 8080,
            node: Some(node.into()),
            state,
        }
    }

    fn frontend(addr: &str, backends: Vec<Backend>) -> Frontend {
        Frontend {
            service: "default/payments".into(),
            port_name: "http".into(),
            kind: FrontendKind::ClusterIP,
            addr: addr.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            backends,
            affinity_timeout: None,
            local_only: false,
        }
    }

    fn master(t: &Table, addr: &str, port: u16) -> LbService {
        let (bytes, fam) = addr_bytes(addr.parse().unwrap());
        *t.services
            .iter()
            .find(|(k, _)| {
                k.slot == 0 && k.addr == bytes && k.family == fam && k.port == port.to_be()
            })
            .map(|(_, v)| v)
            .expect("master entry")
    }

    #[test]
    fn a_frontend_gets_a_master_and_a_slot_per_usable_backend() {
        let f = frontend(
            "10.96.0.10",
            vec![
                backend("10.200.0.1", "a", BackendState::Active),
                backend("10.200.0.2", "b", BackendState::Active),
                backend("10.200.0.3", "b", BackendState::Terminating),
                backend("10.200.0.4", "b", BackendState::NotReady),
            ],
        );
        let mut ids = Ids::new();
        let t = build(&[f], "a", &[], &mut ids).unwrap();
        let m = master(&t, "10.96.0.10", 80);
        assert_eq!(m.count, 2, "terminating and not-ready backends get no slot");
        assert_eq!(t.services.len(), 3);
        assert_eq!(t.backends.len(), 2);
        assert_eq!(t.revnat.len(), 1);
        let rev = &t.revnat[&u32::from(m.rev_nat)];
        assert_eq!(
            addr_ip(&rev.addr, rev.family),
            "10.96.0.10".parse::<IpAddr>().unwrap()
        );
        assert_eq!(u16::from_be(rev.port), 80);
        for (k, v) in &t.services {
            if k.slot > 0 {
                assert!(
                    t.backends.contains_key(&v.backend_id),
                    "slot {k:?} names a backend"
                );
                assert!(k.slot <= m.count);
            }
        }
        assert!(t.affinity.is_empty());
    }

    #[test]
    fn ids_are_stable_and_reused_after_adoption() {
        let mut f = frontend(
            "10.96.0.10",
            vec![
                backend("10.200.0.1", "a", BackendState::Active),
                backend("10.200.0.2", "a", BackendState::Active),
            ],
        );
        let mut ids = Ids::new();
        let t1 = build(std::slice::from_ref(&f), "a", &[], &mut ids).unwrap();
        // One backend leaves, a new one comes: the other keeps its id.
        f.backends.remove(0);
        f.backends
            .push(backend("10.200.0.9", "a", BackendState::Active));
        let t2 = build(std::slice::from_ref(&f), "a", &[], &mut ids).unwrap();
        let id_of = |t: &Table, ip: &str| {
            let (bytes, _) = addr_bytes(ip.parse().unwrap());
            *t.backends.iter().find(|(_, b)| b.addr == bytes).unwrap().0
        };
        assert_eq!(id_of(&t1, "10.200.0.2"), id_of(&t2, "10.200.0.2"));
        assert_eq!(
            master(&t1, "10.96.0.10", 80).rev_nat,
            master(&t2, "10.96.0.10", 80).rev_nat
        );
        // A restarted agent learns the ids from the maps.
        let mut adopted = Ids::adopt(&t2.backends, &t2.revnat);
        let t3 = build(std::slice::from_ref(&f), "a", &[], &mut adopted).unwrap();
        assert_eq!(t2, t3);
    }

    #[test]
    fn nodeport_frontends_stand_for_every_node_address_of_their_family() {
        let mut f = frontend(
            "0.0.0.0",
            vec![backend("10.200.0.1", "a", BackendState::Active)],
        );
        f.kind = FrontendKind::NodePort;
        f.port = 30080;
        let ips: Vec<IpAddr> = vec!["192.168.7.1".parse().unwrap(), "fd07::1".parse().unwrap()];
        let t = build(std::slice::from_ref(&f), "a", &ips, &mut Ids::new()).unwrap();
        let m = master(&t, "192.168.7.1", 30080);
        assert_eq!(m.count, 1);
        assert_eq!(t.services.len(), 2, "no IPv6 frontend for an IPv4 NodePort");
        // Served from outside by the device's per-packet LB; the backend
        // is local to node a (no SNAT), not to node b.
        assert_eq!(m.flags, svc_flags::EXTERNAL);
        assert_eq!(
            t.backends.values().next().unwrap().flags,
            backend_flags::LOCAL
        );
        let on_b = build(std::slice::from_ref(&f), "b", &ips, &mut Ids::new()).unwrap();
        assert_eq!(on_b.backends.values().next().unwrap().flags, 0);
        f.local_only = true;
        let local = build(&[f], "a", &ips, &mut Ids::new()).unwrap();
        assert_eq!(
            master(&local, "192.168.7.1", 30080).flags,
            svc_flags::EXTERNAL | svc_flags::LOCAL_ONLY
        );
        // A ClusterIP is for the cluster only.
        let c = frontend("10.96.0.10", vec![]);
        let t = build(&[c], "a", &ips, &mut Ids::new()).unwrap();
        assert_eq!(master(&t, "10.96.0.10", 80).flags, 0);
    }

    #[test]
    fn affinity_and_local_only() {
        let mut f = frontend(
            "10.96.0.10",
            vec![
                backend("10.200.0.1", "a", BackendState::Active),
                backend("10.200.0.2", "b", BackendState::Active),
            ],
        );
        f.affinity_timeout = Some(30);
        f.local_only = true;
        let t = build(&[f], "b", &[], &mut Ids::new()).unwrap();
        let m = master(&t, "10.96.0.10", 80);
        assert_eq!((m.count, m.affinity_timeout), (1, 30));
        assert_eq!(t.affinity.len(), 1);
    }

    #[test]
    fn a_frontend_without_usable_backends_has_a_master_counting_none() {
        let f = frontend(
            "10.96.0.10",
            vec![backend("10.200.0.1", "a", BackendState::NotReady)],
        );
        let t = build(&[f], "a", &[], &mut Ids::new()).unwrap();
        assert_eq!(master(&t, "10.96.0.10", 80).count, 0);
        assert!(t.backends.is_empty());
    }
}
