//! What every replica watches in the Kubernetes API: one kube-runtime
//! reflector per kind, each in its own task, with its own store (the one
//! writer) and readiness. Every replica keeps them warm so a new leader
//! starts from a full view; only the leader acts on them.
//!
//! A watch error never empties a store: the reflector keeps what it has,
//! the watcher retries from the last resourceVersion (with backoff, at most
//! [`axoneme_crds::backoff::WATCH_BACKOFF_MAX`] apart; at once when the resourceVersion has
//! expired, by re-listing), and a re-list replaces the store only once
//! it is complete (kube-runtime swaps in the new list at `InitDone`). So
//! what consumers diff against is always a whole, consistent list.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axoneme_crds::k8s_openapi::api::core::v1::{Namespace, Node, Service};
use axoneme_crds::k8s_openapi::api::discovery::v1::EndpointSlice;
use axoneme_crds::k8s_openapi::api::networking::v1::NetworkPolicy;
use axoneme_crds::kube::api::{Api, ApiResource, DynamicObject};
use axoneme_crds::kube::runtime::reflector::{self, Store};
use axoneme_crds::kube::runtime::{watcher, WatchStreamExt};
use axoneme_crds::kube::{Client, Resource, ResourceExt};
use axoneme_crds::{
    CiliumClusterwideNetworkPolicy, CiliumEndpoint, CiliumIdentity, CiliumNetworkPolicy, CiliumNode,
};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

use super::health::ApiHealth;

use axoneme_crds::backoff::WatchBackoff;

/// One watched kind: a reader of its store and whether its first complete
/// list has arrived (before that, its absence of objects means nothing).
#[derive(Clone)]
pub struct Reflected<K: 'static + Resource<DynamicType = D> + Clone, D = ()>
where
    D: Eq + std::hash::Hash + Clone,
{
    /// The resource's name, e.g. `ciliumnetworkpolicies`.
    pub resource: &'static str,
    store: Store<K>,
    ready: Arc<AtomicBool>,
}

impl<K, D> Reflected<K, D>
where
    K: 'static + Resource<DynamicType = D> + Clone,
    D: Eq + std::hash::Hash + Clone,
{
    /// Every object as last seen.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// Every object by name (for cluster-scoped kinds).
    pub fn by_name(&self) -> std::collections::BTreeMap<String, Arc<K>> {
        self.store
            .state()
            .into_iter()
            .map(|o| (o.name_any(), o))
            .collect()
    }

    /// Whether a complete list has arrived.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Bumped on every change of any watched kind (and of the kvstore caches
/// the leader's work reads): consumers wait on it and then diff.
pub type Changes = watch::Sender<u64>;

pub fn bump(changes: &Changes) {
    changes.send_modify(|v| *v = v.wrapping_add(1));
}

/// Starts the reflector of one kind in its own task.
fn reflect<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
    resource: &'static str,
    health: Arc<ApiHealth>,
    changes: Arc<Changes>,
    cancel: CancellationToken,
) -> Reflected<K, K::DynamicType>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    // The watcher makes progress only when polled: the backoff is the pause
    // between polls after an error.
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            // Nobody here reads managedFields; they are most of an object.
            .modify(|o: &mut K| o.managed_fields_mut().clear()),
    );
    let task = async move {
        futures::pin_mut!(stream);
        let mut backoff = WatchBackoff::new();
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                None => return,
                // "Too old resource version" (e.g. after an API server
                // restart, whose watch cache starts afresh): the watcher
                // re-lists, at once; not a problem.
                Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                    debug!(message = %status.message, "watch expired; re-listing");
                }
                Some(Ok(event)) => {
                    backoff.reset();
                    health.succeeded(resource, "list");
                    health.succeeded(resource, "watch");
                    match event {
                        watcher::Event::InitDone => {
                            if !flag.swap(true, Ordering::AcqRel) {
                                info!("initial list complete");
                            } else {
                                debug!("re-listed");
                            }
                            bump(&changes);
                        }
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) => bump(&changes),
                        watcher::Event::Init | watcher::Event::InitApply(_) => {}
                    }
                }
                Some(Err(e)) => {
                    let pause = backoff.next_pause();
                    let (verb, err) = match &e {
                        watcher::Error::InitialListFailed(err) => ("list", Some(err)),
                        watcher::Error::WatchStartFailed(err)
                        | watcher::Error::WatchFailed(err) => ("watch", Some(err)),
                        _ => ("watch", None),
                    };
                    match err {
                        Some(err) => health.failed(resource, verb, err),
                        None => health.failed_with(
                            resource,
                            verb,
                            super::health::Reason::Other,
                            e.to_string(),
                        ),
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    };
    tokio::spawn(task.instrument(tracing::info_span!("watch", resource)));
    Reflected {
        resource,
        store,
        ready,
    }
}

/// Every kind the operator watches.
#[derive(Clone)]
pub struct Index {
    pub cnp: Reflected<DynamicObject, ApiResource>,
    pub ccnp: Reflected<DynamicObject, ApiResource>,
    pub knp: Reflected<DynamicObject, ApiResource>,
    pub namespaces: Reflected<Namespace>,
    pub nodes: Reflected<Node>,
    pub identities: Reflected<CiliumIdentity>,
    pub endpoints: Reflected<CiliumEndpoint>,
    pub cilium_nodes: Reflected<CiliumNode>,
    /// Services and their EndpointSlices (the kube-proxy replacement's).
    pub services: Reflected<Service>,
    pub endpoint_slices: Reflected<EndpointSlice>,
}

/// The dynamic API resource of a policy kind (policies are read untyped, so
/// that an object the Rust types would not deserialize is still judged,
/// with a field path, instead of breaking the watch).
pub fn cnp_resource() -> ApiResource {
    ApiResource::erase::<CiliumNetworkPolicy>(&())
}

pub fn ccnp_resource() -> ApiResource {
    ApiResource::erase::<CiliumClusterwideNetworkPolicy>(&())
}

pub fn knp_resource() -> ApiResource {
    ApiResource::erase::<NetworkPolicy>(&())
}

impl Index {
    /// Starts every reflector.
    pub fn start(
        client: &Client,
        health: &Arc<ApiHealth>,
        changes: &Arc<Changes>,
        cancel: &CancellationToken,
    ) -> Self {
        let dynamic = |ar: ApiResource, resource: &'static str| {
            reflect(
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                ar,
                resource,
                health.clone(),
                changes.clone(),
                cancel.clone(),
            )
        };
        Index {
            cnp: dynamic(cnp_resource(), "ciliumnetworkpolicies"),
            ccnp: dynamic(ccnp_resource(), "ciliumclusterwidenetworkpolicies"),
            knp: dynamic(knp_resource(), "networkpolicies"),
            namespaces: reflect(
                Api::all(client.clone()),
                (),
                "namespaces",
                health.clone(),
                changes.clone(),
                cancel.clone(),
            ),
            nodes: reflect(
                Api::all(client.clone()),
                (),
                "nodes",
                health.clone(),
                changes.clone(),
                cancel.clone(),
            ),
            identities: reflect(
                Api::all(client.clone()),
                (),
                "ciliumidentities",
                health.clone(),
                changes.clone(),
                cancel.clone(),
            ),
            endpoints: reflect(
                Api::all(client.clone()),
                (),
                "ciliumendpoints",
                health.clone(),
                changes.clone(),
                cancel.clone(),
            ),
            cilium_nodes: reflect(
                Api::all(client.clone()),
                (),
                "ciliumnodes",
                health.clone(),
                changes.clone(),
                cancel.clone(),
            ),
            services: reflect(
                Api::all(client.clone()),
                (),
                "services",
                health.clone(),
                changes.clone(),
                cancel.clone(),
            ),
            endpoint_slices: reflect(
                Api::all(client.clone()),
                (),
                "endpointslices",
                health.clone(),
                changes.clone(),
                cancel.clone(),
            ),
        }
    }
}
