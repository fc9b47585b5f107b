//! The etcd transactions of the allocator's results: what a finished
//! write says ([`Done`]) and identity creation ([`Create`], [`create_one`]),
//! fenced by the leader's lease.

use axoneme_identity::{EndpointIdentity, IdentityRecord};
use axoneme_kvstore::{Compare, CompareOp, KeyValue, KvError, KvStore, Txn, TxnOp};

use crate::election::Leadership;

pub(super) enum Done {
    Put {
        ep: String,
        written: Option<EndpointIdentity>,
    },
    Created {
        canonical: String,
        id: u32,
        ep: String,
        assignment: EndpointIdentity,
        revision: i64,
    },
    /// The label set already had an identity (e.g. written by a previous leader).
    LabelsExist {
        canonical: String,
        reserved: u32,
        existing: Option<(u32, i64)>,
        ep: String,
    },
    /// The number was taken by another label set.
    IdTaken {
        canonical: String,
        id: u32,
        taken_by: Option<IdentityRecord>,
        mod_revision: i64,
        ep: String,
    },
    GcDeleted {
        canonical: String,
        id: u32,
    },
    GcConflict {
        canonical: String,
        id: u32,
        current: Option<KeyValue>,
    },
    /// Several results of one group commit.
    Batch(Vec<Done>),
    Fenced,
    Failed(KvError),
}

/// Most creations sent in one transaction: each takes 2 compares and 3
/// puts, and etcd's default `--max-txn-ops` is 128.
pub(super) const CREATE_BATCH: usize = 32;

/// One identity creation: the identity, its labels index, and the answer
/// for the endpoint that asked for it.
#[derive(Clone)]
pub(super) struct Create {
    pub(super) canonical: String,
    pub(super) id: u32,
    pub(super) ep: String,
    pub(super) assignment: EndpointIdentity,
    pub(super) id_key: String,
    pub(super) labels_key: String,
    pub(super) assignment_key: String,
    pub(super) record: Vec<u8>,
}

impl Create {
    pub(super) fn compares(&self) -> [Compare; 2] {
        [
            Compare::create_revision(self.labels_key.clone(), CompareOp::Equal, 0),
            Compare::create_revision(self.id_key.clone(), CompareOp::Equal, 0),
        ]
    }

    pub(super) fn puts(&self) -> [TxnOp; 3] {
        [
            TxnOp::put(self.id_key.clone(), self.record.clone(), None),
            TxnOp::put(self.labels_key.clone(), self.id.to_string(), None),
            TxnOp::put(
                self.assignment_key.clone(),
                serde_json::to_vec(&self.assignment).expect("serializes"),
                None,
            ),
        ]
    }

    pub(super) fn created(self, revision: i64) -> Done {
        Done::Created {
            canonical: self.canonical,
            id: self.id,
            ep: self.ep,
            assignment: self.assignment,
            revision,
        }
    }
}

/// Creates one identity; on a failed compare finds out why.
pub(super) async fn create_one(
    kv: KvStore,
    lead: Leadership,
    ids_prefix: String,
    c: Create,
) -> Done {
    let txn = Txn::new()
        .when(
            std::iter::once(lead.fence())
                .chain(c.compares())
                .collect::<Vec<_>>(),
        )
        .and_then(c.puts())
        .or_else([
            TxnOp::get(lead.key.clone(), None),
            TxnOp::get(c.labels_key.clone(), None),
            TxnOp::get(c.id_key.clone(), None),
        ]);
    let r = match kv.txn(txn).await {
        Ok(r) => r,
        Err(e) => return Done::Failed(e),
    };
    if r.succeeded {
        return c.created(r.revision);
    }
    let first = |i: usize| r.gets.get(i).and_then(|g| g.first()).cloned();
    if first(0).is_none_or(|l| l.create_revision != lead.fence_revision) {
        return Done::Fenced;
    }
    if let Some(existing) = first(1) {
        let existing_id = String::from_utf8_lossy(&existing.value).parse::<u32>().ok();
        // The id key's revision is needed for GC; read it.
        let with_rev = match existing_id {
            Some(eid) => match kv.get(&format!("{ids_prefix}{eid}")).await {
                Ok(Some(kv)) => Some((eid, kv.mod_revision)),
                Ok(None) => None,
                Err(e) => return Done::Failed(e),
            },
            None => None,
        };
        return Done::LabelsExist {
            canonical: c.canonical,
            reserved: c.id,
            existing: with_rev,
            ep: c.ep,
        };
    }
    let taken = first(2);
    Done::IdTaken {
        canonical: c.canonical,
        id: c.id,
        mod_revision: taken.as_ref().map(|t| t.mod_revision).unwrap_or_default(),
        taken_by: taken.and_then(|t| serde_json::from_slice(&t.value).ok()),
        ep: c.ep,
    }
}
