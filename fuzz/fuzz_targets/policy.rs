//! Policy files as users write them: YAML or JSON, one document or many.
//! Every document is a policy or errors that name what is wrong; a valid
//! policy stored as the CLI stores it (its object as JSON) parses back to
//! the same policy (what agents enforce is what was validated); and the
//! engine compiles every valid policy against a few identities.

#![no_main]

use axoneme_identity::{LabelSet, NumericIdentity, Source};
use axoneme_policy::engine::Engine;
use axoneme_policy::{parse_documents, parse_manifest, EnforcementMode};
use libfuzzer_sys::fuzz_target;

/// Pods in two namespaces, local endpoints all.
const PODS: &[(u32, &[&str])] = &[
    (
        1000,
        &["app=checkout", "io.kubernetes.pod.namespace=payments"],
    ),
    (
        1001,
        &[
            "app=payments",
            "tier=backend",
            "io.kubernetes.pod.namespace=payments",
        ],
    ),
    (
        1002,
        &["app=intruder", "io.kubernetes.pod.namespace=default"],
    ),
];

fn engine() -> Engine {
    let mut engine = Engine::new(EnforcementMode::Default);
    for (id, labels) in PODS {
        let labels = LabelSet::parse(labels.iter(), Source::K8s).expect("valid labels");
        engine.set_identity(NumericIdentity(*id), Some(labels));
        engine.add_endpoint(NumericIdentity(*id));
    }
    engine
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut engine = engine();
    for (i, doc) in parse_documents(text).into_iter().enumerate() {
        match doc {
            Err(e) => {
                assert!(!e.errors.is_empty(), "rejected with no reason: {e:?}");
                for f in &e.errors {
                    assert!(
                        !f.message.trim().is_empty(),
                        "an error with no message: {e:?}"
                    );
                }
            }
            Ok(policy) => {
                let stored = serde_json::to_string(&policy.object).expect("a JSON value");
                let mut again = parse_documents(&stored);
                assert_eq!(again.len(), 1, "stored {stored}");
                match again.remove(0) {
                    Ok(back) => assert_eq!(back, policy, "stored {stored}"),
                    Err(e) => panic!("valid as given, invalid as stored ({stored}): {e}"),
                }
                engine.set_policy(&format!("p{i}"), Some(policy));
            }
        }
    }
    let _ = parse_manifest(text);
});
