//! Pod endpoints made for the CNI plugin: validate the request, take
//! addresses from the node's IPAM, plumb the veth pair, keep a state file
//! (so a restarted agent knows its pods), announce the endpoint record on
//! the agent's lease, and wait until the datapath enforces the pod's
//! identity and policy. Anything that fails undoes what was done: no veth,
//! address, record or state file leaks, and a pod never runs unenforced.
//!
//! Every ADD answers within its timeout, etcd or not. A record etcd could
//! not be told to delete is an orphan ([`orphans`]), deleted by
//! [`Endpoints::collect_orphans`] when etcd answers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use axoneme_api::names::{check_container_id, check_interface_name};
use axoneme_api::{cni_code, AddRequest, AddResponse, ApiError, CheckRequest, DelRequest};
use axoneme_identity::{LabelSet, Layout, Source};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::ipam::{Ipam, IpamError};
use crate::lease::Leased;
use crate::netdev::{self, Ns};
use crate::node::NodeState;
use crate::reconcile::Enforcement;

use crate::k8s::{LabelSource, NAMESPACE_LABEL};

mod orphans;
mod state;
use orphans::Orphans;
use state::state_path;
pub use state::{load_states, EndpointState};

/// How long a DEL, or a round of the orphan collector, waits for etcd to
/// delete a record before leaving it to the next round (the addresses
/// stay held meanwhile, so waiting longer would buy nothing).
const RECORD_DELETE_WAIT: Duration = Duration::from_secs(2);

/// An endpoint's labels, parsed and within the size limits.
fn check_labels(raw: &[String]) -> Result<LabelSet, String> {
    let labels = LabelSet::parse(raw, Source::K8s).map_err(|e| format!("labels: {e}"))?;
    labels.check_size().map_err(|e| format!("labels: {e}"))?;
    Ok(labels)
}

/// The node's endpoint manager.
pub struct Endpoints {
    node: String,
    layout: Layout,
    node_ns: Ns,
    dir: PathBuf,
    leased: Leased,
    ipam: Mutex<Ipam>,
    state: NodeState,
    programmed: watch::Receiver<BTreeMap<String, Enforcement>>,
    default_timeout: Duration,
    source: LabelSource,
    /// One ADD/DEL/CHECK at a time per agent keeps the veth, IPAM and
    /// state-file steps simple to reason about.
    serial: tokio::sync::Mutex<()>,
    /// Endpoints gone here whose record may still be in etcd.
    orphans: Orphans,
    /// The pods' interfaces' MTU (lowered for ESP with encryption on);
    /// `None`: the kernel's default.
    pod_mtu: Option<u32>,
}

/// Re-announces the endpoints of a previous run (before the node's caches
/// start, so the first reconcile already sees them); pods whose namespace
/// is gone are cleaned up. Returns the ones kept.
pub async fn restore(
    node: &str,
    layout: &Layout,
    node_ns: &Ns,
    dir: &Path,
    leased: &Leased,
) -> Vec<EndpointState> {
    let mut kept = Vec::new();
    for s in load_states(dir) {
        let key = layout.endpoint(node, s.name());
        if !s.netns.exists() {
            info!(endpoint = %s.name(), "pod namespace gone while the agent was down; removing the endpoint");
            if let Err(e) = leased.delete(&key).await {
                warn!(endpoint = %s.name(), error = %e, "cannot delete the endpoint record yet; it is an orphan");
                orphans::keep(dir, s.name(), &s.addresses);
            }
            netdev::unplumb(node_ns, &s.host_interface).await;
            let _ = std::fs::remove_file(state_path(dir, s.name()));
            continue;
        }
        let value = serde_json::to_vec(&s.record(node)).expect("serializes");
        if let Err(e) = leased.put(&key, value).await {
            warn!(endpoint = %s.name(), error = %e, "cannot re-announce the endpoint yet; the lease renewal will");
        }
        kept.push(s);
    }
    kept
}

/// An allocator for `cidrs` that knows the addresses `states` and
/// `orphans` hold.
fn ipam_with(
    cidrs: Vec<ipnet::IpNet>,
    states: &[EndpointState],
    orphans: &BTreeMap<String, Vec<IpAddr>>,
) -> Ipam {
    let mut ipam = Ipam::new(cidrs);
    let held = states
        .iter()
        .map(|s| (s.name(), &s.addresses))
        .chain(orphans.iter().map(|(n, a)| (n.as_str(), a)));
    for (name, addresses) in held {
        for a in addresses {
            ipam.restore(*a, name);
        }
    }
    ipam
}

fn io_error(msg: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(cni_code::IO_FAILURE, msg, e.to_string())
}

impl Endpoints {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: NodeState,
        node_ns: Ns,
        dir: PathBuf,
        leased: Leased,
        restored: &[EndpointState],
        programmed: watch::Receiver<BTreeMap<String, Enforcement>>,
        default_timeout: Duration,
        source: LabelSource,
    ) -> Self {
        let orphans = Orphans::load(&dir);
        let ipam = ipam_with(Vec::new(), restored, &orphans.held());
        Endpoints {
            node: state.node().to_string(),
            layout: state.layout().clone(),
            node_ns,
            dir,
            leased,
            ipam: Mutex::new(ipam),
            state,
            programmed,
            default_timeout,
            source,
            serial: tokio::sync::Mutex::new(()),
            orphans,
            pod_mtu: None,
        }
    }

    /// Gives new pods' interfaces this MTU.
    pub fn with_pod_mtu(mut self, mtu: Option<u32>) -> Self {
        self.pod_mtu = mtu;
        self
    }

    /// Sets the node's pod CIDRs (once the operator has given them).
    pub fn set_cidrs(&self, cidrs: Vec<ipnet::IpNet>) {
        let next = ipam_with(cidrs, &load_states(&self.dir), &self.orphans.held());
        *self.ipam.lock().expect("ipam lock") = next;
    }

    pub fn pod_cidrs(&self) -> Vec<ipnet::IpNet> {
        self.ipam.lock().expect("ipam lock").cidrs().to_vec()
    }

    /// Endpoint states by name.
    pub fn states(&self) -> BTreeMap<String, EndpointState> {
        load_states(&self.dir)
            .into_iter()
            .map(|s| (s.container_id.clone(), s))
            .collect()
    }

    pub async fn add(&self, req: AddRequest) -> Result<AddResponse, ApiError> {
        let invalid = |msg: String| ApiError::new(cni_code::INVALID_ENDPOINT, msg, "");
        check_container_id(&req.container_id)
            .map_err(|e| invalid(format!("container ID {:?}: {e}", req.container_id)))?;
        check_interface_name(&req.ifname)
            .map_err(|e| invalid(format!("interface {:?}: {e}", req.ifname)))?;
        // The pod's namespace is a label, as Cilium derives it; a pod
        // without one (standalone runtimes) is in `default`.
        let namespace = req.namespace.clone().unwrap_or_else(|| "default".into());
        axoneme_identity::labels::check_dns_label(&namespace)
            .map_err(|e| invalid(format!("namespace {namespace:?}: {e}")))?;
        let netns = PathBuf::from(&req.netns);
        if !netns.is_absolute() || !netns.exists() {
            return Err(ApiError::new(
                cni_code::UNKNOWN_CONTAINER,
                format!("network namespace {} does not exist", req.netns),
                "",
            ));
        }
        let timeout = req
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.default_timeout);
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(far_future);
        let (raw, pod) = match &self.source {
            LabelSource::Cni => {
                if let Some(l) = req.labels.iter().find(|l| l.contains(NAMESPACE_LABEL)) {
                    return Err(invalid(format!(
                        "label {l:?}: the namespace comes from K8S_POD_NAMESPACE, not from a label"
                    )));
                }
                let mut raw = req.labels.clone();
                raw.push(format!("k8s:{NAMESPACE_LABEL}={namespace}"));
                (raw, None)
            }
            // The Pod's labels, not the runtime's: a Pod that does not
            // exist gets no endpoint (nothing is created yet).
            LabelSource::Kubernetes(pods) => {
                let (raw, pod) = pods
                    .for_add(
                        &namespace,
                        req.pod_name.as_deref(),
                        req.pod_uid.as_deref(),
                        timeout,
                    )
                    .await?;
                (raw, Some(pod))
            }
        };
        let labels = check_labels(&raw).map_err(invalid)?;

        let _serial = self.serial.lock().await;
        if let Some(old) = self.states().get(&req.container_id) {
            return Err(invalid(format!(
                "container {} already has an endpoint ({} in the pod); DEL it first",
                req.container_id, old.ifname
            )));
        }
        // An ADD again after a failed one: its record is written anew, so
        // it is no orphan, and its old addresses are free.
        if self.orphans.remove(&req.container_id) {
            self.ipam
                .lock()
                .expect("ipam lock")
                .release(&req.container_id);
        }
        let addresses = self
            .ipam
            .lock()
            .expect("ipam lock")
            .allocate(&req.container_id)
            .map_err(|e| match e {
                IpamError::NoCidr => ApiError::new(cni_code::TRY_AGAIN_LATER, e.to_string(), ""),
                IpamError::Exhausted(_) => {
                    ApiError::new(cni_code::IPAM_EXHAUSTED, e.to_string(), "")
                }
            })?;
        let host_if = netdev::host_interface(&req.container_id, &req.ifname);
        let plumbed = netdev::plumb(
            &self.node_ns,
            &netns,
            &host_if,
            &req.ifname,
            &addresses,
            self.pod_mtu,
        )
        .await
        .map_err(|e| io_error("cannot set up the pod's interface", e));
        let plumbed = match plumbed {
            Ok(p) => p,
            Err(e) => {
                self.ipam
                    .lock()
                    .expect("ipam lock")
                    .release(&req.container_id);
                return Err(e);
            }
        };
        let st = EndpointState {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns,
            host_interface: host_if,
            host_mac: plumbed.host_mac,
            mac: plumbed.mac,
            addresses,
            labels: labels.to_strings(),
            namespace: Some(namespace),
            pod_name: pod
                .as_ref()
                .map(|p| p.name.clone())
                .or(req.pod_name.clone()),
            pod_uid: pod.as_ref().map(|p| p.uid.clone()),
            policy_audit_mode: pod.as_ref().is_some_and(|p| p.policy_audit_mode),
            named_ports: pod.map(|p| p.named_ports).unwrap_or_default(),
        };
        let enforced = match self.announce(&st, timeout, deadline).await {
            Ok(()) => self
                .wait_enforced(&st, timeout, deadline)
                .await
                .map_err(|e| (e, true)),
            Err(e) => Err((e, false)),
        };
        match enforced {
            Ok(identity) => {
                info!(endpoint = %st.name(), identity, addresses = ?st.addresses, "endpoint created and enforced");
                Ok(st.response(identity))
            }
            Err((e, written)) => {
                warn!(endpoint = %st.name(), error = %e, "endpoint creation failed; undoing it");
                // etcd took the record, so it answers: the record goes at
                // once. Otherwise the time is up and it is an orphan.
                let until = Instant::now()
                    + if written {
                        RECORD_DELETE_WAIT
                    } else {
                        Duration::ZERO
                    };
                if let Err(e) = self.remove(&st, until).await {
                    warn!(endpoint = %st.name(), error = %e, "undoing the endpoint failed");
                }
                Err(e)
            }
        }
    }

    /// Writes the state file and the record, before `deadline`.
    async fn announce(
        &self,
        st: &EndpointState,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(), ApiError> {
        self.write_state(st)?;
        let key = self.layout.endpoint(&self.node, st.name());
        let value = serde_json::to_vec(&st.record(&self.node)).expect("serializes");
        let unavailable = |why: String| {
            ApiError::new(
                cni_code::TRY_AGAIN_LATER,
                "etcd unavailable: cannot write the endpoint record; the pod was not started",
                why,
            )
        };
        match tokio::time::timeout_at(deadline, self.leased.put(&key, value)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!(
                "no answer within the request's {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Waits until a pass enforces the endpoint's identity and policy,
    /// until `deadline`.
    async fn wait_enforced(
        &self,
        st: &EndpointState,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<u32, ApiError> {
        let mut rx = self.programmed.clone();
        let name = st.name().to_string();
        let waited = tokio::time::timeout_at(deadline, async {
            // A refusal already published can be a previous ADD's of the
            // same name: only one from a later pass counts.
            let mut fresh = false;
            loop {
                match rx.borrow_and_update().get(&name) {
                    Some(Ok(id)) => return Ok(Ok(*id)),
                    Some(Err(why)) if fresh => return Ok(Err(why.clone())),
                    _ => {}
                }
                fresh = true;
                if rx.changed().await.is_err() {
                    return Err(());
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(Ok(id))) => Ok(id),
            Ok(Ok(Err(why))) => Err(ApiError::new(
                cni_code::TRY_AGAIN_LATER,
                format!(
                    "the datapath has no room for the endpoint: {why}; the pod was not started"
                ),
                "",
            )),
            Ok(Err(())) => Err(ApiError::new(
                cni_code::TRY_AGAIN_LATER,
                "the agent is shutting down",
                "",
            )),
            Err(_) => {
                // Say why when the operator has answered with an error.
                let assignment = self
                    .state
                    .assignments()
                    .get(&self.layout.endpoint_identity(&self.node, &name));
                match assignment.and_then(|a| a.error.clone()) {
                    Some(err) => Err(ApiError::new(
                        cni_code::INVALID_ENDPOINT,
                        format!("the operator gave the endpoint no identity: {err}"),
                        "",
                    )),
                    None => Err(ApiError::new(
                        cni_code::TRY_AGAIN_LATER,
                        format!(
                            "the endpoint's identity and policy were not in place within {} ms (is the operator running?); the pod was not started unenforced",
                            timeout.as_millis()
                        ),
                        "",
                    )),
                }
            }
        }
    }

    /// Standalone mode: changes an endpoint's options (policy audit mode)
    /// in its record, which the datapath follows, and in its state file.
    /// Kubernetes mode takes them from the Pod and refuses, saying how.
    pub async fn configure(
        &self,
        name: &str,
        cfg: axoneme_api::EndpointConfig,
    ) -> Result<EndpointState, ApiError> {
        if let LabelSource::Kubernetes(_) = &self.source {
            return Err(ApiError::new(
                cni_code::INVALID_ENDPOINT,
                format!(
                    "Kubernetes mode: an endpoint's options come from its Pod; annotate the Pod instead \
                     (kubectl annotate pod NAME {}=true)",
                    crate::k8s::AUDIT_ANNOTATION
                ),
                "",
            ));
        }
        let _serial = self.serial.lock().await;
        let Some(mut st) = self.states().remove(name) else {
            return Err(ApiError::new(
                cni_code::UNKNOWN_CONTAINER,
                format!("no endpoint {name:?} on this node (give its name, the container ID)"),
                "",
            ));
        };
        if let Some(audit) = cfg.policy_audit_mode {
            st.policy_audit_mode = audit;
        }
        // The record first: it is what the datapath follows; the state
        // file only carries it over a restart.
        let key = self.layout.endpoint(&self.node, st.name());
        let value = serde_json::to_vec(&st.record(&self.node)).expect("serializes");
        let timeout = self.default_timeout;
        let unavailable = |why: String| {
            ApiError::new(
                cni_code::TRY_AGAIN_LATER,
                "etcd unavailable: the endpoint's record was not changed; the datapath keeps its options",
                why,
            )
        };
        match tokio::time::timeout(timeout, self.leased.put(&key, value)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )))
            }
        }
        self.write_state(&st)?;
        info!(endpoint = %st.name(), audit = st.policy_audit_mode, "endpoint options changed");
        Ok(st)
    }

    /// Writes an endpoint's state file (atomically).
    fn write_state(&self, st: &EndpointState) -> Result<(), ApiError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| io_error("cannot create the endpoint state directory", e))?;
        let path = state_path(&self.dir, st.name());
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(st).expect("serializes"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io_error("cannot write the endpoint state", e))
    }

    /// Undoes an endpoint: interface, state file, then the record (tried
    /// until `deadline`; if etcd has not deleted it by then, it is an
    /// orphan and its addresses stay held), then the addresses.
    async fn remove(&self, st: &EndpointState, deadline: Instant) -> Result<(), ApiError> {
        netdev::unplumb(&self.node_ns, &st.host_interface).await;
        let path = state_path(&self.dir, st.name());
        let file = match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("cannot remove the endpoint state", e)),
        };
        let key = self.layout.endpoint(&self.node, st.name());
        let deleted = match tokio::time::timeout_at(deadline, self.leased.delete(&key)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("not tried: the request's time is up".into()),
        };
        match deleted {
            Ok(()) => {
                self.ipam.lock().expect("ipam lock").release(st.name());
            }
            Err(why) => {
                info!(endpoint = %st.name(), error = %why, "the endpoint's record is left to delete when etcd answers; its addresses stay held until then");
                self.orphans.add(st.name(), &st.addresses);
            }
        }
        file
    }

    /// Deletes the orphaned records and frees their addresses. Each
    /// deletion holds the serial lock for at most [`RECORD_DELETE_WAIT`],
    /// so CNI calls wait no longer; the first that fails ends the round
    /// (etcd is unavailable).
    pub async fn collect_orphans(&self) {
        for name in self.orphans.held().into_keys() {
            let _serial = self.serial.lock().await;
            let key = self.layout.endpoint(&self.node, &name);
            match tokio::time::timeout(RECORD_DELETE_WAIT, self.leased.delete(&key)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    debug!(endpoint = %name, error = %e, "cannot delete the orphaned endpoint record yet; retrying");
                    return;
                }
                Err(_) => {
                    debug!(endpoint = %name, "etcd does not answer; the orphaned endpoint record waits");
                    return;
                }
            }
            // An ADD of the same name since then took the orphan over.
            if self.orphans.remove(&name) {
                self.ipam.lock().expect("ipam lock").release(&name);
                info!(endpoint = %name, "orphaned endpoint record deleted; its addresses are free");
            }
        }
    }

    /// The orphan collector's task: a round at start, when an orphan is
    /// added, and every second while some are left.
    pub async fn collect_orphans_until(&self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                () = self.collect_orphans() => {}
                _ = cancel.cancelled() => return Ok(()),
            }
            let pending = !self.orphans.is_empty();
            let retry = async {
                if pending {
                    tokio::time::sleep(Duration::from_secs(1)).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.orphans.added() => {}
                _ = retry => {}
            }
        }
    }

    /// Kubernetes mode: gives every endpoint whose Pod's (or namespace's)
    /// labels changed its new labels, in its state file and its record, so
    /// the operator gives it the identity they stand for. Labels that are
    /// no valid identity labels are refused with a warning; the endpoint
    /// keeps its last good ones.
    pub async fn relabel(&self) {
        let LabelSource::Kubernetes(pods) = &self.source else {
            return;
        };
        let _serial = self.serial.lock().await;
        for mut st in self.states().into_values() {
            let (Some(ns), Some(name)) = (st.namespace.clone(), st.pod_name.clone()) else {
                continue;
            };
            let Some((raw, pod)) = pods.labels(&ns, &name) else {
                continue;
            };
            let labels = match check_labels(&raw) {
                Ok(l) => l.to_strings(),
                Err(e) => {
                    warn!(endpoint = %st.name(), pod = %format!("{ns}/{name}"), error = %e, "the Pod's new labels are not valid identity labels; keeping the last good ones");
                    continue;
                }
            };
            if labels == st.labels
                && pod.named_ports == st.named_ports
                && pod.policy_audit_mode == st.policy_audit_mode
            {
                continue;
            }
            info!(endpoint = %st.name(), pod = %format!("{ns}/{name}"), ?labels, audit = pod.policy_audit_mode, "the Pod's labels, named ports or audit mode changed");
            st.labels = labels;
            st.named_ports = pod.named_ports;
            st.policy_audit_mode = pod.policy_audit_mode;
            if let Err(e) = self.write_state(&st) {
                warn!(endpoint = %st.name(), error = %e, "cannot keep the new labels; retrying at the next change");
                continue;
            }
            let key = self.layout.endpoint(&self.node, st.name());
            let value = serde_json::to_vec(&st.record(&self.node)).expect("serializes");
            if let Err(e) = self.leased.put(&key, value).await {
                warn!(endpoint = %st.name(), error = %e, "cannot write the relabelled endpoint record; retrying at the next change");
            }
        }
    }

    /// Deletes the container's endpoint; nothing to delete is success.
    pub async fn del(&self, req: DelRequest) -> Result<(), ApiError> {
        check_container_id(&req.container_id).map_err(|e| {
            ApiError::new(
                cni_code::INVALID_ENDPOINT,
                format!("container ID {:?}: {e}", req.container_id),
                "",
            )
        })?;
        let _serial = self.serial.lock().await;
        match self.states().remove(&req.container_id) {
            Some(st) => {
                self.remove(&st, Instant::now() + RECORD_DELETE_WAIT)
                    .await?;
                info!(endpoint = %st.name(), "endpoint deleted");
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Checks that the container's endpoint is as created and enforced.
    pub async fn check(&self, req: CheckRequest) -> Result<(), ApiError> {
        let _serial = self.serial.lock().await;
        let fail = |msg: String| ApiError::new(cni_code::CHECK_FAILED, msg, "");
        let st = self.states().remove(&req.container_id).ok_or_else(|| {
            ApiError::new(
                cni_code::UNKNOWN_CONTAINER,
                format!("no endpoint for container {}", req.container_id),
                "",
            )
        })?;
        if st.ifname != req.ifname || st.netns != Path::new(&req.netns) {
            return Err(fail(format!(
                "the endpoint was created for {} in {}, not {} in {}",
                st.ifname,
                st.netns.display(),
                req.ifname,
                req.netns
            )));
        }
        let host_ok = netdev::link_exists(&self.node_ns, &st.host_interface)
            .await
            .map_err(|e| io_error("cannot look up the host interface", e))?;
        let pod_addrs = netdev::addresses(&st.netns, &st.ifname).await;
        if !host_ok {
            return Err(fail(format!(
                "host interface {} is missing",
                st.host_interface
            )));
        }
        let pod_addrs = pod_addrs.map_err(|e| fail(format!("pod interface: {e}")))?;
        for a in &st.addresses {
            if !pod_addrs.iter().any(|n| n.addr() == *a) {
                return Err(fail(format!("address {a} is missing in the pod")));
            }
        }
        for want in &req.addresses {
            let ok = want
                .parse::<ipnet::IpNet>()
                .is_ok_and(|n| st.addresses.contains(&n.addr()));
            if !ok {
                return Err(fail(format!(
                    "prevResult address {want} is not the endpoint's"
                )));
            }
        }
        if !matches!(self.programmed.borrow().get(st.name()), Some(Ok(_))) {
            return Err(fail(format!("endpoint {} is not enforced", st.name())));
        }
        Ok(())
    }
}

/// A deadline no request reaches (a timeout too large to add to now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
