//! What a policy's `Valid` and `Enforced` conditions say: from its
//! judgement, the version of it in the policy store, and what each live
//! node reports enforcing. Pure functions of those; the status loop
//! decides when to write them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axoneme_crds::{condition, valid_condition, Condition, Time, CONDITION_ENFORCED};
use axoneme_identity::{Layout, NodeStatusRecord, Raw};

use crate::k8s::judge::{self, Judgement};
use crate::k8s::Kube;

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
