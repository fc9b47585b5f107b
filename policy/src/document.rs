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
    /// The object as given (what standalone mode stores).
    #[serde(skip)]
    pub object: serde_json::Value,
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
pub fn parse_documents(text: &str) -> Vec<Result<Policy, PolicyErrors>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", i + 1);
        let value: serde_json::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(PolicyErrors {
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
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            match value.get("items").and_then(|i| i.as_array()) {
                Some(items) => {
                    for (j, item) in items.iter().enumerate() {
                        out.push(parse_object(item, &format!("{label} item {j}")));
                    }
                }
                None => out.push(Err(PolicyErrors {
                    policy: label,
                    errors: vec![err("items", "a List needs an items array")],
                })),
            }
            continue;
        }
        out.push(parse_object(&value, &label));
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
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "specs" | "status"
        ) {
            errors.push(err(key, "unknown field"));
        }
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
    for (path, raw) in rules {
        match serde_path_to_error::deserialize::<_, Rule>(raw) {
            Ok(rule) => {
                if let Some(kind) = kind {
                    validate::rule(&rule, kind, &path, &mut errors);
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
    Ok(Policy {
        kind,
        name: name.expect("no errors means a name"),
        namespace: if kind.is_namespaced() {
            Some(namespace.unwrap_or_else(|| "default".to_string()))
        } else {
            None
        },
        rules: parsed,
        object: value.clone(),
    })
}

/// serde's messages end with " at line X column Y" for some formats and
/// mention Rust types for others; keep the part a user can act on.
fn clean_serde_message(msg: &str) -> String {
    msg.split(" at line ").next().unwrap_or(msg).to_string()
}
