//! Per-endpoint computation: the rules selecting an endpoint, turned into
//! its map entries for each direction.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::sync::Arc;

use axoneme_identity::{LabelSet, NumericIdentity};

use super::keys::{
    port_blocks, Direction, DirectionPolicy, EndpointPolicy, Key, Verdict, ANY_IDENTITY, PROTO_ANY,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
use super::peers::{Peers, Section};
use crate::api::{HttpRule, IcmpRule, PortProtocol, PortRule};
use crate::document::Policy;
use crate::selector::{Identities, Selector};
use crate::validate::{icmp_type, parse_protocol, Protocol};

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

fn allow_item<'a>(section: Section<'a>, to_ports: &[PortRule], icmps: &[IcmpRule]) -> Item<'a> {
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
