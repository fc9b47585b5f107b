//! Drives the datapath towards what etcd says: identities and valid
//! policies into the policy engine, its deltas into the policy trie, every
//! endpoint address in the cluster into the ipcache, and this node's
//! endpoints into the endpoints map (with the programs attached to their
//! interfaces).
//!
//! Order matters for safety: an endpoint's policy entries are written before
//! its endpoints-map entry (until then its interface drops everything, 152),
//! and enforcement flags change after the entries they guard.
//!
//! The first pass after start adopts what the pinned maps already hold: it
//! writes only differences and removes leftovers, so a restarted agent
//! never opens a window (entries that stay the same are not touched, and
//! conntrack is kept).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use axoneme_bpf_common::{endpoint_flags, EndpointInfo, IpcacheValue, PolicyKey, PolicyValue};
use axoneme_identity::{LabelSet, NumericIdentity};
use axoneme_policy::compile::{Direction, EnforcementMode};
use axoneme_policy::engine::{Delta, Engine};
use axoneme_policy::Policy;
use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use tracing::{debug, info, warn};

use crate::datapath::{policy_entry, policy_key, Datapath, DatapathError};
use crate::node::NodeState;

/// One of this node's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub name: String,
    pub interface: String,
    /// `None` until the operator has assigned one: the interface then drops
    /// everything.
    pub identity: Option<NumericIdentity>,
    pub addresses: Vec<IpAddr>,
}

/// What the datapath should enforce.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub identities: BTreeMap<NumericIdentity, LabelSet>,
    pub policies: BTreeMap<String, Policy>,
    pub local: Vec<LocalEndpoint>,
    /// Every endpoint address in the cluster with its identity.
    pub ipcache: BTreeMap<IpNet, NumericIdentity>,
}

impl Desired {
    /// Reads the node's caches.
    pub fn from_state(state: &NodeState) -> Self {
        let layout = state.layout();
        let identities = state
            .identities()
            .snapshot()
            .into_values()
            .map(|r| (r.id, r.labels))
            .collect();
        let assignments = state.assignments().snapshot();
        let mut local = Vec::new();
        let mut ipcache = BTreeMap::new();
        for (key, record) in state.records().snapshot() {
            let Some((node, name)) = layout.split_endpoint_key(&key) else {
                continue;
            };
            let identity = assignments
                .get(&layout.endpoint_identity(node, name))
                .and_then(|a| a.identity);
            if let Some(id) = identity {
                for a in &record.addresses {
                    match a.parse::<IpAddr>() {
                        Ok(ip) => {
                            ipcache.insert(IpNet::from(ip), id);
                        }
                        Err(_) => debug!(endpoint = %key, address = %a, "not an address; skipped"),
                    }
                }
            }
            if node == state.node() {
                if let Some(interface) = record.interface {
                    local.push(LocalEndpoint {
                        name: name.to_string(),
                        interface,
                        identity,
                        addresses: record
                            .addresses
                            .iter()
                            .filter_map(|a| a.parse().ok())
                            .collect(),
                    });
                }
            }
        }
        Desired {
            identities,
            policies: state.valid_policies_by_key(),
            local,
            ipcache,
        }
    }
}

/// A local endpoint in the endpoints map: enforced with its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    pub interface: String,
    pub ifindex: u32,
    pub info: EndpointInfo,
}

/// What one pass changed (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub policy_writes: usize,
    pub policy_removals: usize,
    pub ipcache_writes: usize,
    pub ipcache_removals: usize,
    pub endpoints: usize,
}

pub struct Reconciler {
    dp: Datapath,
    netns: Option<PathBuf>,
    engine: Engine,
    proxy_port: u16,
    identities: BTreeMap<NumericIdentity, LabelSet>,
    policies: BTreeMap<String, serde_json::Value>,
    /// Endpoint identities in the engine, with how many local endpoints
    /// have each.
    local_ids: BTreeMap<NumericIdentity, usize>,
    /// Interface → ifindex, programs attached.
    attached: BTreeMap<String, u32>,
    endpoints: BTreeMap<u32, EndpointInfo>,
    ipcache: BTreeMap<IpNet, u32>,
    /// Local endpoints by name, as of the last successful pass.
    programmed: BTreeMap<String, Programmed>,
    adopted: bool,
}

impl Reconciler {
    /// `netns`: the network namespace holding the endpoints' interfaces
    /// (the local cluster's node namespaces); `None` for the agent's own.
    pub fn new(
        dp: Datapath,
        netns: Option<PathBuf>,
        mode: EnforcementMode,
        proxy_port: u16,
    ) -> Self {
        Reconciler {
            dp,
            netns,
            engine: Engine::new(mode),
            proxy_port,
            identities: BTreeMap::new(),
            policies: BTreeMap::new(),
            local_ids: BTreeMap::new(),
            attached: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            ipcache: BTreeMap::new(),
            programmed: BTreeMap::new(),
            adopted: false,
        }
    }

    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// Local endpoints whose identity and policy are in the maps.
    pub fn programmed(&self) -> &BTreeMap<String, Programmed> {
        &self.programmed
    }

    /// The policy engine (for status and listings).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Interfaces with the programs attached.
    pub fn attached(&self) -> usize {
        self.attached.len()
    }

    /// One pass towards `want`. On error the maps hold a mix of the old
    /// and new state entry by entry, never an entry that is neither; the
    /// next pass re-reads the maps and diffs them whole (as after a start),
    /// so no delta lost to the error stays missing.
    pub fn reconcile(&mut self, want: &Desired) -> Result<Summary, DatapathError> {
        let result = self.pass(want);
        if result.is_err() {
            self.adopted = false;
        }
        result
    }

    fn pass(&mut self, want: &Desired) -> Result<Summary, DatapathError> {
        let mut summary = Summary::default();
        let mut deltas = Vec::new();

        // The engine: identities, policies, local endpoint identities.
        for (id, labels) in &want.identities {
            if self.identities.get(id) != Some(labels) {
                deltas.extend(self.engine.set_identity(*id, Some(labels.clone())));
                self.identities.insert(*id, labels.clone());
            }
        }
        let gone: Vec<NumericIdentity> = self
            .identities
            .keys()
            .filter(|id| !want.identities.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            deltas.extend(self.engine.set_identity(id, None));
            self.identities.remove(&id);
        }
        for (key, policy) in &want.policies {
            if self.policies.get(key) != Some(&policy.object) {
                if self.proxy_port == 0 && policy.rules.iter().any(|(_, r)| has_l7(r)) {
                    warn!(policy = %key, "L7 rules are enforced at L3/L4 only: this agent runs no L7 proxy (--proxy-port)");
                }
                deltas.extend(self.engine.set_policy(key, Some(policy.clone())));
                self.policies.insert(key.clone(), policy.object.clone());
            }
        }
        let gone: Vec<String> = self
            .policies
            .keys()
            .filter(|k| !want.policies.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            deltas.extend(self.engine.set_policy(&key, None));
            self.policies.remove(&key);
        }
        let mut wanted_ids: BTreeMap<NumericIdentity, usize> = BTreeMap::new();
        for ep in &want.local {
            if let Some(id) = ep.identity.filter(|id| self.identities.contains_key(id)) {
                *wanted_ids.entry(id).or_default() += 1;
            }
        }
        for id in wanted_ids.keys() {
            if !self.local_ids.contains_key(id) {
                deltas.extend(self.engine.add_endpoint(*id));
            }
        }
        for id in self.local_ids.keys() {
            if !wanted_ids.contains_key(id) {
                deltas.extend(self.engine.remove_endpoint(*id));
            }
        }
        self.local_ids = wanted_ids;

        // The policy trie.
        if self.adopted {
            self.apply(&deltas, &mut summary)?;
        } else {
            self.adopt_policy(&mut summary)?;
        }

        // The ipcache: endpoint addresses and the policies' CIDRs.
        let mut ipcache: BTreeMap<IpNet, u32> =
            want.ipcache.iter().map(|(n, id)| (*n, id.0)).collect();
        for (net, id) in self.engine.cidr_identities() {
            ipcache.entry(net).or_insert(id.0);
        }
        if !self.adopted {
            self.ipcache = self
                .dp
                .maps
                .ipcache_entries()?
                .into_iter()
                .map(|(net, v)| (net, v.identity))
                .collect();
        }
        for (net, id) in &ipcache {
            if self.ipcache.get(net) != Some(id) {
                let value = IpcacheValue {
                    identity: *id,
                    ..IpcacheValue::default()
                };
                self.dp.maps.set_ipcache(net, value)?;
                summary.ipcache_writes += 1;
            }
        }
        for net in self.ipcache.keys().filter(|n| !ipcache.contains_key(n)) {
            self.dp.maps.remove_ipcache(net)?;
            summary.ipcache_removals += 1;
        }
        self.ipcache = ipcache;

        // Local endpoints: attach, then declare (after their entries).
        if !self.adopted {
            self.endpoints = self.dp.maps.endpoints()?.into_iter().collect();
        }
        let mut endpoints = BTreeMap::new();
        let mut programmed = BTreeMap::new();
        let mut interfaces = BTreeSet::new();
        for ep in &want.local {
            interfaces.insert(ep.interface.clone());
            let ifindex = match self.attached.get(&ep.interface) {
                Some(i) => *i,
                None => match self.dp.attach(&ep.interface, self.netns.as_deref()) {
                    Ok(i) => {
                        info!(endpoint = %ep.name, interface = %ep.interface, ifindex = i, "datapath attached");
                        self.attached.insert(ep.interface.clone(), i);
                        i
                    }
                    Err(e) => {
                        warn!(endpoint = %ep.name, interface = %ep.interface, error = %crate::error_chain(&e), "cannot attach; retrying on the next pass");
                        continue;
                    }
                },
            };
            let Some(id) = ep.identity.filter(|id| self.local_ids.contains_key(id)) else {
                continue;
            };
            let mut flags = 0;
            if let Some(p) = self.engine.endpoint_policy(id) {
                if p.direction(Direction::Ingress).enforced {
                    flags |= endpoint_flags::INGRESS_ENFORCED;
                }
                if p.direction(Direction::Egress).enforced {
                    flags |= endpoint_flags::EGRESS_ENFORCED;
                }
            }
            let info = EndpointInfo::new(id.0, id.0, flags, &ep.addresses);
            endpoints.insert(ifindex, info);
            programmed.insert(
                ep.name.clone(),
                Programmed {
                    interface: ep.interface.clone(),
                    ifindex,
                    info,
                },
            );
        }
        for (ifindex, info) in &endpoints {
            if self.endpoints.get(ifindex) != Some(info) {
                self.dp.maps.set_endpoint(*ifindex, *info)?;
            } else if !self.adopted {
                // Pins from before local delivery have no address entries.
                self.dp.maps.set_endpoint_addresses(*ifindex, info)?;
            }
        }
        for ifindex in self.endpoints.keys().filter(|i| !endpoints.contains_key(i)) {
            self.dp.maps.remove_endpoint(*ifindex)?;
        }
        summary.endpoints = endpoints.len();
        self.endpoints = endpoints;
        self.programmed = programmed;
        let stale: Vec<String> = self
            .attached
            .keys()
            .filter(|i| !interfaces.contains(*i))
            .cloned()
            .collect();
        for interface in stale {
            self.dp.detach(&interface, self.netns.as_deref());
            self.attached.remove(&interface);
            info!(%interface, "datapath detached");
        }
        self.adopted = true;
        Ok(summary)
    }

    /// Applies the engine's deltas to the trie.
    fn apply(&mut self, deltas: &[Delta], summary: &mut Summary) -> Result<(), DatapathError> {
        for d in deltas {
            match d {
                Delta::Upsert {
                    endpoint,
                    direction,
                    key,
                    verdict,
                } => {
                    let (k, v) =
                        policy_entry(endpoint.0, *direction, key, verdict, self.proxy_port);
                    self.dp.maps.set_policy(&k, v)?;
                    summary.policy_writes += 1;
                }
                Delta::Remove {
                    endpoint,
                    direction,
                    key,
                } => {
                    let k = policy_key(endpoint.0, *direction, key);
                    self.dp.maps.remove_policy(&k)?;
                    summary.policy_removals += 1;
                }
                // Flags are written with the endpoints map.
                Delta::Enforced { .. } => {}
            }
        }
        Ok(())
    }

    /// The first pass: writes the entries that differ from what the pinned
    /// trie holds and removes the rest.
    fn adopt_policy(&mut self, summary: &mut Summary) -> Result<(), DatapathError> {
        let mut want: std::collections::HashMap<(u32, PolicyKey), PolicyValue> =
            std::collections::HashMap::new();
        for id in self.local_ids.keys() {
            let Some(p) = self.engine.endpoint_policy(*id) else {
                continue;
            };
            for dir in [Direction::Ingress, Direction::Egress] {
                for (key, verdict) in &p.direction(dir).entries {
                    let (k, v) = policy_entry(id.0, dir, key, verdict, self.proxy_port);
                    want.insert((k.prefix_len(), k.data()), v);
                }
            }
        }
        let have: std::collections::HashMap<(u32, PolicyKey), PolicyValue> = self
            .dp
            .maps
            .policy_entries()?
            .into_iter()
            .map(|(p, k, v)| ((p, k), v))
            .collect();
        for ((prefix, key), value) in &want {
            let same = have.get(&(*prefix, *key)).is_some_and(|h| {
                h.flags == value.flags
                    && h.proxy_port == value.proxy_port
                    && h.match_type == value.match_type
            });
            if !same {
                self.dp.maps.set_policy(&Key::new(*prefix, *key), *value)?;
                summary.policy_writes += 1;
            }
        }
        for (prefix, key) in have.keys() {
            if !want.contains_key(&(*prefix, *key)) {
                self.dp.maps.remove_policy(&Key::new(*prefix, *key))?;
                summary.policy_removals += 1;
            }
        }
        Ok(())
    }
}

/// Whether `rule` has HTTP rules (ingress or egress).
fn has_l7(rule: &axoneme_policy::Rule) -> bool {
    [false, true]
        .into_iter()
        .flat_map(|egress| rule.allow_sections(egress))
        .any(|s| {
            s.to_ports
                .iter()
                .any(|p| p.rules.as_ref().is_some_and(|r| !r.http.is_empty()))
        })
}
