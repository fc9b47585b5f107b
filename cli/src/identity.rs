//! `axoneme identity ...`: reserved and allocated security identities.

use axoneme_identity::{IdentityRecord, Layout, NumericIdentity, ReservedIdentity};
use axoneme_kvstore::KeyValue;
use serde::Serialize;

use crate::error::CliError;
use crate::output::{Render, Table};
use crate::Ctx;

/// How an identity came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// One of Cilium's fixed numbers (1-10); never stored in etcd.
    Reserved,
    /// Allocated by the operator for a label set.
    Allocated,
    /// An identity key whose record does not decode.
    Invalid,
}

/// One identity as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityView {
    pub id: NumericIdentity,
    pub labels: Vec<String>,
    pub kind: IdentityKind,
    /// The operator replica that allocated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl IdentityView {
    fn reserved(r: ReservedIdentity) -> Self {
        IdentityView {
            id: r.id(),
            labels: vec![format!("reserved:{}", r.name())],
            kind: IdentityKind::Reserved,
            allocator: None,
            error: None,
        }
    }

    /// The view of a stored identity key, or `None` for a key that is not
    /// an identity (a non-numeric id).
    pub fn from_kv(layout: &Layout, kv: &KeyValue) -> Option<Self> {
        let id = layout.parse_identity_key(&kv.key)?;
        Some(match serde_json::from_slice::<IdentityRecord>(&kv.value) {
            Ok(rec) => IdentityView {
                id,
                labels: rec.labels.to_strings(),
                kind: IdentityKind::Allocated,
                allocator: Some(rec.allocator).filter(|a| !a.is_empty()),
                error: None,
            },
            Err(e) => IdentityView {
                id,
                labels: Vec::new(),
                kind: IdentityKind::Invalid,
                allocator: None,
                error: Some(format!("unreadable identity record: {e}")),
            },
        })
    }
}

/// The reserved identities shown by `identity list` (all but `unknown`).
pub fn reserved() -> Vec<IdentityView> {
    ReservedIdentity::ALL
        .into_iter()
        .filter(|r| *r != ReservedIdentity::Unknown)
        .map(IdentityView::reserved)
        .collect()
}

fn table<'a>(views: impl IntoIterator<Item = &'a IdentityView>) -> Table {
    let mut t = Table::new(&["ID", "LABELS", "KIND"]);
    for v in views {
        let labels = match (&v.error, v.labels.is_empty()) {
            (Some(e), _) => e.clone(),
            (None, true) => "-".into(),
            (None, false) => v.labels.join(","),
        };
        let kind = match v.kind {
            IdentityKind::Reserved => "reserved",
            IdentityKind::Allocated => "allocated",
            IdentityKind::Invalid => "invalid",
        };
        t.row([v.id.to_string(), labels, kind.to_string()]);
    }
    t
}

impl Render for IdentityView {
    fn human(&self) -> String {
        table([self]).to_string()
    }
}

/// Identities sorted by number (a JSON/YAML list).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct IdentityList(pub Vec<IdentityView>);

impl Render for IdentityList {
    fn human(&self) -> String {
        if self.0.is_empty() {
            return "No identities found.\n".into();
        }
        table(&self.0).to_string()
    }
}

pub async fn list(ctx: &Ctx, allocated_only: bool) -> Result<IdentityList, CliError> {
    let (kvs, _) = ctx
        .kv
        .get_prefix(&ctx.layout.identity_ids_prefix())
        .await
        .map_err(CliError::kv("listing identities"))?;
    let mut views = if allocated_only {
        Vec::new()
    } else {
        reserved()
    };
    views.extend(
        kvs.iter()
            .filter_map(|kv| IdentityView::from_kv(&ctx.layout, kv)),
    );
    // etcd sorts keys as strings ("1000" before "300").
    views.sort_by_key(|v| v.id);
    Ok(IdentityList(views))
}

pub async fn get(ctx: &Ctx, id: u32) -> Result<IdentityView, CliError> {
    let nid = NumericIdentity(id);
    if let Some(r) = nid.reserved().filter(|r| *r != ReservedIdentity::Unknown) {
        return Ok(IdentityView::reserved(r));
    }
    let kv = ctx
        .kv
        .get(&ctx.layout.identity_id(nid))
        .await
        .map_err(CliError::kv(format!("reading identity {id}")))?;
    kv.and_then(|kv| IdentityView::from_kv(&ctx.layout, &kv))
        .ok_or(CliError::IdentityNotFound(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_identity::{LabelSet, Source};

    #[test]
    fn reserved_identities_are_1_to_10() {
        let r = reserved();
        assert_eq!(r.len(), 10);
        assert_eq!(r[0].id, NumericIdentity(1));
        assert_eq!(r[0].labels, ["reserved:host"]);
        assert_eq!(r[9].labels, ["reserved:world-ipv6"]);
        assert!(r.iter().all(|v| v.kind == IdentityKind::Reserved));
    }

    #[test]
    fn views_of_stored_records() {
        let layout = Layout::default();
        let rec = IdentityRecord {
            id: NumericIdentity(300),
            labels: LabelSet::parse(["k8s:app=web", "k8s:zone=a"], Source::K8s).unwrap(),
            allocator: "op0".into(),
        };
        let kv = |key: String, value: Vec<u8>| KeyValue {
            key,
            value,
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        };
        let v = IdentityView::from_kv(
            &layout,
            &kv(
                layout.identity_id(NumericIdentity(300)),
                serde_json::to_vec(&rec).unwrap(),
            ),
        )
        .unwrap();
        assert_eq!(v.labels, ["k8s:app=web", "k8s:zone=a"]);
        assert_eq!(v.kind, IdentityKind::Allocated);
        assert_eq!(v.allocator.as_deref(), Some("op0"));
        let list = IdentityList(vec![IdentityView::reserved(ReservedIdentity::Host), v]);
        assert_eq!(
            list.human(),
            "ID    LABELS                   KIND\n\
             1     reserved:host            reserved\n\
             300   k8s:app=web,k8s:zone=a   allocated\n"
        );
        let bad = IdentityView::from_kv(
            &layout,
            &kv(layout.identity_id(NumericIdentity(301)), b"x".to_vec()),
        )
        .unwrap();
        assert_eq!(bad.kind, IdentityKind::Invalid);
        assert!(IdentityView::from_kv(
            &layout,
            &kv(format!("{}abc", layout.identity_ids_prefix()), vec![])
        )
        .is_none());
    }
}
