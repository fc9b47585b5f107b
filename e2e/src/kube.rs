//! A real Kubernetes control plane on loopback for tests: its own
//! single-member etcd, kube-apiserver and kube-controller-manager, built from
//! the published `k8s.io/kubernetes` module by `cargo xtask setup` (see
//! `e2e/kube/go.mod` and `xtask/src/kube.rs`).
//!
//! There is no kubelet and no scheduler: the harness plays the kubelet's part
//! (creates Node objects, sets Pods' status). Everything runs with per-run
//! ports and a per-run directory holding the PKI, the kubeconfigs and every
//! process's log; processes are stopped by PID on drop, and the directory is
//! removed unless `AXONEME_KEEP=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::etcd::EtcdCluster;
use crate::process::{free_port, Proc};

mod binaries;
mod kubectl;
mod objects;
mod pki;

use kubectl::check;
use pki::{write_kubeconfig, Credentials, Pki};

pub use binaries::{
    go_mod_require, kube_bin, kube_bin_dir, kube_version, KUBE_BINARIES, KUBE_BIN_ENV,
    KUBE_CACHE_DIR,
};

/// The service range; its first address is the `kubernetes` Service's.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
const FIRST_SERVICE_IP: &str = "10.96.0.1";
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Controllers kube-controller-manager runs. Deliberately not node-lifecycle
/// (there is no kubelet: it would taint every Node and evict its Pods) nor
/// the workload controllers (there is no scheduler either).
const CONTROLLERS: &[&str] = &[
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "clusterrole-aggregation-controller",
    "root-ca-certificate-publisher-controller",
];

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long kube-apiserver gets to exit on SIGTERM before SIGKILL. It drains
/// in-flight requests within milliseconds, but then waits for its clients'
/// watch connections to close, up to `--request-timeout` (a minute); every
/// write is already in etcd, so the harness does not wait for that.
const APISERVER_GRACE: Duration = Duration::from_secs(2);

/// The last `n` lines of a log file, for error messages.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// kube-apiserver, kube-controller-manager and their etcd, on loopback.
pub struct KubeControlPlane {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    etcd: Option<EtcdCluster>,
    apiserver: Option<Proc>,
    apiserver_args: Vec<String>,
    kcm: Option<Proc>,
    server: String,
    kcm_port: u16,
    ca_cert: PathBuf,
    admin_kubeconfig: PathBuf,
    kubectl_bin: PathBuf,
}

impl KubeControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits
    /// until the apiserver's `/readyz` and the controller manager's
    /// `/healthz` answer `ok`. Fails (not skips) when the binaries are
    /// missing, telling to run `cargo xtask setup`.
    pub fn start() -> Result<Self> {
        for b in ["kube-apiserver", "kube-controller-manager", "kubectl"] {
            kube_bin(b)?;
        }
        let mut last_err = None;
        // A port picked as free can be taken before its server binds it.
        for _ in 0..3 {
            match Self::try_start() {
                Ok(cp) => return Ok(cp),
                Err(e) if format!("{e:#}").contains("address already in use") => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn try_start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", crate::run_prefix("kube")))
            .tempdir()
            .context("creating the control plane's run directory")?;
        let path = dir.path().to_path_buf();
        let etcd = EtcdCluster::start(1).context("starting the control plane's etcd")?;
        // Its log and data stay in its own directory (tmpfs); link it here.
        std::os::unix::fs::symlink(etcd.dir(), path.join("etcd"))?;
        let pki = Pki::generate(&path.join("pki"))?;
        let port = free_port()?;
        let kcm_port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let admin_kubeconfig = path.join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &server,
            &pki.ca_cert,
            "axoneme-admin",
            Credentials::Cert {
                cert: &pki.admin_cert,
                key: &pki.admin_key,
            },
            "default",
        )?;
        let kcm_kubeconfig = path.join("kube-controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &server,
            &pki.ca_cert,
            "system:kube-controller-manager",
            Credentials::Cert {
                cert: &pki.kcm_client_cert,
                key: &pki.kcm_client_key,
            },
            "kube-system",
        )?;
        let p = |p: &Path| p.display().to_string();
        let apiserver_args = vec![
            format!("--etcd-servers={}", etcd.endpoints().join(",")),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            // A loopback advertise address is refused with the lease
            // endpoint reconciler: the `kubernetes` Service gets no endpoints.
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", p(&path.join("apiserver-certs"))),
            format!("--tls-cert-file={}", p(&pki.apiserver_cert)),
            format!("--tls-private-key-file={}", p(&pki.apiserver_key)),
            format!("--client-ca-file={}", p(&pki.ca_cert)),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--service-account-issuer={SA_ISSUER}"),
            format!("--service-account-key-file={}", p(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        let mut cp = KubeControlPlane {
            dir: Some(dir),
            path,
            etcd: Some(etcd),
            apiserver: None,
            apiserver_args,
            kcm: None,
            server,
            kcm_port,
            ca_cert: pki.ca_cert.clone(),
            admin_kubeconfig,
            kubectl_bin: kube_bin("kubectl")?,
        };
        cp.start_apiserver()?;

        let kcm_args = vec![
            format!("--kubeconfig={}", p(&kcm_kubeconfig)),
            format!("--authentication-kubeconfig={}", p(&kcm_kubeconfig)),
            format!("--authorization-kubeconfig={}", p(&kcm_kubeconfig)),
            // The client CA given, not looked up: the apiserver has no
            // front-proxy (request-header) CA, whose lookup would fail and
            // be retried, and logged, forever.
            format!("--client-ca-file={}", p(&pki.ca_cert)),
            "--authentication-skip-lookup=true".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
            format!("--tls-cert-file={}", p(&pki.kcm_serving_cert)),
            format!("--tls-private-key-file={}", p(&pki.kcm_serving_key)),
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", p(&pki.sa_key)),
            format!("--root-ca-file={}", p(&pki.ca_cert)),
            "--leader-elect=false".into(),
            format!("--controllers={}", CONTROLLERS.join(",")),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        let mut cmd = Command::new(kube_bin("kube-controller-manager")?);
        cmd.args(&kcm_args);
        let log = cp.path.join("kube-controller-manager.log");
        cp.kcm = Some(Proc::spawn("kube-controller-manager", cmd, &log)?);
        cp.wait_kcm_healthy(READY_TIMEOUT)?;
        Ok(cp)
    }

    /// Starts kube-apiserver (again, after `stop_apiserver`) with the same
    /// flags, ports and etcd, and waits for `/readyz`.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(kube_bin("kube-apiserver")?);
        cmd.args(&self.apiserver_args);
        let log = self.path.join("kube-apiserver.log");
        self.apiserver = Some(Proc::spawn("kube-apiserver", cmd, &log)?);
        self.wait_apiserver_ready(READY_TIMEOUT)
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL after `APISERVER_GRACE`);
    /// etcd and the controller manager keep running.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.terminate(APISERVER_GRACE);
        }
    }

    fn wait_apiserver_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let proc = self
                .apiserver
                .as_mut()
                .context("kube-apiserver is stopped")?;
            if !proc.is_running() {
                bail!(
                    "kube-apiserver exited during start-up; last lines of {} (AXONEME_KEEP=1 keeps it):\n{}",
                    proc.log.display(),
                    log_tail(&proc.log, 40)
                );
            }
            let out = self.kubectl_output(["get", "--raw", "/readyz", "--request-timeout=5s"])?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = &self.apiserver.as_ref().expect("checked above").log;
                bail!(
                    "kube-apiserver not ready after {timeout:?} ({}); last lines of {} (AXONEME_KEEP=1 keeps it):\n{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    log.display(),
                    log_tail(log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_kcm_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let proc = self
                .kcm
                .as_mut()
                .context("kube-controller-manager is stopped")?;
            if !proc.is_running() {
                bail!(
                    "kube-controller-manager exited during start-up; last lines of {} (AXONEME_KEEP=1 keeps it):\n{}",
                    proc.log.display(),
                    log_tail(&proc.log, 40)
                );
            }
            let out = self.kcm_healthz_output()?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = &self.kcm.as_ref().expect("checked above").log;
                bail!(
                    "kube-controller-manager not healthy after {timeout:?} ({}); last lines of {} (AXONEME_KEEP=1 keeps it):\n{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    log.display(),
                    log_tail(log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kcm_healthz_output(&self) -> Result<Output> {
        let server = format!("https://127.0.0.1:{}", self.kcm_port);
        self.kubectl_output([
            "--server",
            &server,
            "get",
            "--raw",
            "/healthz",
            "--request-timeout=5s",
        ])
    }

    /// The body of kube-controller-manager's `/healthz` on its secure port.
    pub fn kcm_healthz(&self) -> Result<String> {
        let out = check(
            "kube-controller-manager /healthz",
            self.kcm_healthz_output()?,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The admin kubeconfig (client certificate in group `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The apiserver's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The CA that signed the apiserver's serving certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The run directory: PKI, kubeconfigs, logs, `etcd` (a link to etcd's).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The etcd client URLs the apiserver stores into.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd
            .as_ref()
            .map(|e| e.endpoints())
            .unwrap_or_default()
    }

    /// Every process's log, for failure dumps.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for p in [&self.apiserver, &self.kcm].into_iter().flatten() {
            text.push_str(&format!("== {} ==\n{}\n", p.name, p.log_text()));
        }
        if let Some(etcd) = &self.etcd {
            text.push_str(&etcd.logs());
        }
        text
    }
}

impl KubeControlPlane {
    /// Leaves the control plane running (for the demo): its PIDs, and its
    /// directories (its own and its etcd's) to remove when torn down.
    pub fn detach(mut self) -> (Vec<u32>, Vec<PathBuf>) {
        let mut pids = Vec::new();
        let mut dirs = Vec::new();
        for p in [self.kcm.take(), self.apiserver.take()]
            .into_iter()
            .flatten()
        {
            pids.push(p.detach());
        }
        if let Some(etcd) = self.etcd.take() {
            let (etcd_pids, dir) = etcd.detach();
            pids.extend(etcd_pids);
            dirs.push(dir);
        }
        if let Some(dir) = self.dir.take() {
            dirs.push(dir.keep());
        }
        (pids, dirs)
    }
}

impl Drop for KubeControlPlane {
    fn drop(&mut self) {
        if let Some(mut p) = self.kcm.take() {
            p.terminate(Duration::from_secs(5));
        }
        self.stop_apiserver();
        if let Some(mut etcd) = self.etcd.take() {
            // Stopped even with AXONEME_KEEP (its data directory stays then).
            etcd.kill(0);
        }
        if let Some(dir) = self.dir.take() {
            if crate::keep() {
                eprintln!(
                    "AXONEME_KEEP: Kubernetes control plane state in {}",
                    dir.keep().display()
                );
            }
        }
    }
}
