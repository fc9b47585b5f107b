//! The policy engine an agent runs: policies, identities and the node's
//! local endpoints in, policy-map deltas out.
//!
//! Every change recomputes only the endpoints it can affect and returns the
//! difference to what those endpoints had:
//! - a policy change affects the local endpoints its (old or new) rules select;
//! - an identity change affects the local endpoints whose selecting rules
//!   could name it as a peer: a peer selector matching its (old or new)
//!   labels, an entity, a CIDR or a requirement;
//! - a change of an identity's named ports affects the local endpoints of
//!   that identity whose ingress rules name ports (recomputed), and the
//!   entries for that identity as a peer in local endpoints whose egress
//!   rules name ports.
//!
//! Peer selections come from the selector cache in `Identities`, kept
//! current per identity, so a recomputation never rescans all identities.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axoneme_identity::{LabelSet, NamedPorts, NumericIdentity};
use ipnet::IpNet;

use crate::api::PeerSection;
use crate::compile::{
    changed_peers, cidr_labels, compute, compute_for_peers, undeclared_named_ports, Direction,
    EndpointPolicy, EnforcementMode, Key, Verdict,
};
use crate::document::Policy;
use crate::entity::EntitySet;
use crate::ports::PortNames;
use crate::selector::{is_node, Identities, Selector, Subject};
use crate::validate::{parse_port, FieldError, PortSpec};

/// One change to one endpoint's policy map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// Set (add or replace) an entry.
    Upsert {
        endpoint: NumericIdentity,
        direction: Direction,
        key: Key,
        verdict: Verdict,
    },
    /// Remove an entry.
    Remove {
        endpoint: NumericIdentity,
        direction: Direction,
        key: Key,
    },
    /// The direction became (un)enforced: unmatched traffic is now denied (allowed).
    Enforced {
        endpoint: NumericIdentity,
        direction: Direction,
        enforced: bool,
    },
}

/// Above this many peers, recomputing an endpoint whole is cheaper than
/// updating peer by peer.
const PER_PEER_LIMIT: usize = 512;

/// What a policy's peers depend on, to find the endpoints a change affects.
#[derive(Debug, Clone, Default)]
struct Dependencies {
    peer_selectors: Vec<Selector>,
    /// An entity standing for every workload (`cluster`), or requirements:
    /// any endpoint identity may matter.
    endpoints: bool,
    /// CIDR peers, an entity standing for the CIDR identities (`world`), or
    /// requirements: CIDR identities matter.
    cidrs: bool,
    /// Node selectors, an entity standing for the nodes (`remote-node`,
    /// `cluster`), or requirements: node identities (and the host's
    /// labels) matter.
    nodes: bool,
    /// Ingress rules name ports: the endpoint's own named ports matter.
    named_ingress: bool,
    /// Egress rules name ports: the destinations' named ports matter.
    named_egress: bool,
}

impl Dependencies {
    fn merge(&mut self, other: &Dependencies) {
        self.peer_selectors
            .extend(other.peer_selectors.iter().cloned());
        self.endpoints |= other.endpoints;
        self.cidrs |= other.cidrs;
        self.nodes |= other.nodes;
        self.named_ingress |= other.named_ingress;
        self.named_egress |= other.named_egress;
    }
}

/// Whether a section's ports name a port.
fn names_ports(s: &PeerSection<'_>) -> bool {
    s.to_ports
        .iter()
        .flat_map(|r| &r.ports)
        .chain(s.deny_ports.iter().flat_map(|r| &r.ports))
        .any(|pp| matches!(parse_port(&pp.port.0), Ok(PortSpec::Name(_))))
}

/// A stored policy with what the engine needs to find whom it concerns.
#[derive(Debug)]
struct Entry {
    /// Shared with whoever fed it (the agent keeps the same parse).
    policy: Arc<Policy>,
    subjects: Vec<Subject>,
    deps: Dependencies,
    cidrs: Vec<IpNet>,
}

impl Entry {
    fn new(policy: Arc<Policy>) -> Self {
        let ns = policy.namespace.as_deref();
        let subjects = policy
            .rules
            .iter()
            .filter_map(|(_, r)| Subject::of(r, ns))
            .collect();
        let mut deps = Dependencies::default();
        let mut cidrs = Vec::new();
        for s in policy.rules.iter().flat_map(|(_, r)| r.all_sections()) {
            deps.peer_selectors
                .extend(s.endpoints.iter().map(|e| Selector::new(e, ns)));
            // Requirements narrow every peer of the endpoints they select,
            // CIDR identities included (a requirement may name `reserved:world`).
            let requires = !s.requires.is_empty();
            let entities = EntitySet::parse(s.entities);
            deps.endpoints |= requires || entities.has(|m| m.endpoints);
            deps.cidrs |= requires
                || !s.cidrs.is_empty()
                || !s.cidr_sets.is_empty()
                || entities.has(|m| m.cidrs);
            deps.nodes |= requires || !s.nodes.is_empty() || entities.has(|m| m.nodes);
            cidrs.extend(
                s.cidr_names()
                    .filter_map(|c| crate::validate::parse_cidr(c).ok()),
            );
        }
        for (_, r) in &policy.rules {
            for egress in [false, true] {
                let named = r
                    .allow_sections(egress)
                    .iter()
                    .chain(r.deny_sections(egress).iter())
                    .any(names_ports);
                if egress {
                    deps.named_egress |= named;
                } else {
                    deps.named_ingress |= named;
                }
            }
        }
        cidrs.sort();
        cidrs.dedup();
        Entry {
            policy,
            subjects,
            deps,
            cidrs,
        }
    }

    fn selects(&self, subject: &LabelSet) -> bool {
        self.subjects.iter().any(|s| s.matches(subject))
    }
}

/// What the engine keeps for one local endpoint.
#[derive(Debug, Default)]
struct Local {
    policy: EndpointPolicy,
    /// The keys of the policies selecting it, so that updating it never
    /// scans every policy.
    selecting: BTreeSet<String>,
    /// What those policies' peers depend on.
    deps: Dependencies,
}

#[derive(Debug, Default)]
pub struct Engine {
    mode: EnforcementMode,
    policies: BTreeMap<String, Entry>,
    ids: Identities,
    /// CIDR identities, numbered stably: a prefix keeps its number while any
    /// policy names it, so other CIDR peers' entries do not churn.
    cidrs: BTreeMap<IpNet, (NumericIdentity, usize)>,
    next_cidr: u32,
    endpoints: BTreeMap<NumericIdentity, Local>,
    /// Every endpoint's named ports (local or not), by the caller's name
    /// for the endpoint, with its identity.
    endpoint_ports: BTreeMap<String, (NumericIdentity, NamedPorts)>,
    /// Per identity, how many of its endpoints declare each
    /// `(name, protocol, port)`: the identity's named ports are the union.
    port_counts: BTreeMap<NumericIdentity, BTreeMap<(String, u8, u16), usize>>,
}

fn diff(
    endpoint: NumericIdentity,
    old: &EndpointPolicy,
    new: &EndpointPolicy,
    out: &mut Vec<Delta>,
) {
    for direction in [Direction::Ingress, Direction::Egress] {
        let (o, n) = (old.direction(direction), new.direction(direction));
        if o.enforced != n.enforced {
            out.push(Delta::Enforced {
                endpoint,
                direction,
                enforced: n.enforced,
            });
        }
        for (key, verdict) in &n.entries {
            if o.entries.get(key) != Some(verdict) {
                out.push(Delta::Upsert {
                    endpoint,
                    direction,
                    key: *key,
                    verdict: verdict.clone(),
                });
            }
        }
        for key in o.entries.keys() {
            if !n.entries.contains_key(key) {
                out.push(Delta::Remove {
                    endpoint,
                    direction,
                    key: *key,
                });
            }
        }
    }
}

/// What the policies under `keys` depend on.
fn dependencies(policies: &BTreeMap<String, Entry>, keys: &BTreeSet<String>) -> Dependencies {
    let mut deps = Dependencies::default();
    for e in keys.iter().filter_map(|k| policies.get(k)) {
        deps.merge(&e.deps);
    }
    deps
}

impl Engine {
    pub fn new(mode: EnforcementMode) -> Self {
        Engine {
            mode,
            ids: Identities::with_reserved(),
            ..Engine::default()
        }
    }

    pub fn identities(&self) -> &Identities {
        &self.ids
    }

    /// The CIDR prefixes policies name and their node-local identities (for the ipcache).
    pub fn cidr_identities(&self) -> BTreeMap<IpNet, NumericIdentity> {
        self.cidrs.iter().map(|(n, (id, _))| (*n, *id)).collect()
    }

    pub fn endpoint_policy(&self, endpoint: NumericIdentity) -> Option<&EndpointPolicy> {
        self.endpoints.get(&endpoint).map(|l| &l.policy)
    }

    /// Every stored policy (for tests comparing with a full computation).
    pub fn policies(&self) -> Vec<&Policy> {
        self.policies.values().map(|e| &*e.policy).collect()
    }

    /// The stored policies under `keys`.
    fn selected_policies<'a>(&'a self, keys: &'a BTreeSet<String>) -> Vec<&'a Policy> {
        keys.iter()
            .filter_map(|k| self.policies.get(k))
            .map(|e| &*e.policy)
            .collect()
    }

    /// Recomputes `which` endpoints and returns what changed.
    fn recompute(&mut self, which: BTreeSet<NumericIdentity>) -> Vec<Delta> {
        let mut out = Vec::new();
        for ep in which {
            let Some(labels) = self.ids.get(ep).cloned() else {
                continue;
            };
            let selecting: BTreeSet<String> = self
                .policies
                .iter()
                .filter(|(_, e)| e.selects(&labels))
                .map(|(k, _)| k.clone())
                .collect();
            let policies = self.selected_policies(&selecting);
            let policy = compute(&policies, &self.ids, &labels, self.ids.ports(ep), self.mode);
            let deps = dependencies(&self.policies, &selecting);
            let old = self
                .endpoints
                .remove(&ep)
                .map(|l| l.policy)
                .unwrap_or_default();
            diff(ep, &old, &policy, &mut out);
            let local = Local {
                policy,
                selecting,
                deps,
            };
            self.endpoints.insert(ep, local);
        }
        out
    }

    /// Starts computing policy for a local endpoint with identity `id`
    /// (which must be known through `set_identity`). Returns its entries.
    pub fn add_endpoint(&mut self, id: NumericIdentity) -> Vec<Delta> {
        self.endpoints.entry(id).or_default();
        self.recompute([id].into())
    }

    /// Stops computing policy for a local endpoint.
    pub fn remove_endpoint(&mut self, id: NumericIdentity) -> Vec<Delta> {
        let mut out = Vec::new();
        if let Some(old) = self.endpoints.remove(&id) {
            diff(id, &old.policy, &EndpointPolicy::default(), &mut out);
        }
        out
    }

    fn affected_by_identity(
        &self,
        id: NumericIdentity,
        old: Option<&LabelSet>,
        new: Option<&LabelSet>,
    ) -> BTreeSet<NumericIdentity> {
        let local = id.is_local_scope();
        let is_node = local && [old, new].into_iter().flatten().any(is_node);
        let is_cidr = local && !is_node;
        let is_endpoint = !id.is_reserved() && !local;
        self.endpoints
            .iter()
            .filter(|(ep, Local { deps, .. })| {
                **ep == id
                    || (is_endpoint && deps.endpoints)
                    || (is_cidr && deps.cidrs)
                    || (is_node && deps.nodes)
                    || (id.is_reserved() && (deps.endpoints || deps.cidrs || deps.nodes))
                    || deps.peer_selectors.iter().any(|s| {
                        old.is_some_and(|l| s.matches(l)) || new.is_some_and(|l| s.matches(l))
                    })
            })
            .map(|(ep, _)| *ep)
            .collect()
    }

    /// Adds, changes (`Some`) or removes (`None`) an identity.
    pub fn set_identity(&mut self, id: NumericIdentity, labels: Option<LabelSet>) -> Vec<Delta> {
        let old = self.ids.get(id).cloned();
        if old == labels {
            return Vec::new();
        }
        match &labels {
            Some(l) => self.ids.insert(id, l.clone()),
            None => {
                self.ids.remove(id);
            }
        }
        let affected = self.affected_by_identity(id, old.as_ref(), labels.as_ref());
        let mut out = Vec::new();
        for ep in affected {
            if ep == id {
                // The endpoint's own labels changed: everything may change.
                out.extend(self.recompute([ep].into()));
                continue;
            }
            self.update_peers(ep, &[id].into(), &mut out);
        }
        out
    }

    /// Recomputes only the entries of `peers` (and the enforcement flags) in
    /// endpoint `ep`'s maps.
    fn update_peers(
        &mut self,
        ep: NumericIdentity,
        peers: &BTreeSet<NumericIdentity>,
        out: &mut Vec<Delta>,
    ) {
        let (Some(subject), Some(local)) = (self.ids.get(ep), self.endpoints.get(&ep)) else {
            return;
        };
        let policies = self.selected_policies(&local.selecting);
        let ports = self.ids.ports(ep);
        let fresh = compute_for_peers(&policies, &self.ids, subject, ports, self.mode, peers);
        let Some(current) = self.endpoints.get_mut(&ep).map(|l| &mut l.policy) else {
            return;
        };
        for (direction, cur, fresh) in [
            (Direction::Ingress, &mut current.ingress, &fresh.ingress),
            (Direction::Egress, &mut current.egress, &fresh.egress),
        ] {
            if cur.enforced != fresh.enforced {
                cur.enforced = fresh.enforced;
                out.push(Delta::Enforced {
                    endpoint: ep,
                    direction,
                    enforced: fresh.enforced,
                });
            }
            for &id in peers {
                // Keys sort by identity first: a peer's entries are one range.
                let range = Key {
                    identity: id,
                    protocol: 0,
                    port: 0,
                    prefix: 0,
                }..=Key {
                    identity: id,
                    protocol: u8::MAX,
                    port: u16::MAX,
                    prefix: u8::MAX,
                };
                let old: Vec<Key> = cur.entries.range(range.clone()).map(|(k, _)| *k).collect();
                for key in old {
                    if !fresh.entries.contains_key(&key) {
                        cur.entries.remove(&key);
                        out.push(Delta::Remove {
                            endpoint: ep,
                            direction,
                            key,
                        });
                    }
                }
                for (key, verdict) in fresh.entries.range(range) {
                    if cur.entries.get(key) != Some(verdict) {
                        cur.entries.insert(*key, verdict.clone());
                        out.push(Delta::Upsert {
                            endpoint: ep,
                            direction,
                            key: *key,
                            verdict: verdict.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Sets (`Some`) or forgets (`None`) the named ports of one endpoint,
    /// local or on another node, under the caller's name for it (its
    /// endpoint record's id), with the identity it has. Call it again when
    /// the endpoint's identity or ports change, and with `None` when it
    /// goes. An identity's named ports are the union over its endpoints:
    /// the datapath keeps one map per identity, so pods of one identity
    /// that name ports differently (a rollout changing a port) get the
    /// ports of all of them.
    pub fn set_endpoint_ports(
        &mut self,
        endpoint: &str,
        ports: Option<(NumericIdentity, NamedPorts)>,
    ) -> Vec<Delta> {
        let old = match &ports {
            Some(p) => self.endpoint_ports.insert(endpoint.to_string(), p.clone()),
            None => self.endpoint_ports.remove(endpoint),
        };
        if old == ports {
            return Vec::new();
        }
        let mut touched = BTreeSet::new();
        for (add, (id, named)) in [(false, old), (true, ports)]
            .into_iter()
            .filter_map(|(add, p)| p.map(|p| (add, p)))
        {
            touched.insert(id);
            let counts = self.port_counts.entry(id).or_default();
            for (name, protocol, port) in PortNames::of_endpoint(&named).iter() {
                let key = (name.to_string(), protocol, port);
                if add {
                    *counts.entry(key).or_default() += 1;
                } else if let Some(n) = counts.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&key);
                    }
                }
            }
            if counts.is_empty() {
                self.port_counts.remove(&id);
            }
        }
        let mut out = Vec::new();
        for id in touched {
            let union: PortNames = self
                .port_counts
                .get(&id)
                .into_iter()
                .flat_map(|c| c.keys())
                .map(|(name, protocol, port)| (name.as_str(), *protocol, *port))
                .collect();
            if &union == self.ids.ports(id) {
                continue;
            }
            self.ids.set_ports(id, union);
            // The identity's own endpoints: their ingress rules' names.
            if self
                .endpoints
                .get(&id)
                .is_some_and(|l| l.deps.named_ingress)
            {
                out.extend(self.recompute([id].into()));
            }
            // The identity as a destination of egress rules' names.
            let egress: Vec<NumericIdentity> = self
                .endpoints
                .iter()
                .filter(|(_, l)| l.deps.named_egress)
                .map(|(ep, _)| *ep)
                .collect();
            for ep in egress {
                self.update_peers(ep, &[id].into(), &mut out);
            }
        }
        out
    }

    /// Identity `id`'s named ports (the union over its endpoints).
    pub fn identity_ports(&self, id: NumericIdentity) -> &PortNames {
        self.ids.ports(id)
    }

    /// The named ports of the policy stored under `key` that no endpoint
    /// it concerns declares (so they match nothing now), with field paths:
    /// what validation can only warn about offline.
    pub fn undeclared_named_ports(&self, key: &str) -> Vec<FieldError> {
        self.policies
            .get(key)
            .map(|e| undeclared_named_ports(&e.policy, &self.ids))
            .unwrap_or_default()
    }

    /// Counts references to CIDR prefixes; returns the CIDR identities that
    /// appeared or disappeared.
    fn track_cidrs(&mut self, removed: &[IpNet], added: &[IpNet]) -> Vec<NumericIdentity> {
        let mut changed = Vec::new();
        for net in added {
            let entry = self.cidrs.entry(*net).or_insert_with(|| {
                self.next_cidr += 1;
                (
                    NumericIdentity(axoneme_identity::numeric::LOCAL_SCOPE | self.next_cidr),
                    0,
                )
            });
            entry.1 += 1;
            if entry.1 == 1 {
                let id = entry.0;
                self.ids.insert(id, cidr_labels(net));
                changed.push(id);
            }
        }
        for net in removed {
            if let Some(entry) = self.cidrs.get_mut(net) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    let id = entry.0;
                    self.cidrs.remove(net);
                    self.ids.remove(id);
                    changed.push(id);
                }
            }
        }
        changed
    }

    /// Adds, replaces (`Some`) or deletes (`None`) the policy stored under `key`.
    pub fn set_policy(&mut self, key: &str, policy: Option<Policy>) -> Vec<Delta> {
        self.set_shared_policy(key, policy.map(Arc::new))
    }

    /// [`Engine::set_policy`] with a parse the caller keeps too.
    pub fn set_shared_policy(&mut self, key: &str, policy: Option<Arc<Policy>>) -> Vec<Delta> {
        let new = policy.map(Entry::new);
        let added = new.as_ref().map(|e| e.cidrs.clone()).unwrap_or_default();
        let old = match new {
            Some(e) => self.policies.insert(key.to_string(), e),
            None => self.policies.remove(key),
        };
        if old.is_none() && !self.policies.contains_key(key) {
            return Vec::new();
        }
        let removed = old.as_ref().map(|e| e.cidrs.clone()).unwrap_or_default();
        let selects = |e: &Entry, ids: &Identities, ep: &NumericIdentity| {
            ids.get(*ep).is_some_and(|labels| e.selects(labels))
        };
        let mut selected: BTreeSet<NumericIdentity> = match &old {
            Some(e) => self
                .endpoints
                .keys()
                .filter(|ep| selects(e, &self.ids, ep))
                .copied()
                .collect(),
            None => BTreeSet::new(),
        };
        // The peers the old policy named, before its CIDR identities go
        // (only worth knowing when it concerns a local endpoint).
        let old_peers = old.as_ref().filter(|_| !selected.is_empty()).map(|e| {
            let now = self.policies.get(key).map(|n| &*n.policy);
            changed_peers(&e.policy, now, &self.ids)
        });
        let changed_cidrs = self.track_cidrs(&removed, &added);
        let current = self.policies.get(key);
        if let Some(e) = current {
            selected.extend(
                self.endpoints
                    .keys()
                    .filter(|ep| selects(e, &self.ids, ep))
                    .copied(),
            );
        }
        let new_peers = current
            .filter(|_| !selected.is_empty())
            .map(|e| changed_peers(&e.policy, old.as_ref().map(|o| &*o.policy), &self.ids));
        // CIDR identities that came or went only touch their own entries
        // in endpoints that have CIDR peers.
        let cidr_peers: Vec<NumericIdentity> = self
            .endpoints
            .iter()
            .filter(|(ep, l)| l.deps.cidrs && !selected.contains(ep))
            .map(|(ep, _)| *ep)
            .collect();
        let changed_cidrs: BTreeSet<NumericIdentity> = changed_cidrs.into_iter().collect();
        let mut out = Vec::new();
        // A change whose sections name every peer (or very many) can change
        // every entry: recompute. Otherwise only the entries of the peers
        // its changed sections name, before or after, change.
        let peers = match (old_peers, new_peers) {
            (Some(None), _) | (_, Some(None)) => None,
            (old_peers, new_peers) => {
                let mut peers = old_peers.flatten().unwrap_or_default();
                peers.extend(new_peers.flatten().unwrap_or_default());
                peers.extend(changed_cidrs.iter().copied());
                Some(peers).filter(|p| p.len() <= PER_PEER_LIMIT)
            }
        };
        match peers {
            None => out = self.recompute(selected),
            Some(peers) => {
                for ep in selected {
                    let now = self
                        .policies
                        .get(key)
                        .is_some_and(|e| selects(e, &self.ids, &ep));
                    let Some(local) = self.endpoints.get_mut(&ep) else {
                        continue;
                    };
                    if now {
                        local.selecting.insert(key.to_string());
                    } else {
                        local.selecting.remove(key);
                    }
                    local.deps = dependencies(&self.policies, &local.selecting);
                    self.update_peers(ep, &peers, &mut out);
                }
            }
        }
        if !changed_cidrs.is_empty() {
            for ep in cidr_peers {
                self.update_peers(ep, &changed_cidrs, &mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
