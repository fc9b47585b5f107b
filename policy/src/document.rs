//! Policy documents: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
//! Kubernetes NetworkPolicy (translated by `netpol`)
//! (and `List`s of them) as YAML or JSON, parsed with field paths in errors.

use std::fmt;

use serde::Serialize;

use crate::api::Rule;
use crate::validate::{self, FieldError};

/// Which API object a policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    /// A Kubernetes networking.k8s.io/v1 NetworkPolicy, translated (`netpol`).
    NetworkPolicy,
}

impl PolicyKind {
    /// Cilium's short name, used in etcd keys.
    pub fn short_name(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "cnp",
            PolicyKind::CiliumClusterwideNetworkPolicy => "ccnp",
            PolicyKind::NetworkPolicy => "knp",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
        }
    }

    pub fn is_namespaced(self) -> bool {
        match self {
            PolicyKind::CiliumNetworkPolicy | PolicyKind::NetworkPolicy => true,
            PolicyKind::CiliumClusterwideNetworkPolicy => false,
        }
    }
}

/// One parsed policy object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    pub kind: PolicyKind,
    pub name: String,
    /// For namespaced kinds; `default` when the object names none.
    pub namespace: Option<String>,
    /// `spec` (as one rule) or `specs`, with the path each came from.
    pub rules: Vec<(String, Rule)>,
    /// What validation cannot decide offline, with field paths (a named
    /// port must be declared by the pods it refers to). Never a reason to
    /// reject.
    #[serde(skip)]
    pub warnings: Vec<FieldError>,
    /// The object as given (what standalone mode stores), less what the
    /// API server would prune (a top-level `description`).
    #[serde(skip)]
    pub object: serde_json::Value,
}

/// An object of a manifest that is not a policy (a Deployment, a Service,
/// ...): what `parse_manifest` skips.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name.as_deref().unwrap_or("-"))
    }
}

/// One document of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Policy(Policy),
    Invalid(PolicyErrors),
    /// Not a policy kind: left alone.
    Skipped(Skipped),
}

/// Everything wrong with one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors {
    /// The policy's name, or `document N` when it has none.
    pub policy: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {e}", self.policy)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

const API_VERSION: &str = "cilium.io/v2";

fn err(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Parses every document in `text` (multi-document YAML, or JSON).
/// `List` objects are expanded into their items. Each item is a policy or
/// the errors that make it invalid; one bad document never hides the others.
/// An object of another kind is an error: use `parse_manifest` for files
/// that mix policies with other objects.
pub fn parse_documents(text: &str) -> Vec<Result<Policy, PolicyErrors>> {
    documents(text, false)
        .into_iter()
        .filter_map(|d| match d {
            Document::Policy(p) => Some(Ok(p)),
            Document::Invalid(e) => Some(Err(e)),
            Document::Skipped(_) => None,
        })
        .collect()
}

/// Like `parse_documents`, for manifests as users keep them: objects that
/// are not policies (Deployments, Services, ...) are returned as skipped
/// rather than as errors.
pub fn parse_manifest(text: &str) -> Vec<Document> {
    documents(text, true)
}

/// The policy kinds (CNP, CCNP, Kubernetes NetworkPolicy).
fn is_policy_kind(kind: &str) -> bool {
    matches!(
        kind,
        "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" | "NetworkPolicy"
    )
}

/// What an object is when it is not a policy, by its kind alone (an
/// Ingress shares NetworkPolicy's API group): `None` for a policy kind, an
/// object without a kind, or not an object at all (those are errors).
fn skipped(value: &serde_json::Value) -> Option<Skipped> {
    let kind = value.get("kind")?.as_str()?;
    if is_policy_kind(kind) {
        return None;
    }
    let text = |ptr: &str| {
        value
            .pointer(ptr)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    Some(Skipped {
        api_version: text("/apiVersion"),
        kind: kind.to_string(),
        namespace: text("/metadata/namespace"),
        name: text("/metadata/name"),
    })
}

fn documents(text: &str, skip_others: bool) -> Vec<Document> {
    let mut out = Vec::new();
    let push = |value: &serde_json::Value, label: &str, out: &mut Vec<Document>| {
        if skip_others {
            if let Some(s) = skipped(value) {
                out.push(Document::Skipped(s));
                return;
            }
        }
        out.push(match parse_object(value, label) {
            Ok(p) => Document::Policy(p),
            Err(e) => Document::Invalid(e),
        });
    };
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", i + 1);
        let value: serde_json::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.push(Document::Invalid(PolicyErrors {
                    policy: label,
                    errors: vec![err("", format!("not valid YAML or JSON: {e}"))],
                }));
                // A syntax error ends the stream: later documents cannot be
                // located reliably.
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        if value
            .get("kind")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k.ends_with("List"))
        {
            match value.get("items").and_then(|i| i.as_array()) {
                Some(items) => {
                    for (j, item) in items.iter().enumerate() {
                        push(item, &format!("{label} item {j}"), &mut out);
                    }
                }
                None => out.push(Document::Invalid(PolicyErrors {
                    policy: label,
                    errors: vec![err("items", "a List needs an items array")],
                })),
            }
            continue;
        }
        push(&value, &label, &mut out);
    }
    out
}

/// Parses and validates one API object.
pub fn parse_object(value: &serde_json::Value, label: &str) -> Result<Policy, PolicyErrors> {
    if crate::netpol::is_network_policy(value) {
        return crate::netpol::parse_object(value, label);
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let policy_label = name.clone().unwrap_or_else(|| label.to_string());
    let fail = |errors: Vec<FieldError>| PolicyErrors {
        policy: policy_label.clone(),
        errors,
    };
    let Some(obj) = value.as_object() else {
        return Err(fail(vec![err("", "a policy must be a YAML/JSON object")]));
    };
    let mut errors = Vec::new();
    match obj.get("apiVersion").and_then(|v| v.as_str()) {
        Some(API_VERSION) => {}
        Some(other) => errors.push(err(
            "apiVersion",
            format!("{other:?} is not supported (want {API_VERSION})"),
        )),
        None => errors.push(err("apiVersion", "is required")),
    }
    let kind = match obj.get("kind").and_then(|v| v.as_str()) {
        Some("CiliumNetworkPolicy") => Some(PolicyKind::CiliumNetworkPolicy),
        Some("CiliumClusterwideNetworkPolicy") => Some(PolicyKind::CiliumClusterwideNetworkPolicy),
        Some(other) => {
            errors.push(err(
                "kind",
                format!(
                    "{other:?} is not a policy kind (want CiliumNetworkPolicy, \
                     CiliumClusterwideNetworkPolicy or NetworkPolicy)"
                ),
            ));
            None
        }
        None => {
            errors.push(err("kind", "is required"));
            None
        }
    };
    match &name {
        Some(n) => {
            if let Err(reason) = validate::check_dns_subdomain(n) {
                errors.push(err("metadata.name", format!("{n:?} {reason}")));
            }
        }
        None => errors.push(err("metadata.name", "is required")),
    }
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    if let Some(ns) = &namespace {
        if let Err(reason) = validate::check_dns_label(ns) {
            errors.push(err("metadata.namespace", format!("{ns:?} {reason}")));
        }
        if kind == Some(PolicyKind::CiliumClusterwideNetworkPolicy) {
            errors.push(err(
                "metadata.namespace",
                "a CiliumClusterwideNetworkPolicy is not namespaced",
            ));
        }
    }
    for key in obj.keys() {
        // Cilium's example manifests carry a free-form `description` beside
        // `metadata`: the API server prunes it, and so do we.
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "specs" | "status" | "description"
        ) {
            errors.push(err(key, "unknown field"));
        }
    }
    if obj.get("description").is_some_and(|d| !d.is_string()) {
        errors.push(err("description", "must be a string"));
    }
    let mut rules = Vec::new();
    match (obj.get("spec"), obj.get("specs")) {
        (None, None) => errors.push(err("spec", "a policy needs spec or specs")),
        (Some(_), Some(_)) => errors.push(err("specs", "give spec or specs, not both")),
        (Some(spec), None) => rules.push(("spec".to_string(), spec)),
        (None, Some(specs)) => match specs.as_array() {
            Some(list) if !list.is_empty() => {
                rules.extend(
                    list.iter()
                        .enumerate()
                        .map(|(i, s)| (format!("specs[{i}]"), s)),
                );
            }
            Some(_) => errors.push(err("specs", "must not be empty")),
            None => errors.push(err("specs", "must be a list of rules")),
        },
    }
    let mut parsed = Vec::new();
    let mut warnings = Vec::new();
    for (path, raw) in rules {
        match serde_path_to_error::deserialize::<_, Rule>(raw) {
            Ok(rule) => {
                if let Some(kind) = kind {
                    validate::rule(&rule, kind, &path, &mut errors, &mut warnings);
                }
                parsed.push((path, rule));
            }
            Err(e) => {
                let inner = e.path().to_string();
                let full = if inner == "." {
                    path
                } else {
                    format!("{path}.{inner}")
                };
                errors.push(err(&full, clean_serde_message(&e.inner().to_string())));
            }
        }
    }
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    let kind = kind.expect("no errors means a known kind");
    let mut object = value.clone();
    if let Some(o) = object.as_object_mut() {
        o.remove("description");
    }
    Ok(Policy {
        kind,
        name: name.expect("no errors means a name"),
        namespace: if kind.is_namespaced() {
            Some(namespace.unwrap_or_else(|| "default".to_string()))
        } else {
            None
        },
        rules: parsed,
        warnings,
        object,
    })
}

/// serde's messages end with " at line X column Y" for some formats and
/// mention Rust types for others; keep the part a user can act on.
fn clean_serde_message(msg: &str) -> String {
    msg.split(" at line ").next().unwrap_or(msg).to_string()
}
