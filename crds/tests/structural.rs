//! Every CRD schema is structural and free of the constructs CRD-NOTES.md
//! lists as rejected or harmful, checked by walking `openAPIV3Schema`.

mod common;

use serde_json::Value;

/// Formats the API server knows for the types we use.
const KNOWN_FORMATS: &[&str] = &["int32", "int64", "float", "double", "date-time", "byte"];

/// Keywords a structural schema must not set inside `anyOf`/`oneOf`/`allOf`/`not`.
const FORBIDDEN_IN_JUNCTORS: &[&str] = &[
    "type",
    "description",
    "default",
    "additionalProperties",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
];

struct Walk {
    problems: Vec<String>,
}

impl Walk {
    /// A schema node that specifies a field (root, property, items, map values).
    fn field(&mut self, s: &Value, path: &str) {
        let Some(obj) = s.as_object() else {
            self.problems
                .push(format!("{path}: schema is not an object"));
            return;
        };
        let escape = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if !obj.contains_key("type") && !escape {
            self.problems.push(format!("{path}: no `type`"));
        }
        if obj.contains_key("properties")
            && obj
                .get("additionalProperties")
                .is_some_and(Value::is_object)
        {
            self.problems.push(format!(
                "{path}: both `properties` and `additionalProperties`"
            ));
        }
        if obj.get("type") == Some(&Value::String("array".into())) && !obj.contains_key("items") {
            self.problems.push(format!("{path}: array without `items`"));
        }
        self.common(s, path);
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (name, p) in props {
                self.field(p, &format!("{path}.{name}"));
            }
        }
        if let Some(items) = obj.get("items") {
            self.field(items, &format!("{path}[]"));
        }
        if let Some(add) = obj.get("additionalProperties").filter(|a| a.is_object()) {
            self.field(add, &format!("{path}{{}}"));
        }
        if obj.get("x-kubernetes-list-type") == Some(&Value::String("map".into())) {
            let required = obj["items"]["required"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for key in obj["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if !required.contains(key) {
                    self.problems.push(format!(
                        "{path}: list-map key {key} is not required in items"
                    ));
                }
            }
        }
    }

    /// A value validation inside a junctor (`anyOf`, `oneOf`, `allOf`, `not`).
    fn junctor(&mut self, s: &Value, path: &str) {
        if let Some(obj) = s.as_object() {
            for k in FORBIDDEN_IN_JUNCTORS {
                if obj.contains_key(*k) {
                    self.problems
                        .push(format!("{path}: `{k}` inside a junctor"));
                }
            }
        }
        self.common(s, path);
    }

    /// Checks for every node, field or junctor.
    fn common(&mut self, s: &Value, path: &str) {
        let Some(obj) = s.as_object() else { return };
        for bad in [
            "$ref",
            "$defs",
            "definitions",
            "$schema",
            "nullable",
            "uniqueItems",
            "const",
        ] {
            if obj.contains_key(bad) {
                self.problems.push(format!("{path}: `{bad}`"));
            }
        }
        if let Some(d) = obj.get("default") {
            if d.as_array().is_some_and(Vec::is_empty)
                || d.as_object().is_some_and(|o| o.is_empty())
            {
                self.problems.push(format!("{path}: empty `default` ({d})"));
            }
        }
        if let Some(f) = obj.get("format").and_then(Value::as_str) {
            if !KNOWN_FORMATS.contains(&f) {
                self.problems.push(format!("{path}: unknown format {f:?}"));
            }
        }
        if let Some(e) = obj.get("enum").and_then(Value::as_array) {
            if e.iter().any(Value::is_null) {
                self.problems.push(format!("{path}: `null` in enum"));
            }
        }
        for j in ["anyOf", "oneOf", "allOf"] {
            if let Some(branches) = obj.get(j).and_then(Value::as_array) {
                for (i, b) in branches.iter().enumerate() {
                    self.junctor(b, &format!("{path}.{j}[{i}]"));
                }
            }
        }
        if let Some(n) = obj.get("not") {
            self.junctor(n, &format!("{path}.not"));
        }
    }
}

#[test]
fn every_crd_schema_is_structural() {
    let crds = axoneme_crds::crds();
    assert_eq!(crds.len(), 5);
    let mut problems = Vec::new();
    for crd in &crds {
        let kind = &crd.spec.names.kind;
        let schema = common::schema(kind);
        assert_eq!(schema["type"], "object", "{kind}: root type");
        let mut walk = Walk {
            problems: Vec::new(),
        };
        walk.field(&schema, kind);
        problems.extend(walk.problems);
    }
    assert!(
        problems.is_empty(),
        "non-structural or rejected constructs:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_walk_catches_what_it_should() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "a": {"$ref": "#/x"},
            "b": {"type": "string", "nullable": true},
            "c": {"type": "array", "items": {"type": "integer", "format": "uint16"}, "default": []},
            "d": {"type": "object", "anyOf": [{"type": "string"}, {"type": "integer"}]},
            "e": {"x-kubernetes-int-or-string": true},
            "f": {"type": "object", "oneOf": [{"required": ["x"]}, {"required": ["y"]}],
                  "properties": {"x": {"type": "string"}, "y": {"type": "string"}}},
        },
    });
    let mut walk = Walk {
        problems: Vec::new(),
    };
    walk.field(&bad, "T");
    let text = walk.problems.join("\n");
    for want in [
        "T.a: no `type`",
        "T.a: `$ref`",
        "T.b: `nullable`",
        "uint16",
        "T.c: empty `default`",
        "T.d.anyOf[0]: `type`",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("T.e"), "{text}");
    assert!(!text.contains("T.f"), "{text}");
}

#[test]
fn derived_schema_matches_kube_derive() {
    // `CiliumEndpoint` is not derived; its schema comes from
    // `schema::derived_schema`, which must keep kube-derive's settings.
    use axoneme_crds::kube::CustomResourceExt;
    let derived = axoneme_crds::CiliumNode::crd().spec.versions[0]
        .schema
        .clone()
        .unwrap()
        .open_api_v3_schema
        .unwrap();
    let ours = axoneme_crds::schema::derived_schema::<axoneme_crds::CiliumNode>();
    assert_eq!(
        serde_json::to_value(ours).unwrap(),
        serde_json::to_value(derived).unwrap()
    );
}
