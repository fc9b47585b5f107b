//! The policy sync unit: the engine's entries for this node's endpoint
//! identities into the policy trie. It applies the engine's deltas; after a
//! start or a failed pass it adopts instead (reads the trie and writes only
//! what differs, removes leftovers), so a restart or an error never leaves
//! a delta missing, and unchanged entries (and their counters) are never
//! touched.

use std::collections::{BTreeMap, HashMap};

use axoneme_bpf_common::{PolicyKey, PolicyValue};
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
                    w.set_policy(&k, v)?;
                    changes.writes += 1;
                }
                Delta::Remove {
                    endpoint,
                    direction,
                    key,
                } => {
                    w.remove_policy(&policy_key(endpoint.0, *direction, key))?;
                    changes.removals += 1;
                }
                // Flags are written with the endpoints map.
                Delta::Enforced { .. } => {}
            }
        }
        Ok(())
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
        for ((prefix, key), value) in &want {
            // Counters are the kernel's: compare what the agent writes.
            let same = have.get(&(*prefix, *key)).is_some_and(|h| {
                h.flags == value.flags
                    && h.proxy_port == value.proxy_port
                    && h.match_type == value.match_type
            });
            if !same {
                w.set_policy(&Key::new(*prefix, *key), *value)?;
                changes.writes += 1;
            }
        }
        for (prefix, key) in have.keys() {
            if !want.contains_key(&(*prefix, *key)) {
                w.remove_policy(&Key::new(*prefix, *key))?;
                changes.removals += 1;
            }
        }
        Ok(())
    }
}
