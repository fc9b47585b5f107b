//! `axoneme endpoint ...`: endpoint records and the operator's answers.

use std::net::IpAddr;
use std::time::Duration;

use axoneme_identity::{
    EndpointIdentity, EndpointRecord, Label, LabelSet, Layout, NumericIdentity, Source,
};
use axoneme_kvstore::{KeyValue, WatchEvent};
use serde::Serialize;

use crate::args::PutArgs;
use crate::error::CliError;
use crate::output::{or_dash, Render, Table};
use crate::Ctx;

/// Where an endpoint's assignment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointStatus {
    /// The operator answered the record's current revision with an identity.
    Ready,
    /// No answer for the record's current revision yet.
    Pending,
    /// The operator answered the current revision with an error.
    Error,
}

/// One endpoint as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub node: String,
    pub endpoint: String,
    /// The identity, when the operator's answer is for the current record.
    pub identity: Option<NumericIdentity>,
    /// The record's labels.
    pub labels: Vec<String>,
    pub status: EndpointStatus,
    /// The operator's error, when `status` is `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The identity-relevant labels the identity stands for (canonical form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_labels: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Mod revision of the endpoint record.
    pub revision: i64,
    /// The record revision the operator's latest answer is for (may be older).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_revision: Option<i64>,
    /// The endpoint asks for policy audit mode (its node's agent may also
    /// put every endpoint in it: see `axoneme status`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub policy_audit_mode: bool,
}

impl EndpointView {
    fn status_cell(&self) -> String {
        match self.status {
            EndpointStatus::Ready => "ready".into(),
            EndpointStatus::Pending => "pending".into(),
            EndpointStatus::Error => self.error.clone().unwrap_or_else(|| "error".into()),
        }
    }
}

const COLUMNS: &[&str] = &["NODE", "ENDPOINT", "IDENTITY", "LABELS", "STATUS"];

fn table<'a>(views: impl IntoIterator<Item = &'a EndpointView>) -> Table {
    let mut t = Table::new(COLUMNS);
    for v in views {
        t.row([
            v.node.clone(),
            v.endpoint.clone(),
            or_dash(v.identity),
            if v.labels.is_empty() {
                "-".into()
            } else {
                v.labels.join(",")
            },
            v.status_cell(),
        ]);
    }
    t
}

impl Render for EndpointView {
    fn human(&self) -> String {
        table([self]).to_string()
    }
}

/// Endpoints, sorted by node and name (a JSON/YAML list).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct EndpointList(pub Vec<EndpointView>);

impl Render for EndpointList {
    fn human(&self) -> String {
        if self.0.is_empty() {
            return "No endpoints found.\n".into();
        }
        table(&self.0).to_string()
    }
}

/// The result of `endpoint delete`.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    pub node: String,
    pub endpoint: String,
    pub deleted: bool,
}

impl Render for Deleted {
    fn human(&self) -> String {
        format!("endpoint {}/{} deleted\n", self.node, self.endpoint)
    }
}

/// Checks a node or endpoint name: it becomes one segment of an etcd key.
pub fn check_name(what: &'static str, value: &str) -> Result<(), CliError> {
    let bad = |reason: &str| {
        Err(CliError::InvalidName {
            what,
            value: value.to_string(),
            reason: reason.to_string(),
        })
    };
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > 253 {
        return bad("longer than 253 bytes");
    }
    if value.contains('/') {
        return bad("must not contain '/'");
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    Ok(())
}

/// Splits `NODE/ENDPOINT`.
pub fn parse_ref(s: &str) -> Result<(&str, &str), CliError> {
    let (node, id) = s
        .split_once('/')
        .ok_or_else(|| CliError::EndpointRef(s.to_string()))?;
    check_name("node", node)?;
    check_name("endpoint", id)?;
    Ok((node, id))
}

/// Builds the record `endpoint put` writes, refusing bad labels, names and
/// addresses before anything is sent to etcd. Labels are stored in their
/// explicit `source:key=value` form, sorted by key.
pub fn record_from_args(put: &PutArgs) -> Result<EndpointRecord, CliError> {
    check_name("node", &put.key.node)?;
    check_name("endpoint", &put.key.id)?;
    let labels = put
        .labels
        .iter()
        .map(|s| {
            Label::parse_with_source(s, Source::K8s).map_err(|source| CliError::InvalidLabel {
                label: s.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let set = LabelSet::from_labels(labels).map_err(CliError::InvalidLabelSet)?;
    for a in &put.addresses {
        if a.parse::<IpAddr>().is_err() {
            return Err(CliError::InvalidName {
                what: "address",
                value: a.clone(),
                reason: "not an IPv4 or IPv6 address".into(),
            });
        }
    }
    if let Some(name) = &put.interface {
        if let Err(reason) = axoneme_identity::check_interface_name(name) {
            return Err(CliError::InvalidName {
                what: "interface",
                value: name.clone(),
                reason: reason.into(),
            });
        }
    }
    let record = EndpointRecord {
        id: put.key.id.clone(),
        node: put.key.node.clone(),
        labels: set.to_strings(),
        addresses: put.addresses.clone(),
        namespace: put.namespace.clone(),
        interface: put.interface.clone(),
        pod_name: None,
        pod_uid: None,
        named_ports: Default::default(),
        policy_audit_mode: false,
    };
    // The operator's own checks (e.g. no `reserved:` labels), before writing.
    record.label_set().map_err(CliError::InvalidLabelSet)?;
    Ok(record)
}

/// Joins a record (at `revision`) and the operator's latest answer.
fn view_of(
    node: &str,
    endpoint: &str,
    record: Option<EndpointRecord>,
    revision: i64,
    answer: Option<EndpointIdentity>,
) -> EndpointView {
    let current = answer.as_ref().filter(|a| a.endpoint_revision == revision);
    let (status, identity, error, identity_labels) = match current {
        Some(a) if a.error.is_some() => (EndpointStatus::Error, None, a.error.clone(), None),
        Some(a) if a.identity.is_some() => (
            EndpointStatus::Ready,
            a.identity,
            None,
            Some(a.labels.clone()).filter(|l| !l.is_empty()),
        ),
        _ => (EndpointStatus::Pending, None, None, None),
    };
    let (labels, addresses, namespace, policy_audit_mode) = match record {
        Some(r) => (r.labels, r.addresses, r.namespace, r.policy_audit_mode),
        None => (Vec::new(), Vec::new(), None, false),
    };
    EndpointView {
        node: node.to_string(),
        endpoint: endpoint.to_string(),
        identity,
        labels,
        status,
        error,
        identity_labels,
        addresses,
        namespace,
        revision,
        answered_revision: answer.map(|a| a.endpoint_revision),
        policy_audit_mode,
    }
}

/// The view of a stored record and its answer (if any). A record that does
/// not decode is shown without labels; the operator's answer says why.
pub fn view_from_kvs(
    layout: &Layout,
    record: &KeyValue,
    answer: Option<&KeyValue>,
) -> Option<EndpointView> {
    let (node, endpoint) = layout.split_endpoint_key(&record.key)?;
    let decoded = serde_json::from_slice::<EndpointRecord>(&record.value).ok();
    let answer = answer.and_then(|a| serde_json::from_slice::<EndpointIdentity>(&a.value).ok());
    Some(view_of(
        node,
        endpoint,
        decoded,
        record.mod_revision,
        answer,
    ))
}

/// Writes the record; with `wait`, waits for the operator's answer.
pub async fn put(
    ctx: &Ctx,
    record: EndpointRecord,
    wait: Option<u64>,
) -> Result<EndpointView, CliError> {
    let key = ctx.layout.endpoint(&record.node, &record.id);
    let value = serde_json::to_vec(&record).map_err(|e| CliError::Encode(e.to_string()))?;
    let revision = ctx
        .kv
        .put(&key, value, 0)
        .await
        .map_err(CliError::kv(format!(
            "writing endpoint {}/{}",
            record.node, record.id
        )))?;
    let (node, id) = (record.node.clone(), record.id.clone());
    let answer = match wait {
        None => None,
        Some(secs) => {
            let answer = wait_for_answer(ctx, &node, &id, revision, secs).await?;
            if answer.identity.is_none() {
                return Err(CliError::Rejected {
                    node,
                    endpoint: id,
                    error: answer
                        .error
                        .unwrap_or_else(|| "no identity and no error in the answer".into()),
                });
            }
            Some(answer)
        }
    };
    Ok(view_of(&node, &id, Some(record), revision, answer))
}

/// What an assignment value means for a waiter on `revision`.
fn judge(
    node: &str,
    endpoint: &str,
    value: &[u8],
    revision: i64,
) -> Result<Option<EndpointIdentity>, CliError> {
    let Ok(answer) = serde_json::from_slice::<EndpointIdentity>(value) else {
        return Ok(None);
    };
    if answer.endpoint_revision == revision {
        Ok(Some(answer))
    } else if answer.endpoint_revision > revision {
        Err(CliError::Superseded {
            node: node.to_string(),
            endpoint: endpoint.to_string(),
            revision,
            seen: answer.endpoint_revision,
        })
    } else {
        Ok(None)
    }
}

/// Waits until the operator's answer for `node/endpoint` is for `revision`.
async fn wait_for_answer(
    ctx: &Ctx,
    node: &str,
    endpoint: &str,
    revision: i64,
    secs: u64,
) -> Result<EndpointIdentity, CliError> {
    let key = ctx.layout.endpoint_identity(node, endpoint);
    let record_key = ctx.layout.endpoint(node, endpoint);
    let what = || format!("waiting for the operator's answer for {node}/{endpoint}");
    let wait = async {
        loop {
            // List, then watch from the list's revision; after a broken
            // watch, list again. (The key is used as a prefix: filter.)
            let (kvs, listed) = ctx
                .kv
                .get_prefix(&key)
                .await
                .map_err(CliError::kv(what()))?;
            if let Some(kv) = kvs.iter().find(|kv| kv.key == key) {
                if let Some(answer) = judge(node, endpoint, &kv.value, revision)? {
                    return Ok(answer);
                }
            }
            let mut stream = ctx
                .kv
                .watch_prefix(&key, listed + 1)
                .await
                .map_err(CliError::kv(what()))?;
            while let Ok((events, _)) = stream.next().await {
                for ev in events.iter().filter(|ev| ev.key() == key) {
                    match ev {
                        WatchEvent::Put(kv) => {
                            if let Some(answer) = judge(node, endpoint, &kv.value, revision)? {
                                return Ok(answer);
                            }
                        }
                        WatchEvent::Delete { .. } => {
                            // The operator removes answers of deleted records.
                            let record = ctx
                                .kv
                                .get(&record_key)
                                .await
                                .map_err(CliError::kv(what()))?;
                            match record {
                                Some(r) if r.mod_revision == revision => {}
                                Some(r) => {
                                    return Err(CliError::Superseded {
                                        node: node.to_string(),
                                        endpoint: endpoint.to_string(),
                                        revision,
                                        seen: r.mod_revision,
                                    })
                                }
                                None => {
                                    return Err(CliError::DeletedWhileWaiting {
                                        node: node.to_string(),
                                        endpoint: endpoint.to_string(),
                                    })
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), wait)
        .await
        .unwrap_or_else(|_| {
            Err(CliError::WaitTimeout {
                node: node.to_string(),
                endpoint: endpoint.to_string(),
                revision,
                secs,
            })
        })
}

pub async fn delete(ctx: &Ctx, node: &str, id: &str) -> Result<Deleted, CliError> {
    let existed = ctx
        .kv
        .delete(&ctx.layout.endpoint(node, id))
        .await
        .map_err(CliError::kv(format!("deleting endpoint {node}/{id}")))?;
    if !existed {
        return Err(CliError::EndpointNotFound {
            node: node.into(),
            endpoint: id.into(),
        });
    }
    Ok(Deleted {
        node: node.into(),
        endpoint: id.into(),
        deleted: true,
    })
}

/// Every endpoint (of `node`, if given) with its status.
pub async fn list(ctx: &Ctx, node: Option<&str>) -> Result<EndpointList, CliError> {
    let layout = &ctx.layout;
    let records_prefix = match node {
        Some(n) => layout.node_endpoints_prefix(n),
        None => layout.endpoints_prefix(),
    };
    let answers_prefix = layout
        .assignment_for_endpoint_key(&records_prefix)
        .expect("an endpoints prefix maps to an assignments prefix");
    // Answers first: then no answer read is for a record newer than the one
    // read after it, and "ready" is never claimed for a record not seen.
    let (answers, _) = ctx
        .kv
        .get_prefix(&answers_prefix)
        .await
        .map_err(CliError::kv("listing identity assignments"))?;
    let (records, _) = ctx
        .kv
        .get_prefix(&records_prefix)
        .await
        .map_err(CliError::kv("listing endpoints"))?;
    let answers: std::collections::HashMap<String, KeyValue> =
        answers.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    let views = records
        .iter()
        .filter_map(|r| {
            let answer_key = layout.assignment_for_endpoint_key(&r.key)?;
            view_from_kvs(layout, r, answers.get(&answer_key))
        })
        .collect();
    Ok(EndpointList(views))
}

pub async fn get(ctx: &Ctx, node: &str, id: &str) -> Result<EndpointView, CliError> {
    let what = || format!("reading endpoint {node}/{id}");
    let answer = ctx
        .kv
        .get(&ctx.layout.endpoint_identity(node, id))
        .await
        .map_err(CliError::kv(what()))?;
    let record = ctx
        .kv
        .get(&ctx.layout.endpoint(node, id))
        .await
        .map_err(CliError::kv(what()))?;
    record
        .and_then(|r| view_from_kvs(&ctx.layout, &r, answer.as_ref()))
        .ok_or_else(|| CliError::EndpointNotFound {
            node: node.into(),
            endpoint: id.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::EndpointKeyArgs;

    fn put_args(labels: &[&str]) -> PutArgs {
        PutArgs {
            key: EndpointKeyArgs {
                node: "n1".into(),
                id: "ep1".into(),
            },
            labels: labels.iter().map(|s| s.to_string()).collect(),
            addresses: vec![],
            namespace: None,
            interface: None,
            wait: None,
        }
    }

    #[test]
    fn record_from_args_normalises_labels() {
        let r = record_from_args(&put_args(&["zone=a", "k8s:app=web", "container:x=1"])).unwrap();
        assert_eq!(r.labels, ["k8s:app=web", "container:x=1", "k8s:zone=a"]);
        assert_eq!((r.node.as_str(), r.id.as_str()), ("n1", "ep1"));
    }

    #[test]
    fn record_from_args_names_the_bad_label() {
        let e = record_from_args(&put_args(&["k8s:app=web", "k8s:-bad=x"])).unwrap_err();
        assert!(matches!(&e, CliError::InvalidLabel { label, .. } if label == "k8s:-bad=x"));
        assert!(crate::error_line(&e).contains("\"k8s:-bad=x\""), "{e}");
        let e = record_from_args(&put_args(&["k8s:app=a", "container:app=b"])).unwrap_err();
        assert!(matches!(e, CliError::InvalidLabelSet(_)));
        let mut bad = put_args(&[]);
        bad.key.node = "a/b".into();
        assert!(matches!(
            record_from_args(&bad),
            Err(CliError::InvalidName { what: "node", .. })
        ));
        let mut bad = put_args(&[]);
        bad.addresses = vec!["10.0.0.300".into()];
        assert!(matches!(
            record_from_args(&bad),
            Err(CliError::InvalidName {
                what: "address",
                ..
            })
        ));
    }

    #[test]
    fn refs() {
        assert_eq!(parse_ref("n/e").unwrap(), ("n", "e"));
        assert!(parse_ref("ne").is_err());
        assert!(parse_ref("/e").is_err());
        assert!(parse_ref("n/e/f").is_err());
    }

    fn answer(rev: i64, identity: Option<u32>, error: Option<&str>) -> EndpointIdentity {
        EndpointIdentity {
            identity: identity.map(NumericIdentity),
            labels: if identity.is_some() {
                "k8s:app=web;".into()
            } else {
                String::new()
            },
            error: error.map(String::from),
            endpoint_revision: rev,
            allocator: "op0".into(),
        }
    }

    fn kv(key: &str, value: Vec<u8>, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn status_follows_the_answer_revision() {
        let layout = Layout::default();
        let rec = record_from_args(&put_args(&["app=web"])).unwrap();
        let rec_kv = kv(
            &layout.endpoint("n1", "ep1"),
            serde_json::to_vec(&rec).unwrap(),
            10,
        );
        let ans = |a: EndpointIdentity| {
            kv(
                &layout.endpoint_identity("n1", "ep1"),
                serde_json::to_vec(&a).unwrap(),
                11,
            )
        };

        let v = view_from_kvs(&layout, &rec_kv, None).unwrap();
        assert_eq!((v.status, v.identity), (EndpointStatus::Pending, None));

        let v = view_from_kvs(&layout, &rec_kv, Some(&ans(answer(10, Some(300), None)))).unwrap();
        assert_eq!(
            (v.status, v.identity),
            (EndpointStatus::Ready, Some(NumericIdentity(300)))
        );
        assert_eq!(v.identity_labels.as_deref(), Some("k8s:app=web;"));
        assert!(v.human().contains("ready"), "{}", v.human());

        let v = view_from_kvs(&layout, &rec_kv, Some(&ans(answer(9, Some(300), None)))).unwrap();
        assert_eq!((v.status, v.identity), (EndpointStatus::Pending, None));
        assert_eq!(v.answered_revision, Some(9));

        let v = view_from_kvs(
            &layout,
            &rec_kv,
            Some(&ans(answer(10, None, Some("no relevant labels")))),
        )
        .unwrap();
        assert_eq!(v.status, EndpointStatus::Error);
        assert!(v.human().contains("no relevant labels"));

        let garbage = kv(&layout.endpoint("n1", "ep2"), b"{".to_vec(), 12);
        let v = view_from_kvs(&layout, &garbage, None).unwrap();
        assert_eq!((v.node.as_str(), v.endpoint.as_str()), ("n1", "ep2"));
        assert!(v.labels.is_empty());
    }

    #[test]
    fn judging_answers() {
        let v = |a: EndpointIdentity| serde_json::to_vec(&a).unwrap();
        assert!(judge("n", "e", &v(answer(5, Some(1), None)), 6)
            .unwrap()
            .is_none());
        assert!(judge("n", "e", &v(answer(6, Some(1), None)), 6)
            .unwrap()
            .is_some());
        assert!(matches!(
            judge("n", "e", &v(answer(7, Some(1), None)), 6),
            Err(CliError::Superseded { seen: 7, .. })
        ));
        assert!(judge("n", "e", b"junk", 6).unwrap().is_none());
    }

    #[test]
    fn list_table() {
        let layout = Layout::default();
        let rec = record_from_args(&put_args(&["app=web", "zone=a"])).unwrap();
        let rec_kv = kv(
            &layout.endpoint("n1", "ep1"),
            serde_json::to_vec(&rec).unwrap(),
            10,
        );
        let v = view_from_kvs(&layout, &rec_kv, None).unwrap();
        let text = EndpointList(vec![v]).human();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            format!(
                "NODE   ENDPOINT   IDENTITY   LABELS{}STATUS",
                " ".repeat(19)
            )
        );
        assert_eq!(
            lines.next().unwrap(),
            "n1     ep1        -          k8s:app=web,k8s:zone=a   pending"
        );
        assert_eq!(EndpointList(vec![]).human(), "No endpoints found.\n");
    }
}
