//! `axoneme service ...`: services in standalone mode, stored in etcd at
//! `Layout::service(namespace, name)` as `ServiceRecord`s.
//!
//! `create` and `update` write every service of their files in one
//! transaction, only if every document is valid and no service conflicts
//! with another (a cluster IP, node port or address:port two services
//! would share). The transaction compares each key's version (`create`:
//! absent, `update`: as read) and the frontend index's marker, so a
//! concurrent change fails the command cleanly, with nothing written
//! ([`store`]: how conflicts are found without reading every service).

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::PathBuf;

use axoneme_kvstore::KeyValue;
use axoneme_service::validate::{self, FieldError};
use axoneme_service::{BackendState, Frontend, ServiceRecord, ServiceType};
use serde::Serialize;

use crate::error::CliError;
use crate::output::{Render, Table};
use crate::Ctx;

/// The verdict on one service of the files (or on a document that names
/// none).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checked {
    pub file: String,
    /// `namespace/name`, or `document N` when the document names none.
    pub service: String,
    pub valid: bool,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontends: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<usize>,
    /// `path: message` per problem.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// What `service validate` says (`create` and `update` fail with its
/// problems, [`CliError::InvalidServices`]).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct ValidateReport(pub Vec<Checked>);

impl ValidateReport {
    /// At least one service, and every one valid.
    pub fn ok(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|c| c.valid)
    }

    /// Every problem as `file: namespace/name: path: message`.
    pub fn problems(&self) -> Vec<String> {
        if self.0.is_empty() {
            return vec!["no Service documents found".into()];
        }
        self.0
            .iter()
            .flat_map(|c| {
                c.errors
                    .iter()
                    .map(move |e| format!("{}: {}: {e}", c.file, c.service))
            })
            .collect()
    }

    /// Adds `errors` to the services they name (the last entry of that
    /// name: a conflict is reported on the later service).
    fn add(&mut self, errors: Vec<FieldError>) {
        for e in errors {
            if let Some(c) = self.0.iter_mut().rev().find(|c| c.service == e.service) {
                c.valid = false;
                c.errors.push(path_message(&e));
            }
        }
    }
}

fn path_message(e: &FieldError) -> String {
    if e.path.is_empty() {
        e.message.clone()
    } else {
        format!("{}: {}", e.path, e.message)
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

impl Render for ValidateReport {
    fn human(&self) -> String {
        let mut out = String::new();
        for c in &self.0 {
            if c.valid {
                out.push_str(&format!(
                    "{}: {}: valid ({}, {}, {})\n",
                    c.file,
                    c.service,
                    c.type_.map(ServiceType::as_str).unwrap_or_default(),
                    plural(c.frontends.unwrap_or_default(), "frontend"),
                    plural(c.backends.unwrap_or_default(), "backend"),
                ));
            }
            for e in &c.errors {
                out.push_str(&format!("{}: {}: {e}\n", c.file, c.service));
            }
        }
        if self.0.is_empty() {
            out.push_str("no Service documents found\n");
        }
        out
    }
}

/// Distinct backend addresses of a service: `(ready, all)`.
fn backend_counts(r: &ServiceRecord) -> (usize, usize) {
    let mut all = BTreeSet::new();
    let mut active = BTreeSet::new();
    for e in &r.endpoints {
        for a in &e.addresses {
            all.insert(*a);
            if e.conditions.state() == BackendState::Active {
                active.insert(*a);
            }
        }
    }
    (active.len(), all.len())
}

fn read(path: &PathBuf) -> Result<String, CliError> {
    let name = path.display().to_string();
    let mut s = String::new();
    let result = if name == "-" {
        std::io::stdin().read_to_string(&mut s).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|text| s = text)
    };
    result.map_err(|error| CliError::ReadFile { path: name, error })?;
    Ok(s)
}

/// A service of the files and the file it came from.
#[derive(Debug, Clone)]
pub struct FromFile {
    pub file: String,
    pub record: ServiceRecord,
}

/// Reads, parses and validates every file (offline): the verdicts, and
/// the services when every one is valid (also against each other across
/// files).
pub fn check_files(files: &[PathBuf]) -> Result<(ValidateReport, Vec<FromFile>), CliError> {
    let mut report = ValidateReport::default();
    let mut records = Vec::new();
    for path in files {
        let file = path.display().to_string();
        match axoneme_service::parse_documents(&read(path)?) {
            Ok(rs) => {
                for r in rs {
                    report.0.push(Checked {
                        file: file.clone(),
                        service: r.id(),
                        valid: true,
                        type_: Some(r.spec.type_),
                        frontends: Some(r.frontends().len()),
                        backends: Some(backend_counts(&r).1),
                        errors: vec![],
                    });
                    records.push(FromFile {
                        file: file.clone(),
                        record: r,
                    });
                }
            }
            Err(errors) => {
                // One entry per service (or document) in the order met.
                for e in errors {
                    let entry = match report
                        .0
                        .iter_mut()
                        .find(|c| c.file == file && c.service == e.service)
                    {
                        Some(c) => c,
                        None => {
                            report.0.push(Checked {
                                file: file.clone(),
                                service: e.service.clone(),
                                valid: false,
                                type_: None,
                                frontends: None,
                                backends: None,
                                errors: vec![],
                            });
                            report.0.last_mut().expect("just pushed")
                        }
                    };
                    entry.valid = false;
                    entry.errors.push(path_message(&e));
                }
            }
        }
    }
    if report.ok() {
        let all: Vec<ServiceRecord> = records.iter().map(|r| r.record.clone()).collect();
        report.add(validate::conflicts(&all, &[]));
    }
    Ok((report, records))
}

/// Whether a command creates services or replaces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Create,
    Update,
}

/// A stored service as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    /// Absent when the stored record cannot be read (see `error`).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Every frontend as `addr:port/PROTO` (`*:port/PROTO` for node ports).
    pub frontends: Vec<String>,
    pub backends: BackendCount,
    /// The etcd revision the record was last written at.
    pub revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The stored record (`get` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<ServiceRecord>,
    /// Every frontend with its backends, as the datapath gets them (`get`
    /// only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<Frontend>,
    /// The datapath's view on this host's node: `programmed/frontends`,
    /// `off` (kube-proxy replacement off) or why it is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BackendCount {
    /// Distinct backend addresses that are ready.
    pub active: usize,
    pub total: usize,
}

impl ServiceView {
    fn of(r: &ServiceRecord, revision: i64, detail: bool) -> Self {
        let resolved = r.frontends();
        let mut frontends: Vec<String> = Vec::new();
        for f in &resolved {
            let shown = f.display_addr();
            if !frontends.contains(&shown) {
                frontends.push(shown);
            }
        }
        let (active, total) = backend_counts(r);
        ServiceView {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            type_: Some(r.spec.type_),
            frontends,
            backends: BackendCount { active, total },
            revision,
            error: None,
            record: detail.then(|| r.clone()),
            resolved: if detail { resolved } else { Vec::new() },
            node: None,
        }
    }

    /// A stored key-value; a record that cannot be read is shown as such.
    fn from_kv(ctx: &Ctx, kv: &KeyValue, detail: bool) -> Option<Self> {
        let (namespace, name) = ctx.layout.split_service_key(&kv.key)?;
        Some(match serde_json::from_slice::<ServiceRecord>(&kv.value) {
            Ok(r) => ServiceView::of(&r, kv.mod_revision, detail),
            Err(e) => ServiceView {
                namespace: namespace.to_string(),
                name: name.to_string(),
                type_: None,
                frontends: vec![],
                backends: BackendCount::default(),
                revision: kv.mod_revision,
                error: Some(format!("invalid record: {e}")),
                record: None,
                resolved: vec![],
                node: None,
            },
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ServiceList(pub Vec<ServiceView>);

/// Adds this host's agent's view to each service (how many of its
/// frontends the node's datapath has programmed). The agent is asked once,
/// within a second; without it, the services are shown as stored.
pub async fn add_node_view(list: &mut [ServiceView], agent: &crate::agent::Agent) {
    let quick = crate::agent::Agent {
        socket: agent.socket.clone(),
        timeout: agent.timeout.min(std::time::Duration::from_secs(1)),
    };
    let node = crate::agent::services(&quick).await;
    for s in list.iter_mut() {
        s.node = Some(match &node {
            Err(_) => "no agent".into(),
            Ok(v) if !v.enabled => "off".into(),
            Ok(v) => {
                let id = format!("{}/{}", s.namespace, s.name);
                let programmed = v.frontends.iter().filter(|f| f.service == id).count();
                format!("{programmed}/{}", s.frontends.len())
            }
        });
    }
}

fn table(list: &[ServiceView]) -> String {
    let mut t = Table::new(&["NAMESPACE", "NAME", "TYPE", "FRONTENDS", "BACKENDS", "NODE"]);
    for s in list {
        t.row([
            s.namespace.clone(),
            s.name.clone(),
            s.type_.map(ServiceType::as_str).unwrap_or("?").to_string(),
            match &s.error {
                Some(e) => e.clone(),
                None => s.frontends.join(","),
            },
            format!("{}/{}", s.backends.active, s.backends.total),
            s.node.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.to_string()
}

impl Render for ServiceList {
    fn human(&self) -> String {
        if self.0.is_empty() {
            return "No services found.\n".into();
        }
        table(&self.0)
    }
}

impl Render for ServiceView {
    fn human(&self) -> String {
        let mut out = table(std::slice::from_ref(self));
        if self.resolved.is_empty() {
            return out;
        }
        let mut t = Table::new(&["FRONTEND", "KIND", "PORT", "OPTIONS", "BACKENDS"]);
        for f in &self.resolved {
            let mut options = Vec::new();
            if let Some(secs) = f.affinity_timeout {
                options.push(format!("affinity ClientIP {secs}s"));
            }
            if f.local_only {
                options.push("local only".to_string());
            }
            let backends: Vec<String> = f
                .backends
                .iter()
                .map(|b| {
                    let addr = match b.addr {
                        std::net::IpAddr::V4(a) => format!("{a}:{}", b.port),
                        std::net::IpAddr::V6(a) => format!("[{a}]:{}", b.port),
                    };
                    let mut notes: Vec<&str> = b.node.as_deref().into_iter().collect();
                    match b.state {
                        BackendState::Active => {}
                        BackendState::Terminating => notes.push("terminating"),
                        BackendState::NotReady => notes.push("not ready"),
                    }
                    if notes.is_empty() {
                        addr
                    } else {
                        format!("{addr} ({})", notes.join(", "))
                    }
                })
                .collect();
            t.row([
                f.display_addr(),
                f.kind.as_str().to_string(),
                if f.port_name.is_empty() {
                    "-".to_string()
                } else {
                    f.port_name.clone()
                },
                if options.is_empty() {
                    "-".to_string()
                } else {
                    options.join(", ")
                },
                if backends.is_empty() {
                    "none".to_string()
                } else {
                    backends.join(", ")
                },
            ]);
        }
        out.push('\n');
        out.push_str(&t.to_string());
        out
    }
}

/// Checks a namespace given on the command line.
pub fn check_namespace(namespace: &str) -> Result<(), CliError> {
    validate::check_dns1123_label(namespace).map_err(|reason| CliError::InvalidName {
        what: "namespace",
        value: namespace.to_string(),
        reason,
    })
}

/// Checks a `namespace/name` given on the command line.
pub fn check_ref(namespace: &str, name: &str) -> Result<(), CliError> {
    check_namespace(namespace)?;
    validate::check_dns1035_label(name).map_err(|reason| CliError::InvalidName {
        what: "service name",
        value: name.to_string(),
        reason,
    })
}

pub async fn list(ctx: &Ctx, namespace: Option<&str>) -> Result<ServiceList, CliError> {
    let mut prefix = ctx.layout.services_prefix();
    if let Some(ns) = namespace {
        prefix.push_str(ns);
        prefix.push('/');
    }
    let (kvs, _) = ctx
        .kv
        .get_prefix(&prefix)
        .await
        .map_err(CliError::kv("listing services"))?;
    Ok(ServiceList(
        kvs.iter()
            .filter_map(|kv| ServiceView::from_kv(ctx, kv, false))
            .collect(),
    ))
}

pub async fn get(ctx: &Ctx, namespace: &str, name: &str) -> Result<ServiceView, CliError> {
    let id = format!("{namespace}/{name}");
    let kv = ctx
        .kv
        .get(&ctx.layout.service(namespace, name))
        .await
        .map_err(CliError::kv(format!("reading service {id}")))?
        .ok_or_else(|| CliError::ServiceNotFound(id.clone()))?;
    let view = ServiceView::from_kv(ctx, &kv, true).expect("our own key");
    match view.error {
        Some(error) => Err(CliError::BadRecord { id, error }),
        None => Ok(view),
    }
}

mod store;
pub use store::{delete, store};

#[cfg(test)]
mod tests;
