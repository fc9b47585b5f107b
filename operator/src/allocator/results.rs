//! The leader's state after a write finished: each [`Done`] updates the
//! identity tables and references, wakes the endpoints that waited on its
//! label set, and reconciles the endpoint again; a fenced or failed write
//! ends the term ([`LeaderExit`]).

use std::time::Instant;

use tracing::{info, warn};

use super::txn::Done;
use super::{Allocator, IdEntry, LeaderExit};
use crate::metrics::label;

impl Allocator {
    /// An assignment for `ep` is written: the time since its record
    /// revision was seen, once per revision.
    fn answered(&mut self, ep: &str) {
        if let Some(seen) = self.unanswered.remove(ep) {
            self.metrics
                .identity_assignment_duration
                .observe(seen.elapsed().as_secs_f64());
        }
    }

    fn wake_waiters(&mut self, canonical: &str) {
        if let Some(waiters) = self.waiting.remove(canonical) {
            for ep in waiters {
                self.reconcile(&ep);
            }
        }
    }

    pub(super) fn on_done(&mut self, done: Done) -> Option<LeaderExit> {
        match done {
            Done::Batch(all) => {
                // A fenced or failed member ends the term; handle the rest first.
                let mut exit = None;
                for d in all {
                    if let Some(e) = self.on_done(d) {
                        exit.get_or_insert(e);
                    }
                }
                return exit;
            }
            Done::Put { ep, written } => {
                self.busy.remove(&ep);
                match written {
                    Some(a) => {
                        self.metrics.assignments_written.inc();
                        self.answered(&ep);
                        self.written.insert(ep.clone(), a);
                    }
                    None => {
                        self.written.remove(&ep);
                    }
                }
                self.reconcile(&ep);
            }
            Done::Created {
                canonical,
                id,
                ep,
                assignment,
                revision,
            } => {
                self.metrics.identity_allocations.inc();
                self.metrics.assignments_written.inc();
                self.answered(&ep);
                self.reserved_ids.remove(&id);
                self.insert_identity(
                    id,
                    IdEntry {
                        canonical: canonical.clone(),
                        mod_revision: revision,
                    },
                );
                self.by_labels.insert(canonical.clone(), id);
                if !self.refs.contains_key(&canonical) {
                    self.stale.insert(id, Instant::now());
                }
                self.busy.remove(&ep);
                self.written.insert(ep.clone(), assignment);
                self.wake_waiters(&canonical);
                self.reconcile(&ep);
            }
            Done::LabelsExist {
                canonical,
                reserved,
                existing,
                ep,
            } => {
                self.reserved_ids.remove(&reserved);
                if let Some((id, mod_revision)) = existing {
                    info!(id, labels = %canonical, "label set already had an identity; adopting it");
                    self.insert_identity(
                        id,
                        IdEntry {
                            canonical: canonical.clone(),
                            mod_revision,
                        },
                    );
                    self.by_labels.insert(canonical.clone(), id);
                    if !self.refs.contains_key(&canonical) {
                        self.stale.insert(id, Instant::now());
                    }
                }
                self.busy.remove(&ep);
                self.wake_waiters(&canonical);
                self.reconcile(&ep);
            }
            Done::IdTaken {
                canonical,
                id,
                taken_by,
                mod_revision,
                ep,
            } => {
                self.reserved_ids.remove(&id);
                let other = taken_by.map(|r| r.labels.canonical()).unwrap_or_default();
                info!(id, "identity number taken meanwhile; picking another");
                if !other.is_empty() {
                    self.by_labels.entry(other.clone()).or_insert(id);
                }
                self.insert_identity(
                    id,
                    IdEntry {
                        canonical: other,
                        mod_revision,
                    },
                );
                self.busy.remove(&ep);
                self.wake_waiters(&canonical);
                self.reconcile(&ep);
            }
            Done::GcDeleted { canonical, id } => {
                info!(id, labels = %canonical, "garbage-collected unused identity");
                self.metrics
                    .identity_gc_entries
                    .get_or_create(&label("status", "deleted"))
                    .inc();
                self.remove_identity(id);
                self.by_labels.remove(&canonical);
                self.deleting.remove(&canonical);
                self.wake_waiters(&canonical);
                let exhausted: Vec<String> = self.exhausted.iter().cloned().collect();
                for ep in exhausted {
                    self.reconcile(&ep);
                }
            }
            Done::GcConflict {
                canonical,
                id,
                current,
            } => {
                self.metrics
                    .identity_gc_entries
                    .get_or_create(&label("status", "conflict"))
                    .inc();
                self.deleting.remove(&canonical);
                match current {
                    Some(kv) => {
                        if let Some(e) = self.by_id.get_mut(&id) {
                            e.mod_revision = kv.mod_revision;
                        }
                        if !self.refs.contains_key(&canonical) {
                            self.stale.insert(id, Instant::now());
                        }
                    }
                    None => {
                        self.remove_identity(id);
                        self.by_labels.remove(&canonical);
                    }
                }
                self.wake_waiters(&canonical);
            }
            Done::Fenced => {
                self.metrics.fenced_writes_rejected.inc();
                warn!("write rejected by the leadership fence: no longer leader");
                return Some(LeaderExit::Fenced);
            }
            Done::Failed(e) => return Some(LeaderExit::Failed(e)),
        }
        None
    }
}
