//! Kubernetes mode's policy conditions against a mocked API server
//! (`tower_test::mock::pair`, as kube-rs controller-rs `src/fixtures.rs`):
//! each scenario runs the status write the leader's loop would make,
//! asserts the request and answers it, under a timeout. The loop itself
//! runs against a real kube-apiserver in `e2e/tests/kube_operator/`.

use std::time::Duration;

use axoneme_crds::k8s_openapi::jiff::Timestamp;
use axoneme_crds::kube::api::DynamicObject;
use axoneme_crds::kube::client::Body;
use axoneme_crds::kube::Client;
use axoneme_crds::{valid_condition, Time};
use axoneme_identity::{Layout, Raw};
use axoneme_operator::k8s::judge::Judge;
use axoneme_operator::k8s::status::{status_op, status_patch, Nodes, VALID_MESSAGE};
use axoneme_operator::k8s::views::execute;
use axoneme_operator::k8s::{KubeMetrics, FIELD_MANAGER};
use axoneme_policy::PolicyKind;
use http::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::family::Family;
use serde_json::{json, Value};
use tokio::time::timeout;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const CNP_STATUS_PATH: &str =
    "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/payments-api/status";
const INVALID_PORT: &str =
    "payments-api: spec.ingress[0].toPorts[0].ports[0].port: 80800 is not a valid port (1-65535)";
const STEP: Duration = Duration::from_secs(5);

/// The seed policy, read at run time so a missing `shared/` fails this
/// test with a clear message instead of failing the build.
fn seed() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/seed-payments-policy.yaml"
    );
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the seed policy belongs beside the project ({path}): {e}"))
}

/// A policy as the API server hands it out.
fn object(yaml: &str, generation: i64, conditions: Value) -> DynamicObject {
    let mut v: Value = serde_yaml::from_str(yaml).expect("policy parses");
    v["metadata"]["namespace"] = json!("default");
    v["metadata"]["generation"] = json!(generation);
    v["metadata"]["resourceVersion"] = json!("7");
    v["metadata"]["uid"] = json!("0b7f6a5e-0000-4000-8000-000000000001");
    v["status"] = json!({ "conditions": conditions });
    serde_json::from_value(v).unwrap()
}

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn now() -> Time {
    at(5000)
}

/// The patch the status loop would send for `obj`, with nothing stored and
/// no nodes.
fn patch_for(kind: PolicyKind, obj: &DynamicObject) -> Option<(String, Value)> {
    let judge = Judge::new(Family::default());
    let policies: std::collections::BTreeMap<String, std::sync::Arc<Raw>> = Default::default();
    status_patch(
        &judge,
        &Layout::default(),
        kind,
        obj,
        &policies,
        &Nodes::default(),
        &now(),
    )
}

/// A client whose API server is `Handle`.
fn mock() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// The API server's side: one server-side apply to `path`, answered with
/// `status`; returns the patch body.
async fn expect_status_apply(handle: &mut Handle, path: &str, status: StatusCode) -> Value {
    let (request, send) = timeout(STEP, handle.next_request())
        .await
        .expect("a request in time")
        .expect("the client is alive");
    assert_eq!(request.method(), Method::PATCH);
    assert_eq!(request.uri().path(), path);
    let query = request.uri().query().unwrap_or_default().to_string();
    let pairs: Vec<&str> = query.split('&').collect();
    assert!(
        pairs.contains(&format!("fieldManager={FIELD_MANAGER}").as_str()),
        "query {query:?}"
    );
    assert!(pairs.contains(&"force=true"), "query {query:?}");
    assert_eq!(
        request.headers()["content-type"],
        "application/apply-patch+yaml"
    );
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).expect("an apply patch is JSON");
    let answer = if status.is_success() {
        body.clone()
    } else {
        json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
            "code": status.as_u16(),
            "message": "ciliumnetworkpolicies.cilium.io \"payments-api\" is forbidden: User \
                        \"system:serviceaccount:kube-system:axoneme-operator\" cannot patch \
                        resource \"ciliumnetworkpolicies/status\" in API group \"cilium.io\"",
        })
    };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
    body
}

/// The patch's conditions, after checking its shape.
fn conditions(patch: &Value, kind: &str) -> (Value, Value) {
    assert_eq!(patch["apiVersion"], "cilium.io/v2");
    assert_eq!(patch["kind"], kind);
    let keys: Vec<&String> = patch.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["apiVersion", "kind", "status"], "{patch}");
    let list = patch["status"]["conditions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{patch}");
    let find = |t: &str| list.iter().find(|c| c["type"] == t).cloned().unwrap();
    (find("Valid"), find("Enforced"))
}

#[tokio::test]
async fn a_valid_policy_gets_valid_true_by_server_side_apply() {
    let cnp = object(&seed(), 1, json!([]));
    let (name, patch) = patch_for(PolicyKind::CiliumNetworkPolicy, &cnp).unwrap();
    let (valid, enforced) = conditions(&patch, "CiliumNetworkPolicy");
    assert_eq!(valid["status"], "True");
    assert_eq!(valid["reason"], "Valid");
    assert_eq!(valid["message"], VALID_MESSAGE);
    assert_eq!(valid["observedGeneration"], 1);
    assert!(valid["lastTransitionTime"].is_string(), "{valid}");
    // Not mirrored yet: not enforced.
    assert_eq!(enforced["status"], "False");
    assert_eq!(enforced["reason"], "NotStored");

    let (client, mut handle) = mock();
    let metrics = KubeMetrics::default();
    let op = status_op(
        client,
        PolicyKind::CiliumNetworkPolicy,
        Some("default"),
        name,
        patch.clone(),
    );
    let scenario = tokio::spawn(async move {
        let sent = expect_status_apply(&mut handle, CNP_STATUS_PATH, StatusCode::OK).await;
        assert_eq!(sent, patch);
    });
    assert!(timeout(STEP, execute(&metrics, vec![op])).await.unwrap());
    scenario.await.unwrap();
    assert_eq!(metrics.health.json()["healthy"], true);
}

#[test]
fn an_invalid_policy_gets_valid_false_with_the_field_path() {
    let cnp = object(&seed().replace("\"8080\"", "\"80800\""), 1, json!([]));
    let (_, patch) = patch_for(PolicyKind::CiliumNetworkPolicy, &cnp).unwrap();
    let (valid, enforced) = conditions(&patch, "CiliumNetworkPolicy");
    assert_eq!(valid["status"], "False");
    assert_eq!(valid["reason"], "Invalid");
    let message = valid["message"].as_str().unwrap();
    assert_eq!(message.lines().next(), Some(INVALID_PORT));
    assert!(
        message.contains("nothing of this policy is enforced"),
        "{message}"
    );
    assert_eq!(enforced["status"], "False");
}

#[test]
fn a_generation_bump_keeps_the_transition_time_and_a_current_status_sends_nothing() {
    let old = json!([valid_condition(true, VALID_MESSAGE, Some(1), at(1000))]);
    let cnp = object(&seed(), 2, old);
    let (_, patch) = patch_for(PolicyKind::CiliumNetworkPolicy, &cnp).unwrap();
    let (valid, _) = conditions(&patch, "CiliumNetworkPolicy");
    assert_eq!(valid["observedGeneration"], 2);
    // Status unchanged: lastTransitionTime is the old one.
    assert_eq!(valid["lastTransitionTime"], "1970-01-01T00:16:40Z");
    // The object as the server has it after the write: nothing to send.
    let written = object(&seed(), 2, patch["status"]["conditions"].clone());
    assert!(patch_for(PolicyKind::CiliumNetworkPolicy, &written).is_none());
}

#[tokio::test]
async fn a_clusterwide_policy_is_written_at_the_cluster_scope() {
    let yaml = seed()
        .replace("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
        .replace("namespace: default", "");
    let mut ccnp = object(&yaml, 1, json!([]));
    ccnp.metadata.namespace = None;
    let (name, patch) = patch_for(PolicyKind::CiliumClusterwideNetworkPolicy, &ccnp).unwrap();
    let (valid, _) = conditions(&patch, "CiliumClusterwideNetworkPolicy");
    assert_eq!(valid["status"], "True", "{valid}");
    let (client, mut handle) = mock();
    let op = status_op(
        client,
        PolicyKind::CiliumClusterwideNetworkPolicy,
        None,
        name,
        patch,
    );
    let scenario = tokio::spawn(async move {
        expect_status_apply(
            &mut handle,
            "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/payments-api/status",
            StatusCode::OK,
        )
        .await;
    });
    assert!(timeout(STEP, execute(&KubeMetrics::default(), vec![op]))
        .await
        .unwrap());
    scenario.await.unwrap();
}

#[tokio::test]
async fn a_forbidden_write_is_a_visible_problem_until_it_succeeds() {
    let cnp = object(&seed(), 1, json!([]));
    let (name, patch) = patch_for(PolicyKind::CiliumNetworkPolicy, &cnp).unwrap();
    let metrics = KubeMetrics::default();
    let (client, mut handle) = mock();
    let op = || {
        status_op(
            client.clone(),
            PolicyKind::CiliumNetworkPolicy,
            Some("default"),
            name.clone(),
            patch.clone(),
        )
    };
    let scenario = tokio::spawn(async move {
        expect_status_apply(&mut handle, CNP_STATUS_PATH, StatusCode::FORBIDDEN).await;
        expect_status_apply(&mut handle, CNP_STATUS_PATH, StatusCode::OK).await;
    });
    assert!(!timeout(STEP, execute(&metrics, vec![op()])).await.unwrap());
    let health = metrics.health.json();
    assert_eq!(health["healthy"], false);
    assert_eq!(
        health["forbidden"],
        json!(["patch ciliumnetworkpolicies/status"])
    );
    assert!(health["problems"][0]["message"]
        .as_str()
        .unwrap()
        .contains("cannot patch resource"));
    assert!(timeout(STEP, execute(&metrics, vec![op()])).await.unwrap());
    assert_eq!(metrics.health.json()["healthy"], true);
    scenario.await.unwrap();
}
