//! Judging a policy object from the API: the object agents get (the form
//! `axoneme policy import` stores: the API object with its `spec`/`specs`,
//! metadata trimmed to what identifies it), validated with the policy model
//! exactly as standalone mode's operator and the agents parse it.
//!
//! A judgement depends only on the object's uid and generation (spec
//! changes bump the generation; status and metadata changes do not), so it
//! is cached by them: a pass over a thousand policies re-judges only what
//! changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axoneme_crds::kube::api::DynamicObject;
use axoneme_identity::Layout;
use axoneme_policy::PolicyKind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{json, Map, Value};
use tracing::{info, warn};

type Labels = Vec<(String, String)>;

/// The three policy kinds Kubernetes mode mirrors.
pub const KINDS: [PolicyKind; 3] = [
    PolicyKind::CiliumNetworkPolicy,
    PolicyKind::CiliumClusterwideNetworkPolicy,
    PolicyKind::NetworkPolicy,
];

/// `apiVersion` of a kind's objects.
pub fn api_version(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::NetworkPolicy => "networking.k8s.io/v1",
        _ => "cilium.io/v2",
    }
}

/// The verdict on one object at one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub kind: PolicyKind,
    /// The policy store key (`Layout::policy`).
    pub key: String,
    pub name: String,
    pub namespace: Option<String>,
    pub uid: String,
    pub generation: Option<i64>,
    /// The value to store when valid; the validation errors (`name: path:
    /// message` lines) when not.
    pub verdict: Result<Vec<u8>, String>,
}

impl Judgement {
    pub fn valid(&self) -> bool {
        self.verdict.is_ok()
    }
}

/// The object agents get for `obj`: apiVersion, kind, metadata (name,
/// namespace, uid, generation) and the rules (`spec`, `specs`); never the
/// status, so status writes do not change what is stored.
pub fn stored_object(kind: PolicyKind, obj: &DynamicObject) -> Value {
    let mut meta = Map::new();
    meta.insert("name".into(), json!(obj.metadata.name));
    if kind.is_namespaced() {
        meta.insert(
            "namespace".into(),
            json!(obj.metadata.namespace.as_deref().unwrap_or("default")),
        );
    }
    if let Some(uid) = &obj.metadata.uid {
        meta.insert("uid".into(), json!(uid));
    }
    if let Some(g) = obj.metadata.generation {
        meta.insert("generation".into(), json!(g));
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(api_version(kind)));
    out.insert("kind".into(), json!(kind.as_str()));
    out.insert("metadata".into(), Value::Object(meta));
    // Everything but the status, as the server has it: unknown fields are
    // kept, so validation reports them rather than the mirror hiding them.
    if let Value::Object(data) = &obj.data {
        for (k, v) in data {
            if k != "status" && k != "apiVersion" && k != "kind" && k != "metadata" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Reads `metadata.uid` and `metadata.generation` back from a stored value.
pub fn stored_identity(value: &[u8]) -> (Option<String>, Option<i64>) {
    let Ok(v) = serde_json::from_slice::<Value>(value) else {
        return (None, None);
    };
    (
        v.pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        v.pointer("/metadata/generation").and_then(Value::as_i64),
    )
}

/// Judges `obj` (no cache).
pub fn judge(layout: &Layout, kind: PolicyKind, obj: &DynamicObject) -> Option<Judgement> {
    let name = obj.metadata.name.clone()?;
    let namespace = kind.is_namespaced().then(|| {
        obj.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    });
    let value = stored_object(kind, obj);
    let verdict = match axoneme_policy::parse_object(&value, &name) {
        Ok(p) if p.kind == kind => Ok(serde_json::to_vec(&value).expect("JSON serializes")),
        Ok(p) => Err(format!(
            "{name}: kind: parsed as {} but watched as {}",
            p.kind.as_str(),
            kind.as_str()
        )),
        Err(e) => Err(e.to_string()),
    };
    Some(Judgement {
        kind,
        key: layout.policy(kind.short_name(), namespace.as_deref(), &name),
        name,
        namespace,
        uid: obj.metadata.uid.clone().unwrap_or_default(),
        generation: obj.metadata.generation,
        verdict,
    })
}

/// Judgements cached by store key, uid and generation.
pub struct Judge {
    cache: Mutex<HashMap<String, Arc<Judgement>>>,
    /// `axoneme_kube_policy_validations_total{kind, result}`: objects
    /// judged (once per generation).
    pub validations: Family<Labels, Counter>,
}

impl Judge {
    /// A cache counting new verdicts in `validations`.
    pub fn new(validations: Family<Labels, Counter>) -> Self {
        Judge {
            cache: Mutex::new(HashMap::new()),
            validations,
        }
    }

    /// The judgement of `obj`, from the cache when its uid and generation
    /// are unchanged. A new verdict is logged (invalid ones as warnings:
    /// NetworkPolicies have no status, so this is where their errors show).
    pub fn judge(
        &self,
        layout: &Layout,
        kind: PolicyKind,
        obj: &DynamicObject,
    ) -> Option<Arc<Judgement>> {
        let name = obj.metadata.name.as_deref()?;
        let ns = kind
            .is_namespaced()
            .then(|| obj.metadata.namespace.as_deref().unwrap_or("default"));
        let key = layout.policy(kind.short_name(), ns, name);
        let uid = obj.metadata.uid.as_deref().unwrap_or_default();
        if let Some(j) = self.cache.lock().expect("poisoned").get(&key) {
            if j.uid == uid && j.generation == obj.metadata.generation && j.generation.is_some() {
                return Some(j.clone());
            }
        }
        let j = Arc::new(judge(layout, kind, obj)?);
        self.validations
            .get_or_create(&vec![
                ("kind".to_string(), kind.short_name().to_string()),
                (
                    "result".to_string(),
                    if j.valid() { "valid" } else { "invalid" }.to_string(),
                ),
            ])
            .inc();
        match &j.verdict {
            Ok(_) => info!(policy = %j.key, generation = ?j.generation, "policy valid"),
            Err(e) => {
                warn!(policy = %j.key, generation = ?j.generation, errors = %e, "policy invalid")
            }
        }
        self.cache.lock().expect("poisoned").insert(key, j.clone());
        Some(j)
    }

    /// Forgets objects that no longer exist.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.cache
            .lock()
            .expect("poisoned")
            .retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(yaml: &str) -> DynamicObject {
        let mut v: Value = serde_yaml::from_str(yaml).unwrap();
        v["metadata"]["uid"] = json!("u-1");
        v["metadata"]["generation"] = json!(3);
        v["metadata"]["resourceVersion"] = json!("99");
        v["metadata"]["managedFields"] = json!([{"manager": "kubectl"}]);
        v["status"] = json!({"conditions": [{"type": "Valid", "status": "True"}]});
        serde_json::from_value(v).unwrap()
    }

    const CNP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p
  namespace: shop
  labels: {team: a}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
"#;

    #[test]
    fn the_stored_object_is_the_rules_with_identifying_metadata() {
        let obj = object(CNP);
        let v = stored_object(PolicyKind::CiliumNetworkPolicy, &obj);
        assert_eq!(
            v["metadata"],
            json!({"name": "p", "namespace": "shop", "uid": "u-1", "generation": 3})
        );
        assert!(v.get("status").is_none());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{v}");
        let j = judge(&Layout::default(), PolicyKind::CiliumNetworkPolicy, &obj).unwrap();
        assert_eq!(j.key, "axoneme/state/policies/v1/cnp/shop/p");
        let bytes = j.verdict.unwrap();
        // Exactly what standalone mode's judge and the agents parse.
        let parsed = axoneme_policy::parse_documents(std::str::from_utf8(&bytes).unwrap());
        assert!(matches!(&parsed[..], [Ok(p)] if p.name == "p"));
        assert_eq!(stored_identity(&bytes), (Some("u-1".to_string()), Some(3)));
    }

    #[test]
    fn invalid_objects_carry_the_field_path() {
        let bad = CNP.replace("fromEndpoints", "fromEndpoint");
        let j = judge(
            &Layout::default(),
            PolicyKind::CiliumNetworkPolicy,
            &object(&bad),
        )
        .unwrap();
        let e = j.verdict.unwrap_err();
        assert!(e.starts_with("p: spec.ingress[0]"), "{e}");
    }

    #[test]
    fn judgements_are_cached_per_generation() {
        let judge = Judge::new(Family::default());
        let l = Layout::default();
        let mut obj = object(CNP);
        let a = judge
            .judge(&l, PolicyKind::CiliumNetworkPolicy, &obj)
            .unwrap();
        obj.metadata.resource_version = Some("100".into());
        let b = judge
            .judge(&l, PolicyKind::CiliumNetworkPolicy, &obj)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        obj.metadata.generation = Some(4);
        let c = judge
            .judge(&l, PolicyKind::CiliumNetworkPolicy, &obj)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.generation, Some(4));
    }
}
