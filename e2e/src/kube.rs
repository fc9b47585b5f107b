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

use std::ffi::OsStr;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::etcd::EtcdCluster;
use crate::process::{free_port, Proc};
use crate::tls::openssl;

/// The Go module the binaries are built from; its `require k8s.io/kubernetes`
/// line is the one place the Kubernetes version is written down.
const GO_MOD: &str = include_str!("../kube/go.mod");

/// The workspace's root (the chart's files are read from there).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The binaries `cargo xtask setup` builds.
pub const KUBE_BINARIES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-proxy",
    "kubectl",
];

/// Where the binaries are cached, outside the work tree: `<this>/<version>/bin`.
pub const KUBE_CACHE_DIR: &str = "/var/cache/axoneme/kube";

/// Overrides the binaries' directory (default `KUBE_CACHE_DIR/<version>/bin`).
pub const KUBE_BIN_ENV: &str = "AXONEME_KUBE_BIN";

/// The Kubernetes version the binaries are built at, e.g. `v1.37.2`.
pub fn kube_version() -> &'static str {
    go_mod_require(GO_MOD, "k8s.io/kubernetes").expect("e2e/kube/go.mod requires k8s.io/kubernetes")
}

/// The version a go.mod's `require` line gives `module` (the one place a
/// Go-built tool's version is written down).
pub fn go_mod_require<'a>(go_mod: &'a str, module: &str) -> Option<&'a str> {
    go_mod.lines().find_map(|l| {
        let l = l.trim();
        let l = l.strip_prefix("require ").unwrap_or(l);
        l.strip_prefix(module)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
    })
}

/// The directory holding the control-plane binaries (`AXONEME_KUBE_BIN`, or
/// the version-keyed cache).
pub fn kube_bin_dir() -> PathBuf {
    match std::env::var_os(KUBE_BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(KUBE_CACHE_DIR).join(kube_version()).join("bin"),
    }
}

/// Path of one control-plane binary; an error telling how to build it when
/// it is missing.
pub fn kube_bin(name: &str) -> Result<PathBuf> {
    let path = kube_bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo xtask setup` to build Kubernetes {} \
             (or point {KUBE_BIN_ENV} at a directory holding {})",
            path.display(),
            kube_version(),
            KUBE_BINARIES.join(", ")
        );
    }
    Ok(path)
}

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

/// The control plane's certificates and keys, made with the openssl CLI as
/// `crate::tls` does.
struct Pki {
    ca_cert: PathBuf,
    apiserver_cert: PathBuf,
    apiserver_key: PathBuf,
    kcm_serving_cert: PathBuf,
    kcm_serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    kcm_client_cert: PathBuf,
    kcm_client_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=axoneme-kube-ca",
        ]);
        openssl(dir, &args)?;
        let issue = |name: &str, subj: &str, ext: &str| -> Result<()> {
            std::fs::write(dir.join(format!("{name}.ext")), ext)?;
            let (key, csr, crt, extfile) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", subj]);
            openssl(dir, &args)?;
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "30",
                    "-extfile",
                    &extfile,
                ],
            )
        };
        issue(
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:{FIRST_SERVICE_IP},\
                 DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
                 DNS:kubernetes.default.svc.cluster.local\n\
                 extendedKeyUsage=serverAuth\n"
            ),
        )?;
        issue(
            "kcm-serving",
            "/CN=kube-controller-manager",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        let client = "extendedKeyUsage=clientAuth\n";
        issue("admin", "/O=system:masters/CN=axoneme-admin", client)?;
        // The user RBAC's bootstrap policy grants the controller manager.
        issue("kcm-client", "/CN=system:kube-controller-manager", client)?;
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "sa.key",
            ],
        )?;
        openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(Pki {
            ca_cert: dir.join("ca.crt"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            kcm_serving_cert: dir.join("kcm-serving.crt"),
            kcm_serving_key: dir.join("kcm-serving.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            kcm_client_cert: dir.join("kcm-client.crt"),
            kcm_client_key: dir.join("kcm-client.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        })
    }
}

/// How a kubeconfig's user authenticates.
enum Credentials<'a> {
    Cert { cert: &'a Path, key: &'a Path },
    Token(&'a str),
}

/// Writes a kubeconfig (as JSON, which is YAML) for one cluster and user.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    creds: Credentials<'_>,
    namespace: &str,
) -> Result<()> {
    let user_entry = match creds {
        Credentials::Cert { cert, key } => json!({
            "client-certificate": cert,
            "client-key": key,
        }),
        Credentials::Token(token) => json!({ "token": token }),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "axoneme",
            "cluster": { "server": server, "certificate-authority": ca },
        }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{
            "name": "axoneme",
            "context": { "cluster": "axoneme", "user": user, "namespace": namespace },
        }],
        "current-context": "axoneme",
    });
    std::fs::write(path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The last `n` lines of a log file, for error messages.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn check(what: &str, out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn render_args<I, S>(args: I) -> (Vec<std::ffi::OsString>, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    (args, shown)
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

    /// Path of the built kubectl.
    pub fn kubectl_bin(&self) -> &Path {
        &self.kubectl_bin
    }

    /// A kubectl command with the admin kubeconfig and nothing else.
    pub fn kubectl_command(&self) -> Command {
        self.kubectl_command_as(&self.admin_kubeconfig)
    }

    fn kubectl_command_as(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(&self.kubectl_bin);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl as admin; an error with its stderr when it fails.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (args, shown) = render_args(args);
        let out = self.kubectl_output(&args)?;
        check(&format!("kubectl {shown}"), out)
    }

    /// Runs kubectl as admin and returns its output whatever its exit code.
    pub fn kubectl_output<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_command()
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// Runs kubectl with another kubeconfig (e.g. a ServiceAccount's) and
    /// returns its output whatever its exit code.
    pub fn kubectl_output_as<I, S>(&self, kubeconfig: &Path, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_command_as(kubeconfig)
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// Runs kubectl as admin with `input` on stdin; an error when it fails.
    pub fn kubectl_stdin<I, S>(&self, args: I, input: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (args, shown) = render_args(args);
        let mut child = self
            .kubectl_command()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_owned();
        // A separate writer: kubectl may fill its output pipes first.
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().context("waiting for kubectl")?;
        let _ = writer.join();
        check(&format!("kubectl {shown}"), out)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every staging module is replaced by its release matching
    /// k8s.io/kubernetes's (v0.37.N for v1.37.N): one release for all.
    #[test]
    fn go_mod_pins_one_release() {
        let version = kube_version();
        let staging = version.replacen("v1.", "v0.", 1);
        assert!(
            version.starts_with("v1.") && staging != version,
            "{version}"
        );
        let replaces: Vec<&str> = GO_MOD.lines().filter(|l| l.contains("=>")).collect();
        assert!(replaces.len() >= 30, "{replaces:?}");
        for l in replaces {
            let (old, new) = l.split_once("=>").expect("replace");
            let (old, new) = (old.trim(), new.split_whitespace().collect::<Vec<_>>());
            assert!(old.starts_with("k8s.io/"), "{l}");
            assert_eq!(new, [old, staging.as_str()], "{l}");
        }
    }
}
