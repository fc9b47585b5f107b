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
use axoneme_crds::{
    condition, upsert_condition, valid_condition, Condition, Time, CONDITION_ENFORCED,
    CONDITION_VALID,
};
use axoneme_identity::{Layout, NodeStatusRecord, Raw};
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

/// Message of a `Valid=True` condition.
pub const VALID_MESSAGE: &str = "policy is valid";
/// Reasons of the `Enforced` condition.
pub const REASON_ENFORCED: &str = "Enforced";
pub const REASON_LAGGING: &str = "Lagging";
pub const REASON_PENDING: &str = "Pending";
pub const REASON_NOT_STORED: &str = "NotStored";
pub const REASON_NO_NODES: &str = "NoNodes";
/// Lagging nodes named in a message, at most.
const NAMED_NODES: usize = 10;
/// How long a policy's in-progress state is held back before it is
/// written, and then the least time between two writes of it.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The revision of policy `key` a node reports enforcing. Agents may key
/// their report by the full etcd key or by the key below the root
/// (`policies/v1/...`); both are read.
pub fn reported_revision(layout: &Layout, report: &NodeStatusRecord, key: &str) -> Option<i64> {
    report.policies.get(key).copied().or_else(|| {
        key.strip_prefix(layout.root())
            .map(|k| k.trim_start_matches('/'))
            .and_then(|k| report.policies.get(k).copied())
    })
}

/// The nodes that count: those with an agent (a node record), and what
/// each reports enforcing.
#[derive(Debug, Default)]
pub struct Nodes {
    /// Node names, sorted.
    pub live: Vec<String>,
    /// Node name → its report.
    pub reports: BTreeMap<String, Arc<NodeStatusRecord>>,
}

impl Nodes {
    pub fn from_kv(kube: &Kube) -> Self {
        Nodes {
            live: kube.kv.node_records().into_keys().collect(),
            reports: kube.kv.node_reports(),
        }
    }
}

/// The stored version of the policy `j` judges, if it is of the same object:
/// its revision and generation.
pub fn stored_version(j: &Judgement, stored: Option<&Raw>) -> Option<(i64, Option<i64>)> {
    let raw = stored?;
    let (uid, generation) = judge::stored_identity(&raw.value);
    (uid.as_deref() == Some(j.uid.as_str())).then_some((raw.mod_revision, generation))
}

fn generation_text(g: Option<i64>) -> String {
    g.map_or_else(|| "?".to_string(), |g| g.to_string())
}

/// The `Valid` and `Enforced` conditions of the policy `j` judges, given
/// its stored version and the nodes.
pub fn conditions(
    layout: &Layout,
    j: &Judgement,
    stored: Option<(i64, Option<i64>)>,
    nodes: &Nodes,
    now: &Time,
) -> [Condition; 2] {
    let valid = match &j.verdict {
        Ok(_) => valid_condition(true, VALID_MESSAGE, j.generation, now.clone()),
        Err(errors) => {
            let kept = match stored {
                Some((_, g)) => format!(
                    "generation {}, the last valid one, stays enforced",
                    generation_text(g)
                ),
                None => "nothing of this policy is enforced (no generation has been valid)".into(),
            };
            valid_condition(
                false,
                format!("{errors}\n{kept}"),
                j.generation,
                now.clone(),
            )
        }
    };
    let enforced = |ok: bool, reason: &str, message: String| {
        condition(
            CONDITION_ENFORCED,
            ok,
            reason,
            message,
            j.generation,
            now.clone(),
        )
    };
    let enforced = match stored {
        None if j.valid() => enforced(
            false,
            REASON_NOT_STORED,
            format!(
                "generation {} is not in the policy store yet",
                generation_text(j.generation)
            ),
        ),
        None => enforced(
            false,
            REASON_NOT_STORED,
            "nothing to enforce: no generation of this policy has been valid".into(),
        ),
        Some((_, g)) if j.valid() && g != j.generation => enforced(
            false,
            REASON_PENDING,
            format!(
                "generation {} is not in the policy store yet (generation {} is)",
                generation_text(j.generation),
                generation_text(g)
            ),
        ),
        Some(_) if nodes.live.is_empty() => enforced(
            false,
            REASON_NO_NODES,
            "no node runs an agent (no node records in the kvstore)".into(),
        ),
        Some((revision, g)) => {
            let prefix = if j.valid() {
                String::new()
            } else {
                format!("generation {}, the last valid one, is ", generation_text(g))
            };
            let mut lagging = Vec::new();
            for node in &nodes.live {
                let have = nodes
                    .reports
                    .get(node)
                    .and_then(|r| reported_revision(layout, r, &j.key));
                match have {
                    Some(r) if r >= revision => {}
                    Some(r) => lagging.push(format!("{node} (revision {r})")),
                    None => lagging.push(format!("{node} (not reported)")),
                }
            }
            let n = nodes.live.len();
            let done = n - lagging.len();
            if lagging.is_empty() {
                enforced(
                    true,
                    REASON_ENFORCED,
                    format!("{prefix}enforced on {done}/{n} nodes (revision {revision})"),
                )
            } else {
                let more = lagging.len().saturating_sub(NAMED_NODES);
                lagging.truncate(NAMED_NODES);
                let mut names = lagging.join(", ");
                if more > 0 {
                    names.push_str(&format!(" and {more} more"));
                }
                enforced(
                    false,
                    REASON_LAGGING,
                    format!(
                        "{prefix}enforced on {done}/{n} nodes (revision {revision}); lagging: {names}"
                    ),
                )
            }
        }
    };
    [valid, enforced]
}

/// Whether `enforced` (the `Enforced` condition of the policy `j` judges)
/// is a state on its way somewhere: a valid generation not stored yet, or
/// stored but not yet enforced on every node. Such a state is transient
/// unless something is stuck.
pub fn in_progress(j: &Judgement, enforced: &Condition) -> bool {
    match enforced.reason.as_str() {
        REASON_PENDING | REASON_LAGGING => true,
        REASON_NOT_STORED => j.valid(),
        _ => false,
    }
}

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
mod tests {
    use super::*;

    fn judgement(valid: bool, generation: i64) -> Judgement {
        Judgement {
            kind: PolicyKind::CiliumNetworkPolicy,
            key: "axoneme/state/policies/v1/cnp/default/p".into(),
            name: "p".into(),
            namespace: Some("default".into()),
            uid: "u".into(),
            generation: Some(generation),
            verdict: if valid {
                Ok(b"{}".to_vec())
            } else {
                Err("p: spec.ingress[0].toPorts[0].ports[0].port: 80800 is not a valid port (1-65535)".into())
            },
        }
    }

    fn nodes(reports: &[(&str, Option<i64>)]) -> Nodes {
        let mut n = Nodes::default();
        for (name, rev) in reports {
            n.live.push(name.to_string());
            if let Some(rev) = rev {
                let mut r = NodeStatusRecord {
                    node: name.to_string(),
                    ..Default::default()
                };
                // Keyed below the root, as an agent may report it.
                r.policies.insert("policies/v1/cnp/default/p".into(), *rev);
                n.reports.insert(name.to_string(), Arc::new(r));
            }
        }
        n
    }

    fn now() -> Time {
        Time(Timestamp::from_second(100).unwrap())
    }

    #[test]
    fn enforced_when_every_node_runs_the_current_revision() {
        let l = Layout::default();
        let [valid, enforced] = conditions(
            &l,
            &judgement(true, 2),
            Some((42, Some(2))),
            &nodes(&[("a", Some(42)), ("b", Some(42)), ("c", Some(43))]),
            &now(),
        );
        assert_eq!(
            (valid.status.as_str(), valid.message.as_str()),
            ("True", VALID_MESSAGE)
        );
        assert_eq!(enforced.status, "True");
        assert_eq!(enforced.message, "enforced on 3/3 nodes (revision 42)");
        assert_eq!(enforced.observed_generation, Some(2));
    }

    #[test]
    fn lagging_nodes_are_named() {
        let l = Layout::default();
        let [_, enforced] = conditions(
            &l,
            &judgement(true, 2),
            Some((42, Some(2))),
            &nodes(&[("a", Some(42)), ("b", Some(40)), ("c", None)]),
            &now(),
        );
        assert_eq!(enforced.status, "False");
        assert_eq!(enforced.reason, REASON_LAGGING);
        assert_eq!(
            enforced.message,
            "enforced on 1/3 nodes (revision 42); lagging: b (revision 40), c (not reported)"
        );
    }

    #[test]
    fn an_invalid_edit_says_which_generation_stays() {
        let l = Layout::default();
        let [valid, enforced] = conditions(
            &l,
            &judgement(false, 3),
            Some((42, Some(2))),
            &nodes(&[("a", Some(42))]),
            &now(),
        );
        assert_eq!(valid.status, "False");
        assert!(valid.message.starts_with("p: spec.ingress[0].toPorts"));
        assert!(valid
            .message
            .ends_with("generation 2, the last valid one, stays enforced"));
        assert_eq!(valid.observed_generation, Some(3));
        assert_eq!(enforced.status, "True");
        assert_eq!(
            enforced.message,
            "generation 2, the last valid one, is enforced on 1/1 nodes (revision 42)"
        );
        let [valid, enforced] = conditions(&l, &judgement(false, 1), None, &nodes(&[]), &now());
        assert!(valid.message.ends_with("no generation has been valid)"));
        assert_eq!(enforced.reason, REASON_NOT_STORED);
    }

    fn wanted_state(reason: &str, changed: bool, generation: i64) -> Wanted {
        let j = judgement(true, generation);
        let enforced = condition(
            CONDITION_ENFORCED,
            reason == REASON_ENFORCED,
            reason,
            "",
            Some(generation),
            now(),
        );
        Wanted {
            in_progress: in_progress(&j, &enforced),
            j: Arc::new(j),
            changed,
            conditions: vec![enforced],
        }
    }

    #[test]
    fn in_progress_states_are_held_then_paced_and_final_ones_written_at_once() {
        let mut m = Memory::default();
        let key = "axoneme/state/policies/v1/cnp/default/p";
        let t0 = Instant::now();
        // First seen in progress: held for SETTLE.
        let w = wanted_state(REASON_NOT_STORED, true, 1);
        assert_eq!(m.due(key, &w, t0), Err(t0 + SETTLE));
        let w = wanted_state(REASON_LAGGING, true, 1);
        assert_eq!(m.due(key, &w, t0 + SETTLE / 2), Err(t0 + SETTLE));
        // Settled within the hold: one write, of the final state.
        let w = wanted_state(REASON_ENFORCED, true, 1);
        assert_eq!(m.due(key, &w, t0 + SETTLE / 2), Ok(true));
        // A new generation stuck in progress: written after SETTLE, then
        // at most once per SETTLE.
        let w = wanted_state(REASON_PENDING, true, 2);
        assert_eq!(m.due(key, &w, t0 + SETTLE), Err(t0 + SETTLE * 2));
        let w = wanted_state(REASON_LAGGING, true, 2);
        assert_eq!(m.due(key, &w, t0 + SETTLE * 2), Ok(true));
        assert_eq!(
            m.due(key, &w, t0 + SETTLE * 2 + SETTLE / 2),
            Err(t0 + SETTLE * 3)
        );
        assert_eq!(m.due(key, &w, t0 + SETTLE * 3), Ok(true));
        // Nothing changed: nothing to write, held or not.
        let w = wanted_state(REASON_LAGGING, false, 2);
        assert_eq!(m.due(key, &w, t0 + SETTLE * 4), Ok(false));
        // Invalid with nothing stored is final.
        let j = judgement(false, 3);
        let enforced = condition(
            CONDITION_ENFORCED,
            false,
            REASON_NOT_STORED,
            "",
            Some(3),
            now(),
        );
        assert!(!in_progress(&j, &enforced));
    }

    #[test]
    fn an_unseen_write_counts_until_the_watch_shows_a_newer_version() {
        let m = Memory::default();
        let key = "k";
        let mut obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "resourceVersion": "7"},
        }))
        .unwrap();
        assert!(m.current(key, &obj).is_empty());
        let written = wanted_state(REASON_ENFORCED, true, 1).conditions;
        m.unseen.lock().unwrap().insert(
            key.into(),
            Unseen {
                replaced: Some("7".into()),
                conditions: written.clone(),
            },
        );
        assert_eq!(m.current(key, &obj), written);
        obj.metadata.resource_version = Some("8".into());
        assert!(m.current(key, &obj).is_empty());
        assert!(m.unseen.lock().unwrap().is_empty());
    }

    #[test]
    fn pending_and_no_nodes() {
        let l = Layout::default();
        let [_, e] = conditions(
            &l,
            &judgement(true, 3),
            Some((42, Some(2))),
            &nodes(&[("a", Some(42))]),
            &now(),
        );
        assert_eq!(
            (e.status.as_str(), e.reason.as_str()),
            ("False", REASON_PENDING)
        );
        let [_, e] = conditions(
            &l,
            &judgement(true, 2),
            Some((42, Some(2))),
            &nodes(&[]),
            &now(),
        );
        assert_eq!(e.reason, REASON_NO_NODES);
    }
}
