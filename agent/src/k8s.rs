//! Kubernetes mode on the agent: the Pods of this node only (a watch with
//! the field selector `spec.nodeName=<node>`), and the labels an endpoint
//! takes from its Pod. Everything cluster-wide (policies, namespace and
//! node labels) still comes from the kvstore, mirrored by the operator,
//! so agents stay light and identical in both modes.
//!
//! An endpoint's labels, as Cilium derives them (all with source `k8s:`):
//! the Pod's labels; `io.kubernetes.pod.namespace`;
//! `io.cilium.k8s.policy.serviceaccount`; `io.cilium.k8s.policy.cluster`;
//! the namespace's labels as `io.cilium.k8s.namespace.labels.<key>`. The
//! operator keeps the identity-relevant ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axoneme_api::{cni_code, ApiError};
use axoneme_crds::backoff::WatchBackoff;
use axoneme_crds::k8s_openapi::api::core::v1::Pod;
use axoneme_crds::kube::runtime::reflector::{self, ObjectRef, Store};
use axoneme_crds::kube::runtime::utils::Backoff;
use axoneme_crds::kube::runtime::{watcher, WatchStreamExt};
use axoneme_crds::kube::{Api, Client};
use axoneme_identity::{Layout, NamedPort, NamedPorts, NamespaceRecord, WatchCache};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The Pod watch's pause between retries (see [`WatchBackoff`]); kube
/// resets it after each successful event.
#[derive(Default)]
struct PodWatchBackoff(WatchBackoff);

impl Iterator for PodWatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.0.next_pause())
    }
}

impl Backoff for PodWatchBackoff {
    fn reset(&mut self) {
        self.0.reset()
    }
}

/// The Pods of this node, kept by a watch.
#[derive(Clone)]
pub struct Pods {
    store: Store<Pod>,
    /// Bumped after every change applied to the store.
    changes: watch::Receiver<u64>,
    /// The watch's last error, until it works again (an unreachable API
    /// server, a missing permission).
    error: watch::Receiver<Option<String>>,
    /// The first list has arrived.
    synced: watch::Receiver<bool>,
}

impl Pods {
    /// Starts the watch; the returned task keeps it (restarts with backoff
    /// on errors, which it reports) until `cancel`.
    pub fn start(
        client: Client,
        node: &str,
        cancel: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = anyhow::Result<()>>) {
        let (store, writer) = reflector::store();
        let (changes_tx, changes) = watch::channel(0u64);
        let (error_tx, error) = watch::channel(None);
        let (synced_tx, synced) = watch::channel(false);
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let task = async move {
            let stream = reflector::reflector(writer, watcher(api, config))
                .backoff(PodWatchBackoff::default());
            futures::pin_mut!(stream);
            loop {
                let event = tokio::select! {
                    e = stream.next() => e,
                    _ = cancel.cancelled() => return Ok(()),
                };
                match event {
                    Some(Ok(event)) => {
                        if matches!(event, watcher::Event::InitDone) && !*synced_tx.borrow() {
                            info!("Pod watch synced");
                            synced_tx.send_replace(true);
                        }
                        if error_tx.borrow().is_some() {
                            info!("Pod watch working again");
                            error_tx.send_replace(None);
                        }
                        changes_tx.send_modify(|n| *n += 1);
                    }
                    Some(Err(e)) => {
                        let e = watch_error(&e);
                        if error_tx.borrow().as_deref() != Some(e.as_str()) {
                            warn!(error = %e, "Pod watch failed; retrying with backoff (is the API server reachable, may this agent watch pods?)");
                        }
                        error_tx.send_replace(Some(e));
                    }
                    None => anyhow::bail!("the Pod watch ended"),
                }
            }
        };
        (
            Pods {
                store,
                changes,
                error,
                synced,
            },
            task,
        )
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Notice of every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The watch's error, if it is failing now.
    pub fn error(&self) -> Option<String> {
        self.error.borrow().clone()
    }

    /// Whether the first list has arrived.
    pub fn synced(&self) -> bool {
        *self.synced.borrow()
    }
}

/// Where an endpoint's labels come from: the CNI plugin's arguments
/// (standalone mode), or its Pod (Kubernetes mode).
#[derive(Clone)]
pub enum LabelSource {
    Cni,
    Kubernetes(Arc<PodLabels>),
}

/// Labels from Pods and the namespaces' labels the operator mirrors.
pub struct PodLabels {
    pub pods: Pods,
    pub namespaces: WatchCache<NamespaceRecord>,
    pub layout: Layout,
    pub cluster: String,
}

/// The Pod an endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub uid: String,
    /// Its containers' named ports (policies' `port: http` resolve to them).
    pub named_ports: NamedPorts,
    /// The Pod asks for policy audit mode ([`AUDIT_ANNOTATION`]).
    pub policy_audit_mode: bool,
}

/// The Pod annotation that puts its endpoint in policy audit mode
/// (`"true"`; anything else, or none, is off).
pub const AUDIT_ANNOTATION: &str = "axoneme.io/policy-audit-mode";

/// Whether the Pod asks for policy audit mode. Only `true` turns it on:
/// an unreadable value enforces (fail closed) and is logged.
pub fn policy_audit_mode(pod: &Pod) -> bool {
    let value = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUDIT_ANNOTATION));
    match value.map(|v| v.trim()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            tracing::warn!(
                pod = pod.metadata.name.as_deref().unwrap_or_default(),
                annotation = AUDIT_ANNOTATION,
                value = other,
                "not `true` or `false`: the endpoint's policy is enforced"
            );
            false
        }
    }
}

impl PodLabels {
    /// The labels of the Pod `namespace/name` as it is now; `None` if this
    /// node has no such Pod.
    pub fn labels(&self, namespace: &str, name: &str) -> Option<(Vec<String>, PodRef)> {
        let pod = self.pods.get(namespace, name)?;
        let ns = self
            .namespaces
            .get(&self.layout.namespace(namespace))
            .map(|r| r.labels.clone())
            .unwrap_or_default();
        Some((
            endpoint_labels(&pod, namespace, &self.cluster, &ns),
            PodRef {
                name: name.to_string(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                named_ports: named_ports(&pod),
                policy_audit_mode: policy_audit_mode(&pod),
            },
        ))
    }

    /// The labels for a CNI ADD of the Pod `namespace/name`: waits (within
    /// `timeout`) for the Pod to show up in the watch, as the runtime may
    /// call before the watch has seen it. Fails naming the Pod when it
    /// does not exist, or the API server when it cannot be reached.
    pub async fn for_add(
        &self,
        namespace: &str,
        name: Option<&str>,
        uid: Option<&str>,
        timeout: Duration,
    ) -> Result<(Vec<String>, PodRef), ApiError> {
        let Some(name) = name else {
            return Err(ApiError::new(
                cni_code::INVALID_ENDPOINT,
                "Kubernetes mode needs the Pod's name (K8S_POD_NAME in CNI_ARGS)",
                "",
            ));
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.pods.changes();
        loop {
            if let Some((labels, pod)) = self.labels(namespace, name) {
                if let Some(uid) = uid.filter(|u| *u != pod.uid) {
                    return Err(ApiError::new(
                        cni_code::INVALID_ENDPOINT,
                        format!(
                            "Pod {namespace}/{name} has UID {}, not the runtime's {uid} (deleted and created again?)",
                            pod.uid
                        ),
                        "",
                    ));
                }
                return Ok((labels, pod));
            }
            let waited = tokio::time::timeout_at(deadline, changes.changed()).await;
            if waited.is_err() {
                return Err(match self.pods.error() {
                    Some(e) => ApiError::new(
                        cni_code::TRY_AGAIN_LATER,
                        format!(
                            "cannot read Pod {namespace}/{name}: the Kubernetes API server is unreachable or refuses ({} ms)",
                            timeout.as_millis()
                        ),
                        e,
                    ),
                    None if !self.pods.synced() => ApiError::new(
                        cni_code::TRY_AGAIN_LATER,
                        format!(
                            "cannot read Pod {namespace}/{name}: the Pod watch has not synced within {} ms",
                            timeout.as_millis()
                        ),
                        "",
                    ),
                    None => ApiError::new(
                        cni_code::UNKNOWN_CONTAINER,
                        format!(
                            "Pod {namespace}/{name} does not exist on this node in the Kubernetes API"
                        ),
                        "",
                    ),
                });
            }
        }
    }
}

/// The named ports of a Pod's containers (a name Kubernetes would refuse,
/// or a protocol we do not know, is left out with a warning: it names no
/// port a policy could mean).
pub fn named_ports(pod: &Pod) -> NamedPorts {
    let mut out = NamedPorts::new();
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    for port in containers.flat_map(|c| c.ports.iter().flatten()) {
        let Some(name) = &port.name else { continue };
        let parsed = serde_json::from_value::<NamedPort>(serde_json::json!({
            "protocol": port.protocol.clone().unwrap_or_else(|| "TCP".into()),
            "port": port.container_port,
        }));
        match parsed {
            Ok(p) => {
                out.insert(name.to_lowercase(), p);
            }
            Err(e) => warn!(port = %name, error = %e, "container port left out of named ports"),
        }
    }
    out
}

/// An endpoint's labels from its Pod (see the module's documentation).
pub fn endpoint_labels(
    pod: &Pod,
    namespace: &str,
    cluster: &str,
    namespace_labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("k8s:{k}={v}"))
        .collect();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    out.push(format!("k8s:{NAMESPACE_LABEL}={namespace}"));
    out.push(format!("k8s:{SERVICE_ACCOUNT_LABEL}={sa}"));
    out.push(format!("k8s:{CLUSTER_LABEL}={cluster}"));
    for (k, v) in namespace_labels {
        out.push(format!("k8s:{NAMESPACE_LABELS_PREFIX}{k}={v}"));
    }
    out.sort();
    out
}

/// The relabel task: when a Pod of this node or a namespace's labels
/// change, every endpoint whose labels changed gets them (and so, from
/// the operator, the identity they stand for).
pub async fn relabel(
    endpoints: Arc<crate::endpoints::Endpoints>,
    labels: Arc<PodLabels>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut pods = labels.pods.changes();
    let mut namespaces = labels.namespaces.subscribe();
    loop {
        tokio::select! {
            r = pods.changed() => if r.is_err() { return Ok(()) },
            _ = namespaces.recv() => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        // A stop does not wait on etcd (a record write may retry for the
        // kvstore's deadline); the state files are the truth on restart.
        tokio::select! {
            () = endpoints.relabel() => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

/// A watch error in one line: the API server's own words when it answered
/// (an RBAC denial names the user, verb and resource), else the chain.
fn watch_error(e: &watcher::Error) -> String {
    let (what, client) = match e {
        watcher::Error::InitialListFailed(c) => ("listing", c),
        watcher::Error::WatchStartFailed(c) => ("starting the watch", c),
        watcher::Error::WatchFailed(c) => ("watching", c),
        other => return crate::error_chain(other),
    };
    match client {
        axoneme_crds::kube::Error::Api(status) if !status.message.is_empty() => {
            format!("{what}: {} ({})", status.message, status.reason)
        }
        other => format!("{what}: {}", crate::error_chain(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_as_cilium_derives_them() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "checkout", "namespace": "shop", "labels": {"app": "checkout", "pod-template-hash": "abc"}},
            "spec": {"serviceAccountName": "buyer", "containers": []},
        }))
        .unwrap();
        let ns = BTreeMap::from([("team".to_string(), "red".to_string())]);
        assert_eq!(
            endpoint_labels(&pod, "shop", "c1", &ns),
            vec![
                "k8s:app=checkout",
                "k8s:io.cilium.k8s.namespace.labels.team=red",
                "k8s:io.cilium.k8s.policy.cluster=c1",
                "k8s:io.cilium.k8s.policy.serviceaccount=buyer",
                "k8s:io.kubernetes.pod.namespace=shop",
                "k8s:pod-template-hash=abc",
            ]
        );
        // No service account named: `default`, as Kubernetes assigns it.
        let bare: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert!(endpoint_labels(&bare, "shop", "c1", &BTreeMap::new())
            .contains(&"k8s:io.cilium.k8s.policy.serviceaccount=default".to_string()));
    }

    #[test]
    fn only_true_turns_audit_mode_on() {
        let pod = |value: Option<&str>| -> Pod {
            let annotations = value.map(|v| serde_json::json!({AUDIT_ANNOTATION: v}));
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "p", "annotations": annotations}}),
            )
            .unwrap()
        };
        assert!(policy_audit_mode(&pod(Some("true"))));
        for off in [None, Some("false"), Some("yes"), Some("")] {
            assert!(!policy_audit_mode(&pod(off)), "{off:?}");
        }
    }
}
