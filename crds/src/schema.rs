//! Schema generation and the one rewrite the published CRDs get.
//!
//! kube-derive generates each schema with schemars' OpenAPI 3 settings plus
//! kube's structural rewrites. Those settings mark every `Option` field
//! `nullable: true` (schemars' `AddNullable`), including the root `status`
//! that kube itself declares. `nullable: true` does not make a schema
//! non-structural, but it changes what the API server does with an explicit
//! `null`: it stores it instead of pruning it, and an `Option<enum>` gets
//! `null` in its `enum` (CRD-NOTES.md §4). All our `Option`s skip `None` on
//! the wire, so nothing we write is `null`; [`published`] drops `nullable`
//! and `null` enum values everywhere, and the CRDs in the chart are the
//! published ones.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use schemars::JsonSchema;

/// The CRD of `K` as the project publishes it: kube-derive's CRD with
/// `nullable` removed (see the module docs). Use this, not `K::crd()`,
/// to install or compare CRDs.
pub fn published<K: CustomResourceExt>() -> CustomResourceDefinition {
    let mut crd = K::crd();
    strip_nullable_crd(&mut crd);
    crd
}

/// Removes `nullable` and `null` enum values from every version's schema.
pub fn strip_nullable_crd(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            strip_nullable(schema);
        }
    }
}

/// Removes `nullable` and `null` enum values from `schema` and all of its
/// subschemas.
pub fn strip_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    if let Some(values) = &mut schema.enum_ {
        values.retain(|v| !v.0.is_null());
    }
    for sub in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_nullable(sub);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(sub)) => strip_nullable(sub),
        Some(JSONSchemaPropsOrArray::Schemas(subs)) => subs.iter_mut().for_each(strip_nullable),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(sub)) = &mut schema.additional_properties {
        strip_nullable(sub);
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        list.iter_mut().flatten().for_each(strip_nullable);
    }
    if let Some(sub) = &mut schema.not {
        strip_nullable(sub);
    }
}

/// The schema kube-derive would generate for `T` as a custom resource root:
/// the same schemars settings and transforms as `#[derive(CustomResource)]`
/// (kube-derive 5, `custom_resource/mod.rs`), for resources whose shape the
/// derive cannot express (CiliumEndpoint: a root `status` without a status
/// subresource). A test checks it against the derive's output.
pub fn derived_schema<T: JsonSchema>() -> JSONSchemaProps {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator();
    let schema = generator.into_root_schema_for::<T>();
    serde_json::to_value(schema)
        .and_then(serde_json::from_value)
        .expect("schemars output is a valid JSONSchemaProps")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;

    #[test]
    fn strip_nullable_reaches_nested_schemas_and_enums() {
        let mut schema: JSONSchemaProps = serde_json::from_value(serde_json::json!({
            "type": "object",
            "nullable": true,
            "properties": {
                "nullable": {"type": "string", "nullable": true},
                "list": {"type": "array", "items": {"type": "string", "nullable": true,
                                                    "enum": ["A", null]}},
                "map": {"type": "object", "additionalProperties": {"type": "integer",
                                                                   "nullable": true}},
            },
        }))
        .unwrap();
        strip_nullable(&mut schema);
        let text = serde_json::to_string(&schema).unwrap();
        assert!(!text.contains("\"nullable\":true"), "{text}");
        let props = schema.properties.as_ref().unwrap();
        // A property *named* `nullable` is kept; only the keyword goes.
        assert!(props.contains_key("nullable"));
        let Some(JSONSchemaPropsOrArray::Schema(items)) = &props["list"].items else {
            panic!("items")
        };
        assert_eq!(items.enum_, Some(vec![JSON("A".into())]));
    }
}
