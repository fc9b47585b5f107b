//! The CRD manifests in the Helm chart are exactly what the types generate.

mod common;

use std::collections::BTreeSet;

const REGENERATE: &str = "run `cargo run -p axoneme-crds --bin crdgen` from the workspace root";

#[test]
fn chart_crds_match_the_generated_ones() {
    let dir = std::path::Path::new(common::CHART_CRDS);
    let mut expected = BTreeSet::new();
    for crd in axoneme_crds::crds() {
        let name = axoneme_crds::file_name(&crd);
        let path = dir.join(&name);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", path.display()));
        let generated = axoneme_crds::to_yaml(&crd);
        if on_disk != generated {
            let line = on_disk
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| on_disk.lines().count().min(generated.lines().count()));
            panic!(
                "{} is stale (first difference at line {}: on disk {:?}, generated {:?}); {REGENERATE}",
                path.display(),
                line + 1,
                on_disk.lines().nth(line),
                generated.lines().nth(line),
            );
        }
        expected.insert(name);
    }
    let present: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cilium.io.yaml"))
        .collect();
    let stale: Vec<_> = present.difference(&expected).collect();
    assert!(
        stale.is_empty(),
        "CRD files no type generates: {stale:?}; delete them"
    );
}

#[test]
fn generation_is_deterministic() {
    let a: Vec<String> = axoneme_crds::crds()
        .iter()
        .map(axoneme_crds::to_yaml)
        .collect();
    let b: Vec<String> = axoneme_crds::crds()
        .iter()
        .map(axoneme_crds::to_yaml)
        .collect();
    assert_eq!(a, b);
}

#[test]
fn names_scopes_and_subresources_are_cilium_s() {
    // kind, plural, scope, short names, status subresource
    let want = [
        (
            "CiliumClusterwideNetworkPolicy",
            "ciliumclusterwidenetworkpolicies",
            "Cluster",
            &["ccnp"][..],
            true,
        ),
        (
            "CiliumEndpoint",
            "ciliumendpoints",
            "Namespaced",
            &["cep", "ciliumep"][..],
            false,
        ),
        (
            "CiliumIdentity",
            "ciliumidentities",
            "Cluster",
            &["ciliumid"][..],
            false,
        ),
        (
            "CiliumNetworkPolicy",
            "ciliumnetworkpolicies",
            "Namespaced",
            &["cnp", "ciliumnp"][..],
            true,
        ),
        (
            "CiliumNode",
            "ciliumnodes",
            "Cluster",
            &["cn", "ciliumn"][..],
            true,
        ),
    ];
    let crds = axoneme_crds::crds();
    assert_eq!(crds.len(), want.len());
    for (crd, (kind, plural, scope, short, status)) in crds.iter().zip(want) {
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.cilium.io").as_str())
        );
        assert_eq!(crd.spec.group, "cilium.io");
        assert_eq!(crd.spec.scope, scope, "{kind}");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&short.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]),
            "{kind}"
        );
        let v = &crd.spec.versions[0];
        assert_eq!((v.name.as_str(), v.served, v.storage), ("v2", true, true));
        let has_status = v.subresources.as_ref().is_some_and(|s| s.status.is_some());
        assert_eq!(has_status, status, "{kind}: status subresource");
    }
}

#[test]
fn policies_print_validity_and_age() {
    for kind in ["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"] {
        let crd = common::crd(kind);
        let cols = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap();
        let cols: Vec<_> = cols
            .iter()
            .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
            .collect();
        assert!(
            cols.contains(&(
                "Valid",
                "string",
                r#".status.conditions[?(@.type=="Valid")].status"#
            )),
            "{kind}: {cols:?}"
        );
        assert!(
            cols.contains(&("Age", "date", ".metadata.creationTimestamp")),
            "{kind}: {cols:?}"
        );
    }
}
