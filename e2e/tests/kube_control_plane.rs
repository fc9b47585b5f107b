//! The real Kubernetes control plane the harness runs: version, readiness,
//! RBAC for ServiceAccount tokens, and the controllers kube-controller-manager
//! runs (service accounts, EndpointSlices), plus an apiserver restart.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axoneme_e2e::expect::wait_for;
use axoneme_e2e::kube::kube_version;
use axoneme_e2e::KubeControlPlane;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const POD_READER: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: ax-pod-reader
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ax-pod-reader
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: ax-pod-reader
subjects:
- kind: ServiceAccount
  name: reader
  namespace: ax-kube
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: ax-kube
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
"#;

#[test]
fn kube_control_plane() -> Result<()> {
    let started = Instant::now();
    let mut cp = KubeControlPlane::start()?;
    eprintln!(
        "kube control plane {} ready in {:.2?} (run dir {})",
        kube_version(),
        started.elapsed(),
        cp.dir().display()
    );
    let result = checks(&mut cp);
    if result.is_err() {
        eprintln!("{}", cp.logs());
    }
    result
}

fn checks(cp: &mut KubeControlPlane) -> Result<()> {
    // The server is the version the binaries were built at.
    let version: serde_json::Value =
        serde_json::from_slice(&cp.kubectl(["version", "-o", "json"])?.stdout)?;
    assert_eq!(
        version["serverVersion"]["gitVersion"],
        kube_version(),
        "{version}"
    );
    assert_eq!(version["serverVersion"]["minor"], "37", "{version}");
    assert_eq!(stdout(&cp.kubectl(["get", "--raw", "/readyz"])?), "ok");
    assert_eq!(cp.kcm_healthz()?, "ok");

    // A namespace gets its `default` ServiceAccount from the controller.
    cp.kubectl(["create", "namespace", "ax-kube"])?;
    wait_for(
        "ServiceAccount default in ax-kube",
        Duration::from_secs(30),
        || {
            Ok(cp
                .kubectl_output(["get", "serviceaccount", "default", "-n", "ax-kube"])?
                .status
                .success())
        },
    )?;

    // Nodes, as the harness registers them (no kubelet).
    cp.create_node(
        "ax-node-a",
        Ipv4Addr::new(10, 1, 0, 11),
        Some("fd00:1::11".parse::<Ipv6Addr>()?),
    )?;
    let addrs = stdout(&cp.kubectl([
        "get",
        "node",
        "ax-node-a",
        "-o",
        "jsonpath={.status.addresses[*].address}",
    ])?);
    assert_eq!(addrs, "10.1.0.11 fd00:1::11 ax-node-a");

    // RBAC is on: a ServiceAccount's token may not list pods until granted.
    cp.kubectl(["create", "serviceaccount", "reader", "-n", "ax-kube"])?;
    let kubeconfig =
        cp.service_account_kubeconfig("ax-kube", "reader", &cp.dir().join("reader.kubeconfig"))?;
    let denied = cp.kubectl_output_as(&kubeconfig, ["get", "pods", "-A"])?;
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && stderr.contains("Forbidden"),
        "expected Forbidden, got {}: {stderr}",
        denied.status
    );
    assert!(
        stderr.contains("system:serviceaccount:ax-kube:reader"),
        "{stderr}"
    );
    cp.apply_yaml(POD_READER)?;
    wait_for("the reader may list pods", Duration::from_secs(10), || {
        Ok(cp
            .kubectl_output_as(&kubeconfig, ["get", "pods", "-A"])?
            .status
            .success())
    })?;

    // The EndpointSlice controller runs: a Service with a selector gets a
    // (still empty) EndpointSlice.
    cp.apply_yaml(SERVICE)?;
    wait_for(
        "EndpointSlice for ax-kube/web",
        Duration::from_secs(30),
        || {
            let out = cp.kubectl([
                "get",
                "endpointslices",
                "-n",
                "ax-kube",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "name",
            ])?;
            Ok(!stdout(&out).is_empty())
        },
    )?;

    // The apiserver restarts on the same port and etcd, state intact.
    let restarted = Instant::now();
    cp.stop_apiserver();
    assert!(!cp
        .kubectl_output(["get", "--raw", "/readyz", "--request-timeout=2s"])?
        .status
        .success());
    cp.start_apiserver().context("restarting kube-apiserver")?;
    eprintln!("kube-apiserver restarted in {:.2?}", restarted.elapsed());
    cp.kubectl(["get", "node", "ax-node-a"])?;
    cp.kubectl(["get", "service", "web", "-n", "ax-kube"])?;
    Ok(())
}
