//! The leader's status loop: each CiliumNetworkPolicy's and
//! CiliumClusterwideNetworkPolicy's `Valid` and `Enforced` conditions,
//! written by server-side apply to `/status` under [`FIELD_MANAGER`].
//!
//! - `Valid` (Cilium's): whether the current generation validates; when it
//!   does not, the message has the field-path errors and says which
//!   generation stays enforced (the mirror keeps the last valid one).
//! - `Enforced` (Axoneme's): aggregated from every live node's report
//!   (`node-status/v1/<node>`): `True` once every node with an agent
//!   enforces the policy's current revision in the store, `False` naming
//!   the nodes that lag. Cilium dropped per-node policy status because every
//!   node writing every policy's status did not scale; one leader writing
//!   one aggregate does.
//!
//! A condition is written only when it changes (`lastTransitionTime` moves
//! only when the status does), so a pass over unchanged policies writes
//! nothing. Both conditions go in one write, and a burst writes each policy
//! about once, with its final state:
//! - a state still in progress (valid but not stored yet, pending, lagging)
//!   is held back for [`SETTLE`] from when this leader first sees the
//!   generation in progress, and then written at most once per [`SETTLE`],
//!   so a policy that settles within that time (the usual case, also in a
//!   burst) gets one write; a final state (enforced everywhere, invalid with
//!   nothing to enforce, no nodes) is written at once;
//! - a write the policy watch has not shown yet counts as the object's
//!   status (see [`Unseen`]), so a pass that runs before the watch event
//!   arrives does not write the same conditions again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axoneme_crds::k8s_openapi::jiff::Timestamp;
use axoneme_crds::kube::api::{Api, DynamicObject, Patch, PatchParams};
use axoneme_crds::kube::Client;
use axoneme_crds::{upsert_condition, Condition, Time, CONDITION_ENFORCED, CONDITION_VALID};
use axoneme_identity::{Layout, Raw};
use axoneme_policy::PolicyKind;
use futures::FutureExt;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::index::{ccnp_resource, cnp_resource};
use super::judge::{self, Judge, Judgement};
use super::pace::Pacer;
use super::views::{execute, Op};
use super::{Kube, FIELD_MANAGER};

mod conditions;

pub use conditions::{
    conditions, in_progress, reported_revision, stored_version, Nodes, REASON_ENFORCED,
    REASON_LAGGING, REASON_NOT_STORED, REASON_NO_NODES, REASON_PENDING, VALID_MESSAGE,
};

/// How long a policy's in-progress state is held back before it is
/// written, and then the least time between two writes of it.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The conditions an object's status holds now.
fn current_conditions(obj: &DynamicObject) -> Vec<Condition> {
    obj.data
        .pointer("/status/conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

/// The status write for `obj` (its name and the apply patch), if its
/// conditions change.
pub fn status_patch(
    judge: &Judge,
    layout: &Layout,
    kind: PolicyKind,
    obj: &DynamicObject,
    policies: &BTreeMap<String, Arc<Raw>>,
    nodes: &Nodes,
    now: &Time,
) -> Option<(String, serde_json::Value)> {
    let j = judge.judge(layout, kind, obj)?;
    let w = wanted(layout, j, current_conditions(obj), policies, nodes, now);
    w.changed
        .then(|| (w.j.name.clone(), apply_patch(kind, &w.conditions)))
}

/// The server-side apply patch that writes `conditions` (ours) to the
/// status of a policy of `kind`.
pub fn apply_patch(kind: PolicyKind, conditions: &[Condition]) -> serde_json::Value {
    json!({
        "apiVersion": judge::api_version(kind),
        "kind": kind.as_str(),
        "status": { "conditions": conditions },
    })
}

/// What one policy's status should be.
pub struct Wanted {
    pub j: Arc<Judgement>,
    /// Whether it differs from the status it has.
    pub changed: bool,
    /// See [`in_progress`].
    pub in_progress: bool,
    /// Our conditions (`Valid`, `Enforced`) as they should be.
    pub conditions: Vec<Condition>,
}

/// What the status of the policy `j` judges, whose conditions are
/// `current`, should be.
fn wanted(
    layout: &Layout,
    j: Arc<Judgement>,
    mut current: Vec<Condition>,
    policies: &BTreeMap<String, Arc<Raw>>,
    nodes: &Nodes,
    now: &Time,
) -> Wanted {
    let stored = stored_version(&j, policies.get(&j.key).map(Arc::as_ref));
    let [valid, enforced] = conditions(layout, &j, stored, nodes, now);
    let in_progress = in_progress(&j, &enforced);
    let mut changed = false;
    for c in [valid, enforced] {
        changed |= upsert_condition(&mut current, c);
    }
    current.retain(|c| c.type_ == CONDITION_VALID || c.type_ == CONDITION_ENFORCED);
    Wanted {
        j,
        changed,
        in_progress,
        conditions: current,
    }
}

/// A status write of ours the policy watch may not have shown yet: the
/// object's `resourceVersion` it replaced and the conditions it wrote.
/// While the reflector still has that version, these are the object's
/// conditions.
#[derive(Debug, Clone)]
pub struct Unseen {
    pub replaced: Option<String>,
    pub conditions: Vec<Condition>,
}

/// A policy whose in-progress state is held back, for one generation.
#[derive(Debug)]
struct Held {
    uid: String,
    generation: Option<i64>,
    /// When its state may be written next.
    until: Instant,
}

/// What the status loop keeps between passes.
#[derive(Default)]
pub struct Memory {
    held: HashMap<String, Held>,
    unseen: Arc<Mutex<HashMap<String, Unseen>>>,
}

impl Memory {
    /// The conditions `obj` has, counting our writes its watch has not
    /// shown yet (and forgetting those it has).
    fn current(&self, key: &str, obj: &DynamicObject) -> Vec<Condition> {
        let mut unseen = self.unseen.lock().expect("poisoned");
        if let Some(u) = unseen.get(key) {
            if u.replaced.is_some() && u.replaced == obj.metadata.resource_version {
                return u.conditions.clone();
            }
            unseen.remove(key);
        }
        current_conditions(obj)
    }

    /// Whether to write now the state `w` of the policy under `key`;
    /// when not, the time to look again.
    fn due(&mut self, key: &str, w: &Wanted, now: Instant) -> Result<bool, Instant> {
        if !w.in_progress {
            self.held.remove(key);
            return Ok(w.changed);
        }
        let j = &w.j;
        let held = match self.held.get_mut(key) {
            Some(h) if h.uid == j.uid && h.generation == j.generation => h,
            _ => {
                // First seen in progress at this generation: hold.
                self.held.insert(
                    key.to_string(),
                    Held {
                        uid: j.uid.clone(),
                        generation: j.generation,
                        until: now + SETTLE,
                    },
                );
                return if w.changed {
                    Err(now + SETTLE)
                } else {
                    Ok(false)
                };
            }
        };
        if !w.changed {
            return Ok(false);
        }
        if now < held.until {
            return Err(held.until);
        }
        held.until = now + SETTLE;
        Ok(true)
    }

    /// Forgets policies not in `live`.
    fn retain(&mut self, live: &HashSet<String>) {
        self.held.retain(|k, _| live.contains(k));
        self.unseen
            .lock()
            .expect("poisoned")
            .retain(|k, _| live.contains(k));
    }
}

/// Runs the status loop until `term` is cancelled.
pub async fn run(kube: &Kube, layout: &Layout, term: &CancellationToken) {
    let mut pacer = Pacer::new(kube.changes());
    let mut memory = Memory::default();
    info!(field_manager = FIELD_MANAGER, "writing policy conditions");
    while pacer.wait(term).await {
        let (ok, wake) = pass(kube, layout, &mut memory).await;
        pacer.wake_at(wake);
        if ok {
            pacer.succeeded();
        } else {
            pacer.failed();
        }
    }
}

/// One pass over every CNP and CCNP: `false` if a write failed, and when
/// a held-back state is due.
async fn pass(kube: &Kube, layout: &Layout, memory: &mut Memory) -> (bool, Option<Instant>) {
    let policies = kube.kv.policies.snapshot();
    let nodes = Nodes::from_kv(kube);
    let now = Time(Timestamp::now());
    let instant = Instant::now();
    let mut ops = Vec::new();
    let mut live = HashSet::new();
    let mut wake: Option<Instant> = None;
    let kinds = [
        (PolicyKind::CiliumNetworkPolicy, &kube.index.cnp),
        (PolicyKind::CiliumClusterwideNetworkPolicy, &kube.index.ccnp),
    ];
    for (kind, reflected) in kinds {
        for obj in reflected.state() {
            if obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(j) = kube.judge.judge(layout, kind, &obj) else {
                continue;
            };
            live.insert(j.key.clone());
            let current = memory.current(&j.key, &obj);
            let w = wanted(layout, j.clone(), current, &policies, &nodes, &now);
            match memory.due(&j.key, &w, instant) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(at) => {
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                    continue;
                }
            }
            let patch = apply_patch(kind, &w.conditions);
            debug!(name = %j.name, %patch, "status changes");
            let mut op = status_op(
                kube.client.clone(),
                kind,
                obj.metadata.namespace.as_deref(),
                j.name.clone(),
                patch,
            );
            // Once written, these are its conditions until the watch shows
            // the write.
            let (unseen, key) = (memory.unseen.clone(), j.key.clone());
            let record = Unseen {
                replaced: obj.metadata.resource_version.clone(),
                conditions: w.conditions,
            };
            let fut = op.fut;
            op.fut = async move {
                let r = fut.await;
                if r.is_ok() {
                    unseen.lock().expect("poisoned").insert(key, record);
                }
                r
            }
            .boxed();
            ops.push(op);
        }
    }
    memory.retain(&live);
    (execute(&kube.metrics.kube, ops).await, wake)
}

/// The server-side apply of `patch` to the `/status` of policy `name`.
pub fn status_op(
    client: Client,
    kind: PolicyKind,
    namespace: Option<&str>,
    name: String,
    patch: serde_json::Value,
) -> Op {
    let (api, resource): (Api<DynamicObject>, _) = match kind {
        PolicyKind::CiliumNetworkPolicy => (
            Api::namespaced_with(client, namespace.unwrap_or("default"), &cnp_resource()),
            "ciliumnetworkpolicies/status",
        ),
        _ => (
            Api::all_with(client, &ccnp_resource()),
            "ciliumclusterwidenetworkpolicies/status",
        ),
    };
    Op {
        resource,
        verb: "patch",
        what: format!("{}/{name}", namespace.unwrap_or("_")),
        fut: async move {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch_status(&name, &params, &Patch::Apply(&patch))
                .await
                .map(|_| ())
        }
        .boxed(),
    }
}

#[cfg(test)]
mod tests;
