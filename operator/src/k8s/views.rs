//! The leader's read-only view for `kubectl`: a CiliumIdentity per
//! allocated identity, a CiliumEndpoint per endpoint that is a Pod, a
//! CiliumNode per node. They are derived from the kvstore (the truth) and
//! rewritten from it; losing them loses nothing.
//!
//! Each kind is synced by diff once its watch has a complete list: objects
//! that differ are applied (server-side apply under [`FIELD_MANAGER`]),
//! objects the operator made (label [`MANAGED_BY`]) whose source is gone
//! are deleted, with the object's uid as precondition. So identity GC
//! deleting `identities/v1/id/<n>` deletes CiliumIdentity `<n>`, and an
//! endpoint record's removal its CiliumEndpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use axoneme_crds::kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use axoneme_crds::kube::{self, ResourceExt};
use axoneme_identity::Layout;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::health::Reason;
use super::pace::Pacer;
use super::{labels, Kube, KubeMetrics, FIELD_MANAGER, MANAGED_BY};

mod endpoint;
mod identity;
mod node;

use endpoint::endpoint_ops;
use identity::identity_ops;
use node::{node_ops, NodeWrites};

pub use endpoint::endpoint_status;
pub use identity::{identity_object, NAMESPACE_LABEL};
pub use node::node_conditions;

/// How long one API write may take (the client's own read timeout is
/// minutes, made for watches).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// API writes in flight at once.
const CONCURRENT_WRITES: usize = 16;

/// One API write.
pub struct Op {
    pub resource: &'static str,
    pub verb: &'static str,
    /// The object, for logs.
    pub what: String,
    pub fut: BoxFuture<'static, Result<(), kube::Error>>,
}

/// Runs `ops` (bounded concurrency); records each outcome in the API health
/// and metrics. `false` if any failed (a delete of an object already gone
/// succeeds).
pub async fn execute(metrics: &KubeMetrics, ops: Vec<Op>) -> bool {
    if ops.is_empty() {
        return true;
    }
    let results: Vec<_> = futures::stream::iter(ops.into_iter().map(|op| async move {
        let r = tokio::time::timeout(WRITE_TIMEOUT, op.fut).await;
        (op.resource, op.verb, op.what, r)
    }))
    .buffer_unordered(CONCURRENT_WRITES)
    .collect()
    .await;
    let health = &metrics.health;
    let mut ok = true;
    for (resource, verb, what, r) in results {
        let r = match r {
            Ok(r) => r,
            Err(_) => {
                ok = false;
                health.failed_with(
                    resource,
                    verb,
                    Reason::Unreachable,
                    format!("{what}: no answer within {WRITE_TIMEOUT:?}"),
                );
                continue;
            }
        };
        match r {
            Ok(()) => {
                debug!(resource, verb, %what, "written");
                health.succeeded(resource, verb);
                metrics
                    .object_writes
                    .get_or_create(&labels([("resource", resource), ("op", verb)]))
                    .inc();
            }
            Err(kube::Error::Api(s)) if s.code == 404 && verb == "delete" => {}
            Err(e) => {
                ok = false;
                health.failed(resource, verb, &e);
            }
        }
    }
    ok
}

fn managed(meta_labels: &BTreeMap<String, String>) -> bool {
    meta_labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn delete_op<K>(api: Api<K>, resource: &'static str, obj: &K) -> Op
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let name = obj.name_any();
    let what = format!("{}/{name}", obj.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    info!(resource, %what, "deleting: its source is gone");
    Op {
        resource,
        verb: "delete",
        what,
        fut: async move { api.delete(&name, &params).await.map(|_| ()) }.boxed(),
    }
}

fn apply_op<K>(api: Api<K>, resource: &'static str, name: String, what: String, body: Value) -> Op
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    Op {
        resource,
        verb: "patch",
        what,
        fut: async move {
            api.patch(&name, &apply_params(), &Patch::Apply(&body))
                .await
                .map(|_| ())
        }
        .boxed(),
    }
}

/// Runs the view loop until `term` is cancelled.
pub async fn run(kube: &Kube, layout: &Layout, term: &CancellationToken) {
    let mut pacer = Pacer::new(kube.changes());
    let mut node_writes = NodeWrites::default();
    info!("writing CiliumIdentity, CiliumEndpoint and CiliumNode objects");
    while pacer.wait(term).await {
        let index = &kube.index;
        let mut ops = Vec::new();
        let mut waiting = false;
        if index.identities.ready() {
            ops.extend(identity_ops(kube));
        } else {
            waiting = true;
        }
        if index.endpoints.ready() {
            ops.extend(endpoint_ops(kube, layout));
        } else {
            waiting = true;
        }
        if index.cilium_nodes.ready() && index.nodes.ready() {
            ops.extend(node_ops(kube, layout, &mut node_writes));
        } else {
            waiting = true;
        }
        // A kind whose watch has no list yet is synced once it has one (its
        // InitDone is a change); a failed write is retried with backoff.
        pacer.wake_at(node_writes.wake);
        if execute(&kube.metrics.kube, ops).await || waiting {
            pacer.succeeded();
        } else {
            pacer.failed();
        }
    }
}
