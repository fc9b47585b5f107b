//! Service documents: Kubernetes `v1` `Service` objects as YAML or JSON
//! (several per text, `---`-separated, or a `List`), each with a top-level
//! `endpoints:` list naming its backends in standalone mode (where no pods
//! are selected):
//!
//! ```yaml
//! apiVersion: v1
//! kind: Service
//! metadata: {name: payments, namespace: default}
//! spec:
//!   clusterIP: 10.96.0.10
//!   ports: [{name: http, port: 80, targetPort: 8080}]
//! endpoints:                       # EndpointSlice-like, one per backend group
//! - addresses: [10.200.0.11]
//!   nodeName: node-a
//!   conditions: {ready: true}      # the default; serving, terminating
//!   ports: [{name: http, port: 8080}]   # optional, as in EndpointSlices
//! ```
//!
//! Parsing is strict: an unknown field is an error naming it (a typo must
//! not silently change a service), and so is a Kubernetes field this model
//! does not take (`selector`, `externalName`, ...), with the reason. Every
//! error of every document is reported, each with its field path; then
//! every valid service is checked ([`crate::validate::service`]) and the
//! services against each other ([`crate::validate::conflicts`]).

use serde_json::Value;

use crate::model::ServiceRecord;
use crate::validate::{self, FieldError};

mod read;
mod walk;

use read::read_service;
use walk::Walk;

/// The namespace of a document that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Parses and validates every document in `text` (multi-document YAML, or
/// JSON). All or nothing: the services, or every error of every document
/// (an empty text is no services, not an error).
pub fn parse_documents(text: &str) -> Result<Vec<ServiceRecord>, Vec<FieldError>> {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (label, value) in documents(text, &mut errors) {
        match parse_service(&value, &label) {
            Ok(r) => records.push(r),
            Err(e) => errors.extend(e),
        }
    }
    errors.extend(validate::conflicts(&records, &[]));
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(errors)
    }
}

/// Every object of `text`, labelled `document N` (`document N item M` in a
/// List); a YAML syntax error ends the stream (later documents cannot be
/// located reliably).
fn documents(text: &str, errors: &mut Vec<FieldError>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", i + 1);
        let value: Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(FieldError::new(
                    &label,
                    "",
                    format!("not valid YAML or JSON: {e}"),
                ));
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document (a trailing `---`)
        }
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind == "List" || kind == "ServiceList" {
            match value.get("items").and_then(Value::as_array) {
                Some(items) => out.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(j, item)| (format!("{label} item {j}"), item.clone())),
                ),
                None => errors.push(FieldError::new(
                    &label,
                    "items",
                    "a List needs a list of items",
                )),
            }
            continue;
        }
        out.push((label, value));
    }
    out
}

/// Whether two field paths are the same field or one is inside the other.
fn related(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
    };
    inside(a, b) || inside(b, a)
}

/// The field paths a message names (`spec.ports[1]`, `endpoints[0].addresses[2]`).
fn mentioned_paths(message: &str) -> impl Iterator<Item = &str> {
    let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']');
    message
        .split(move |c: char| !path_char(c))
        .map(|p| p.trim_end_matches('.'))
        .filter(|p| p.starts_with("spec.") || p.starts_with("endpoints["))
}

/// Parses and validates one object.
pub fn parse_service(value: &Value, label: &str) -> Result<ServiceRecord, Vec<FieldError>> {
    let mut w = Walk::default();
    let record = read_service(&mut w, value);
    let (service, record) = match record {
        Some(r) if !r.name.is_empty() => (r.id(), Some(r)),
        other => (label.to_string(), other),
    };
    let shape = std::mem::take(&mut w.errors);
    let mut errors: Vec<FieldError> = shape
        .iter()
        .map(|(p, m)| FieldError::new(&service, p, m.clone()))
        .collect();
    if let Some(r) = &record {
        // What validation says about a field already reported (and read
        // as a placeholder) is noise.
        // So is what it says about another field that was (`port 81/TCP
        // is also spec.ports[1]'s` when spec.ports[1].protocol was unreadable).
        errors.extend(validate::service(r).into_iter().filter(|e| {
            !shape.iter().any(|(p, _)| {
                related(p, &e.path) || mentioned_paths(&e.message).any(|q| related(p, q))
            })
        }));
    }
    match record {
        Some(r) if errors.is_empty() => Ok(r),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests;
