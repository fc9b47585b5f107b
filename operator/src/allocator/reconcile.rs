//! Endpoint records to desired assignments: the leader's view of the
//! endpoints (kept from the watch cache's events and resyncs), the
//! references that keep an identity alive, choosing a free number, and
//! [`Allocator::reconcile`], which decides what one endpoint's assignment
//! should be and starts the write that makes it so.

use std::sync::Arc;
use std::time::Instant;

use axoneme_identity::{EndpointIdentity, EndpointRecord, NumericIdentity, Raw, WatchCache};
use tracing::{debug, warn};

use super::{Allocator, Endpoint, Outcome};
use crate::metrics::label;

fn same_answer(a: &EndpointIdentity, b: &EndpointIdentity) -> bool {
    a.identity == b.identity
        && a.error == b.error
        && a.labels == b.labels
        && a.endpoint_revision == b.endpoint_revision
}

impl Allocator {
    /// Replaces the endpoint view with the cache's snapshot.
    pub(super) fn resync(&mut self, cache: &WatchCache<Raw>) {
        let snapshot = cache.snapshot();
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|k| !snapshot.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.on_delete(&key);
        }
        for (key, raw) in snapshot {
            self.on_upsert(key, raw);
        }
        // Assignments whose endpoint no longer exists.
        let orphans: Vec<String> = self
            .written
            .keys()
            .filter(|k| !self.endpoints.contains_key(*k))
            .cloned()
            .collect();
        for key in orphans {
            self.reconcile(&key);
        }
    }

    fn parse_endpoint(&self, key: &str, raw: &Raw) -> Outcome {
        let record: EndpointRecord = match serde_json::from_slice(&raw.value) {
            Ok(r) => r,
            Err(e) => return Outcome::Invalid(format!("invalid endpoint record JSON: {e}")),
        };
        if let Some((node, id)) = self.layout.split_endpoint_key(key) {
            if record.node != node || record.id != id {
                return Outcome::Invalid(format!(
                    "endpoint record names {}/{} but is stored under {node}/{id}",
                    record.node, record.id
                ));
            }
        }
        let labels = match record.label_set() {
            Ok(l) => l,
            Err(e) => return Outcome::Invalid(format!("invalid labels: {e}")),
        };
        let relevant = self.cfg.filter.filter(&labels);
        if relevant.is_empty() {
            return Outcome::Invalid(
                "endpoint has no identity-relevant labels (see the label filter)".into(),
            );
        }
        Outcome::Labels(relevant.canonical())
    }

    fn add_ref(&mut self, canonical: &str) {
        let n = self.refs.entry(canonical.to_string()).or_default();
        *n += 1;
        if *n == 1 {
            if let Some(id) = self.by_labels.get(canonical) {
                self.stale.remove(id);
            }
        }
    }

    fn drop_ref(&mut self, canonical: &str) {
        if let Some(n) = self.refs.get_mut(canonical) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(canonical);
                if let Some(id) = self.by_labels.get(canonical) {
                    self.stale.insert(*id, Instant::now());
                }
            }
        }
    }

    pub(super) fn on_upsert(&mut self, key: String, raw: Arc<Raw>) {
        if self
            .endpoints
            .get(&key)
            .is_some_and(|e| e.mod_revision == raw.mod_revision)
        {
            return;
        }
        let outcome = self.parse_endpoint(&key, &raw);
        if let Outcome::Invalid(reason) = &outcome {
            debug!(endpoint = %key, %reason, "invalid endpoint record");
            self.metrics
                .endpoint_errors
                .get_or_create(&label("reason", error_kind(reason)))
                .inc();
        }
        if let Outcome::Labels(c) = &outcome {
            self.add_ref(c);
        }
        self.unanswered.insert(key.clone(), Instant::now());
        let old = self.endpoints.insert(
            key.clone(),
            Endpoint {
                mod_revision: raw.mod_revision,
                outcome,
            },
        );
        if let Some(Endpoint {
            outcome: Outcome::Labels(c),
            ..
        }) = old
        {
            self.drop_ref(&c);
        }
        self.reconcile(&key);
    }

    pub(super) fn on_delete(&mut self, key: &str) {
        self.unanswered.remove(key);
        if let Some(Endpoint {
            outcome: Outcome::Labels(c),
            ..
        }) = self.endpoints.remove(key)
        {
            self.drop_ref(&c);
        }
        self.exhausted.remove(key);
        self.reconcile(key);
    }

    /// Picks a free number, moving a cursor through the range so a freed
    /// number is reused as late as possible.
    fn reserve_id(&mut self) -> Option<u32> {
        let range = self.cfg.range;
        let (lo, hi) = (u32::from(range.min), u32::from(range.max));
        let base = u32::from(range.cluster_id) << 16;
        for _ in 0..range.size() {
            let n = self.cursor;
            self.cursor = if n >= hi { lo } else { n + 1 };
            let id = base | n;
            if !self.by_id.contains_key(&id) && !self.reserved_ids.contains(&id) {
                self.reserved_ids.insert(id);
                return Some(id);
            }
        }
        None
    }

    fn answer(
        &self,
        ep: &Endpoint,
        identity: Option<u32>,
        error: Option<String>,
    ) -> EndpointIdentity {
        EndpointIdentity {
            identity: identity.map(NumericIdentity),
            labels: match &ep.outcome {
                Outcome::Labels(c) => c.clone(),
                Outcome::Invalid(_) => String::new(),
            },
            error,
            endpoint_revision: ep.mod_revision,
            allocator: self.lead.holder.clone(),
        }
    }

    /// Moves one endpoint's assignment towards what its record asks for.
    pub(super) fn reconcile(&mut self, key: &str) {
        if self.busy.contains(key) || !self.synced {
            return;
        }
        let Some(ep) = self.endpoints.get(key) else {
            if self.written.contains_key(key) {
                self.spawn_put(key.to_string(), None);
            }
            return;
        };
        let (mod_revision, outcome) = (ep.mod_revision, ep.outcome.clone());
        let ep = &Endpoint {
            mod_revision,
            outcome,
        };
        let target = match &ep.outcome {
            Outcome::Invalid(msg) => self.answer(ep, None, Some(msg.clone())),
            Outcome::Labels(c) => {
                if self.deleting.contains(c) || self.waiting.contains_key(c) {
                    let c = c.clone();
                    self.waiting.entry(c).or_default().insert(key.to_string());
                    return;
                }
                if let Some(id) = self.by_labels.get(c) {
                    self.exhausted.remove(key);
                    self.answer(ep, Some(*id), None)
                } else if let Some(id) = self.reserve_id() {
                    self.exhausted.remove(key);
                    let c = c.clone();
                    let assignment = self.answer(ep, Some(id), None);
                    self.spawn_create(c, id, key.to_string(), assignment);
                    return;
                } else {
                    self.metrics
                        .identity_allocation_failures
                        .get_or_create(&label("reason", "exhausted"))
                        .inc();
                    self.exhausted.insert(key.to_string());
                    let msg = format!(
                        "identity range exhausted: all {} identities of {} are in use",
                        self.cfg.range.size(),
                        self.cfg.range
                    );
                    warn!(endpoint = %key, "{msg}");
                    self.answer(ep, None, Some(msg))
                }
            }
        };
        if self
            .written
            .get(key)
            .is_some_and(|w| same_answer(w, &target))
        {
            return;
        }
        self.spawn_put(key.to_string(), Some(target));
    }
}

/// A short, bounded label value for the error metric.
fn error_kind(reason: &str) -> &'static str {
    if reason.starts_with("invalid endpoint record JSON") {
        "json"
    } else if reason.starts_with("invalid labels") {
        "labels"
    } else if reason.starts_with("endpoint record names") {
        "key_mismatch"
    } else {
        "no_relevant_labels"
    }
}
