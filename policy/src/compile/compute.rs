//! Per-endpoint computation: the rules selecting an endpoint, turned into
//! its map entries for each direction.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::sync::Arc;

use axoneme_identity::{LabelSet, NumericIdentity};

use super::keys::{
    port_blocks, Direction, DirectionPolicy, EndpointPolicy, Key, Verdict, ANY_IDENTITY, PROTO_ANY,
    PROTO_ICMP, PROTO_ICMPV6,
};
use super::peers::{Peers, Section};
use crate::api::{HttpRule, IcmpRule, PortProtocol, PortRule};
use crate::document::Policy;
use crate::ports::PortNames;
use crate::selector::{self, Identities, Selector};
use crate::validate::{icmp_type, port_entry, PortSpec};

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

/// The keys of a list of `ports[]` entries: numeric ports as
/// `(protocol, port, prefix)` triples, named ones as `(name, protocols)`
/// to resolve against an endpoint's named ports.
fn l4_keys(ports: &[PortProtocol]) -> (Vec<L4Key>, Vec<NamedKey>) {
    let mut keys = Vec::new();
    let mut named = Vec::new();
    for pp in ports {
        let Some(entry) = port_entry(pp) else {
            continue;
        };
        let protos = entry.protocol.numbers();
        match entry.port {
            PortSpec::Range(port, end) => {
                for &p in protos {
                    for (start, prefix) in port_blocks(port, end) {
                        keys.push((p, start, prefix));
                    }
                }
            }
            PortSpec::Name(name) => named.push((name, protos)),
        }
    }
    (keys, named)
}

/// The keys named ports stand for in `ports`.
fn resolve(named: &[NamedKey], ports: &PortNames) -> Vec<L4Key> {
    let mut out = Vec::new();
    for (name, protos) in named {
        for &p in *protos {
            out.extend(ports.resolve(name, p).map(|port| (p, port, 16)));
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

/// Computes one endpoint's policy. `ports` are the endpoint's named ports
/// (ingress rules' port names resolve against them; egress rules' against
/// each destination identity's, in `ids`).
pub fn compute<P: Borrow<Policy>>(
    policies: &[P],
    ids: &Identities,
    subject: &LabelSet,
    ports: &PortNames,
    mode: EnforcementMode,
) -> EndpointPolicy {
    let s = Subject {
        labels: subject,
        ports,
    };
    EndpointPolicy {
        ingress: compute_direction(policies, ids, &s, mode, Direction::Ingress, None),
        egress: compute_direction(policies, ids, &s, mode, Direction::Egress, None),
    }
}

/// Like `compute`, but only the entries for `peer` (and ANY): what an
/// identity change can alter. The entries for `peer` equal those a full
/// computation gives, because entries of different peers never interact.
pub fn compute_for_peer<P: Borrow<Policy>>(
    policies: &[P],
    ids: &Identities,
    subject: &LabelSet,
    ports: &PortNames,
    mode: EnforcementMode,
    peer: NumericIdentity,
) -> EndpointPolicy {
    compute_for_peers(policies, ids, subject, ports, mode, &[peer].into())
}

/// Like `compute_for_peer`, for several peers in one pass.
pub fn compute_for_peers<P: Borrow<Policy>>(
    policies: &[P],
    ids: &Identities,
    subject: &LabelSet,
    ports: &PortNames,
    mode: EnforcementMode,
    peers: &BTreeSet<NumericIdentity>,
) -> EndpointPolicy {
    let s = Subject {
        labels: subject,
        ports,
    };
    EndpointPolicy {
        ingress: compute_direction(policies, ids, &s, mode, Direction::Ingress, Some(peers)),
        egress: compute_direction(policies, ids, &s, mode, Direction::Egress, Some(peers)),
    }
}

/// The endpoint a computation is for.
struct Subject<'a> {
    labels: &'a LabelSet,
    ports: &'a PortNames,
}

/// `(protocol, port, prefix)` of one map key.
type L4Key = (u8, u16, u8);

/// A named port to resolve: the (lower-cased) name and the protocols.
type NamedKey = (String, &'static [u8]);

/// One `toPorts` entry (or the ICMP rules, or "every port") of an item.
struct L4Group {
    keys: Vec<L4Key>,
    /// Egress: named ports, resolved per destination. (Ingress resolves
    /// them against the endpoint's own named ports, into `keys`.)
    named: Vec<NamedKey>,
    /// What an allow of these keys does: `Allow`, or `Redirect` with L7
    /// rules. (Deny items ignore it.)
    verdict: Verdict,
}

impl L4Group {
    /// Numeric keys, allowed at L4.
    fn allow(keys: Vec<L4Key>) -> Self {
        L4Group {
            keys,
            named: Vec::new(),
            verdict: Verdict::Allow,
        }
    }
}

/// An allow or deny item in direction-neutral form.
struct Item<'a> {
    section: Section<'a>,
    l4_groups: Vec<L4Group>,
}

impl Item<'_> {
    /// Calls `f` with every key and group of this item for `peers` (ANY
    /// for every peer): numeric ports, and named ones resolved against each
    /// destination's named ports. For every peer, a named port gives keys
    /// for each identity declaring it (in `only`, if given).
    fn keys(
        &self,
        peers: &[NumericIdentity],
        ids: &Identities,
        only: Option<&BTreeSet<NumericIdentity>>,
        mut f: impl FnMut(Key, &L4Group),
    ) {
        for g in &self.l4_groups {
            let mut emit = |peer: NumericIdentity, l4: &[L4Key]| {
                for &(protocol, port, prefix) in l4 {
                    let key = Key {
                        identity: peer,
                        protocol,
                        port,
                        prefix,
                    };
                    f(key, g);
                }
            };
            for &peer in peers {
                emit(peer, &g.keys);
                if !g.named.is_empty() && peer != ANY_IDENTITY {
                    emit(peer, &resolve(&g.named, ids.ports(peer)));
                }
            }
            if !g.named.is_empty() && peers.contains(&ANY_IDENTITY) {
                for (peer, ports) in ids.with_ports() {
                    if only.is_none_or(|o| o.contains(&peer)) {
                        emit(peer, &resolve(&g.named, ports));
                    }
                }
            }
        }
    }
}

fn compute_direction<P: Borrow<Policy>>(
    policies: &[P],
    ids: &Identities,
    subject: &Subject<'_>,
    mode: EnforcementMode,
    dir: Direction,
    only: Option<&BTreeSet<NumericIdentity>>,
) -> DirectionPolicy {
    let mut out = DirectionPolicy::default();
    if mode == EnforcementMode::Never {
        return out;
    }
    out.enforced = mode == EnforcementMode::Always;
    let egress = dir == Direction::Egress;
    // Ingress: port names are the endpoint's own.
    let own_ports = (!egress).then_some(subject.ports);
    let mut allows: Vec<(Item<'_>, Option<&str>)> = Vec::new();
    let mut denies: Vec<(Item<'_>, Option<&str>)> = Vec::new();
    let mut requires: Vec<Selector> = Vec::new();
    for policy in policies {
        let policy: &Policy = policy.borrow();
        let ns = policy.namespace.as_deref();
        for (_, rule) in &policy.rules {
            if !selector::Subject::of(rule, ns).is_some_and(|s| s.matches(subject.labels)) {
                continue;
            }
            if rule.enables_default_deny(egress) {
                out.enforced = true;
            }
            for s in rule.allow_sections(egress) {
                requires.extend(s.requires.iter().map(|r| Selector::new(r, ns)));
                let item = allow_item(Section::of(&s), s.to_ports, s.icmps, own_ports);
                allows.push((item, ns));
            }
            for s in rule.deny_sections(egress) {
                let ports: Vec<PortProtocol> = s
                    .deny_ports
                    .iter()
                    .flat_map(|p| p.ports.iter())
                    .cloned()
                    .collect();
                let item = deny_item(Section::of(&s), &ports, s.icmps, own_ports);
                denies.push((item, ns));
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
        let peers: Vec<NumericIdentity> =
            match item.section.peers(ids, *ns, !requires.is_empty(), only) {
                Peers::Any => vec![ANY_IDENTITY],
                Peers::Set(s) => s.into_iter().filter(|id| meets_requires(*id)).collect(),
            };
        item.keys(&peers, ids, only, |key, g| {
            out.insert(key, g.verdict.clone())
        });
    }
    for (item, ns) in &denies {
        let peers: Vec<NumericIdentity> = match item.section.peers(ids, *ns, false, only) {
            Peers::Any => vec![ANY_IDENTITY],
            Peers::Set(s) => s.into_iter().collect(),
        };
        item.keys(&peers, ids, only, |key, _| {
            out.entries.insert(key, Verdict::Deny);
        });
    }
    out.close();
    out
}

/// One `toPorts` entry's keys; `own_ports` (ingress) resolves names now.
fn port_group(
    ports: &[PortProtocol],
    http: Option<Vec<HttpRule>>,
    own_ports: Option<&PortNames>,
) -> L4Group {
    let (mut keys, mut named) = l4_keys(ports);
    if let Some(own) = own_ports {
        keys.extend(resolve(&named, own));
        named.clear();
    }
    let verdict = match http {
        None => Verdict::Allow,
        Some(rules) => Verdict::Redirect(Arc::new(rules)),
    };
    L4Group {
        keys,
        named,
        verdict,
    }
}

fn allow_item<'a>(
    section: Section<'a>,
    to_ports: &[PortRule],
    icmps: &[IcmpRule],
    own_ports: Option<&PortNames>,
) -> Item<'a> {
    let mut l4_groups = Vec::new();
    // A rule with neither peers nor ports (`ingress: [{}]`) allows nothing,
    // as in Cilium: it only makes the direction default-deny.
    if to_ports.is_empty() && icmps.is_empty() && section.has_peers() {
        l4_groups.push(L4Group::allow(vec![(PROTO_ANY, 0, 0)]));
    }
    for pr in to_ports {
        let http = pr
            .rules
            .as_ref()
            .map(|r| r.http.clone())
            .filter(|h| !h.is_empty());
        l4_groups.push(port_group(&pr.ports, http, own_ports));
    }
    if !icmps.is_empty() {
        l4_groups.push(L4Group::allow(icmp_keys(icmps)));
    }
    Item { section, l4_groups }
}

fn deny_item<'a>(
    section: Section<'a>,
    ports: &[PortProtocol],
    icmps: &[IcmpRule],
    own_ports: Option<&PortNames>,
) -> Item<'a> {
    let mut group = port_group(ports, None, own_ports);
    group.keys.extend(icmp_keys(icmps));
    // Likewise a deny rule with neither peers nor ports denies nothing. (A
    // port name that resolves to nothing denies nothing either.)
    if ports.is_empty() && icmps.is_empty() && section.has_peers() {
        group.keys.push((PROTO_ANY, 0, 0));
    }
    Item {
        section,
        l4_groups: vec![group],
    }
}
