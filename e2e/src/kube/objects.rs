//! The API objects the harness makes: what a kubelet would register or
//! report (Nodes, Pods' status), test Pods and ServiceAccounts, and
//! Axoneme's CRDs and RBAC from the chart.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::pki::{write_kubeconfig, Credentials};
use super::KubeControlPlane;

/// The workspace's root (the chart's files are read from there).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl KubeControlPlane {
    /// `kubectl apply -f -` of one or more YAML (or JSON) documents.
    pub fn apply_yaml(&self, yaml: &str) -> Result<()> {
        self.kubectl_stdin(["apply", "-f", "-"], yaml).map(|_| ())
    }

    /// [`Self::apply_yaml`] of a Pod, retried while its namespace's
    /// ServiceAccount is not there yet (the controller manager creates a
    /// namespace's `default` one shortly after it starts).
    pub fn apply_pod(&self, pod: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.apply_yaml(pod) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline && e.to_string().contains("serviceaccount") => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates (or updates) a Node object the way a kubelet registers one:
    /// InternalIP addresses, hostname label, and a `Ready` condition.
    pub fn create_node(
        &self,
        name: &str,
        internal_ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<()> {
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                },
            },
        });
        self.apply_yaml(&node.to_string())?;
        let mut addresses =
            vec![json!({ "type": "InternalIP", "address": internal_ipv4.to_string() })];
        if let Some(v6) = ipv6 {
            addresses.push(json!({ "type": "InternalIP", "address": v6.to_string() }));
        }
        addresses.push(json!({ "type": "Hostname", "address": name }));
        let status = json!({
            "status": {
                "addresses": addresses,
                "conditions": [{
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "node registered by the axoneme e2e harness",
                }],
            },
        });
        self.kubectl([
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])
        .map(|_| ())
    }

    /// Applies Axoneme's CRDs (`helm/axoneme/crds/`) and waits until the
    /// API server has Established them.
    pub fn install_crds(&self) -> Result<()> {
        let crds = project_root().join("helm/axoneme/crds");
        self.kubectl(["apply", "-f", &crds.display().to_string()])?;
        self.wait_crds_established()
    }

    /// Waits until the API server has Established Axoneme's CRDs.
    pub fn wait_crds_established(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.kubectl([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/ciliumnetworkpolicies.cilium.io",
                "crd/ciliumclusterwidenetworkpolicies.cilium.io",
                "crd/ciliumidentities.cilium.io",
                "crd/ciliumendpoints.cilium.io",
                "crd/ciliumnodes.cilium.io",
            ]);
            match r {
                // kubectl fails instead of waiting when it reads a CRD
                // whose status has no conditions yet (just created).
                Err(e) if Instant::now() < deadline && e.to_string().contains("accessor error") => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                r => return r.map(|_| ()),
            }
        }
    }

    /// Applies Axoneme's RBAC (`helm/axoneme/files/rbac/`: the operator's
    /// and the agent's ServiceAccounts in `kube-system`, their
    /// least-privilege ClusterRoles and bindings).
    pub fn install_rbac(&self) -> Result<()> {
        let rbac = project_root().join("helm/axoneme/files/rbac");
        self.kubectl(["apply", "-f", &rbac.display().to_string()])
            .map(|_| ())
    }

    /// Creates a Pod scheduled to `node` (nothing runs it: there is no
    /// kubelet) with `labels`; its UID. Retries while the namespace's
    /// `default` ServiceAccount is not there yet.
    pub fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
    ) -> Result<String> {
        self.create_pod_as(namespace, name, node, labels, None)
    }

    /// [`Self::create_pod`] running as ServiceAccount `service_account`
    /// (created first when it is not `default`).
    pub fn create_pod_as(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
        service_account: Option<&str>,
    ) -> Result<String> {
        let sa = service_account.unwrap_or("default");
        if sa != "default" {
            self.apply_yaml(
                &json!({
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": sa, "namespace": namespace},
                })
                .to_string(),
            )?;
        }
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": node,
                "serviceAccountName": sa,
                "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
            },
        });
        self.apply_pod(&pod.to_string())?;
        let out = self.kubectl([
            "get",
            "pod",
            name,
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.uid}",
        ])?;
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Sets a Pod's `status.podIP(s)` and marks it Running and Ready, as
    /// the kubelet does after CNI ADD and the containers' start (the
    /// EndpointSlice controller makes ready endpoints of Ready pods).
    pub fn set_pod_ips(&self, namespace: &str, name: &str, ips: &[std::net::IpAddr]) -> Result<()> {
        let ips: Vec<serde_json::Value> =
            ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        let ready = |t: &str| json!({"type": t, "status": "True"});
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [ready("PodScheduled"), ready("Initialized"), ready("ContainersReady"), ready("Ready")],
            "podIP": ips.first().map(|i| i["ip"].clone()),
            "podIPs": ips,
        }});
        self.kubectl([
            "patch",
            "pod",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])
        .map(|_| ())
    }

    /// Gets a bound token for ServiceAccount `sa` in `namespace`
    /// (TokenRequest, valid 24 h) and writes a kubeconfig using it to `path`.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        sa: &str,
        path: &Path,
    ) -> Result<PathBuf> {
        let out = self.kubectl(["create", "token", sa, "-n", namespace, "--duration=24h"])?;
        let token = String::from_utf8(out.stdout)?.trim().to_string();
        if token.is_empty() {
            bail!("kubectl create token {sa} -n {namespace} printed no token");
        }
        write_kubeconfig(
            path,
            &self.server,
            &self.ca_cert,
            &format!("system:serviceaccount:{namespace}:{sa}"),
            Credentials::Token(&token),
            namespace,
        )?;
        Ok(path.to_path_buf())
    }
}
