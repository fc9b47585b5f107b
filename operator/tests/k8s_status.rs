//! Kubernetes mode's policy status controller against a mocked API server
//! (`tower_test::mock::pair`, as kube-rs controller-rs `src/fixtures.rs`):
//! each scenario lists the requests it expects, asserts each one and answers
//! it, under a timeout.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axoneme_crds::k8s_openapi::jiff::Timestamp;
use axoneme_crds::kube::client::Body;
use axoneme_crds::kube::runtime::controller::Action;
use axoneme_crds::kube::Client;
use axoneme_crds::{
    valid_condition, CiliumClusterwideNetworkPolicy, CiliumClusterwideNetworkPolicySpec,
    CiliumNetworkPolicy, PolicyStatus, Time,
};
use axoneme_operator::k8s::{
    error_policy, reconcile_ccnp, reconcile_cnp, run, Context, ERROR_REQUEUE, FIELD_MANAGER,
    NOT_LEADER_REQUEUE, VALID_MESSAGE,
};
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

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
const CNP_STATUS_PATH: &str =
    "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/payments-api/status";
const INVALID_PORT: &str =
    "payments-api: spec.ingress[0].toPorts[0].ports[0].port: 80800 is not a valid port (1-65535)";
const STEP: Duration = Duration::from_secs(5);

/// A client whose API server is `Handle`, and a context on it.
fn setup(leading: bool) -> (Arc<Context>, Handle, watch::Sender<bool>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (tx, rx) = watch::channel(leading);
    (Arc::new(Context::new(client, rx)), handle, tx)
}

/// The seed policy as the API server would hand it out.
fn seed_cnp(generation: i64) -> CiliumNetworkPolicy {
    cnp_from(&seed(), generation)
}

fn cnp_from(yaml: &str, generation: i64) -> CiliumNetworkPolicy {
    let mut cnp: CiliumNetworkPolicy = serde_yaml::from_str(yaml).expect("seed policy parses");
    cnp.metadata.namespace = Some("default".into());
    cnp.metadata.generation = Some(generation);
    cnp.metadata.resource_version = Some("7".into());
    cnp.metadata.uid = Some("0b7f6a5e-0000-4000-8000-000000000001".into());
    cnp
}

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn with_valid(mut cnp: CiliumNetworkPolicy, observed: i64) -> CiliumNetworkPolicy {
    cnp.status = Some(PolicyStatus {
        conditions: vec![valid_condition(
            true,
            VALID_MESSAGE,
            Some(observed),
            at(1000),
        )],
    });
    cnp
}

/// The API server's side: expects one server-side apply to `path`, checks
/// it, answers with `answer` (the object after the patch) and returns the
/// patch body.
async fn expect_status_apply(handle: &mut Handle, path: &str, answer: Value) -> Value {
    let (request, send) = timeout(STEP, handle.next_request())
        .await
        .expect("a request in time")
        .expect("the client is alive");
    check_apply(&request, path);
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).expect("an apply patch is JSON");
    send.send_response(ok(answer));
    body
}

fn ok(v: Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(serde_json::to_vec(&v).unwrap()))
        .unwrap()
}

fn check_apply(request: &Request<Body>, path: &str) {
    assert_eq!(request.method(), Method::PATCH);
    assert_eq!(request.uri().path(), path);
    let query = request.uri().query().unwrap_or_default();
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
}

/// The object as it is after `patch` (what the API server answers).
fn patched(obj: &impl serde::Serialize, patch: &Value) -> Value {
    let mut v = serde_json::to_value(obj).unwrap();
    v["status"] = patch["status"].clone();
    v
}

/// The only condition of an apply patch, after checking the patch's shape.
fn the_condition(patch: &Value, kind: &str) -> Value {
    assert_eq!(patch["apiVersion"], "cilium.io/v2");
    assert_eq!(patch["kind"], kind);
    let keys: Vec<&String> = patch.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["apiVersion", "kind", "status"], "{patch}");
    let conditions = patch["status"]["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1, "{patch}");
    conditions[0].clone()
}

/// Asserts the client sends nothing more: once every client clone is gone
/// the mock reports end of stream; a request would show up first.
async fn expect_no_request(ctx: Option<Arc<Context>>, mut handle: Handle) {
    drop(ctx);
    match timeout(Duration::from_secs(2), handle.next_request()).await {
        Ok(None) | Err(_) => {}
        Ok(Some((req, _))) => panic!("unexpected request {} {}", req.method(), req.uri()),
    }
}

/// Runs a reconcile under a timeout: a reconcile that sent a request no
/// scenario answers would otherwise wait forever.
async fn within<T>(reconcile: impl std::future::Future<Output = T>) -> T {
    timeout(STEP, reconcile)
        .await
        .expect("reconcile finished in time")
}

async fn finish(scenario: JoinHandle<()>) {
    timeout(STEP, scenario)
        .await
        .expect("scenario finished in time")
        .expect("scenario passed");
}

#[test]
fn kube_serialization_carries_type_meta() {
    // parse_object needs apiVersion and kind; the derived Serialize writes
    // them, though TypeMeta is not a field of the struct.
    let v = serde_json::to_value(seed_cnp(1)).unwrap();
    assert_eq!(v["apiVersion"], "cilium.io/v2");
    assert_eq!(v["kind"], "CiliumNetworkPolicy");
    assert!(v.get("spec").is_some(), "rules at the root: {v}");
    let ccnp = CiliumClusterwideNetworkPolicy::new("c", Default::default());
    assert_eq!(
        serde_json::to_value(ccnp).unwrap()["kind"],
        "CiliumClusterwideNetworkPolicy"
    );
}

#[tokio::test]
async fn a_valid_policy_gets_valid_true() {
    let (ctx, mut handle, _leading) = setup(true);
    let cnp = seed_cnp(1);
    let answer = patched(
        &cnp,
        &json!({"status": {"conditions": [valid_condition(true, VALID_MESSAGE, Some(1), at(5))]}}),
    );
    let scenario = tokio::spawn(async move {
        let patch = expect_status_apply(&mut handle, CNP_STATUS_PATH, answer).await;
        let c = the_condition(&patch, "CiliumNetworkPolicy");
        assert_eq!(c["type"], "Valid");
        assert_eq!(c["status"], "True");
        assert_eq!(c["reason"], "Valid");
        assert_eq!(c["message"], VALID_MESSAGE);
        assert_eq!(c["observedGeneration"], 1);
        assert!(c["lastTransitionTime"].is_string(), "{c}");
        // Exactly one patch.
        expect_no_request(None, handle).await;
    });
    let action = within(reconcile_cnp(Arc::new(cnp), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(ctx.counters().status_writes.load(Ordering::Relaxed), 1);
    drop(ctx);
    finish(scenario).await;
}

#[tokio::test]
async fn an_invalid_policy_gets_valid_false_with_the_field_path() {
    let (ctx, mut handle, _leading) = setup(true);
    let cnp = cnp_from(&seed().replace("\"8080\"", "\"80800\""), 1);
    let answer = patched(
        &cnp,
        &json!({"status": {"conditions": [valid_condition(false, INVALID_PORT, Some(1), at(5))]}}),
    );
    let scenario = tokio::spawn(async move {
        let patch = expect_status_apply(&mut handle, CNP_STATUS_PATH, answer).await;
        let c = the_condition(&patch, "CiliumNetworkPolicy");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "Invalid");
        assert_eq!(c["message"], INVALID_PORT);
        assert_eq!(c["observedGeneration"], 1);
    });
    let action = within(reconcile_cnp(Arc::new(cnp), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    finish(scenario).await;
}

#[tokio::test]
async fn a_generation_bump_rewrites_observed_generation_and_keeps_the_transition_time() {
    let (ctx, mut handle, _leading) = setup(true);
    let cnp = with_valid(seed_cnp(2), 1);
    let answer = patched(
        &cnp,
        &json!({"status": {"conditions": [valid_condition(true, VALID_MESSAGE, Some(2), at(1000))]}}),
    );
    let scenario = tokio::spawn(async move {
        let patch = expect_status_apply(&mut handle, CNP_STATUS_PATH, answer).await;
        let c = the_condition(&patch, "CiliumNetworkPolicy");
        assert_eq!(c["status"], "True");
        assert_eq!(c["observedGeneration"], 2);
        // Status unchanged: lastTransitionTime is the old one.
        assert_eq!(c["lastTransitionTime"], "1970-01-01T00:16:40Z");
    });
    within(reconcile_cnp(Arc::new(cnp), ctx.clone()))
        .await
        .unwrap();
    finish(scenario).await;
}

#[tokio::test]
async fn a_current_condition_sends_nothing() {
    let (ctx, handle, _leading) = setup(true);
    let cnp = with_valid(seed_cnp(2), 2);
    let action = within(reconcile_cnp(Arc::new(cnp), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(ctx.counters().status_writes.load(Ordering::Relaxed), 0);
    expect_no_request(Some(ctx), handle).await;
}

#[tokio::test]
async fn a_non_leader_writes_nothing_and_requeues() {
    let (ctx, handle, _leading) = setup(false);
    let action = within(reconcile_cnp(Arc::new(seed_cnp(1)), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(NOT_LEADER_REQUEUE));
    expect_no_request(Some(ctx), handle).await;
}

#[tokio::test]
async fn a_ccnp_is_patched_at_the_cluster_scoped_path() {
    let (ctx, mut handle, _leading) = setup(true);
    let seed = seed_cnp(1);
    let mut ccnp = CiliumClusterwideNetworkPolicy::new(
        "cluster-payments",
        CiliumClusterwideNetworkPolicySpec {
            spec: seed.spec.spec.clone(),
            specs: None,
        },
    );
    ccnp.metadata.generation = Some(3);
    let answer = patched(
        &ccnp,
        &json!({"status": {"conditions": [valid_condition(true, VALID_MESSAGE, Some(3), at(5))]}}),
    );
    let scenario = tokio::spawn(async move {
        let patch = expect_status_apply(
            &mut handle,
            "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/cluster-payments/status",
            answer,
        )
        .await;
        let c = the_condition(&patch, "CiliumClusterwideNetworkPolicy");
        assert_eq!(c["status"], "True");
        assert_eq!(c["observedGeneration"], 3);
    });
    within(reconcile_ccnp(Arc::new(ccnp), ctx.clone()))
        .await
        .unwrap();
    finish(scenario).await;
}

#[tokio::test]
async fn a_server_error_fails_the_reconcile_and_is_counted() {
    let (ctx, mut handle, _leading) = setup(true);
    let scenario = tokio::spawn(async move {
        let (request, send) = timeout(STEP, handle.next_request()).await.unwrap().unwrap();
        check_apply(&request, CNP_STATUS_PATH);
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "etcdserver: request timed out",
            "reason": "InternalError", "code": 500
        });
        send.send_response(
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    });
    let cnp = Arc::new(seed_cnp(1));
    let err = within(reconcile_cnp(cnp.clone(), ctx.clone()))
        .await
        .unwrap_err();
    finish(scenario).await;
    assert!(
        err.to_string()
            .contains("writing the status of CiliumNetworkPolicy payments-api"),
        "{err}"
    );
    assert_eq!(ctx.counters().status_writes.load(Ordering::Relaxed), 0);
    let action = error_policy(cnp, &err, ctx.clone());
    assert_eq!(action, Action::requeue(ERROR_REQUEUE));
    assert_eq!(ctx.counters().reconcile_errors.load(Ordering::Relaxed), 1);
}

/// `run` end to end: both kinds are listed and watched cluster-wide, the
/// listed policy gets its status, and cancelling stops both controllers.
#[tokio::test]
async fn run_watches_both_kinds_and_writes_status() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (leading_tx, leading) = watch::channel(true);
    let cancel = CancellationToken::new();
    let controllers = tokio::spawn(run(client, leading, cancel.clone()));

    let cnp = seed_cnp(1);
    let mut listed = Vec::new();
    let mut watches = Vec::new(); // never answered: the watch stays open
    let mut patch = None;
    while patch.is_none() || listed.len() < 2 || watches.len() < 2 {
        let (request, send) = timeout(STEP, handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out; listed {listed:?}, watches {}", watches.len()))
            .expect("the client is alive");
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        match (request.method().clone(), path.as_str()) {
            (Method::GET, _) if query.contains("watch=true") => watches.push(send),
            (Method::GET, "/apis/cilium.io/v2/ciliumnetworkpolicies") => {
                let mut item = serde_json::to_value(&cnp).unwrap();
                item["metadata"]["resourceVersion"] = json!("7");
                send.send_response(ok(json!({
                    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicyList",
                    "metadata": {"resourceVersion": "10"}, "items": [item]
                })));
                listed.push(path);
            }
            (Method::GET, "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies") => {
                send.send_response(ok(json!({
                    "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicyList",
                    "metadata": {"resourceVersion": "10"}, "items": []
                })));
                listed.push(path);
            }
            (Method::PATCH, CNP_STATUS_PATH) => {
                check_apply(&request, CNP_STATUS_PATH);
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(
                    the_condition(&body, "CiliumNetworkPolicy")["status"],
                    "True"
                );
                send.send_response(ok(patched(&cnp, &body)));
                assert!(patch.replace(body).is_none(), "patched twice");
            }
            (m, _) => panic!("unexpected request {m} {path}?{query}"),
        }
    }
    listed.sort();
    assert_eq!(
        listed,
        [
            "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
            "/apis/cilium.io/v2/ciliumnetworkpolicies"
        ]
    );
    cancel.cancel();
    timeout(STEP, controllers)
        .await
        .expect("run stops when cancelled")
        .unwrap()
        .unwrap();
    drop((watches, leading_tx));
}

/// The lease task dying (the `leading` sender dropped) stops `run` with an
/// error rather than leaving controllers that can never write.
#[tokio::test]
async fn run_fails_when_the_leadership_signal_closes() {
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (leading_tx, leading) = watch::channel(false);
    let controllers = tokio::spawn(run(client, leading, CancellationToken::new()));
    drop(leading_tx);
    let err = timeout(STEP, controllers)
        .await
        .expect("run stops")
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("leadership signal closed"),
        "{err}"
    );
}

/// `--kubernetes` without any kubeconfig or in-cluster config: the binary
/// stops at once with an error naming the flag and the cause, before it
/// touches etcd (none is running here).
#[test]
fn kubernetes_mode_without_a_config_fails_clearly() {
    let dir = std::env::temp_dir().join(axoneme_e2e::run_prefix("kcfg"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = std::process::Command::new(axoneme_e2e::bin_path("axoneme-operator"))
        .args(["--kubernetes", "--etcd-endpoints", "http://127.0.0.1:1"])
        .env("KUBECONFIG", dir.join("missing-kubeconfig"))
        .env("HOME", &dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("running axoneme-operator");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--kubernetes: no usable kubeconfig or in-cluster config"),
        "{stderr}"
    );
}
