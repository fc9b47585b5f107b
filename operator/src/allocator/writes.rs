//! Starting the leader's etcd writes: an endpoint's assignment (put or
//! delete), queued identity creations sent as group commits, and GC's
//! deletes of identities unreferenced past their grace. Each runs in
//! `inflight` and comes back as a [`Done`] (handled in `results`).

use axoneme_identity::{EndpointIdentity, IdentityRecord, LabelSet, NumericIdentity};
use axoneme_kvstore::{Compare, CompareOp, Txn, TxnOp};

use super::txn::{create_one, Create, Done, CREATE_BATCH};
use super::Allocator;

impl Allocator {
    fn assignment_key(&self, ep: &str) -> String {
        self.layout
            .assignment_for_endpoint_key(ep)
            .unwrap_or_else(|| format!("{}{ep}", self.layout.endpoint_identities_prefix()))
    }

    pub(super) fn spawn_put(&mut self, ep: String, assignment: Option<EndpointIdentity>) {
        self.busy.insert(ep.clone());
        let key = self.assignment_key(&ep);
        let op = match &assignment {
            Some(a) => TxnOp::put(key, serde_json::to_vec(a).expect("serializes"), None),
            None => TxnOp::delete(key, None),
        };
        let txn = Txn::new().when([self.lead.fence()]).and_then([op]);
        let kv = self.kv.clone();
        self.inflight.push(Box::pin(async move {
            match kv.txn(txn).await {
                Ok(r) if r.succeeded => Done::Put {
                    ep,
                    written: assignment,
                },
                Ok(_) => Done::Fenced,
                Err(e) => Done::Failed(e),
            }
        }));
    }

    /// Queues an identity creation; `flush_creates` sends queued ones
    /// together.
    pub(super) fn spawn_create(
        &mut self,
        canonical: String,
        id: u32,
        ep: String,
        assignment: EndpointIdentity,
    ) {
        self.busy.insert(ep.clone());
        self.waiting.entry(canonical.clone()).or_default();
        let labels = LabelSet::from_canonical(&canonical).expect("canonical keys parse");
        let record = IdentityRecord {
            id: NumericIdentity(id),
            labels,
            allocator: self.lead.holder.clone(),
        };
        self.create_queue.push(Create {
            id_key: self.layout.identity_id(NumericIdentity(id)),
            labels_key: self.layout.identity_labels(&canonical),
            assignment_key: self.assignment_key(&ep),
            record: serde_json::to_vec(&record).expect("serializes"),
            canonical,
            id,
            ep,
            assignment,
        });
    }

    /// Sends queued creations as one transaction (group commit): etcd's cost
    /// is mostly per transaction, so under load this multiplies the rate of
    /// new identities. If the group's compare fails, each creation is retried
    /// alone to learn which one conflicted and why.
    pub(super) fn flush_creates(&mut self) {
        for batch in std::mem::take(&mut self.create_queue).chunks(CREATE_BATCH) {
            let batch = batch.to_vec();
            let kv = self.kv.clone();
            let lead = self.lead.clone();
            let ids_prefix = self.layout.identity_ids_prefix();
            self.inflight.push(Box::pin(async move {
                if batch.len() > 1 {
                    let txn = Txn::new()
                        .when(
                            std::iter::once(lead.fence())
                                .chain(batch.iter().flat_map(Create::compares))
                                .collect::<Vec<_>>(),
                        )
                        .and_then(batch.iter().flat_map(Create::puts).collect::<Vec<_>>());
                    match kv.txn(txn).await {
                        Ok(r) if r.succeeded => {
                            let revision = r.revision;
                            return Done::Batch(
                                batch.into_iter().map(|c| c.created(revision)).collect(),
                            );
                        }
                        Ok(_) => {}
                        Err(e) => return Done::Failed(e),
                    }
                }
                let singles = batch
                    .into_iter()
                    .map(|c| create_one(kv.clone(), lead.clone(), ids_prefix.clone(), c));
                Done::Batch(futures::future::join_all(singles).await)
            }));
        }
    }

    /// Starts deleting identities unreferenced for longer than the grace period.
    pub(super) fn gc(&mut self) {
        if !self.synced {
            return;
        }
        self.metrics.identity_gc_runs.inc();
        let grace = self.cfg.gc_grace;
        let due: Vec<u32> = self
            .stale
            .iter()
            .filter(|(_, since)| since.elapsed() >= grace)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if self.inflight.len() >= self.cfg.max_in_flight {
                break;
            }
            let Some(entry) = self.by_id.get(&id) else {
                self.stale.remove(&id);
                continue;
            };
            let canonical = entry.canonical.clone();
            if self.refs.contains_key(&canonical) || self.deleting.contains(&canonical) {
                self.stale.remove(&id);
                continue;
            }
            self.stale.remove(&id);
            self.deleting.insert(canonical.clone());
            let id_key = self.layout.identity_id(NumericIdentity(id));
            let txn = Txn::new()
                .when([
                    self.lead.fence(),
                    Compare::mod_revision(id_key.clone(), CompareOp::Equal, entry.mod_revision),
                ])
                .and_then([
                    TxnOp::delete(id_key.clone(), None),
                    TxnOp::delete(self.layout.identity_labels(&canonical), None),
                ])
                .or_else([
                    TxnOp::get(self.lead.key.clone(), None),
                    TxnOp::get(id_key, None),
                ]);
            let kv = self.kv.clone();
            let fence = self.lead.fence_revision;
            self.inflight.push(Box::pin(async move {
                match kv.txn(txn).await {
                    Ok(r) if r.succeeded => Done::GcDeleted { canonical, id },
                    Ok(r) => {
                        let first = |i: usize| r.gets.get(i).and_then(|g| g.first()).cloned();
                        if first(0).is_none_or(|l| l.create_revision != fence) {
                            Done::Fenced
                        } else {
                            Done::GcConflict {
                                canonical,
                                id,
                                current: first(1),
                            }
                        }
                    }
                    Err(e) => Done::Failed(e),
                }
            }));
        }
    }
}
