//! Peer resolution: which identities a rule section's selectors,
//! entities and CIDRs name, the node-local CIDR identities, and which peers
//! a policy change touches.

use std::collections::{BTreeMap, BTreeSet};

use axoneme_identity::{LabelSet, NumericIdentity, ReservedIdentity, Source};
use ipnet::IpNet;

use crate::api::{EndpointSelector, PeerSection, Rule};
use crate::document::Policy;
use crate::selector::{Identities, Selector};
use crate::validate::parse_cidr;

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
pub(super) enum Peers {
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
pub(super) struct Section<'a> {
    endpoints: &'a [crate::api::EndpointSelector],
    cidrs: &'a [String],
    cidr_sets: &'a [crate::api::CidrRule],
    entities: &'a [String],
}

impl<'a> Section<'a> {
    pub(super) fn of(s: &PeerSection<'a>) -> Self {
        Section {
            endpoints: s.endpoints,
            cidrs: s.cidrs,
            cidr_sets: s.cidr_sets,
            entities: s.entities,
        }
    }

    pub(super) fn has_peers(&self) -> bool {
        !(self.endpoints.is_empty()
            && self.cidrs.is_empty()
            && self.cidr_sets.is_empty()
            && self.entities.is_empty())
    }

    /// The peers this section names; with `only`, just whether it names that
    /// one identity (cheap: no set of all peers is built).
    pub(super) fn peers(
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
