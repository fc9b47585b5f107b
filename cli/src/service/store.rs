//! Writing services — `create`, `update`, `delete` — through the frontend
//! index (`Layout::services_index_prefix`, names from
//! [`axoneme_service::claims`]): a new service is checked against the
//! stored services that hold one of its names, read by key, not against
//! every stored service, so a command costs the same at 1 and at 10,000
//! services.
//!
//! Every write of the CLI changes the records, their names and the index's
//! marker in one transaction that compares the marker's revision, so two
//! commands never both pass their checks on the same index. Writers that
//! keep no index (the operator mirroring Kubernetes, a store from before
//! the index) delete the marker; the next command then rebuilds the index
//! from every record first. A name whose holder is gone or no longer holds
//! it (a record deleted behind the index's back) costs nothing: holders
//! are checked with [`validate::conflicts`] itself, and the name is
//! overwritten when claimed again.

use std::collections::{BTreeMap, BTreeSet};

use axoneme_kvstore::{Compare, CompareOp, KeyValue, Txn, TxnOp, MAX_TXN_OPS};
use axoneme_service::claims::{claims, Claims};
use axoneme_service::{validate, ServiceRecord};

use super::{backend_counts, Checked, FromFile, Mode, ServiceList, ServiceView, ValidateReport};
use crate::error::CliError;
use crate::Ctx;

/// Attempts at finding the index complete before giving up (another
/// writer keeps deleting its marker).
const REBUILDS: usize = 3;

/// The index as read for one command.
struct Read {
    revision: i64,
    /// The marker's modification revision.
    marker: i64,
    /// The records at the command's keys, in order.
    records: Vec<Option<KeyValue>>,
    /// Name (full key) → its holder's `namespace/name`, for the names read.
    holders: BTreeMap<String, String>,
}

/// Reads the marker, `keys` and the names `names` (full keys), rebuilding
/// the index first when its marker is missing.
async fn read(ctx: &Ctx, keys: &[String], names: &BTreeSet<String>) -> Result<Read, CliError> {
    let marker_key = ctx.layout.services_index_marker();
    let mut last = 0;
    for _ in 0..REBUILDS {
        let wanted: Vec<String> = std::iter::once(marker_key.clone())
            .chain(keys.iter().cloned())
            .chain(names.iter().cloned())
            .collect();
        let (mut found, revision) = ctx
            .kv
            .get_many(&wanted)
            .await
            .map_err(CliError::kv("reading the services' index"))?;
        let Some(marker) = found[0].take() else {
            last = revision;
            rebuild(ctx).await?;
            continue;
        };
        let holders = found
            .split_off(1 + keys.len())
            .into_iter()
            .flatten()
            .map(|kv| {
                let holder = String::from_utf8_lossy(&kv.value).into_owned();
                (kv.key, holder)
            })
            .collect();
        return Ok(Read {
            revision,
            marker: marker.mod_revision,
            records: found.split_off(1),
            holders,
        });
    }
    Err(CliError::ServicesChanged(last))
}

/// Rebuilds the index from every stored record and marks it complete,
/// unless services change meanwhile (the caller reads again and retries).
async fn rebuild(ctx: &Ctx) -> Result<(), CliError> {
    let layout = &ctx.layout;
    let what = "rebuilding the services' index";
    let (records, read_at) = ctx
        .kv
        .get_prefix(&layout.services_prefix())
        .await
        .map_err(CliError::kv(what))?;
    // First holder in key order wins; unreadable records hold nothing.
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for kv in &records {
        let Ok(r) = serde_json::from_slice::<ServiceRecord>(&kv.value) else {
            continue;
        };
        for name in claims(&r).held {
            want.entry(layout.service_claim(&name))
                .or_insert_with(|| r.id().into_bytes());
        }
    }
    let (have, _) = ctx
        .kv
        .get_prefix(&layout.services_index_prefix())
        .await
        .map_err(CliError::kv(what))?;
    let mut ops = Vec::new();
    for kv in &have {
        if want.get(&kv.key) != Some(&kv.value) {
            ops.push(TxnOp::delete(kv.key.clone(), None));
        }
    }
    let have: BTreeMap<&str, &[u8]> = have
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    for (key, holder) in &want {
        if have.get(key.as_str()) != Some(&holder.as_slice()) {
            ops.push(TxnOp::put(key.clone(), holder.clone(), None));
        }
    }
    // Each part only while nobody completed the index meanwhile: a writer
    // that did keeps it right from then on.
    let marker = layout.services_index_marker();
    let absent = || Compare::version(marker.clone(), CompareOp::Equal, 0);
    for chunk in ops.chunks(MAX_TXN_OPS) {
        let r = ctx
            .kv
            .txn(Txn::new().when([absent()]).and_then(chunk.to_vec()))
            .await
            .map_err(CliError::kv(what))?;
        if !r.succeeded {
            return Ok(());
        }
    }
    let unchanged =
        Compare::mod_revision(layout.services_prefix(), CompareOp::Less, read_at + 1).with_prefix();
    ctx.kv
        .txn(Txn::new().when([absent(), unchanged]).and_then([TxnOp::put(
            marker,
            b"complete".to_vec(),
            None,
        )]))
        .await
        .map_err(CliError::kv(what))?;
    Ok(())
}

/// The stored records of `ids` (`namespace/name`) that can be read.
async fn records_of(ctx: &Ctx, ids: &BTreeSet<&String>) -> Result<Vec<ServiceRecord>, CliError> {
    let keys: Vec<String> = ids
        .iter()
        .filter_map(|id| id.split_once('/'))
        .map(|(ns, name)| ctx.layout.service(ns, name))
        .collect();
    let (found, _) = ctx.kv.get_many(&keys).await.map_err(CliError::kv(
        "reading the services that hold the same frontends",
    ))?;
    Ok(found
        .into_iter()
        .flatten()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// Stores `services` (already valid) in one transaction; what it stored.
/// Services that conflict with stored ones are
/// [`CliError::InvalidServices`].
pub async fn store(ctx: &Ctx, services: &[FromFile], mode: Mode) -> Result<ServiceList, CliError> {
    let layout = &ctx.layout;
    let keys: Vec<String> = services
        .iter()
        .map(|s| layout.service(&s.record.namespace, &s.record.name))
        .collect();
    let claimed: Vec<Claims> = services.iter().map(|s| claims(&s.record)).collect();
    let held =
        |c: &Claims| -> Vec<String> { c.held.iter().map(|n| layout.service_claim(n)).collect() };
    // Records, names, the marker; releases come on top for an update.
    let operations = keys.len() + claimed.iter().map(|c| c.held.len()).sum::<usize>() + 1;
    if operations > MAX_TXN_OPS {
        return Err(CliError::TooManyServices {
            services: services.len(),
            operations,
        });
    }
    let names: BTreeSet<String> = claimed
        .iter()
        .flat_map(Claims::all)
        .map(|n| layout.service_claim(n))
        .collect();
    let read = read(ctx, &keys, &names).await?;
    for (s, kv) in services.iter().zip(&read.records) {
        match (mode, kv) {
            (Mode::Create, Some(_)) => return Err(CliError::ServiceExists(s.record.id())),
            (Mode::Update, None) => return Err(CliError::ServiceNotFound(s.record.id())),
            _ => {}
        }
    }

    // Conflicts with the stored services that hold one of the names.
    let ids: BTreeSet<String> = services.iter().map(|s| s.record.id()).collect();
    let holders: BTreeSet<&String> = read
        .holders
        .values()
        .filter(|h| !ids.contains(*h))
        .collect();
    let others = records_of(ctx, &holders).await?;
    let new: Vec<ServiceRecord> = services.iter().map(|s| s.record.clone()).collect();
    let conflicts = validate::conflicts(&new, &others);
    if !conflicts.is_empty() {
        let mut report = ValidateReport(
            services
                .iter()
                .map(|s| Checked {
                    file: s.file.clone(),
                    service: s.record.id(),
                    valid: true,
                    type_: Some(s.record.spec.type_),
                    frontends: Some(s.record.frontends().len()),
                    backends: Some(backend_counts(&s.record).1),
                    errors: vec![],
                })
                .collect(),
        );
        report.add(conflicts);
        return Err(CliError::InvalidServices(report.problems()));
    }

    // Names an updated service no longer holds, if it still holds them.
    let mut released = Vec::new();
    for ((s, old), c) in services.iter().zip(&read.records).zip(&claimed) {
        let old = old
            .as_ref()
            .and_then(|kv| serde_json::from_slice::<ServiceRecord>(&kv.value).ok());
        if let Some(old) = old {
            let now = held(c);
            for name in held(&claims(&old)) {
                if !now.contains(&name) {
                    released.push((name, s.record.id()));
                }
            }
        }
    }
    let release_keys: Vec<String> = released.iter().map(|(n, _)| n.clone()).collect();
    let (release_found, _) = ctx
        .kv
        .get_many(&release_keys)
        .await
        .map_err(CliError::kv("reading the services' index"))?;

    let mut writes = Vec::new();
    for (s, key) in services.iter().zip(&keys) {
        let value = serde_json::to_vec(&s.record).map_err(|e| CliError::Encode(e.to_string()))?;
        writes.push((key.clone(), value));
    }
    let mut ops: Vec<TxnOp> = writes
        .iter()
        .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None))
        .collect();
    for (s, c) in services.iter().zip(&claimed) {
        let id = s.record.id();
        for name in held(c) {
            if read.holders.get(&name) != Some(&id) {
                ops.push(TxnOp::put(name, id.clone().into_bytes(), None));
            }
        }
    }
    for ((name, id), kv) in released.iter().zip(&release_found) {
        if kv.as_ref().is_some_and(|kv| kv.value == id.as_bytes()) {
            ops.push(TxnOp::delete(name.clone(), None));
        }
    }
    ops.push(TxnOp::put(
        layout.services_index_marker(),
        b"complete".to_vec(),
        None,
    ));
    if ops.len() > MAX_TXN_OPS {
        return Err(CliError::TooManyServices {
            services: services.len(),
            operations: ops.len(),
        });
    }
    let mut compares: Vec<Compare> = writes
        .iter()
        .zip(&read.records)
        .map(|((k, _), kv)| match kv {
            None => Compare::version(k.clone(), CompareOp::Equal, 0),
            Some(kv) => Compare::mod_revision(k.clone(), CompareOp::Equal, kv.mod_revision),
        })
        .collect();
    // Nobody changed the index since it was read.
    compares.push(Compare::mod_revision(
        layout.services_index_marker(),
        CompareOp::Equal,
        read.marker,
    ));
    let txn = Txn::new().when(compares).and_then(ops).or_else(
        writes
            .iter()
            .map(|(k, _)| TxnOp::get(k.clone(), None))
            .collect::<Vec<_>>(),
    );
    let what = match mode {
        Mode::Create => "creating services",
        Mode::Update => "updating services",
    };
    let result = ctx.kv.txn(txn).await.map_err(CliError::kv(what))?;
    let revision = if result.succeeded {
        result.revision
    } else {
        diagnose(services, &writes, &result.gets, read.revision, mode)?
    };
    Ok(ServiceList(
        services
            .iter()
            .map(|s| ServiceView::of(&s.record, revision, false))
            .collect(),
    ))
}

/// Why a write transaction failed, from its `else` reads: a service that
/// exists (create) or not (update), or a concurrent change. Every key
/// holding exactly what was written, at one revision after the read, is
/// this command's own write committed by an attempt whose answer was lost
/// (the kvstore layer retried it): success, at that revision.
pub(super) fn diagnose(
    services: &[FromFile],
    writes: &[(String, Vec<u8>)],
    gets: &[Vec<KeyValue>],
    read_at: i64,
    mode: Mode,
) -> Result<i64, CliError> {
    let found: Vec<Option<&KeyValue>> = gets.iter().map(|g| g.first()).collect();
    let revisions: BTreeSet<i64> = found.iter().flatten().map(|kv| kv.mod_revision).collect();
    let ours = found.len() == writes.len()
        && found
            .iter()
            .zip(writes)
            .all(|(kv, (_, value))| kv.is_some_and(|kv| kv.value == *value))
        && revisions.len() == 1
        && revisions.first().is_some_and(|r| *r > read_at);
    if ours {
        return Ok(*revisions.first().expect("one revision"));
    }
    for (s, kv) in services.iter().zip(&found) {
        match (mode, kv) {
            (Mode::Create, Some(_)) => return Err(CliError::ServiceExists(s.record.id())),
            (Mode::Update, None) => return Err(CliError::ServiceNotFound(s.record.id())),
            _ => {}
        }
    }
    Err(CliError::ServicesChanged(read_at))
}

/// Deletes one service, and the names it holds while the index is
/// complete; what it was.
pub async fn delete(ctx: &Ctx, namespace: &str, name: &str) -> Result<ServiceList, CliError> {
    let id = format!("{namespace}/{name}");
    let layout = &ctx.layout;
    let key = layout.service(namespace, name);
    let marker = layout.services_index_marker();
    let what = || format!("deleting service {id}");
    let (found, _) = ctx
        .kv
        .get_many(&[marker.clone(), key.clone()])
        .await
        .map_err(CliError::kv(what()))?;
    let Some(record) = &found[1] else {
        return Err(CliError::ServiceNotFound(id));
    };
    let mut compares = vec![Compare::mod_revision(
        key.clone(),
        CompareOp::Equal,
        record.mod_revision,
    )];
    let mut ops = vec![TxnOp::get(key.clone(), None), TxnOp::delete(key, None)];
    let parsed = serde_json::from_slice::<ServiceRecord>(&record.value).ok();
    if let (Some(m), Some(r)) = (&found[0], parsed) {
        let names: Vec<String> = claims(&r)
            .held
            .iter()
            .map(|n| layout.service_claim(n))
            .collect();
        let (holders, _) = ctx
            .kv
            .get_many(&names)
            .await
            .map_err(CliError::kv(what()))?;
        for (name, kv) in names.into_iter().zip(holders) {
            if kv.is_some_and(|kv| kv.value == id.as_bytes()) {
                ops.push(TxnOp::delete(name, None));
            }
        }
        compares.push(Compare::mod_revision(
            marker.clone(),
            CompareOp::Equal,
            m.mod_revision,
        ));
        ops.push(TxnOp::put(marker, b"complete".to_vec(), None));
    }
    let result = ctx
        .kv
        .txn(Txn::new().when(compares).and_then(ops))
        .await
        .map_err(CliError::kv(what()))?;
    if !result.succeeded {
        return Err(CliError::ServicesChanged(record.mod_revision));
    }
    let deleted = result
        .gets
        .first()
        .and_then(|g| g.first())
        .ok_or(CliError::ServiceNotFound(id))?;
    Ok(ServiceList(
        ServiceView::from_kv(ctx, deleted, false)
            .into_iter()
            .collect(),
    ))
}
