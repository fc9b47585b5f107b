//! Peer resolution: which identities a rule section's selectors,
//! entities and CIDRs name, the node-local CIDR identities, and which peers
//! a policy change touches.

use std::collections::{BTreeMap, BTreeSet};

use axoneme_identity::{LabelSet, NumericIdentity, ReservedIdentity, Source};
use ipnet::IpNet;

use crate::api::{CidrRule, EndpointSelector, PeerSection};
use crate::document::Policy;
use crate::entity::{Entity, EntitySet};
use crate::ports::PortNames;
use crate::selector::{is_node, Identities, Selector};
use crate::validate::{parse_cidr, port_entry, FieldError, PortSpec, Ports};

/// Node-local identities for every CIDR policies name (`1<<24 | n`), with
/// `cidr:<prefix>` and `reserved:world` labels; the agent puts the prefixes
/// in the ipcache.
pub fn cidr_identities(policies: &[Policy]) -> BTreeMap<IpNet, NumericIdentity> {
    let nets: BTreeSet<IpNet> = policies
        .iter()
        .flat_map(|p| p.rules.iter().flat_map(|(_, r)| r.all_sections()))
        .flat_map(|s| s.cidr_names())
        .filter_map(|c| parse_cidr(c).ok())
        .collect();
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
        .and_then(|l| parse_cidr(l.key).ok())
}

/// Peers a rule section names.
#[derive(Debug, Clone)]
pub(super) enum Peers {
    Any,
    Set(BTreeSet<NumericIdentity>),
}

/// The identities entity `e` stands for (its row of the entity table),
/// leaving out `any`: the caller turns that into every peer.
fn entity_ids(e: Entity, ids: &Identities) -> BTreeSet<NumericIdentity> {
    let m = e.members();
    let mut set: BTreeSet<NumericIdentity> = m.reserved.iter().map(|r| r.id()).collect();
    if m.cidrs {
        set.extend(ids.cidrs().map(|(id, _)| id));
    }
    if m.nodes {
        set.extend(
            ids.nodes()
                .filter(|(id, _)| id.is_local_scope())
                .map(|(id, _)| id),
        );
    }
    if m.endpoints {
        set.extend(ids.select(&Selector::all()).iter().copied());
    }
    set
}

/// Whether entity `e` stands for identity `x`: `entity_ids` for one
/// identity, without building the set.
fn entity_names(e: Entity, ids: &Identities, x: NumericIdentity) -> bool {
    let m = e.members();
    m.any
        || m.names_reserved(x)
        || (x.is_local_scope()
            && ids
                .get(x)
                .is_some_and(|l| if is_node(l) { m.nodes } else { m.cidrs }))
        || (m.endpoints && ids.select(&Selector::all()).contains(&x))
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

/// A section's CIDRs, each with its exceptions.
struct Ranges(Vec<(IpNet, Vec<IpNet>)>);

impl Ranges {
    fn of(cidrs: &[String], cidr_sets: &[CidrRule]) -> Ranges {
        let mut ranges: Vec<(IpNet, Vec<IpNet>)> = cidrs
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .map(|n| (n, vec![]))
            .collect();
        for s in cidr_sets {
            if let Some(n) = s.cidr.as_deref().and_then(|c| parse_cidr(c).ok()) {
                ranges.push((
                    n,
                    s.except.iter().filter_map(|e| parse_cidr(e).ok()).collect(),
                ));
            }
        }
        Ranges(ranges)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A /0 is "the whole internet": it names the world identities too.
    fn world_ids(&self) -> impl Iterator<Item = NumericIdentity> + '_ {
        self.0
            .iter()
            .filter(|(n, _)| n.prefix_len() == 0)
            .flat_map(|(n, _)| world_ids(n.addr().is_ipv4()))
    }

    /// Whether the prefix of a CIDR identity's `labels` is inside a range
    /// and outside its exceptions.
    fn names_cidr_identity(&self, labels: &LabelSet) -> bool {
        let Some(p) = cidr_of(labels) else {
            return false;
        };
        self.0
            .iter()
            .any(|(n, except)| n.contains(&p) && !except.iter().any(|e| e.contains(&p)))
    }
}

/// The peer fields of one rule section, in a direction-neutral form.
pub(super) struct Section<'a> {
    /// Whether the section names peers at all (else it means every peer).
    named: bool,
    endpoints: &'a [EndpointSelector],
    /// Node selectors: the nodes (`ids.nodes()`) whose labels they match.
    nodes: Vec<Selector>,
    entities: EntitySet,
    ranges: Ranges,
}

impl<'a> Section<'a> {
    pub(super) fn of(s: &PeerSection<'a>) -> Self {
        Section {
            named: !s.has_no_peers(),
            endpoints: s.endpoints,
            // Nodes have no namespace.
            nodes: s.nodes.iter().map(|n| Selector::new(n, None)).collect(),
            entities: EntitySet::parse(s.entities),
            ranges: Ranges::of(s.cidrs, s.cidr_sets),
        }
    }

    pub(super) fn has_peers(&self) -> bool {
        self.named
    }

    /// The peers this section names; with `only`, just which of those
    /// identities it names (cheap: no set of all peers is built).
    pub(super) fn peers(
        &self,
        ids: &Identities,
        ns: Option<&str>,
        has_requires: bool,
        only: Option<&BTreeSet<NumericIdentity>>,
    ) -> Peers {
        // Every peer; requirements narrow that to the identities meeting
        // them, so to the known ones.
        let every = || match (has_requires, only) {
            (false, _) => Peers::Any,
            (true, None) => Peers::Set(ids.iter().map(|(id, _)| id).collect()),
            (true, Some(only)) => Peers::Set(
                only.iter()
                    .filter(|x| ids.get(**x).is_some())
                    .copied()
                    .collect(),
            ),
        };
        if !self.has_peers() || self.entities.has(|m| m.any) {
            return every();
        }
        let selections = self
            .endpoints
            .iter()
            .map(|s| ids.select(&Selector::new(s, ns)));
        if let Some(only) = only {
            let selections: Vec<_> = selections.collect();
            return Peers::Set(
                only.iter()
                    .filter(|x| {
                        selections.iter().any(|s| s.contains(x)) || self.names_other(ids, **x)
                    })
                    .copied()
                    .collect(),
            );
        }
        let mut set = BTreeSet::new();
        for s in selections {
            set.extend(s.iter().copied());
        }
        for e in self.entities.iter() {
            set.extend(entity_ids(e, ids));
        }
        if !self.nodes.is_empty() {
            set.extend(
                ids.nodes()
                    .filter(|(_, l)| self.nodes.iter().any(|n| n.matches(l)))
                    .map(|(id, _)| id),
            );
        }
        set.extend(self.ranges.world_ids());
        if !self.ranges.is_empty() {
            set.extend(
                ids.cidrs()
                    .filter(|(_, labels)| self.ranges.names_cidr_identity(labels))
                    .map(|(id, _)| id),
            );
        }
        Peers::Set(set)
    }

    /// Whether a node selector of this section selects node `x`.
    fn names_node(&self, ids: &Identities, x: NumericIdentity) -> bool {
        let node = x == ReservedIdentity::Host.id() || x.is_local_scope();
        node && ids.get(x).is_some_and(|l| {
            (x.is_reserved() || is_node(l)) && self.nodes.iter().any(|n| n.matches(l))
        })
    }

    /// Whether this section's entities or CIDRs name peer `x`.
    fn names_other(&self, ids: &Identities, x: NumericIdentity) -> bool {
        self.entities.iter().any(|e| entity_names(e, ids, x))
            || (!self.nodes.is_empty() && self.names_node(ids, x))
            || self.ranges.world_ids().any(|w| w == x)
            || (x.is_local_scope()
                && ids
                    .get(x)
                    .is_some_and(|l| self.ranges.names_cidr_identity(l)))
    }
}

/// Every section of a policy with what else decides its contribution to a
/// map: the rule's endpoint selector, the direction and allow/deny.
type TaggedSection<'a> = (
    Option<(&'a EndpointSelector, bool)>,
    bool,
    bool,
    PeerSection<'a>,
);

fn tagged_sections(policy: &Policy) -> Vec<TaggedSection<'_>> {
    let mut out = Vec::new();
    for (_, r) in &policy.rules {
        for egress in [false, true] {
            let sel = r.subject();
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

/// The named ports of `policy` that no endpoint they refer to declares
/// (with the protocol the entry gives), as warnings with field paths: an
/// ingress rule's names refer to the endpoints the rule selects, an egress
/// rule's to its destinations. Such a port matches nothing until a pod
/// declaring it appears.
pub fn undeclared_named_ports(policy: &Policy, ids: &Identities) -> Vec<FieldError> {
    let ns = policy.namespace.as_deref();
    let mut out = Vec::new();
    for (path, rule) in &policy.rules {
        // Host policies' subjects are nodes, which declare no ports.
        let Some(sel) = &rule.endpoint_selector else {
            continue;
        };
        let subjects = ids.select(&Selector::new(sel, ns));
        for (egress, deny) in [(false, false), (false, true), (true, false), (true, true)] {
            let sections = if deny {
                rule.deny_sections(egress)
            } else {
                rule.allow_sections(egress)
            };
            let field = match (egress, deny) {
                (false, false) => "ingress",
                (false, true) => "ingressDeny",
                (true, false) => "egress",
                (true, true) => "egressDeny",
            };
            for (i, s) in sections.iter().enumerate() {
                let lists: Vec<&[crate::api::PortProtocol]> = if deny {
                    s.deny_ports.iter().map(|r| &r.ports[..]).collect()
                } else {
                    s.to_ports.iter().map(|r| &r.ports[..]).collect()
                };
                // Whose ports: the selected endpoints', or the destinations'.
                let owners: Option<BTreeSet<NumericIdentity>> = if egress {
                    match Section::of(s).peers(ids, ns, false, None) {
                        Peers::Any => None,
                        Peers::Set(set) => Some(set),
                    }
                } else {
                    Some(subjects.iter().copied().collect())
                };
                for (j, list) in lists.iter().enumerate() {
                    for (k, pp) in list.iter().enumerate() {
                        let Some(Ports {
                            protocol,
                            port: PortSpec::Name(name),
                        }) = port_entry(pp)
                        else {
                            continue;
                        };
                        let declares = |ports: &PortNames| {
                            protocol
                                .numbers()
                                .iter()
                                .any(|p| ports.resolve(&name, *p).next().is_some())
                        };
                        let declared = match &owners {
                            None => ids.with_ports().any(|(_, p)| declares(p)),
                            Some(set) => set.iter().any(|id| declares(ids.ports(*id))),
                        };
                        if !declared {
                            let whose = if egress {
                                "no destination of this rule"
                            } else {
                                "no endpoint this rule selects"
                            };
                            out.push(FieldError {
                                path: format!("{path}.{field}[{i}].toPorts[{j}].ports[{k}].port"),
                                message: format!(
                                    "{whose} declares a port named {name:?}{}: it matches nothing",
                                    match protocol {
                                        crate::validate::Protocol::Any => String::new(),
                                        p => format!(" ({})", p.as_str()),
                                    }
                                ),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}
