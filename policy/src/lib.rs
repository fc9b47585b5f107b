//! The policy model: Cilium's `cilium.io/v2` policy API as plain Rust types
//! (no Kubernetes client types here; `crds/` wraps them into CRDs), policy
//! documents, and validation with field paths.

#![forbid(unsafe_code)]

pub mod api;
pub mod compile;
pub mod document;
pub mod engine;
pub mod entity;
pub mod explain;
pub mod l7;
pub mod netpol;
pub mod oracle;
pub mod ports;
#[cfg(test)]
mod proptests;
pub mod selector;
#[cfg(any(test, feature = "testgen"))]
pub mod testgen;
pub mod validate;

pub use api::Rule;
pub use compile::EnforcementMode;
pub use document::{
    parse_documents, parse_manifest, parse_object, Document, Policy, PolicyErrors, PolicyKind,
    Skipped,
};
pub use entity::Entity;
pub use ports::PortNames;
pub use validate::FieldError;
