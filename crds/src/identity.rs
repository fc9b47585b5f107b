//! CiliumIdentity: one object per numeric security identity, named by the
//! number, whose `security-labels` map is the source of truth for the
//! identity's labels (CRD identity mode).
//!
//! In Cilium `security-labels` is a top-level field, not under `spec`;
//! kube-derive expresses that with `#[kube(no_spec)]`, which flattens
//! [`CiliumIdentitySpec`] onto the root. On the Rust side the labels are
//! `identity.spec.security_labels`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The fields of a CiliumIdentity besides metadata; they sit at the root of
/// the object (`#[kube(no_spec)]`).
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumIdentity",
    plural = "ciliumidentities",
    no_spec,
    derive = "PartialEq",
    shortname = "ciliumid",
    category = "cilium",
    doc = "A security identity, named by its number; `security-labels` holds its labels.",
    printcolumn(
        name = "Namespace",
        type_ = "string",
        description = "The namespace of the entity",
        json_path = ".metadata.labels.io\\.kubernetes\\.pod\\.namespace"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct CiliumIdentitySpec {
    /// The identity's labels, keyed `source:key` (e.g. `k8s:app`), the
    /// source of truth for the identity.
    #[serde(rename = "security-labels")]
    pub security_labels: BTreeMap<String, String>,
}
