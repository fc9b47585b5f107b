//! Kubernetes mode's policy validation: kube-runtime controllers watch
//! CiliumNetworkPolicy (all namespaces) and CiliumClusterwideNetworkPolicy,
//! validate each object with the policy model, and write its `Valid`
//! condition by server-side apply to `/status` under the fixed field manager
//! [`FIELD_MANAGER`]. The equivalent of standalone mode's
//! [`policy_status`](crate::policy_status).
//!
//! Reconcile is idempotent: a condition that already says the same thing
//! for the object's `generation` is not written again, so
//! `lastTransitionTime` stays put. Every replica runs the controllers (their
//! caches stay warm), but only the leader writes; a non-leader requeues the
//! objects it would have written.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axoneme_crds::k8s_openapi::jiff::Timestamp;
use axoneme_crds::kube::api::{Api, Patch, PatchParams};
use axoneme_crds::kube::core::object::HasStatus;
use axoneme_crds::kube::runtime::controller::{Action, Controller};
use axoneme_crds::kube::runtime::watcher;
use axoneme_crds::kube::{Client, Resource, ResourceExt};
use axoneme_crds::{
    upsert_condition, valid_condition, CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy,
    PolicyStatus, Time, CONDITION_VALID,
};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn, Instrument};

/// The field manager of every status write: the operator owns the `Valid`
/// condition and nothing else (conditions are a map keyed by `type`).
pub const FIELD_MANAGER: &str = "axoneme-operator";
/// Message of a `Valid=True` condition.
pub const VALID_MESSAGE: &str = "policy is valid";
/// How soon a non-leader looks again at an object whose status it would
/// have written.
pub const NOT_LEADER_REQUEUE: Duration = Duration::from_secs(5);
/// How soon an object is retried after a failed reconcile.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(15);

/// A reconcile that failed; the controller retries it after
/// [`ERROR_REQUEUE`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a {kind} without metadata.name")]
    MissingName { kind: String },
    #[error("serializing {kind} {name} for validation")]
    Serialize {
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the status of {kind} {name}")]
    PatchStatus {
        kind: String,
        name: String,
        #[source]
        source: Box<axoneme_crds::kube::Error>,
    },
}

/// Counters of the controllers' work, shared by both kinds.
#[derive(Debug, Default)]
pub struct Counters {
    /// Reconciles that failed (counted by [`error_policy`]).
    pub reconcile_errors: AtomicU64,
    /// Status patches the API server accepted.
    pub status_writes: AtomicU64,
}

/// What every reconcile gets.
pub struct Context {
    client: Client,
    leading: watch::Receiver<bool>,
    counters: Counters,
}

impl Context {
    /// A context writing through `client` while `leading` says `true`.
    pub fn new(client: Client, leading: watch::Receiver<bool>) -> Self {
        Self {
            client,
            leading,
            counters: Counters::default(),
        }
    }

    /// The counters, for metrics and tests.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }
}

/// A policy kind the controllers handle.
pub trait PolicyObject:
    Resource<DynamicType = ()>
    + HasStatus<Status = PolicyStatus>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The API through which this object's status is written.
    fn status_api(&self, client: Client) -> Api<Self>;
}

impl PolicyObject for CiliumNetworkPolicy {
    fn status_api(&self, client: Client) -> Api<Self> {
        match self.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::default_namespaced(client),
        }
    }
}

impl PolicyObject for CiliumClusterwideNetworkPolicy {
    fn status_api(&self, client: Client) -> Api<Self> {
        Api::all(client)
    }
}

/// Reconciles one CiliumNetworkPolicy.
pub async fn reconcile_cnp(
    obj: Arc<CiliumNetworkPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile(obj, ctx).await
}

/// Reconciles one CiliumClusterwideNetworkPolicy.
pub async fn reconcile_ccnp(
    obj: Arc<CiliumClusterwideNetworkPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile(obj, ctx).await
}

/// Counts a failed reconcile and retries it after [`ERROR_REQUEUE`].
pub fn error_policy<K: Resource>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.counters
        .reconcile_errors
        .fetch_add(1, Ordering::Relaxed);
    warn!(
        name = %obj.name_any(),
        namespace = obj.namespace().as_deref().unwrap_or(""),
        error = %error,
        source = ?std::error::Error::source(error).map(ToString::to_string),
        "reconcile failed; retrying",
    );
    Action::requeue(ERROR_REQUEUE)
}

/// Validates `obj` and, when its `Valid` condition is not current and this
/// replica leads, writes the condition.
#[instrument(skip_all, fields(
    kind = %K::kind(&()),
    name = %obj.name_any(),
    namespace = obj.namespace().as_deref().unwrap_or(""),
))]
async fn reconcile<K: PolicyObject>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let kind = K::kind(&()).into_owned();
    if obj.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(name) = obj.meta().name.clone() else {
        return Err(Error::MissingName { kind });
    };
    // The derived Serialize writes `apiVersion` and `kind` (TypeMeta is not a
    // field of the struct); the validator needs both.
    let value = serde_json::to_value(&*obj).map_err(|source| Error::Serialize {
        kind: kind.clone(),
        name: name.clone(),
        source,
    })?;
    let (valid, message) = match axoneme_policy::parse_object(&value, &name) {
        Ok(_) => (true, VALID_MESSAGE.to_string()),
        // `name: path: message` lines, as standalone mode writes them.
        Err(e) => (false, e.to_string()),
    };
    let generation = obj.meta().generation;
    let mut conditions = obj
        .status()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let wanted = valid_condition(valid, message, generation, Time(Timestamp::now()));
    // Keeps the old lastTransitionTime while the status holds; `false` means
    // the condition already says this for this generation.
    if !upsert_condition(&mut conditions, wanted) {
        debug!("status is current");
        return Ok(Action::await_change());
    }
    if !ctx.is_leader() {
        debug!("not leading; leaving the status to the leader");
        return Ok(Action::requeue(NOT_LEADER_REQUEUE));
    }
    let condition = conditions
        .into_iter()
        .find(|c| c.type_ == CONDITION_VALID)
        .expect("upsert_condition put it there");
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": kind,
        "status": { "conditions": [&condition] },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    obj.status_api(ctx.client.clone())
        .patch_status(&name, &params, &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::PatchStatus {
            kind,
            name,
            source: Box::new(source),
        })?;
    ctx.counters.status_writes.fetch_add(1, Ordering::Relaxed);
    if valid {
        info!(?generation, "policy valid");
    } else {
        warn!(?generation, message = %condition.message, "policy invalid");
    }
    Ok(Action::await_change())
}

/// Emits once each time `leading` turns `true`; ends when its sender is gone.
fn became_leader(leading: watch::Receiver<bool>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(leading, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    })
}

/// Runs one kind's controller until `cancel` fires.
async fn run_controller<K, F>(
    api: Api<K>,
    reconciler: impl FnMut(Arc<K>, Arc<Context>) -> F,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) where
    K: PolicyObject,
    F: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    let leading = ctx.leading.clone();
    Controller::new(api, watcher::Config::default())
        .reconcile_all_on(became_leader(leading))
        .graceful_shutdown_on(cancel.cancelled_owned())
        .run(reconciler, error_policy::<K>, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, action)) => debug!(%obj, ?action, "reconciled"),
                // Reconcile errors are counted and logged by error_policy;
                // watch errors are retried with backoff by the watcher.
                Err(e) => warn!(error = %e, "controller error"),
            }
        })
        .await;
}

/// Runs the CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy status
/// controllers until `cancel` fires. Writes only while `leading` says
/// `true`; fails if `leading`'s sender goes away before `cancel` (the lease
/// task died: the process should exit rather than run on without it).
pub async fn run(
    client: Client,
    leading: watch::Receiver<bool>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = Arc::new(Context::new(client.clone(), leading.clone()));
    let cnp = run_controller(
        Api::<CiliumNetworkPolicy>::all(client.clone()),
        reconcile_cnp,
        ctx.clone(),
        cancel.clone(),
    )
    .instrument(tracing::info_span!("cnp-status"));
    let ccnp = run_controller(
        Api::<CiliumClusterwideNetworkPolicy>::all(client),
        reconcile_ccnp,
        ctx,
        cancel.clone(),
    )
    .instrument(tracing::info_span!("ccnp-status"));
    let mut lease = leading;
    let lease_gone = async move { while lease.changed().await.is_ok() {} };
    info!(
        field_manager = FIELD_MANAGER,
        "policy status controllers started"
    );
    let controllers = futures::future::join(cnp, ccnp);
    tokio::pin!(controllers);
    tokio::select! {
        _ = &mut controllers => return Ok(()),
        () = lease_gone => {}
    }
    if cancel.is_cancelled() {
        // Shutting down anyway: let in-flight reconciles finish.
        controllers.await;
        return Ok(());
    }
    anyhow::bail!("the leadership signal closed; stopped the policy status controllers")
}
