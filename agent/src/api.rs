//! The agent's API server (see `axoneme-api` for the contract): HTTP/1.1
//! with JSON bodies on a UNIX socket of mode 0600, so only root (the
//! runtime running the CNI plugin, an operator at the CLI) may use it.
//!
//! CNI calls go to [`Endpoints`]; reads of the datapath go to the main
//! loop, which owns the maps, as [`Query`]s.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use axoneme_api::{
    cni_code, AddRequest, ApiError, CheckRequest, ComponentStatus, CtEntry, DelRequest,
    EndpointView, EventView, IpcacheEntry, PolicyEntry, Status,
};
use axoneme_kvstore::KvStore;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::endpoints::Endpoints;
use crate::views::EventRing;

/// A read the main loop answers.
pub enum Query {
    Status(oneshot::Sender<Status>),
    Endpoints(oneshot::Sender<Vec<EndpointView>>),
    Ipcache(oneshot::Sender<Result<Vec<IpcacheEntry>, ApiError>>),
    Policy(String, oneshot::Sender<Result<Vec<PolicyEntry>, ApiError>>),
    Ct(oneshot::Sender<Result<Vec<CtEntry>, ApiError>>),
}

struct Ctx {
    endpoints: Arc<Endpoints>,
    queries: mpsc::Sender<Query>,
    kv: KvStore,
    events: EventRing,
}

/// An error answer: the status follows the CNI code.
struct Failure(ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            cni_code::UNKNOWN_CONTAINER => StatusCode::NOT_FOUND,
            cni_code::TRY_AGAIN_LATER => StatusCode::SERVICE_UNAVAILABLE,
            cni_code::IO_FAILURE => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, Json(self.0)).into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

/// Bad JSON bodies are CNI's "failed to decode content".
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Failure> {
    b.map(|Json(t)| t).map_err(|e| {
        Failure(ApiError::new(
            cni_code::DECODE,
            "the request body is not valid",
            e.body_text(),
        ))
    })
}

async fn ask<T>(ctx: &Ctx, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, Failure> {
    let (tx, rx) = oneshot::channel();
    let gone = || {
        Failure(ApiError::new(
            cni_code::TRY_AGAIN_LATER,
            "the agent is shutting down",
            "",
        ))
    };
    ctx.queries.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

async fn add(
    State(ctx): State<Arc<Ctx>>,
    req: Result<Json<AddRequest>, JsonRejection>,
) -> Result<Json<axoneme_api::AddResponse>, Failure> {
    Ok(Json(ctx.endpoints.add(body(req)?).await?))
}

async fn del(
    State(ctx): State<Arc<Ctx>>,
    req: Result<Json<DelRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Failure> {
    ctx.endpoints.del(body(req)?).await?;
    Ok(Json(serde_json::json!({})))
}

async fn check(
    State(ctx): State<Arc<Ctx>>,
    req: Result<Json<CheckRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Failure> {
    ctx.endpoints.check(body(req)?).await?;
    Ok(Json(serde_json::json!({})))
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Result<Json<Status>, Failure> {
    let mut st = ask(&ctx, Query::Status).await?;
    let members = ctx.kv.member_health().await;
    let healthy = members.iter().filter(|m| m.healthy).count();
    let leader = members
        .iter()
        .find(|m| m.is_leader)
        .map(|m| m.endpoint.clone());
    let ok = leader.is_some();
    st.components.insert(
        0,
        ComponentStatus {
            name: "kvstore".into(),
            ok,
            message: format!(
                "{healthy}/{} etcd members healthy, raft leader {}",
                members.len(),
                leader.as_deref().unwrap_or("none")
            ),
        },
    );
    st.ok = st.components.iter().all(|c| c.ok);
    Ok(Json(st))
}

async fn list_endpoints(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<EndpointView>>, Failure> {
    Ok(Json(ask(&ctx, Query::Endpoints).await?))
}

async fn ipcache(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<IpcacheEntry>>, Failure> {
    Ok(Json(ask(&ctx, Query::Ipcache).await??))
}

async fn policy(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(endpoint): UrlPath<String>,
) -> Result<Json<Vec<PolicyEntry>>, Failure> {
    Ok(Json(ask(&ctx, |tx| Query::Policy(endpoint, tx)).await??))
}

async fn ct(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<CtEntry>>, Failure> {
    Ok(Json(ask(&ctx, Query::Ct).await??))
}

async fn list_events(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<EventView>>, Failure> {
    Ok(Json(ctx.events.snapshot()))
}

async fn not_found() -> Failure {
    Failure(ApiError::new(
        cni_code::UNSUPPORTED_FIELD,
        "no such API path",
        "",
    ))
}

/// Binds `socket` (replacing a stale one) with mode 0600 and serves until
/// `cancel`.
pub async fn serve(
    socket: PathBuf,
    endpoints: Arc<Endpoints>,
    queries: mpsc::Sender<Query>,
    kv: KvStore,
    events: EventRing,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", socket.display())),
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding the API socket {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", socket.display()))?;
    let ctx = Arc::new(Ctx {
        endpoints,
        queries,
        kv,
        events,
    });
    let app = Router::new()
        .route("/v1/cni/add", post(add))
        .route("/v1/cni/del", post(del))
        .route("/v1/cni/check", post(check))
        .route("/v1/status", get(status))
        .route("/v1/endpoints", get(list_endpoints))
        .route("/v1/bpf/ipcache", get(ipcache))
        .route("/v1/bpf/policy/{endpoint}", get(policy))
        .route("/v1/bpf/ct", get(ct))
        .route("/v1/events", get(list_events))
        .fallback(not_found)
        .with_state(ctx);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(e) = std::fs::remove_file(&socket) {
        warn!(socket = %socket.display(), error = %e, "cannot remove the API socket");
    }
    result.context("API server")
}
