//! The policy sync unit: the engine's entries for this node's endpoint
//! identities into the policy trie. It applies the engine's deltas; after a
//! start or a failed pass it adopts instead (reads the trie and writes only
//! what differs, removes leftovers), so a restart or an error never leaves
//! a delta missing, and unchanged entries (and their counters) are never
//! touched.
//!
//! A pass writes in an order that fails closed ([`Step`]): a pass that
//! stops part-way (the trie full, any error) leaves a trie that allows at
//! most what the old entries allowed, less what the new ones deny.

use std::collections::{BTreeMap, HashMap};

use axoneme_bpf_common::{policy_flags, PolicyKey, PolicyValue};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::Direction;
use axoneme_policy::engine::{Delta, Engine};
use aya::maps::lpm_trie::Key;

use super::writer::MapWriter;
use super::Changes;
use crate::datapath::{policy_entry, policy_key, DatapathError};

pub struct PolicyUnit {
    proxy_port: u16,
    /// Whether the trie is known to match the engine (deltas suffice).
    adopted: bool,
}

impl PolicyUnit {
    pub fn new(proxy_port: u16) -> Self {
        PolicyUnit {
            proxy_port,
            adopted: false,
        }
    }

    /// Forgets what the trie holds: the next pass adopts it.
    pub fn invalidate(&mut self) {
        self.adopted = false;
    }

    pub fn sync(
        &mut self,
        engine: &Engine,
        local_ids: &BTreeMap<NumericIdentity, usize>,
        deltas: &[Delta],
        w: &mut impl MapWriter,
    ) -> Result<Changes, DatapathError> {
        let mut changes = Changes::default();
        let result = if self.adopted {
            self.apply(deltas, w, &mut changes)
        } else {
            self.adopt(engine, local_ids, w, &mut changes)
        };
        self.adopted = result.is_ok();
        result.map(|()| changes)
    }

    fn apply(
        &self,
        deltas: &[Delta],
        w: &mut impl MapWriter,
        changes: &mut Changes,
    ) -> Result<(), DatapathError> {
        // The last delta for each entry is what the trie must hold.
        let mut order: Vec<(u32, PolicyKey)> = Vec::new();
        let mut last: HashMap<(u32, PolicyKey), Option<PolicyValue>> = HashMap::new();
        for d in deltas {
            let (key, value) = match d {
                Delta::Upsert {
                    endpoint,
                    direction,
                    key,
                    verdict,
                } => {
                    let (k, v) =
                        policy_entry(endpoint.0, *direction, key, verdict, self.proxy_port);
                    (k, Some(v))
                }
                Delta::Remove {
                    endpoint,
                    direction,
                    key,
                } => (policy_key(endpoint.0, *direction, key), None),
                // Flags are written with the endpoints map.
                Delta::Enforced { .. } => continue,
            };
            let id = (key.prefix_len(), key.data());
            if last.insert(id, value).is_none() {
                order.push(id);
            }
        }
        let mut ops = Vec::with_capacity(order.len());
        for id in order {
            let value = last[&id];
            // A removal's step depends on what the trie holds there.
            let deny = match value {
                Some(v) => is_deny(&v),
                None => w
                    .policy(&Key::new(id.0, id.1))?
                    .is_some_and(|v| is_deny(&v)),
            };
            ops.push((Step::of(value.is_some(), deny), id, value));
        }
        write_in_order(ops, w, changes)
    }

    fn adopt(
        &self,
        engine: &Engine,
        local_ids: &BTreeMap<NumericIdentity, usize>,
        w: &mut impl MapWriter,
        changes: &mut Changes,
    ) -> Result<(), DatapathError> {
        let mut want: HashMap<(u32, PolicyKey), PolicyValue> = HashMap::new();
        for id in local_ids.keys() {
            let Some(p) = engine.endpoint_policy(*id) else {
                continue;
            };
            for dir in [Direction::Ingress, Direction::Egress] {
                for (key, verdict) in &p.direction(dir).entries {
                    let (k, v) = policy_entry(id.0, dir, key, verdict, self.proxy_port);
                    want.insert((k.prefix_len(), k.data()), v);
                }
            }
        }
        let have: HashMap<(u32, PolicyKey), PolicyValue> = w
            .policy_entries()?
            .into_iter()
            .map(|(p, k, v)| ((p, k), v))
            .collect();
        let mut ops = Vec::new();
        for (id, value) in &want {
            // Counters are the kernel's: compare what the agent writes.
            let same = have.get(id).is_some_and(|h| {
                h.flags == value.flags
                    && h.proxy_port == value.proxy_port
                    && h.match_type == value.match_type
            });
            if !same {
                ops.push((Step::of(true, is_deny(value)), *id, Some(*value)));
            }
        }
        for (id, value) in &have {
            if !want.contains_key(id) {
                ops.push((Step::of(false, is_deny(value)), *id, None));
            }
        }
        write_in_order(ops, w, changes)
    }
}

/// The order of a pass's writes. Deny entries go in first and come out
/// last; allows come out before denies do and go in last. Stopped after
/// any write, the trie allows at most what the old entries allowed, less
/// what the new ones deny: never an allow without the denies beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    SetDeny,
    RemoveAllow,
    RemoveDeny,
    SetAllow,
}

impl Step {
    fn of(set: bool, deny: bool) -> Step {
        match (set, deny) {
            (true, true) => Step::SetDeny,
            (false, false) => Step::RemoveAllow,
            (false, true) => Step::RemoveDeny,
            (true, false) => Step::SetAllow,
        }
    }
}

fn is_deny(v: &PolicyValue) -> bool {
    v.flags & policy_flags::DENY != 0
}

/// Writes `ops` (set when there is a value, else remove) by [`Step`],
/// then in key order (so that a trie short of room always takes the same
/// entries: the lower ports first); the first error stops the pass.
fn write_in_order(
    mut ops: Vec<(Step, (u32, PolicyKey), Option<PolicyValue>)>,
    w: &mut impl MapWriter,
    changes: &mut Changes,
) -> Result<(), DatapathError> {
    ops.sort_by_key(|(step, (prefix, k), _)| {
        let port = u16::from_be(k.dport);
        (
            *step,
            k.endpoint_id,
            k.direction,
            k.identity,
            k.protocol,
            port,
            *prefix,
        )
    });
    for (_, (prefix, key), value) in ops {
        let key = Key::new(prefix, key);
        match value {
            Some(v) => {
                w.set_policy(&key, v)?;
                changes.writes += 1;
            }
            None => {
                w.remove_policy(&key)?;
                changes.removals += 1;
            }
        }
    }
    Ok(())
}
