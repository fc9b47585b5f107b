//! Helpers shared by the CRD tests: finding a CRD's schema, validating
//! manifests against it the way an API server would (without one), and
//! loading manifests.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use axoneme_crds::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The seed policy shared with the rest of the project.
pub const SEED_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/seed-payments-policy.yaml"
);

/// The policy crate's corpus of valid manifests.
pub const VALID_CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policy/tests/corpus/valid");

/// The chart's CRD directory.
pub const CHART_CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../helm/axoneme/crds");

/// The published CRD of `kind`.
pub fn crd(kind: &str) -> CustomResourceDefinition {
    axoneme_crds::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"))
}

/// The `openAPIV3Schema` of `kind`'s only version, as JSON.
pub fn schema(kind: &str) -> Value {
    let crd = crd(kind);
    assert_eq!(crd.spec.versions.len(), 1, "{kind}: one version expected");
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap_or_else(|| panic!("{kind}: no openAPIV3Schema"));
    serde_json::to_value(schema).unwrap()
}

/// The subschema at `path` below `schema`: property names, with `[]` for
/// array items and `{}` for map values.
pub fn at<'a>(schema: &'a Value, path: &[&str]) -> &'a Value {
    let mut node = schema;
    for (i, step) in path.iter().enumerate() {
        let next = match *step {
            "[]" => node.get("items"),
            "{}" => node.get("additionalProperties"),
            name => node.get("properties").and_then(|p| p.get(name)),
        };
        node = next.unwrap_or_else(|| panic!("no schema at {:?}", &path[..=i]));
    }
    node
}

/// Rewrites a CRD schema into plain JSON Schema for the `jsonschema` crate:
/// `x-kubernetes-int-or-string: true` becomes `anyOf: [integer, string]`
/// and the other `x-kubernetes-*` keys are dropped.
pub fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(obj) => {
            let mut out = Map::new();
            for (k, v) in obj {
                if k == "x-kubernetes-int-or-string" && v == &Value::Bool(true) {
                    out.insert(
                        "anyOf".into(),
                        serde_json::json!([{"type": "integer"}, {"type": "string"}]),
                    );
                } else if k.starts_with("x-kubernetes-") {
                } else if k == "properties" || k == "patternProperties" {
                    // Keys of these maps are field names, not keywords.
                    let props = v.as_object().expect("properties is a map");
                    let props = props
                        .iter()
                        .map(|(name, s)| (name.clone(), to_json_schema(s)))
                        .collect();
                    out.insert(k.clone(), Value::Object(props));
                } else {
                    out.insert(k.clone(), to_json_schema(v));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

/// Validates `instance` against the CRD schema of `kind`; the messages of
/// all violations, with their instance paths.
pub fn validate(kind: &str, instance: &Value) -> Result<(), Vec<String>> {
    let schema = to_json_schema(&schema(kind));
    let validator = jsonschema::validator_for(&schema).expect("the CRD schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The paths of fields in `value` that `schema` does not declare: what a
/// server prunes (`Api::create`, `--validate=false`) or rejects (strict
/// kubectl, server-side apply). kube strips `additionalProperties: false`
/// (CRD-NOTES.md §8), so plain JSON Schema validation cannot catch these.
/// `apiVersion`, `kind` and `metadata` are the server's own at the root.
pub fn unknown_fields(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(schema, value, "", true, &mut out);
    out
}

fn walk_unknown(schema: &Value, value: &Value, path: &str, root: bool, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(obj) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (k, v) in obj {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child = format!("{path}.{k}");
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    walk_unknown(s, v, &child, false, out);
                } else if let Some(s) = additional.filter(|a| a.is_object()) {
                    walk_unknown(s, v, &child, false, out);
                } else {
                    out.push(child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk_unknown(s, v, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        _ => {}
    }
}

/// Validates `manifest` against its kind's CRD schema and checks it has no
/// fields the schema does not declare.
pub fn assert_accepted(manifest: &Value, origin: &str) {
    let kind = manifest["kind"].as_str().expect("manifest has a kind");
    if let Err(errors) = validate(kind, manifest) {
        panic!(
            "{origin}: {kind} rejected by the CRD schema:\n{}",
            errors.join("\n")
        );
    }
    let unknown = unknown_fields(&schema(kind), manifest);
    assert!(
        unknown.is_empty(),
        "{origin}: fields the {kind} CRD does not declare (a server would prune or reject them): {unknown:?}"
    );
}

/// The objects in a YAML (multi-document) or JSON file, with `kind: List`
/// expanded into its items.
pub fn load_manifests(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<Value> = if path.extension().is_some_and(|e| e == "json") {
        vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))]
    } else {
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .filter(|v| !v.is_null())
            .collect()
    };
    docs.into_iter()
        .flat_map(|doc| {
            if doc["kind"] == "List" {
                doc["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![doc]
            }
        })
        .collect()
}

/// All CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy objects of the
/// valid corpus, with the file each came from.
pub fn corpus_policies() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(VALID_CORPUS)
        .unwrap_or_else(|e| panic!("{VALID_CORPUS}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    let policies: Vec<(PathBuf, Value)> = files
        .iter()
        .flat_map(|f| load_manifests(f).into_iter().map(move |m| (f.clone(), m)))
        .filter(|(_, m)| {
            matches!(
                m["kind"].as_str(),
                Some("CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy")
            )
        })
        .collect();
    assert!(!policies.is_empty(), "no policies found in {VALID_CORPUS}");
    policies
}
