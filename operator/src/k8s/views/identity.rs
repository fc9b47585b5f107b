//! CiliumIdentity objects: one per allocated identity, named by its
//! number, with its labels as `security-labels` and the namespace label
//! `kubectl get ciliumid` shows.

use std::collections::{BTreeMap, BTreeSet};

use axoneme_crds::kube::api::Api;
use axoneme_crds::kube::ResourceExt;
use axoneme_crds::CiliumIdentity;
use axoneme_identity::IdentityRecord;
use serde_json::{json, Value};

use super::{apply_op, delete_op, managed, Op};
use crate::k8s::{Kube, MANAGED_BY};

/// Label Cilium puts on a CiliumIdentity: the namespace of its pods (the
/// `Namespace` column of `kubectl get ciliumid`).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// The CiliumIdentity of an identity: named by the number, its labels as
/// `security-labels` (`source:key` → value), and the namespace label.
pub fn identity_object(rec: &IdentityRecord) -> (String, BTreeMap<String, String>, Value) {
    let name = rec.id.0.to_string();
    let security: BTreeMap<String, String> = rec
        .labels
        .iter()
        .map(|l| (l.source_key(), l.value.to_string()))
        .collect();
    let mut meta_labels = BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]);
    if let Some(ns) = rec.labels.iter().find(|l| l.key == NAMESPACE_LABEL) {
        meta_labels.insert(NAMESPACE_LABEL.to_string(), ns.value.to_string());
    }
    let body = json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumIdentity",
        "metadata": { "name": name, "labels": meta_labels },
        "security-labels": security,
    });
    (name, meta_labels, body)
}

fn labels_hold(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

pub(super) fn identity_ops(kube: &Kube) -> Vec<Op> {
    let api: Api<CiliumIdentity> = Api::all(kube.client.clone());
    let observed = kube.index.identities.by_name();
    let mut ops = Vec::new();
    let mut wanted = BTreeSet::new();
    for rec in kube.kv.identities.snapshot().values() {
        let (name, meta_labels, body) = identity_object(rec);
        let current = observed.get(&name).is_some_and(|o| {
            labels_hold(o.labels(), &meta_labels)
                && serde_json::to_value(&o.spec.security_labels).ok()
                    == body.get("security-labels").cloned()
        });
        if !current {
            ops.push(apply_op(
                api.clone(),
                "ciliumidentities",
                name.clone(),
                name.clone(),
                body,
            ));
        }
        wanted.insert(name);
    }
    for (name, obj) in &observed {
        if !wanted.contains(name) && managed(obj.labels()) {
            ops.push(delete_op(api.clone(), "ciliumidentities", obj.as_ref()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_identity::{LabelSet, NumericIdentity, Source};

    #[test]
    fn identity_objects_carry_security_labels_and_namespace() {
        let rec = IdentityRecord {
            id: NumericIdentity(300),
            labels: LabelSet::parse(
                ["k8s:app=payments", "k8s:io.kubernetes.pod.namespace=shop"],
                Source::K8s,
            )
            .unwrap(),
            allocator: "op".into(),
        };
        let (name, meta_labels, body) = identity_object(&rec);
        assert_eq!(name, "300");
        assert_eq!(meta_labels[NAMESPACE_LABEL], "shop");
        assert_eq!(body["security-labels"]["k8s:app"], "payments");
        assert_eq!(
            body["security-labels"]["k8s:io.kubernetes.pod.namespace"],
            "shop"
        );
        // The object parses as the CRD type.
        let obj: CiliumIdentity = serde_json::from_value(body).unwrap();
        assert_eq!(obj.spec.security_labels.len(), 2);
    }
}
