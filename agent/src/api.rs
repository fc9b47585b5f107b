//! The agent's API server (see `axoneme-api` for the contract): HTTP/1.1
//! with JSON bodies on a UNIX socket of mode 0600, so only root (the
//! runtime running the CNI plugin, an operator at the CLI) may use it.
//!
//! CNI calls go to [`Endpoints`]. Reads never wait on another task or on
//! etcd: they come from what the other tasks published (the reconciler's
//! [`DatapathView`], the kvstore probe's [`KvHealth`], the node's caches)
//! and from read-only handles on the pinned maps ([`MapReader`]: the
//! kernel's own counters and conntrack), so they answer at once even when
//! etcd is gone or a pass is running.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use axoneme_api::{
    cni_code, AddRequest, ApiError, CheckRequest, CtEntry, DelRequest, EndpointView, EventView,
    IpcacheEntry, PolicyEntry, Status,
};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::datapath::MapReader;
use crate::endpoints::Endpoints;
use crate::kvhealth::KvHealth;
use crate::node::NodeState;
use crate::reconcile::DatapathView;
use crate::views::{self, EventRing};

pub mod starting;

/// What the API reads from.
#[derive(Clone)]
pub struct ApiState {
    pub endpoints: Arc<Endpoints>,
    pub state: NodeState,
    pub datapath: watch::Receiver<Arc<DatapathView>>,
    pub kvstore: watch::Receiver<Option<Arc<KvHealth>>>,
    pub maps: Arc<MapReader>,
    pub events: EventRing,
    /// Kubernetes mode: the watch of this node's Pods.
    pub pods: Option<crate::k8s::Pods>,
    /// What the services unit programmed (disabled: the default view).
    pub services: watch::Receiver<Arc<crate::services::Programmed>>,
    /// The agent's `--enforcement` mode (`policy explain` judges with it).
    pub enforcement: axoneme_policy::EnforcementMode,
    /// What the encryption task last did (disabled: the default).
    pub encrypt: watch::Receiver<axoneme_api::EncryptStatus>,
}

type Ctx = ApiState;

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

/// Runs a read of the maps (system calls, a whole map at worst) off the
/// server's threads.
async fn read_maps<T: Send + 'static>(
    maps: &Arc<MapReader>,
    f: impl FnOnce(&MapReader) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Failure> {
    let maps = maps.clone();
    tokio::task::spawn_blocking(move || f(&maps))
        .await
        .map_err(|e| {
            Failure(ApiError::new(
                cni_code::IO_FAILURE,
                "map read failed",
                e.to_string(),
            ))
        })?
        .map_err(Failure)
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
    let view = ctx.datapath.borrow().clone();
    let kv = ctx.kvstore.borrow().clone();
    let (state, eps) = (ctx.state.clone(), ctx.endpoints.clone());
    let mut st = read_maps(&ctx.maps, move |maps| {
        Ok(views::status(&view, &state, &eps, maps, kv.as_deref()))
    })
    .await?;
    if let Some(pods) = &ctx.pods {
        st.components.insert(1, views::kubernetes(pods));
    }
    let services = ctx.services.borrow().clone();
    st.components.push(crate::services::component(&services));
    st.components
        .push(crate::encrypt::component(&ctx.encrypt.borrow()));
    let datapath = ctx.datapath.borrow().clone();
    st.components.push(crate::host::component(
        &ctx.state,
        &datapath,
        ctx.enforcement,
    ));
    st.maps.extend(services.summary.maps.iter().cloned());
    st.ok = st.components.iter().all(|c| c.ok);
    Ok(Json(st))
}

async fn encrypt_status(State(ctx): State<Arc<Ctx>>) -> Json<axoneme_api::EncryptStatus> {
    Json(ctx.encrypt.borrow().clone())
}

async fn list_endpoints(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<EndpointView>>, Failure> {
    let view = ctx.datapath.borrow().clone();
    Ok(Json(views::endpoints(&view, &ctx.state, &ctx.endpoints)))
}

async fn configure_endpoint(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(endpoint): UrlPath<String>,
    req: Result<Json<axoneme_api::EndpointConfig>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Failure> {
    ctx.endpoints.configure(&endpoint, body(req)?).await?;
    Ok(Json(serde_json::json!({})))
}

async fn explain(
    State(ctx): State<Arc<Ctx>>,
    req: Result<Json<axoneme_api::ExplainRequest>, JsonRejection>,
) -> Result<Json<axoneme_policy::explain::ExplainReport>, Failure> {
    let req = body(req)?;
    let view = ctx.datapath.borrow().clone();
    let (state, mode) = (ctx.state.clone(), ctx.enforcement);
    Ok(Json(
        read_maps(&ctx.maps, move |maps| {
            crate::explain::explain(&req, &view, &state, mode, maps)
        })
        .await?,
    ))
}

async fn ipcache(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<IpcacheEntry>>, Failure> {
    Ok(Json(read_maps(&ctx.maps, views::ipcache).await?))
}

async fn policy(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(endpoint): UrlPath<String>,
) -> Result<Json<Vec<PolicyEntry>>, Failure> {
    let view = ctx.datapath.borrow().clone();
    Ok(Json(
        read_maps(&ctx.maps, move |maps| views::policy(&view, maps, &endpoint)).await?,
    ))
}

async fn ct(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<CtEntry>>, Failure> {
    Ok(Json(read_maps(&ctx.maps, views::ct).await?))
}

async fn list_events(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<EventView>>, Failure> {
    Ok(Json(ctx.events.snapshot()))
}

async fn list_services(State(ctx): State<Arc<Ctx>>) -> Json<axoneme_api::ServicesView> {
    let programmed = ctx.services.borrow().clone();
    Json(programmed.view())
}

async fn not_found() -> Failure {
    Failure(ApiError::new(
        cni_code::UNSUPPORTED_FIELD,
        "no such API path",
        "",
    ))
}

/// Serves the API on `listener` (see [`listen`]) until `cancel`.
pub async fn serve(
    listener: Listener,
    ctx: ApiState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = Arc::new(ctx);
    let app = Router::new()
        .route("/v1/cni/add", post(add))
        .route("/v1/cni/del", post(del))
        .route("/v1/cni/check", post(check))
        .route("/v1/status", get(status))
        .route("/v1/endpoints", get(list_endpoints))
        .route("/v1/endpoints/{endpoint}/config", post(configure_endpoint))
        .route("/v1/policy/explain", post(explain))
        .route("/v1/bpf/ipcache", get(ipcache))
        .route("/v1/bpf/policy/{endpoint}", get(policy))
        .route("/v1/bpf/ct", get(ct))
        .route("/v1/events", get(list_events))
        .route("/v1/services", get(list_services))
        .route("/v1/encrypt", get(encrypt_status))
        .fallback(not_found)
        .with_state(ctx);
    serve_on(listener, app, cancel).await
}

/// The API socket, bound.
pub struct Listener {
    inner: tokio::net::UnixListener,
    path: PathBuf,
    /// The socket file's inode: whose it is when the server stops.
    inode: u64,
}

/// Binds the API socket at `path` with mode 0600. It is bound beside and
/// renamed into place, so a server already there (a stale file, or the
/// agent's own while it starts) is replaced without a moment in which
/// the path answers nothing.
pub fn listen(path: &std::path::Path) -> anyhow::Result<Listener> {
    use anyhow::Context;
    use std::os::unix::fs::MetadataExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut beside = path.as_os_str().to_owned();
    beside.push(".new");
    let beside = PathBuf::from(beside);
    match std::fs::remove_file(&beside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", beside.display())),
    }
    let inner = tokio::net::UnixListener::bind(&beside)
        .with_context(|| format!("binding the API socket {}", beside.display()))?;
    std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", beside.display()))?;
    let inode = std::fs::metadata(&beside)
        .with_context(|| format!("{}", beside.display()))?
        .ino();
    std::fs::rename(&beside, path)
        .with_context(|| format!("moving the API socket to {}", path.display()))?;
    Ok(Listener {
        inner,
        path: path.to_path_buf(),
        inode,
    })
}

/// Serves `app` on `listener` until `cancel`, then removes the socket
/// file unless another server has taken the path meanwhile.
async fn serve_on(
    listener: Listener,
    app: Router,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::MetadataExt;
    let Listener { inner, path, inode } = listener;
    let result = axum::serve(inner, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    let ours = std::fs::metadata(&path).is_ok_and(|m| m.ino() == inode);
    if ours {
        if let Err(e) = std::fs::remove_file(&path) {
            warn!(socket = %path.display(), error = %e, "cannot remove the API socket");
        }
    }
    result.context("API server")
}
