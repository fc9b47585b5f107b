//! Per-endpoint policy computation: from policies and identities to the
//! policy-map entries the datapath looks up.
//!
//! Keys are Cilium's `{identity, direction, protocol, port}` with port ranges
//! as prefix blocks (`port/prefix`, prefix 0 = any port, 16 = one port), and
//! identity 0 / protocol 0 meaning ANY. A lookup probes, in order:
//! `id/proto/port`, `ANY/proto/port`, `id/proto/ANY`, `ANY/proto/ANY`,
//! `id/ANY/ANY`, `ANY/ANY/ANY` (the port probes longest-prefix first).
//!
//! The first entry found must carry the right verdict for every flow it
//! covers, so the entry set is closed under intersection:
//! - where two allow entries overlap, the overlap gets the union of their L7
//!   rules (an L4-only allow means "any request", absorbing L7 rules);
//! - where a deny entry overlaps an allow entry, the overlap is a deny.
//!   Deny always beats allow.
//!
//! Since an intersection is at least as specific as each side in every
//! dimension, and the probe order never visits a less specific entry before
//! a more specific one that contains the same flow, the first hit is the
//! intersection of every entry containing the flow.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axoneme_identity::{LabelSet, NumericIdentity, ReservedIdentity, Source};
use ipnet::IpNet;

use crate::api::{EndpointSelector, HttpRule, IcmpRule, PeerSection, PortProtocol, Rule};
use crate::document::Policy;
use crate::selector::{Identities, Selector};
use crate::validate::{icmp_type, parse_cidr, parse_protocol, Protocol};

pub const ANY_IDENTITY: NumericIdentity = NumericIdentity(0);
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Direction {
    Ingress,
    Egress,
}

/// Cilium's policy enforcement modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EnforcementMode {
    /// A direction is enforced once a rule with that direction selects the endpoint.
    #[default]
    Default,
    /// Every direction of every endpoint is enforced (default deny).
    Always,
    /// Nothing is enforced.
    Never,
}

/// A policy-map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Key {
    /// 0 = any peer.
    pub identity: NumericIdentity,
    /// 0 = any protocol.
    pub protocol: u8,
    /// First port of the block (ICMP: the type).
    pub port: u16,
    /// Significant bits of `port`: 0 = any port, 16 = exactly `port`.
    pub prefix: u8,
}

fn port_mask(prefix: u8) -> u16 {
    if prefix == 0 {
        0
    } else {
        u16::MAX << (16 - u32::from(prefix))
    }
}

impl Key {
    pub fn any() -> Key {
        Key {
            identity: ANY_IDENTITY,
            protocol: PROTO_ANY,
            port: 0,
            prefix: 0,
        }
    }

    /// The last port of the block.
    pub fn end_port(&self) -> u16 {
        self.port | !port_mask(self.prefix)
    }

    fn contains_port(&self, port: u16) -> bool {
        port & port_mask(self.prefix) == self.port
    }

    /// The flows both keys cover, if any.
    pub fn intersect(&self, other: &Key) -> Option<Key> {
        let identity = match (self.identity, other.identity) {
            (a, b) if a == b => a,
            (ANY_IDENTITY, b) => b,
            (a, ANY_IDENTITY) => a,
            _ => return None,
        };
        let protocol = match (self.protocol, other.protocol) {
            (a, b) if a == b => a,
            (PROTO_ANY, b) => b,
            (a, PROTO_ANY) => a,
            _ => return None,
        };
        // Prefix blocks are nested or disjoint.
        let (narrow, wide) = if self.prefix >= other.prefix {
            (self, other)
        } else {
            (other, self)
        };
        if !wide.contains_port(narrow.port) {
            return None;
        }
        Some(Key {
            identity,
            protocol,
            port: narrow.port,
            prefix: narrow.prefix,
        })
    }
}

/// Splits `start..=end` into prefix-aligned blocks.
pub fn port_blocks(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(start), u32::from(end));
    while lo <= hi {
        // Largest aligned block starting at lo that fits.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let prefix = 16 - size.trailing_zeros();
        out.push((
            u16::try_from(lo).expect("port"),
            u8::try_from(prefix).expect("prefix"),
        ));
        lo += size;
    }
    out
}

/// What an entry does with a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// Allowed at L4, sent to the L7 proxy with these rules (any may match).
    Redirect(Arc<Vec<HttpRule>>),
}

impl Verdict {
    /// The union of two allow verdicts.
    fn join(&self, other: &Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Deny, _) | (_, Verdict::Deny) => Verdict::Deny,
            (Verdict::Allow, _) | (_, Verdict::Allow) => Verdict::Allow,
            (Verdict::Redirect(a), Verdict::Redirect(b)) => {
                if b.iter().all(|r| a.contains(r)) {
                    return Verdict::Redirect(a.clone());
                }
                let mut rules = a.as_ref().clone();
                for r in b.iter() {
                    if !rules.contains(r) {
                        rules.push(r.clone());
                    }
                }
                Verdict::Redirect(Arc::new(rules))
            }
        }
    }
}

/// One direction of one endpoint's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionPolicy {
    /// Whether unmatched traffic is denied (else it is allowed).
    pub enforced: bool,
    pub entries: BTreeMap<Key, Verdict>,
}

/// Why a lookup denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No entry allowed the flow (Cilium drop reason 133).
    PolicyDenied,
    /// A deny entry matched (Cilium drop reason 181).
    DenyRule,
}

impl DenyReason {
    pub fn code(self) -> u8 {
        match self {
            DenyReason::PolicyDenied => 133,
            DenyReason::DenyRule => 181,
        }
    }
}

/// A lookup's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(DenyReason),
    Redirect(Arc<Vec<HttpRule>>),
}

impl DirectionPolicy {
    /// Looks a flow up in Cilium's order.
    pub fn lookup(&self, peer: NumericIdentity, protocol: u8, port: u16) -> Decision {
        let probes = [
            (peer, protocol, true),
            (ANY_IDENTITY, protocol, true),
            (peer, protocol, false),
            (ANY_IDENTITY, protocol, false),
            (peer, PROTO_ANY, false),
            (ANY_IDENTITY, PROTO_ANY, false),
        ];
        for (identity, protocol, specific) in probes {
            let prefixes: &[u8] = if specific {
                &[16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
            } else {
                &[0]
            };
            for &prefix in prefixes {
                let key = Key {
                    identity,
                    protocol,
                    port: port & port_mask(prefix),
                    prefix,
                };
                if let Some(v) = self.entries.get(&key) {
                    return match v {
                        Verdict::Allow => Decision::Allow,
                        Verdict::Deny => Decision::Deny(DenyReason::DenyRule),
                        Verdict::Redirect(r) => Decision::Redirect(r.clone()),
                    };
                }
            }
        }
        if self.enforced {
            Decision::Deny(DenyReason::PolicyDenied)
        } else {
            Decision::Allow
        }
    }

    fn insert(&mut self, key: Key, verdict: Verdict) {
        match self.entries.get_mut(&key) {
            Some(v) => *v = v.join(&verdict),
            None => {
                self.entries.insert(key, verdict);
            }
        }
    }

    /// Closes the entry set under intersection (see the module docs).
    fn close(&mut self) {
        // Entries interact only within one peer identity and with ANY.
        let mut by_peer: BTreeMap<NumericIdentity, Vec<Key>> = BTreeMap::new();
        for k in self.entries.keys() {
            by_peer.entry(k.identity).or_default().push(*k);
        }
        let any: Vec<Key> = by_peer.get(&ANY_IDENTITY).cloned().unwrap_or_default();
        let groups: Vec<Vec<Key>> = by_peer
            .iter()
            .map(|(id, keys)| {
                if *id == ANY_IDENTITY {
                    keys.clone()
                } else {
                    keys.iter().chain(any.iter()).copied().collect()
                }
            })
            .collect();
        for keys in groups {
            self.close_group(keys);
        }
    }

    fn close_group(&mut self, mut keys: Vec<Key>) {
        // Allows first: overlaps get the union; repeat until nothing changes.
        let mut changed = true;
        while changed {
            changed = false;
            let allows: Vec<Key> = keys
                .iter()
                .filter(|k| !matches!(self.entries.get(k), Some(Verdict::Deny)))
                .copied()
                .collect();
            for (i, a) in allows.iter().enumerate() {
                for b in &allows[i + 1..] {
                    let Some(k) = a.intersect(b) else { continue };
                    let joined = self.entries[a].join(&self.entries[b]);
                    let new = match self.entries.get(&k) {
                        Some(cur) => cur.join(&joined),
                        None => joined,
                    };
                    if self.entries.get(&k) != Some(&new) {
                        if !self.entries.contains_key(&k) {
                            keys.push(k);
                        }
                        self.entries.insert(k, new);
                        changed = true;
                    }
                }
            }
        }
        // Then denies override every overlap.
        let denies: Vec<Key> = keys
            .iter()
            .filter(|k| matches!(self.entries.get(k), Some(Verdict::Deny)))
            .copied()
            .collect();
        let others: Vec<Key> = keys
            .iter()
            .filter(|k| !matches!(self.entries.get(k), Some(Verdict::Deny)))
            .copied()
            .collect();
        for d in &denies {
            for a in &others {
                if let Some(k) = d.intersect(a) {
                    self.entries.insert(k, Verdict::Deny);
                }
            }
        }
    }
}

/// Both directions of one endpoint's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl EndpointPolicy {
    pub fn direction(&self, d: Direction) -> &DirectionPolicy {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn direction_mut(&mut self, d: Direction) -> &mut DirectionPolicy {
        match d {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }
}

/// Node-local identities for every CIDR policies name (`1<<24 | n`), with
/// `cidr:<prefix>` and `reserved:world` labels; the agent puts the prefixes
/// in the ipcache.
pub fn cidr_identities(policies: &[Policy]) -> BTreeMap<IpNet, NumericIdentity> {
    let mut nets = BTreeSet::new();
    for p in policies {
        for (_, r) in &p.rules {
            for_each_peer_cidr(r, |c| {
                if let Ok(n) = parse_cidr(c) {
                    nets.insert(n);
                }
            });
        }
    }
    nets.into_iter()
        .enumerate()
        .map(|(i, n)| {
            let n_id = u32::try_from(i + 1).expect("fewer than 2^24 prefixes");
            (
                n,
                NumericIdentity(axoneme_identity::numeric::LOCAL_SCOPE | n_id),
            )
        })
        .collect()
}

fn for_each_peer_cidr(r: &Rule, mut f: impl FnMut(&str)) {
    let sets = r
        .ingress
        .iter()
        .map(|i| (&i.from_cidr, &i.from_cidr_set))
        .chain(
            r.ingress_deny
                .iter()
                .map(|i| (&i.from_cidr, &i.from_cidr_set)),
        )
        .chain(r.egress.iter().map(|e| (&e.to_cidr, &e.to_cidr_set)))
        .chain(r.egress_deny.iter().map(|e| (&e.to_cidr, &e.to_cidr_set)));
    for (cidrs, cidr_sets) in sets {
        for c in cidrs {
            f(c);
        }
        for s in cidr_sets {
            if let Some(c) = &s.cidr {
                f(c);
            }
            for e in &s.except {
                f(e);
            }
        }
    }
}

/// The labels of the CIDR identity for `net`.
pub fn cidr_labels(net: &IpNet) -> LabelSet {
    LabelSet::parse(
        [format!("cidr:{net}"), "reserved:world".to_string()],
        Source::Unspec,
    )
    .expect("CIDR labels are valid")
}

/// Adds the CIDR identities to `ids` with their labels.
pub fn add_cidr_identities(ids: &mut Identities, cidrs: &BTreeMap<IpNet, NumericIdentity>) {
    for (net, id) in cidrs {
        ids.insert(*id, cidr_labels(net));
    }
}

/// The CIDR prefix of a CIDR identity's labels.
fn cidr_of(labels: &LabelSet) -> Option<IpNet> {
    labels
        .iter()
        .find(|l| l.source == Source::Cidr)
        .and_then(|l| parse_cidr(&l.key).ok())
}

/// Peers a rule section names.
#[derive(Debug, Clone)]
enum Peers {
    Any,
    Set(BTreeSet<NumericIdentity>),
}

fn entity_ids(name: &str, ids: &Identities) -> Peers {
    use ReservedIdentity as R;
    let r = |list: &[R]| list.iter().map(|r| r.id()).collect::<BTreeSet<_>>();
    Peers::Set(match name {
        "all" => return Peers::Any,
        "world" => {
            let mut s = r(&[R::World, R::WorldIpv4, R::WorldIpv6]);
            s.extend(ids.local_scope().map(|(id, _)| id));
            s
        }
        "world-ipv4" => r(&[R::WorldIpv4]),
        "world-ipv6" => r(&[R::WorldIpv6]),
        "cluster" => {
            let mut s = r(&[
                R::Host,
                R::RemoteNode,
                R::Init,
                R::Health,
                R::Unmanaged,
                R::KubeApiserver,
                R::Ingress,
            ]);
            s.extend(ids.select(&Selector::all()).iter().copied());
            s
        }
        "host" => r(&[R::Host]),
        "remote-node" => r(&[R::RemoteNode]),
        "kube-apiserver" => r(&[R::KubeApiserver]),
        "ingress" => r(&[R::Ingress]),
        "init" => r(&[R::Init]),
        "health" => r(&[R::Health]),
        "unmanaged" => r(&[R::Unmanaged]),
        _ => BTreeSet::new(),
    })
}

/// The reserved identities a /0 of the family covers.
fn world_ids(v4: bool) -> [NumericIdentity; 2] {
    let family = if v4 {
        ReservedIdentity::WorldIpv4
    } else {
        ReservedIdentity::WorldIpv6
    };
    [ReservedIdentity::World.id(), family.id()]
}

/// The peer fields of one rule section, in a direction-neutral form.
struct Section<'a> {
    endpoints: &'a [crate::api::EndpointSelector],
    cidrs: &'a [String],
    cidr_sets: &'a [crate::api::CidrRule],
    entities: &'a [String],
}

impl<'a> Section<'a> {
    fn of(s: &PeerSection<'a>) -> Self {
        Section {
            endpoints: s.endpoints,
            cidrs: s.cidrs,
            cidr_sets: s.cidr_sets,
            entities: s.entities,
        }
    }

    fn has_peers(&self) -> bool {
        !(self.endpoints.is_empty()
            && self.cidrs.is_empty()
            && self.cidr_sets.is_empty()
            && self.entities.is_empty())
    }

    /// The peers this section names; with `only`, just whether it names that
    /// one identity (cheap: no set of all peers is built).
    fn peers(
        &self,
        ids: &Identities,
        ns: Option<&str>,
        has_requires: bool,
        only: Option<&BTreeSet<NumericIdentity>>,
    ) -> Peers {
        if let Some(only) = only {
            if !self.has_peers() || self.entities.iter().any(|e| e == "all") {
                return if has_requires {
                    Peers::Set(
                        only.iter()
                            .filter(|x| ids.get(**x).is_some())
                            .copied()
                            .collect(),
                    )
                } else {
                    Peers::Any
                };
            }
            let selections: Vec<_> = self
                .endpoints
                .iter()
                .map(|s| ids.select(&Selector::new(s, ns)))
                .collect();
            return Peers::Set(
                only.iter()
                    .filter(|x| {
                        selections.iter().any(|s| s.contains(x)) || self.names_other(ids, **x)
                    })
                    .copied()
                    .collect(),
            );
        }
        if !self.has_peers() {
            return if has_requires {
                // Requirements narrow the wildcard to the identities that meet them.
                Peers::Set(ids.iter().map(|(id, _)| id).collect())
            } else {
                Peers::Any
            };
        }
        let mut set = BTreeSet::new();
        for s in self.endpoints {
            let sel = Selector::new(s, ns);
            set.extend(ids.select(&sel).iter().copied());
        }
        for e in self.entities {
            match entity_ids(e, ids) {
                Peers::Any => {
                    return if has_requires {
                        Peers::Set(ids.iter().map(|(id, _)| id).collect())
                    } else {
                        Peers::Any
                    }
                }
                Peers::Set(s) => set.extend(s),
            }
        }
        let mut ranges: Vec<(IpNet, Vec<IpNet>)> = Vec::new();
        ranges.extend(
            self.cidrs
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .map(|n| (n, vec![])),
        );
        for s in self.cidr_sets {
            if let Some(n) = s.cidr.as_deref().and_then(|c| parse_cidr(c).ok()) {
                ranges.push((
                    n,
                    s.except.iter().filter_map(|e| parse_cidr(e).ok()).collect(),
                ));
            }
        }
        // A /0 is "the whole internet": it selects the world identities too.
        for (n, _) in &ranges {
            if n.prefix_len() == 0 {
                set.extend(world_ids(n.addr().is_ipv4()));
            }
        }
        if !ranges.is_empty() {
            for (id, labels) in ids.local_scope() {
                let Some(p) = cidr_of(labels) else { continue };
                if ranges
                    .iter()
                    .any(|(n, except)| n.contains(&p) && !except.iter().any(|e| e.contains(&p)))
                {
                    set.insert(id);
                }
            }
        }
        Peers::Set(set)
    }
}

impl Section<'_> {
    /// Whether this section's entities or CIDRs name peer `x`.
    fn names_other(&self, ids: &Identities, x: NumericIdentity) -> bool {
        for e in self.entities {
            let hit = match e.as_str() {
                "world" => {
                    matches!(x.0, 2 | 9 | 10) || (x.is_local_scope() && ids.get(x).is_some())
                }
                "cluster" => matches!(x.0, 1 | 3..=8) || ids.select(&Selector::all()).contains(&x),
                other => match entity_ids(other, ids) {
                    Peers::Set(s) => s.contains(&x),
                    Peers::Any => true,
                },
            };
            if hit {
                return true;
            }
        }
        let zero = |c: &str| {
            parse_cidr(c)
                .is_ok_and(|n| n.prefix_len() == 0 && world_ids(n.addr().is_ipv4()).contains(&x))
        };
        if self.cidrs.iter().any(|c| zero(c))
            || self
                .cidr_sets
                .iter()
                .any(|s| s.cidr.as_deref().is_some_and(zero))
        {
            return true;
        }
        if x.is_local_scope() {
            if let Some(p) = ids.get(x).and_then(cidr_of) {
                let inside = |c: &str| parse_cidr(c).is_ok_and(|n| n.contains(&p));
                if self.cidrs.iter().any(|c| inside(c))
                    || self.cidr_sets.iter().any(|s| {
                        s.cidr.as_deref().is_some_and(inside) && !s.except.iter().any(|e| inside(e))
                    })
                {
                    return true;
                }
            }
        }
        false
    }
}

/// `(protocol, port, prefix)` triples of a `toPorts` entry or ICMP rule.
fn l4_keys(ports: &[PortProtocol]) -> Vec<L4Key> {
    let mut out = Vec::new();
    for pp in ports {
        let Ok(proto) = parse_protocol(pp.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = pp.port.0.parse::<u16>() else {
            continue;
        };
        let end = pp
            .end_port
            .and_then(|e| u16::try_from(e).ok())
            .unwrap_or(port)
            .max(port);
        let protos: &[u8] = match proto {
            Protocol::Tcp => &[PROTO_TCP],
            Protocol::Udp => &[PROTO_UDP],
            Protocol::Sctp => &[PROTO_SCTP],
            Protocol::Any => &[PROTO_TCP, PROTO_UDP, PROTO_SCTP],
        };
        for &p in protos {
            for (start, prefix) in port_blocks(port, end) {
                out.push((p, start, prefix));
            }
        }
    }
    out
}

fn icmp_keys(icmps: &[IcmpRule]) -> Vec<L4Key> {
    icmps
        .iter()
        .flat_map(|r| r.fields.iter())
        .filter_map(|f| icmp_type(f.family.as_deref(), &f.icmp_type.0).ok())
        .map(|(v6, t)| (if v6 { PROTO_ICMPV6 } else { PROTO_ICMP }, u16::from(t), 16))
        .collect()
}

/// Computes one endpoint's policy.
pub fn compute<P: Borrow<Policy>>(
    policies: &[P],
    ids: &Identities,
    subject: &LabelSet,
    mode: EnforcementMode,
) -> EndpointPolicy {
    EndpointPolicy {
        ingress: compute_direction(policies, ids, subject, mode, Direction::Ingress, None),
        egress: compute_direction(policies, ids, subject, mode, Direction::Egress, None),
    }
}

/// Like `compute`, but only the entries for `peer` (and ANY): what an
/// identity change can alter. The entries for `peer` equal those a full
/// computation gives, because entries of different peers never interact.
pub fn compute_for_peer<P: Borrow<Policy>>(
    policies: &[P],
    ids: &Identities,
    subject: &LabelSet,
    mode: EnforcementMode,
    peer: NumericIdentity,
) -> EndpointPolicy {
    compute_for_peers(policies, ids, subject, mode, &[peer].into())
}

/// Like `compute_for_peer`, for several peers in one pass.
pub fn compute_for_peers<P: Borrow<Policy>>(
    policies: &[P],
    ids: &Identities,
    subject: &LabelSet,
    mode: EnforcementMode,
    peers: &BTreeSet<NumericIdentity>,
) -> EndpointPolicy {
    EndpointPolicy {
        ingress: compute_direction(
            policies,
            ids,
            subject,
            mode,
            Direction::Ingress,
            Some(peers),
        ),
        egress: compute_direction(policies, ids, subject, mode, Direction::Egress, Some(peers)),
    }
}

/// Every section of a policy with what else decides its contribution to a
/// map: the rule's endpoint selector, the direction and allow/deny.
type TaggedSection<'a> = (Option<&'a EndpointSelector>, bool, bool, PeerSection<'a>);

fn tagged_sections(policy: &Policy) -> Vec<TaggedSection<'_>> {
    let mut out = Vec::new();
    for (_, r) in &policy.rules {
        for egress in [false, true] {
            let sel = r.endpoint_selector.as_ref();
            out.extend(
                r.allow_sections(egress)
                    .into_iter()
                    .map(|s| (sel, egress, false, s)),
            );
            out.extend(
                r.deny_sections(egress)
                    .into_iter()
                    .map(|s| (sel, egress, true, s)),
            );
        }
    }
    out
}

/// The peers whose entries can change when `policy` replaces `other` (or
/// `other` replaces it): those named by its sections that `other` does not
/// have word for word (a section present in both contributes the same
/// entries before and after). `None` when that is every peer: a changed
/// section without peers but with ports, the `all` entity, or requirements
/// (which filter every peer of the endpoints they select).
pub fn changed_peers(
    policy: &Policy,
    other: Option<&Policy>,
    ids: &Identities,
) -> Option<BTreeSet<NumericIdentity>> {
    let ns = policy.namespace.as_deref();
    let kept = other
        .filter(|o| o.namespace == policy.namespace)
        .map(tagged_sections)
        .unwrap_or_default();
    let mut out = BTreeSet::new();
    for tagged in tagged_sections(policy) {
        if kept.contains(&tagged) {
            continue;
        }
        let s = tagged.3;
        if !s.requires.is_empty() {
            return None;
        }
        match Section::of(&s).peers(ids, ns, false, None) {
            Peers::Any => return None,
            Peers::Set(set) => out.extend(set),
        }
    }
    Some(out)
}

/// `(protocol, port, prefix)` of one map key.
type L4Key = (u8, u16, u8);

/// An allow or deny item in direction-neutral form.
struct Item<'a> {
    section: Section<'a>,
    /// One per `toPorts` entry, with its L7 rules (`None`: any request).
    l4_groups: Vec<(Vec<L4Key>, Option<Vec<HttpRule>>)>,
}

fn compute_direction<P: Borrow<Policy>>(
    policies: &[P],
    ids: &Identities,
    subject: &LabelSet,
    mode: EnforcementMode,
    dir: Direction,
    only: Option<&BTreeSet<NumericIdentity>>,
) -> DirectionPolicy {
    let mut out = DirectionPolicy::default();
    if mode == EnforcementMode::Never {
        return out;
    }
    out.enforced = mode == EnforcementMode::Always;
    let mut allows: Vec<(Item<'_>, Option<&str>)> = Vec::new();
    let mut denies: Vec<(Item<'_>, Option<&str>)> = Vec::new();
    let mut requires: Vec<Selector> = Vec::new();
    for policy in policies {
        let policy: &Policy = policy.borrow();
        let ns = policy.namespace.as_deref();
        for (_, rule) in &policy.rules {
            let Some(sel) = &rule.endpoint_selector else {
                continue;
            };
            if !Selector::new(sel, ns).matches(subject) {
                continue;
            }
            let egress = dir == Direction::Egress;
            if rule.enables_default_deny(egress) {
                out.enforced = true;
            }
            for s in rule.allow_sections(egress) {
                requires.extend(s.requires.iter().map(|r| Selector::new(r, ns)));
                allows.push((allow_item(Section::of(&s), s.to_ports, s.icmps), ns));
            }
            for s in rule.deny_sections(egress) {
                let ports = s
                    .deny_ports
                    .iter()
                    .flat_map(|p| p.ports.iter())
                    .cloned()
                    .collect();
                denies.push((deny_item(Section::of(&s), ports, s.icmps), ns));
            }
        }
    }
    let meets_requires = |id: NumericIdentity| {
        requires.is_empty()
            || ids
                .get(id)
                .is_some_and(|l| requires.iter().all(|r| r.matches(l)))
    };
    for (item, ns) in &allows {
        let peers = match item.section.peers(ids, *ns, !requires.is_empty(), only) {
            Peers::Any => vec![ANY_IDENTITY],
            Peers::Set(s) => s.into_iter().filter(|id| meets_requires(*id)).collect(),
        };
        for (l4, l7) in &item.l4_groups {
            let verdict = match l7 {
                None => Verdict::Allow,
                Some(rules) => Verdict::Redirect(Arc::new(rules.clone())),
            };
            for &peer in &peers {
                for &(protocol, port, prefix) in l4 {
                    out.insert(
                        Key {
                            identity: peer,
                            protocol,
                            port,
                            prefix,
                        },
                        verdict.clone(),
                    );
                }
            }
        }
    }
    for (item, ns) in &denies {
        let peers = match item.section.peers(ids, *ns, false, only) {
            Peers::Any => vec![ANY_IDENTITY],
            Peers::Set(s) => s.into_iter().collect(),
        };
        for (l4, _) in &item.l4_groups {
            for &peer in &peers {
                for &(protocol, port, prefix) in l4 {
                    out.entries.insert(
                        Key {
                            identity: peer,
                            protocol,
                            port,
                            prefix,
                        },
                        Verdict::Deny,
                    );
                }
            }
        }
    }
    out.close();
    out
}

fn allow_item<'a>(
    section: Section<'a>,
    to_ports: &[crate::api::PortRule],
    icmps: &[IcmpRule],
) -> Item<'a> {
    let mut l4_groups = Vec::new();
    // A rule with neither peers nor ports (`ingress: [{}]`) allows nothing,
    // as in Cilium: it only makes the direction default-deny.
    if to_ports.is_empty() && icmps.is_empty() && section.has_peers() {
        l4_groups.push((vec![(PROTO_ANY, 0, 0)], None));
    }
    for pr in to_ports {
        let http = pr
            .rules
            .as_ref()
            .map(|r| r.http.clone())
            .filter(|h| !h.is_empty());
        l4_groups.push((l4_keys(&pr.ports), http));
    }
    if !icmps.is_empty() {
        l4_groups.push((icmp_keys(icmps), None));
    }
    Item { section, l4_groups }
}

fn deny_item<'a>(section: Section<'a>, ports: Vec<PortProtocol>, icmps: &[IcmpRule]) -> Item<'a> {
    let mut l4 = l4_keys(&ports);
    l4.extend(icmp_keys(icmps));
    // Likewise a deny rule with neither peers nor ports denies nothing.
    if ports.is_empty() && icmps.is_empty() && section.has_peers() {
        l4.push((PROTO_ANY, 0, 0));
    }
    Item {
        section,
        l4_groups: vec![(l4, None)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_blocks_cover_ranges_exactly() {
        assert_eq!(port_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(8000, 8003), vec![(8000, 14)]);
        for (a, b) in [(1, 1000), (80, 8080), (1023, 1025), (65000, 65535), (0, 1)] {
            let blocks = port_blocks(a, b);
            let mut covered: Vec<u16> = Vec::new();
            for (start, prefix) in &blocks {
                let k = Key {
                    identity: ANY_IDENTITY,
                    protocol: 6,
                    port: *start,
                    prefix: *prefix,
                };
                covered.extend(k.port..=k.end_port());
            }
            let want: Vec<u16> = (a..=b).collect();
            assert_eq!(covered, want, "{a}-{b}");
            assert!(blocks.len() <= 32);
        }
    }

    #[test]
    fn intersections() {
        let k = |identity, protocol, port, prefix| Key {
            identity: NumericIdentity(identity),
            protocol,
            port,
            prefix,
        };
        assert_eq!(
            k(0, 0, 0, 0).intersect(&k(300, 6, 80, 16)),
            Some(k(300, 6, 80, 16))
        );
        assert_eq!(
            k(300, 6, 0, 0).intersect(&k(0, 6, 80, 16)),
            Some(k(300, 6, 80, 16))
        );
        assert_eq!(k(300, 6, 0, 0).intersect(&k(301, 6, 80, 16)), None);
        assert_eq!(k(300, 6, 0, 0).intersect(&k(300, 17, 80, 16)), None);
        assert_eq!(k(0, 6, 8000, 14).intersect(&k(0, 6, 8004, 16)), None);
        assert_eq!(
            k(0, 6, 8000, 14).intersect(&k(0, 6, 8002, 16)),
            Some(k(0, 6, 8002, 16))
        );
    }
}
