//! `axoneme policy ...`: policy documents.

use std::io::Read as _;
use std::path::PathBuf;

use axoneme_identity::PolicyStatus;
use axoneme_policy::{parse_manifest, Document, PolicyKind, Skipped};
use serde::Serialize;

use crate::args::PolicyRefArgs;
use crate::error::CliError;
use crate::output::Render;
use crate::Ctx;

/// The verdict on one policy document.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub file: String,
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<PolicyKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<usize>,
    pub valid: bool,
    /// `path: message` per problem.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// `path: message` per thing only the cluster can tell (a named port
    /// must be declared by the pods it refers to); never makes it invalid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// An object of a file that is not a policy (a Deployment, a Service, ...),
/// left alone.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedObject {
    pub file: String,
    pub skipped: Skipped,
}

/// One document of a file: a policy checked, or another object skipped.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Entry {
    Policy(Checked),
    Skipped(SkippedObject),
}

#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ValidateReport(pub Vec<Entry>);

impl ValidateReport {
    /// The policies checked (not the objects skipped).
    pub fn policies(&self) -> impl Iterator<Item = &Checked> {
        self.0.iter().filter_map(|e| match e {
            Entry::Policy(c) => Some(c),
            Entry::Skipped(_) => None,
        })
    }

    /// At least one policy, and every policy valid.
    pub fn ok(&self) -> bool {
        self.policies().next().is_some() && self.policies().all(|c| c.valid)
    }
}

impl Render for ValidateReport {
    fn human(&self) -> String {
        let mut out = String::new();
        for e in &self.0 {
            let c = match e {
                Entry::Policy(c) => c,
                Entry::Skipped(s) => {
                    out.push_str(&format!("{}: skipped (not a policy)\n", s.skipped));
                    continue;
                }
            };
            if c.valid {
                out.push_str(&format!(
                    "{}: valid ({}, {} rule{})\n",
                    c.policy,
                    c.kind.map(PolicyKind::as_str).unwrap_or_default(),
                    c.rules.unwrap_or_default(),
                    if c.rules == Some(1) { "" } else { "s" }
                ));
            }
            for e in &c.errors {
                out.push_str(&format!("{}: {e}\n", c.policy));
            }
            for w in &c.warnings {
                out.push_str(&format!("{}: warning: {w}\n", c.policy));
            }
        }
        if self.policies().next().is_none() {
            out.push_str("no policy documents found\n");
        }
        out
    }
}

/// Parses and validates every policy in `files` (`-` is standard input);
/// other objects (Deployments, Services, ...) are listed as skipped.
pub fn validate_files(files: &[PathBuf]) -> Result<ValidateReport, CliError> {
    let mut checked = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let text = read(path)?;
        for doc in parse_manifest(&text) {
            checked.push(match doc {
                Document::Policy(p) => Entry::Policy(Checked {
                    file: name.clone(),
                    policy: p.name,
                    kind: Some(p.kind),
                    rules: Some(p.rules.len()),
                    valid: true,
                    errors: vec![],
                    warnings: p.warnings.iter().map(|f| f.to_string()).collect(),
                }),
                Document::Invalid(e) => Entry::Policy(Checked {
                    file: name.clone(),
                    policy: e.policy,
                    kind: None,
                    rules: None,
                    valid: false,
                    errors: e.errors.iter().map(|f| f.to_string()).collect(),
                    warnings: vec![],
                }),
                Document::Skipped(skipped) => Entry::Skipped(SkippedObject {
                    file: name.clone(),
                    skipped,
                }),
            });
        }
    }
    Ok(ValidateReport(checked))
}

/// A stored policy and the operator's verdict on it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredPolicy {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// `true`/`false` once the operator has judged this revision; absent before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub revision: i64,
    /// The stored object (for `policy get`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<serde_json::Value>,
}

impl StoredPolicy {
    fn status_text(&self) -> &'static str {
        match self.valid {
            Some(true) => "True",
            Some(false) => "False",
            None => "Pending",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct PolicyList(pub Vec<StoredPolicy>);

impl PolicyList {
    /// Every policy judged valid.
    pub fn ok(&self) -> bool {
        self.0.iter().all(|p| p.valid != Some(false))
    }
}

fn table(list: &[StoredPolicy]) -> String {
    let mut t = crate::output::Table::new(&["KIND", "NAMESPACE", "NAME", "VALID", "MESSAGE"]);
    for p in list {
        t.row([
            p.kind.clone(),
            p.namespace.clone().unwrap_or_else(|| "-".into()),
            p.name.clone(),
            p.status_text().to_string(),
            p.message.lines().next().unwrap_or("").to_string(),
        ]);
    }
    t.to_string()
}

impl Render for PolicyList {
    fn human(&self) -> String {
        if self.0.is_empty() {
            return "No policies found.\n".into();
        }
        table(&self.0)
    }
}

impl Render for StoredPolicy {
    fn human(&self) -> String {
        let mut out = table(std::slice::from_ref(self));
        if !self.message.is_empty() {
            out.push_str(&format!("\n{}\n", self.message));
        }
        if let Some(obj) = &self.object {
            out.push('\n');
            out.push_str(&serde_yaml::to_string(obj).unwrap_or_default());
        }
        out
    }
}

pub(crate) fn read(path: &PathBuf) -> Result<String, CliError> {
    let name = path.display().to_string();
    let mut s = String::new();
    if name == "-" {
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|error| CliError::ReadFile { path: name, error })?;
    } else {
        s = std::fs::read_to_string(path)
            .map_err(|error| CliError::ReadFile { path: name, error })?;
    }
    Ok(s)
}

/// Reads a policy key into a `StoredPolicy` (without its status).
fn stored(ctx: &Ctx, kv: &axoneme_kvstore::KeyValue) -> Option<StoredPolicy> {
    let rest = kv.key.strip_prefix(&ctx.layout.policies_prefix())?;
    let mut it = rest.splitn(3, '/');
    let (kind, ns, name) = (it.next()?, it.next()?, it.next()?);
    Some(StoredPolicy {
        kind: kind.to_string(),
        namespace: (ns != "_").then(|| ns.to_string()),
        name: name.to_string(),
        valid: None,
        message: String::new(),
        revision: kv.mod_revision,
        object: serde_json::from_slice(&kv.value).ok(),
    })
}

async fn with_status(ctx: &Ctx, key: &str, mut p: StoredPolicy) -> Result<StoredPolicy, CliError> {
    let Some(status_key) = ctx.layout.status_for_policy_key(key) else {
        return Ok(p);
    };
    if let Some(kv) = ctx
        .kv
        .get(&status_key)
        .await
        .map_err(CliError::kv(format!("reading the status of {key}")))?
    {
        if let Ok(s) = serde_json::from_slice::<PolicyStatus>(&kv.value) {
            if s.observed_revision == p.revision {
                p.valid = Some(s.valid);
                p.message = s.message;
            }
        }
    }
    Ok(p)
}

/// Stores every policy in `files` (already validated; other objects are
/// skipped), optionally waiting for the operator's verdicts.
pub async fn import(
    ctx: &Ctx,
    files: &[PathBuf],
    wait: Option<u64>,
) -> Result<PolicyList, CliError> {
    let mut keys = Vec::new();
    for path in files {
        let docs = parse_manifest(&read(path)?);
        for p in docs.into_iter().filter_map(|d| match d {
            Document::Policy(p) => Some(p),
            _ => None,
        }) {
            let key = ctx
                .layout
                .policy(p.kind.short_name(), p.namespace.as_deref(), &p.name);
            let value =
                serde_json::to_vec(&p.object).map_err(|e| CliError::Encode(e.to_string()))?;
            ctx.kv
                .put(&key, value, 0)
                .await
                .map_err(CliError::kv(format!("storing policy {}", p.name)))?;
            keys.push(key);
        }
    }
    let deadline = wait.map(|s| {
        (
            s,
            std::time::Instant::now() + std::time::Duration::from_secs(s),
        )
    });
    let mut out = Vec::new();
    for key in keys {
        loop {
            let kv = ctx
                .kv
                .get(&key)
                .await
                .map_err(CliError::kv(format!("reading {key}")))?
                .ok_or_else(|| CliError::PolicyNotFound(key.clone()))?;
            let p = with_status(ctx, &key, stored(ctx, &kv).expect("our own key")).await?;
            match deadline {
                Some((secs, until)) if p.valid.is_none() => {
                    if std::time::Instant::now() > until {
                        return Err(CliError::PolicyWait(secs, p.name));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                _ => {
                    out.push(StoredPolicy { object: None, ..p });
                    break;
                }
            }
        }
    }
    Ok(PolicyList(out))
}

pub async fn list(ctx: &Ctx) -> Result<PolicyList, CliError> {
    let (kvs, _) = ctx
        .kv
        .get_prefix(&ctx.layout.policies_prefix())
        .await
        .map_err(CliError::kv("listing policies"))?;
    let mut out = Vec::new();
    for kv in &kvs {
        if let Some(p) = stored(ctx, kv) {
            out.push(StoredPolicy {
                object: None,
                ..with_status(ctx, &kv.key, p).await?
            });
        }
    }
    Ok(PolicyList(out))
}

fn key_of(ctx: &Ctx, r: &PolicyRefArgs) -> String {
    let kind = if r.clusterwide {
        PolicyKind::CiliumClusterwideNetworkPolicy
    } else if r.network_policy {
        PolicyKind::NetworkPolicy
    } else {
        PolicyKind::CiliumNetworkPolicy
    };
    let namespace = kind.is_namespaced().then_some(r.namespace.as_str());
    ctx.layout.policy(kind.short_name(), namespace, &r.name)
}

pub async fn get(ctx: &Ctx, r: &PolicyRefArgs) -> Result<StoredPolicy, CliError> {
    let key = key_of(ctx, r);
    let kv = ctx
        .kv
        .get(&key)
        .await
        .map_err(CliError::kv(format!("reading policy {}", r.name)))?
        .ok_or_else(|| CliError::PolicyNotFound(r.name.clone()))?;
    with_status(ctx, &key, stored(ctx, &kv).expect("our own key")).await
}

pub async fn delete(ctx: &Ctx, r: &PolicyRefArgs) -> Result<PolicyList, CliError> {
    let p = get(ctx, r).await?;
    ctx.kv
        .delete(&key_of(ctx, r))
        .await
        .map_err(CliError::kv(format!("deleting policy {}", r.name)))?;
    Ok(PolicyList(vec![StoredPolicy { object: None, ..p }]))
}
