//! The API while the agent starts and etcd does not answer yet.
//!
//! Until the node's caches are read nothing writes the maps, so the
//! previous run's pinned maps (and the programs still attached to the
//! pods' interfaces) keep enforcing what they enforced: a peer they do
//! not know is the world, denied unless policy allows the world. The
//! socket already answers meanwhile, so the CLI and the CNI plugin learn
//! at once why the agent is not ready: `status` names the step it waits
//! on and etcd's last error, the map reads come from the pins, and CNI
//! calls are refused with "try again later" (a pod is never wired without
//! its identity).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axoneme_api::{cni_code, ApiError, ComponentStatus, CtEntry, IpcacheEntry, Status};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{read_maps, serve_on, Failure, Listener};
use crate::datapath::MapReader;
use crate::kvhealth::KvHealth;
use crate::views;

/// Where the start is.
#[derive(Debug, Clone)]
pub struct Progress {
    pub since: Instant,
    /// What the agent waits on, e.g. "granting the node lease".
    pub step: &'static str,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl Progress {
    pub fn new(step: &'static str) -> Self {
        Progress {
            since: Instant::now(),
            step,
            attempts: 0,
            last_error: None,
        }
    }

    /// The `status` line.
    fn message(&self) -> String {
        let mut m = format!(
            "starting for {} s: {}",
            self.since.elapsed().as_secs(),
            self.step
        );
        if let Some(e) = &self.last_error {
            m.push_str(&format!(
                " ({} attempts failed, the last: {e})",
                self.attempts
            ));
        }
        m.push_str("; the previous run's pinned maps keep enforcing until then");
        m
    }
}

/// What the starting API reads.
pub struct Ctx {
    pub node: String,
    pub maps: Arc<MapReader>,
    pub kvstore: watch::Receiver<Option<Arc<KvHealth>>>,
    pub progress: watch::Receiver<Progress>,
}

/// The running server.
pub struct Starting {
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Starting {
    pub fn serve(listener: Listener, ctx: Ctx) -> Self {
        let cancel = CancellationToken::new();
        let app = Router::new()
            .route("/v1/status", get(status))
            .route("/v1/bpf/ipcache", get(ipcache))
            .route("/v1/bpf/ct", get(ct))
            .fallback(starting)
            .with_state(Arc::new(ctx));
        let task = tokio::spawn(serve_on(listener, app, cancel.clone()));
        Starting { cancel, task }
    }

    /// Stops serving (connections still open get a few seconds).
    pub async fn stop(self) {
        self.cancel.cancel();
        match tokio::time::timeout(Duration::from_secs(3), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %format!("{e:#}"), "the starting API failed"),
            Ok(Err(e)) => warn!(error = %e, "the starting API panicked"),
            Err(_) => warn!("the starting API did not stop within 3 s; left to end"),
        }
    }
}

/// What the agent says to anything it cannot answer yet.
pub fn not_ready(progress: &Progress) -> ApiError {
    ApiError::new(
        cni_code::TRY_AGAIN_LATER,
        format!("the agent is starting: {}", progress.step),
        progress.last_error.clone().unwrap_or_default(),
    )
}

async fn starting(State(ctx): State<Arc<Ctx>>) -> Failure {
    Failure(not_ready(&ctx.progress.borrow()))
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Result<Json<Status>, Failure> {
    let progress = ctx.progress.borrow().clone();
    let kv = ctx.kvstore.borrow().clone();
    let (maps, endpoints) = read_maps(&ctx.maps, |maps| {
        Ok((
            views::map_status(maps),
            maps.endpoints().map(|e| e.len()).unwrap_or(0),
        ))
    })
    .await?;
    Ok(Json(Status {
        node: ctx.node.clone(),
        ok: false,
        components: vec![
            KvHealth::component(kv.as_deref()),
            ComponentStatus {
                name: "agent".into(),
                ok: false,
                message: progress.message(),
            },
            ComponentStatus {
                name: "datapath".into(),
                ok: false,
                message: format!(
                    "no reconcile pass yet; the previous run's maps hold {endpoints} endpoints"
                ),
            },
        ],
        pod_cidrs: Vec::new(),
        maps,
        programs_attached: 0,
        endpoints,
        identities: 0,
        policies: 0,
        policy_revision: 0,
        sync_units: Vec::new(),
    }))
}

async fn ipcache(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<IpcacheEntry>>, Failure> {
    Ok(Json(read_maps(&ctx.maps, views::ipcache).await?))
}

async fn ct(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<CtEntry>>, Failure> {
    Ok(Json(read_maps(&ctx.maps, views::ct).await?))
}
