//! A local multi-node cluster: a 3-member etcd, two operator replicas, an
//! underlay (a bridge in its own namespace) and N nodes, each a network
//! namespace with a real `axoneme-agent` (running in the root namespace,
//! attaching in the node's). Pods are namespaces plugged in by the real
//! `axoneme-cni` binary, invoked as a container runtime does: `CNI_*`
//! environment and the network configuration on stdin.
//!
//! Every name carries the run's prefix; everything (processes by PID,
//! namespaces, pins, state) is removed on drop, or kept with
//! `AXONEME_KEEP=1`.
//!
//! Addressing: node i is 192.168.77.(i+1)/24 and fd77::(i+1)/64 on the
//! underlay; pods get addresses from the operator's pools (10.200.0.0/16
//! in /24s and fd00:a0::/104 in /120s) and reach other nodes' pods by
//! direct routing via the node addresses.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cgroup::Cgroup;
use crate::netns::Netns;
use crate::tls::TestCerts;
use crate::{bin_path, EtcdCluster, KubeControlPlane, OperatorProc, Proc};

mod access;
pub use access::{sum_samples, AGENT_METRICS_PORT};
mod pods;
pub use pods::{CniOutput, CniPod};

/// Every node's L7 proxy port (each node is its own namespace).
pub const PROXY_PORT: u16 = 15001;

/// How the cluster is built.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nodes: usize,
    /// The agents' `--node-grace` in seconds: how long a node's pods stay
    /// trusted after its agent stopped (a restart within it costs nothing;
    /// `axoneme node delete` forgets a node at once).
    pub node_grace: u32,
    /// Extra agent flags.
    pub agent_args: Vec<String>,
    /// Extra operator flags.
    pub operator_args: Vec<String>,
    /// Kubernetes mode: a real control plane ([`KubeControlPlane`]) with a
    /// Node object per node; agents run with `--kubernetes` and pods are
    /// Pod objects first (the harness plays the kubelet).
    pub kubernetes: bool,
    /// Kubernetes mode installed with the Helm chart (`helm install` with
    /// these extra `--set`-style arguments): the CRDs, the RBAC and the
    /// `axoneme-config` ConfigMap come from the chart; the operators and
    /// agents read their flags from that ConfigMap, written out as the
    /// kubelet mounts it (`--config-dir`), and authenticate with tokens of
    /// the chart's ServiceAccounts. Implies `kubernetes`.
    pub helm: Option<Vec<String>>,
    /// etcd requires client certificates (mutual TLS): the operators, the
    /// agents and the CLI get `--etcd-ca`, `--etcd-cert` and `--etcd-key`.
    pub etcd_tls: bool,
    /// Helm mode: Secrets (name → key → text) created in the release's
    /// namespace after `helm install` and mounted, before the agents
    /// start, where the agent DaemonSet's volumes say
    /// ([`crate::helm::mount_agent_secrets`]).
    pub helm_secrets: Vec<(String, Vec<(String, String)>)>,
    /// How long an agent may take from its start to ready (its first
    /// start and every restart): the datapath's load is most of it, and
    /// under an emulated CPU (the IPsec VM) the verifier is many times
    /// slower.
    pub ready_timeout: Duration,
    /// How many etcd members the cluster's etcd has.
    pub etcd_members: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 2,
            node_grace: 60,
            agent_args: Vec::new(),
            operator_args: Vec::new(),
            kubernetes: false,
            helm: None,
            etcd_tls: false,
            helm_secrets: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            etcd_members: 3,
        }
    }
}

/// One node.
pub struct ClusterNode {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub agent: Option<Proc>,
    /// The agent's cgroup, a child of the node's (as a kubelet puts the
    /// agent's pod): the proxy's sockets are then under the programs the
    /// agent attaches there. Before `cgroup`: dropped first.
    agent_cgroup: Option<Cgroup>,
    /// The node's cgroup (its pods' are children), where
    /// the agent attaches socket LB.
    pub cgroup: Option<Cgroup>,
    args: Vec<String>,
    /// Flags added by [`Cluster::restart_agent_with`].
    extra: Vec<String>,
}

/// The pods of [`Cluster::seed_pods`].
pub struct SeedPods {
    pub payments: CniPod,
    pub checkout: CniPod,
    pub intruder: CniPod,
}

/// The cluster. Fields drop in order: agents first (in `nodes`), then
/// operators, then etcd.
pub struct Cluster {
    pub prefix: String,
    pub dir: PathBuf,
    pub nodes: Vec<ClusterNode>,
    pub operators: Vec<OperatorProc>,
    /// Extra processes (servers in pods) stopped with the cluster.
    pub extra: Vec<Proc>,
    /// Kubernetes mode's control plane (stopped after the agents).
    pub kube: Option<KubeControlPlane>,
    etcd: Option<EtcdCluster>,
    underlay: Option<Netns>,
    /// Helm mode: the processes take etcd's members from the chart's
    /// ConfigMap (by name), not from the harness's flags.
    etcd_from_config: bool,
    /// [`ClusterConfig::ready_timeout`].
    ready_timeout: Duration,
}

/// What a detached cluster left running, for [`teardown`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Leftovers {
    pub pids: Vec<u32>,
    pub netns: Vec<String>,
    pub paths: Vec<PathBuf>,
    pub etcd_endpoints: Vec<String>,
    pub sockets: Vec<PathBuf>,
    /// cgroup directories, children before parents.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

/// Stops what a detached cluster left: only the recorded PIDs, and only
/// while they still are etcd, Axoneme, the Kubernetes control plane or the
/// demo's servers; then the
/// namespaces, pins and directories.
pub fn teardown(l: &Leftovers) {
    for pid in &l.pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("etcd")
            || cmdline.contains("axoneme")
            || cmdline.contains("kube-apiserver")
            || cmdline.contains("kube-controller-manager")
            || cmdline.contains("http.server")
        {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
        }
    }
    for ns in &l.netns {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
    for p in &l.paths {
        let _ = std::fs::remove_dir_all(p);
    }
    for p in &l.cgroups {
        let _ = std::fs::remove_dir(p);
    }
}

/// The address of [`Cluster::external_client`] on the underlay.
pub const EXTERNAL_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 200);
pub const EXTERNAL_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 200);

impl Cluster {
    pub fn start(cfg: &ClusterConfig) -> Result<Self> {
        let prefix = crate::run_prefix("c");
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let etcd = if cfg.etcd_tls {
            EtcdCluster::start_tls(cfg.etcd_members)?
        } else {
            EtcdCluster::start(cfg.etcd_members)?
        };
        let underlay = Netns::create(&format!("{prefix}-ul"))?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        if std::env::var_os("AXONEME_CLUSTER_DEBUG").is_some() {
            eprintln!("cluster {prefix}: state in {}", dir.display());
        }
        let mut cluster = Cluster {
            prefix: prefix.clone(),
            dir: dir.clone(),
            nodes: Vec::new(),
            operators: Vec::new(),
            extra: Vec::new(),
            kube: if cfg.kubernetes || cfg.helm.is_some() {
                Some(KubeControlPlane::start()?)
            } else {
                None
            },
            etcd: Some(etcd),
            underlay: Some(underlay),
            etcd_from_config: cfg.helm.is_some(),
            ready_timeout: cfg.ready_timeout,
        };
        let mut op_args: Vec<String> = Vec::new();
        match (&cluster.kube, &cfg.helm) {
            (Some(kube), Some(values)) => {
                let members = crate::helm::etcd_member_urls(
                    kube,
                    &format!("{prefix}-etcd"),
                    &cluster.etcd().endpoints(),
                )?;
                let mut set = helm_test_values(&members, cfg.node_grace);
                set.extend(values.iter().cloned());
                crate::helm::install(kube, "install", &set)?;
                for (name, data) in &cfg.helm_secrets {
                    crate::helm::apply_secret(kube, name, data)?;
                }
                let names: Vec<&str> = cfg.helm_secrets.iter().map(|(n, _)| n.as_str()).collect();
                crate::helm::mount_agent_secrets(kube, &names)?;
                kube.wait_crds_established()?;
                cluster.write_config_dir()?;
                op_args.extend([
                    "--config-dir".to_string(),
                    cluster.config_dir().display().to_string(),
                ]);
            }
            (kube, _) => {
                if let Some(kube) = kube {
                    kube.install_crds()?;
                    kube.install_rbac()?;
                    op_args.push("--kubernetes".to_string());
                }
                op_args.extend(
                    [
                        "--lease-ttl",
                        "2",
                        "--cluster-pool-ipv6-cidr",
                        "fd00:a0::/104",
                        "--cluster-pool-ipv6-mask-size",
                        "120",
                    ]
                    .map(String::from),
                );
                // The tests' GC grace, unless the configuration sets one.
                if !cfg.operator_args.iter().any(|a| a == "--identity-gc-grace") {
                    op_args.extend(["--identity-gc-grace".to_string(), "10s".to_string()]);
                }
            }
        }
        if cluster.kube.is_some() {
            op_args.extend([
                "--kubeconfig".to_string(),
                cluster
                    .service_account_kubeconfig("axoneme-operator")?
                    .display()
                    .to_string(),
            ]);
        }
        op_args.extend(cluster.etcd_tls_flags());
        op_args.extend(cfg.operator_args.iter().cloned());
        for id in ["op-a", "op-b"] {
            let etcd = if cluster.etcd_from_config {
                Vec::new()
            } else {
                cluster.etcd().endpoints()
            };
            let op = OperatorProc::start(&bin_path("axoneme-operator"), id, &etcd, &op_args, &dir)?;
            cluster.operators.push(op);
        }
        for i in 0..cfg.nodes {
            cluster.add_node(i, cfg)?;
        }
        for i in 0..cfg.nodes {
            cluster.wait_node_ready(i, cfg.ready_timeout)?;
        }
        Ok(cluster)
    }

    fn add_node(&mut self, i: usize, cfg: &ClusterConfig) -> Result<()> {
        let name = format!("{}-n{i}", self.prefix);
        let ns = Netns::create(&name)?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let octet = u8::try_from(i + 1).context("too many nodes")?;
        let ip = Ipv4Addr::new(192, 168, 77, octet);
        let ip6 = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, u16::from(octet));
        let ul = format!("u{i}");
        let underlay = self.underlay.as_ref().context("cluster detached")?;
        underlay.ip(&[
            "link", "add", &ul, "type", "veth", "peer", "name", "ul0", "netns", &name,
        ])?;
        underlay.ip(&["link", "set", &ul, "master", "br0"])?;
        underlay.ip(&["link", "set", &ul, "up"])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "ul0"])?;
        ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "ul0", "nodad"])?;
        ns.ip(&["link", "set", "ul0", "up"])?;
        let state_dir = self.dir.join(format!("node{i}"));
        // The node's cgroup: its pods' cgroups go below it, and socket LB
        // (the kube-proxy replacement, on by default) attaches to it.
        let cgroup = Cgroup::create(&name)?;
        let agent_cgroup = Some(cgroup.child("agent")?);
        let cgroup = Some(cgroup);
        let node = ClusterNode {
            socket: state_dir.join("agent.sock"),
            pin_dir: PathBuf::from("/sys/fs/bpf/axoneme").join(&name),
            state_dir,
            args: {
                let mut a: Vec<String> = [
                    "--node-ip".to_string(),
                    ip.to_string(),
                    "--node-ip".into(),
                    ip6.to_string(),
                ]
                .to_vec();
                if cfg.helm.is_some() {
                    // The rest comes from the chart's ConfigMap.
                    a.extend([
                        "--config-dir".to_string(),
                        self.config_dir().display().to_string(),
                    ]);
                } else {
                    a.extend([
                        "--proxy-port".to_string(),
                        PROXY_PORT.to_string(),
                        "--node-grace".to_string(),
                        format!("{}s", cfg.node_grace),
                    ]);
                    if self.kube.is_some() {
                        a.push("--kubernetes".to_string());
                    }
                }
                if let Some(cg) = &cgroup {
                    a.extend(["--cgroup-root".to_string(), cg.path.display().to_string()]);
                }
                if let Some(kube) = &self.kube {
                    kube.create_node(&name, ip, Some(ip6))?;
                    a.extend([
                        "--kubeconfig".to_string(),
                        self.agent_kubeconfig()?.display().to_string(),
                    ]);
                }
                a.extend(cfg.agent_args.iter().cloned());
                a
            },
            name,
            ns,
            ip,
            ip6,
            agent: None,
            agent_cgroup,
            cgroup,
            extra: Vec::new(),
        };
        self.nodes.push(node);
        self.start_agent(i)
    }

    /// Starts (or restarts) node `i`'s agent.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let etcd = self.etcd().endpoints().join(",");
        let tls = self.etcd_tls_flags();
        let from_config = self.etcd_from_config;
        let n = &mut self.nodes[i];
        let agent = bin_path("axoneme-agent");
        let mut cmd = match &n.agent_cgroup {
            Some(cg) => cg.command(&[&agent.display().to_string()]),
            None => Command::new(agent),
        };
        cmd.args(["--node", &n.name]);
        if !from_config {
            cmd.args(["--etcd-endpoints", &etcd]).args(&tls);
        }
        cmd.arg("--netns")
            .arg(n.ns.path())
            .arg("--bpf-pin-dir")
            .arg(&n.pin_dir)
            .arg("--state-dir")
            .arg(&n.state_dir)
            .arg("--api-socket")
            .arg(&n.socket)
            .args(&n.args)
            .args(&n.extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let log = self.dir.join(format!("agent-{i}.log"));
        n.agent = Some(Proc::spawn(&format!("agent-{i}"), cmd, &log)?);
        Ok(())
    }

    /// The nodes' underlay: a namespace whose bridge `br0` joins them.
    pub fn underlay(&self) -> Option<&Netns> {
        self.underlay.as_ref()
    }

    /// Sets node `i`'s agent flag `flag` to `value` (replacing the value
    /// it had, given as `FLAG VALUE` or `FLAG=VALUE`) and restarts the
    /// agent.
    pub fn restart_agent_setting(&mut self, i: usize, flag: &str, value: &str) -> Result<()> {
        self.set_agent_flag(i, flag, value);
        self.restart_agent(i)
    }

    /// Sets node `i`'s agent flag `flag` to `value` (as
    /// [`Self::restart_agent_setting`]) for its next start.
    pub fn set_agent_flag(&mut self, i: usize, flag: &str, value: &str) {
        let args = &mut self.nodes[i].args;
        let joined = format!("{flag}=");
        match args
            .iter()
            .position(|a| a == flag || a.starts_with(&joined))
        {
            Some(at) if args[at] != flag => args[at] = format!("{flag}={value}"),
            Some(at) if at + 1 < args.len() => args[at + 1] = value.to_string(),
            _ => args.extend([flag.to_string(), value.to_string()]),
        }
    }

    /// [`Self::restart_agent`] with `extra` flags from now on (replacing
    /// the previous extra ones), as a changed ConfigMap does.
    pub fn restart_agent_with(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        self.nodes[i].extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart_agent(i)
    }

    /// Stops node `i`'s agent (SIGTERM) and starts it again, as a
    /// DaemonSet rollout does; waits until it is ready.
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        if let Some(mut a) = self.nodes[i].agent.take() {
            a.terminate(Duration::from_secs(5));
        }
        self.start_agent(i)?;
        self.wait_node_ready(i, self.ready_timeout)
    }

    /// Waits until node `i`'s agent answers on its socket and has a pod
    /// CIDR.
    pub fn wait_node_ready(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(out) = self.cli(i, &["-o", "json", "status"]) {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    let cidrs = v
                        .pointer("/agent/status/pod_cidrs")
                        .and_then(|c| c.as_array())
                        .map_or(0, Vec::len);
                    if cidrs == 2 {
                        return Ok(());
                    }
                }
            }
            if let Some(a) = self.nodes[i].agent.as_mut() {
                if !a.is_running() {
                    bail!("agent {i} exited:\n{}", a.log_text());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {i} not ready within {timeout:?}:\n{}",
                    self.agent_log(i)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn etcd(&self) -> &EtcdCluster {
        self.etcd.as_ref().expect("the cluster's etcd")
    }

    /// The seed scenario's pods: payments on node 0 behind a request-logging
    /// backend on 8080, checkout and intruder on node 1.
    pub fn seed_pods(&mut self) -> Result<SeedPods> {
        let payments = self.add_pod(0, "payments", &[("app", "payments")])?;
        let checkout = self.add_pod(1, "checkout", &[("app", "checkout")])?;
        let intruder = self.add_pod(1, "intruder", &[("app", "intruder")])?;
        self.logging_backend(&payments, 8080)?;
        Ok(SeedPods {
            payments,
            checkout,
            intruder,
        })
    }

    /// A host outside the cluster on the nodes' underlay
    /// ([`EXTERNAL_CLIENT_IP`], [`EXTERNAL_CLIENT_IP6`]): a namespace
    /// with a veth on the underlay's bridge, removed when dropped.
    pub fn external_client(&self, name: &str) -> Result<Netns> {
        let id = format!("{}-{name}", self.prefix);
        let ns = Netns::create(&id)?;
        let underlay = self.underlay.as_ref().context("cluster detached")?;
        let port = format!("x{name}");
        underlay.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &id,
        ])?;
        underlay.ip(&["link", "set", &port, "master", "br0"])?;
        underlay.ip(&["link", "set", &port, "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{EXTERNAL_CLIENT_IP}/24"),
            "dev",
            "eth0",
        ])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{EXTERNAL_CLIENT_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Leaves everything running and returns what to tear down later;
    /// `pods` are kept too.
    pub fn detach(mut self, pods: Vec<CniPod>) -> Leftovers {
        let mut l = Leftovers {
            etcd_endpoints: self.etcd().endpoints(),
            ..Leftovers::default()
        };
        for p in pods {
            l.netns.push(p.ns.leak());
            l.cgroups.extend(p.cgroup.map(Cgroup::leak));
        }
        for p in self.extra.drain(..) {
            l.pids.push(p.detach());
        }
        for n in std::mem::take(&mut self.nodes) {
            if let Some(a) = n.agent {
                l.pids.push(a.detach());
            }
            l.paths.push(n.pin_dir);
            l.sockets.push(n.socket);
            l.netns.push(n.ns.leak());
            l.cgroups.extend(n.agent_cgroup.map(Cgroup::leak));
            l.cgroups.extend(n.cgroup.map(Cgroup::leak));
        }
        for o in self.operators.drain(..) {
            l.pids.push(o.proc.detach());
        }
        if let Some(etcd) = self.etcd.take() {
            let (pids, dir) = etcd.detach();
            l.pids.extend(pids);
            l.paths.push(dir);
        }
        if let Some(kube) = self.kube.take() {
            let (pids, dirs) = kube.detach();
            l.pids.extend(pids);
            l.paths.extend(dirs);
        }
        if let Some(u) = self.underlay.take() {
            l.netns.push(u.leak());
        }
        l.paths.push(std::mem::take(&mut self.dir));
        l
    }

    /// The client flags of a TLS etcd ([`ClusterConfig::etcd_tls`]).
    fn etcd_tls_flags(&self) -> Vec<String> {
        self.etcd()
            .certs()
            .map(TestCerts::client_flags)
            .unwrap_or_default()
    }

    /// Where the chart's ConfigMap is written out (Helm mode).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Writes the installed `axoneme-config` ConfigMap into
    /// [`Self::config_dir`], as the kubelet updates a mounted ConfigMap;
    /// the processes read it when they (re)start.
    pub fn write_config_dir(&self) -> Result<Vec<String>> {
        let kube = self.kube.as_ref().context("not in Kubernetes mode")?;
        crate::helm::write_config_dir(kube, &self.config_dir())
    }

    /// The kubeconfig agents use in Kubernetes mode: a token of the
    /// agent's ServiceAccount when the project's RBAC for it exists
    /// (`helm/axoneme/files/rbac/agent.yaml`), so a missing permission
    /// fails a test; else the harness's own.
    fn agent_kubeconfig(&self) -> Result<PathBuf> {
        self.service_account_kubeconfig("axoneme-agent")
    }

    /// A kubeconfig with a TokenRequest token of ServiceAccount
    /// `kube-system/sa` (the chart's RBAC binds it), made once.
    fn service_account_kubeconfig(&self, sa: &str) -> Result<PathBuf> {
        let kube = self.kube.as_ref().context("not in Kubernetes mode")?;
        let path = self.dir.join(format!("{sa}.kubeconfig"));
        if !path.exists() {
            kube.service_account_kubeconfig("kube-system", sa, &path)?;
        }
        Ok(path)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            // Detached.
            return;
        }
        if crate::keep() {
            for n in &mut self.nodes {
                if let Some(a) = n.agent.take() {
                    eprintln!(
                        "AXONEME_KEEP: agent {} left running, pid {}",
                        n.name,
                        a.detach()
                    );
                }
            }
            for o in self.operators.drain(..) {
                eprintln!("AXONEME_KEEP: operator {} pid {}", o.id, o.proc.detach());
            }
            eprintln!("AXONEME_KEEP: cluster state in {}", self.dir.display());
            return;
        }
        for n in &mut self.nodes {
            if let Some(mut a) = n.agent.take() {
                a.terminate(Duration::from_secs(5));
            }
            let _ = std::fs::remove_dir_all(&n.pin_dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The chart's values for the harness's cluster: its etcd (external,
/// plain HTTP on loopback) and the short timings and pools the other
/// modes pass as flags.
fn helm_test_values(etcd: &[String], node_grace: u32) -> Vec<String> {
    [
        format!("etcd.endpoints={{{}}}", etcd.join(",")),
        "etcd.tls.enabled=false".into(),
        "operator.leaseTTL=2".into(),
        "operator.identityGCGrace=10s".into(),
        "ipam.operator.clusterPoolIPv6PodCIDRList={fd00:a0::/104}".into(),
        "ipam.operator.clusterPoolIPv6MaskSize=120".into(),
        format!("l7Proxy.port={PROXY_PORT}"),
        format!("agent.nodeGrace={node_grace}s"),
    ]
    .into_iter()
    .flat_map(|v| ["--set".to_string(), v])
    .collect()
}
