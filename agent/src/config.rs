//! The agent's configuration: every flag in one place, grouped as `--help`
//! shows them, each with an `AXONEME_*` environment fallback and its
//! default; durations take units (`500ms`, `15s`, `5m`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use axoneme_identity::layout::DEFAULT_ROOT;
use axoneme_kvstore::KvArgs;
use axoneme_policy::EnforcementMode;
use clap::{Args, Parser};

/// Where the CNI plugin and the CLI look for the agent by default.
pub const DEFAULT_SOCKET: &str = "/run/axoneme/agent.sock";

/// axoneme-agent: the node agent of Axoneme.
#[derive(Debug, Clone, Parser)]
#[command(name = "axoneme-agent", version)]
pub struct Config {
    /// This node's name: the agent serves the endpoints stored under it.
    #[arg(long, env = "AXONEME_NODE_NAME")]
    pub node: String,
    /// This node's underlay addresses (repeatable, one per family): other
    /// nodes route this node's pod CIDRs via them.
    #[arg(long = "node-ip", env = "AXONEME_NODE_IPS", value_delimiter = ',')]
    pub node_ips: Vec<IpAddr>,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Root of Axoneme's keys in etcd.
    #[arg(long, env = "AXONEME_KVSTORE_PREFIX", default_value = DEFAULT_ROOT)]
    pub kvstore_prefix: String,
    #[command(flatten, next_help_heading = "Datapath")]
    pub datapath: DatapathConfig,
    #[command(flatten, next_help_heading = "Endpoints")]
    pub endpoints: EndpointsConfig,
    #[command(flatten, next_help_heading = "L7 proxy")]
    pub proxy: ProxyFlags,
    #[command(flatten, next_help_heading = "Kubernetes mode")]
    pub kubernetes: KubernetesConfig,
    #[command(flatten, next_help_heading = "Reconcile")]
    pub reconcile: ReconcileConfig,
    #[command(flatten, next_help_heading = "Services (kube-proxy replacement)")]
    pub services: ServicesConfig,
    #[command(flatten, next_help_heading = "Flows (Hubble)")]
    pub hubble: HubbleConfig,
    #[command(flatten, next_help_heading = "Transparent encryption (IPsec)")]
    pub encryption: EncryptionConfig,
    /// Where to serve Prometheus metrics (`/metrics`), inside the node's
    /// network namespace: `:PORT` (every address), `HOST:PORT`, or empty
    /// for none.
    #[arg(long, env = "AXONEME_PROMETHEUS_SERVE_ADDR", default_value = ":9962", value_parser = crate::metrics::server::ServeAddr::parse)]
    pub prometheus_serve_addr: crate::metrics::server::ServeAddr,
    /// Free heap memory (MiB) past which the agent gives the free pages
    /// back to the kernel, checked every second; 0: never.
    #[arg(long, env = "AXONEME_HEAP_TRIM_MIB", default_value_t = 2)]
    pub heap_trim_mib: u32,
    #[command(flatten)]
    pub log: axoneme_config::logging::LogArgs,
    /// The API's UNIX socket (the CNI plugin's and the CLI's default).
    #[arg(long, env = "AXONEME_API_SOCKET", default_value = DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
    /// A directory of flags, one file per flag named like it (the mounted
    /// `axoneme-config` ConfigMap); flags and environment variables win.
    #[arg(long = axoneme_config::FLAG, env = axoneme_config::ENV)]
    pub config_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DatapathConfig {
    /// Where the datapath's maps are pinned [default: /sys/fs/bpf/axoneme/<node>].
    #[arg(long, env = "AXONEME_BPF_PIN_DIR")]
    pub bpf_pin_dir: Option<PathBuf>,
    /// Network namespace (a path such as /run/netns/NAME) holding this
    /// node's interfaces [default: the agent's own].
    #[arg(long, env = "AXONEME_NETNS")]
    pub netns: Option<PathBuf>,
    /// Policy enforcement mode: default, always or never.
    #[arg(long, env = "AXONEME_ENFORCEMENT", default_value = "default", value_parser = parse_mode)]
    pub enforcement: EnforcementMode,
    /// Policy audit mode for every endpoint of the node: flows the policy
    /// would drop are reported (verdict `audit`) and let through. An
    /// endpoint can be put in audit mode on its own (`axoneme endpoint
    /// config`, or the Pod annotation `axoneme.io/policy-audit-mode`).
    #[arg(long, env = "AXONEME_POLICY_AUDIT_MODE", default_value_t = false, action = clap::ArgAction::Set)]
    pub policy_audit_mode: bool,
    /// The host firewall: this node is an endpoint (identity
    /// `reserved:host`, with the node's labels) that host policies
    /// (`nodeSelector`) select, enforced on the node's own traffic at its
    /// device. Its kvstore and API server traffic is always allowed.
    #[arg(long, env = "AXONEME_ENABLE_HOST_FIREWALL", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_host_firewall: bool,
    /// Datapath events (drops, verdicts) per second per CPU; 0 = none.
    /// With the burst and the poll interval, it sizes the event ring.
    #[arg(long, env = "AXONEME_EVENT_RATE", default_value_t = 1000)]
    pub event_rate: u32,
    /// Burst of datapath events per CPU.
    #[arg(long, env = "AXONEME_EVENT_BURST", default_value_t = 2000)]
    pub event_burst: u32,
    /// How often the agent drains the datapath's event ring.
    #[arg(long, env = "AXONEME_EVENT_POLL", default_value = "100ms", value_parser = duration)]
    pub event_poll: Duration,
    #[command(flatten)]
    pub sizes: MapSizes,
}

/// Sizes of the datapath's largest maps, applied when they are created.
/// Pinned maps keep the size they were created with: a different size
/// with existing pins is refused with an error that says so.
#[derive(Debug, Clone, Copy, Args, PartialEq, Eq)]
pub struct MapSizes {
    /// Entries of the ipcache (addresses and CIDRs with their identities).
    #[arg(long, env = "AXONEME_BPF_IPCACHE_MAX", default_value_t = axoneme_bpf_common::IPCACHE_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub bpf_ipcache_max: u32,
    /// Entries of the policy trie (every local identity's entries).
    #[arg(long, env = "AXONEME_BPF_POLICY_MAX", default_value_t = axoneme_bpf_common::POLICY_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub bpf_policy_max: u32,
    /// Entries of each conntrack table (IPv4 and IPv6).
    #[arg(long, env = "AXONEME_BPF_CT_MAX", default_value_t = axoneme_bpf_common::CT_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub bpf_ct_max: u32,
    /// Entries of the endpoints map (local endpoints; their addresses'
    /// map gets twice as many).
    #[arg(long, env = "AXONEME_BPF_ENDPOINTS_MAX", default_value_t = axoneme_bpf_common::ENDPOINTS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub bpf_endpoints_max: u32,
}

impl From<MapSizes> for crate::datapath::MapSizes {
    fn from(f: MapSizes) -> Self {
        crate::datapath::MapSizes {
            ipcache: f.bpf_ipcache_max,
            policy: f.bpf_policy_max,
            ct: f.bpf_ct_max,
            endpoints: f.bpf_endpoints_max,
        }
    }
}

/// The flow pipeline and Hubble's Observer API (Cilium's flag names).
#[derive(Debug, Clone, Args)]
pub struct HubbleConfig {
    /// Turn flows and the Hubble API on or off.
    #[arg(long, env = "AXONEME_ENABLE_HUBBLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_hubble: bool,
    /// The Hubble API's UNIX socket [default: hubble.sock beside --api-socket].
    #[arg(long, env = "AXONEME_HUBBLE_SOCKET_PATH")]
    pub hubble_socket_path: Option<PathBuf>,
    /// Flows kept for requests of past flows (the oldest go first).
    #[arg(long, env = "AXONEME_HUBBLE_EVENT_BUFFER_CAPACITY", default_value_t = 4095, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub hubble_event_buffer_capacity: u32,
    /// Events waiting to become flows; past it, events are counted as lost.
    #[arg(long, env = "AXONEME_HUBBLE_EVENT_QUEUE_SIZE", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub hubble_event_queue_size: u32,
    /// The Hubble API on TCP too, in the node's network namespace: `:PORT`
    /// (Hubble's is 4244), `HOST:PORT`, or empty for the UNIX socket only.
    /// TLS unless --hubble-disable-tls.
    #[arg(long, env = "AXONEME_HUBBLE_LISTEN_ADDRESS", default_value = "", value_parser = crate::metrics::server::ServeAddr::parse)]
    pub hubble_listen_address: crate::metrics::server::ServeAddr,
    /// The TCP API's certificate (PEM, with its chain).
    #[arg(long, env = "AXONEME_HUBBLE_TLS_CERT_FILE")]
    pub hubble_tls_cert_file: Option<PathBuf>,
    /// The TCP API's private key (PEM).
    #[arg(long, env = "AXONEME_HUBBLE_TLS_KEY_FILE")]
    pub hubble_tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) the TCP API's clients must present a
    /// certificate of (mutual TLS); none: any client.
    #[arg(
        long,
        env = "AXONEME_HUBBLE_TLS_CLIENT_CA_FILES",
        value_delimiter = ','
    )]
    pub hubble_tls_client_ca_files: Vec<PathBuf>,
    /// Serve the TCP API in clear text (a trusted network only).
    #[arg(long, env = "AXONEME_HUBBLE_DISABLE_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub hubble_disable_tls: bool,
}

/// The Hubble TCP API's TLS files, as the flags name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubbleTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cas: Vec<PathBuf>,
}

impl HubbleConfig {
    pub fn socket(&self, api_socket: &std::path::Path) -> PathBuf {
        self.hubble_socket_path
            .clone()
            .unwrap_or_else(|| axoneme_hubble::client::socket_beside(api_socket))
    }

    /// The TCP API's TLS: `None` for clear text (--hubble-disable-tls);
    /// an error naming the flags when TLS lacks its files or files are
    /// given for nothing.
    pub fn tcp_tls(&self) -> Result<Option<HubbleTls>, String> {
        let files = (&self.hubble_tls_cert_file, &self.hubble_tls_key_file);
        if self.hubble_listen_address.0.is_none() || self.hubble_disable_tls {
            if files.0.is_some() || files.1.is_some() || !self.hubble_tls_client_ca_files.is_empty()
            {
                return Err(
                    "--hubble-tls-* files are for the TCP API with TLS: give --hubble-listen-address \
                     (and not --hubble-disable-tls)"
                        .into(),
                );
            }
            return Ok(None);
        }
        match files {
            (Some(cert), Some(key)) => Ok(Some(HubbleTls {
                cert: cert.clone(),
                key: key.clone(),
                client_cas: self.hubble_tls_client_ca_files.clone(),
            })),
            _ => Err(
                "--hubble-listen-address serves TLS: give --hubble-tls-cert-file and \
                 --hubble-tls-key-file (or --hubble-disable-tls for clear text)"
                    .into(),
            ),
        }
    }

    pub fn sizes(&self) -> crate::observe::Sizes {
        crate::observe::Sizes {
            ring: self.hubble_event_buffer_capacity as usize,
            queue: self.hubble_event_queue_size as usize,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EndpointsConfig {
    /// Where the agent keeps its endpoints' state [default: /run/axoneme/<node>].
    #[arg(long, env = "AXONEME_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long a CNI ADD waits for the pod's identity and policy when the
    /// plugin's configuration gives no timeout.
    #[arg(long, env = "AXONEME_ENDPOINT_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub endpoint_timeout: Duration,
    /// How long this node's pods stay trusted by other nodes after its
    /// agent stopped renewing (crashed, restarting, being upgraded): the
    /// TTL of the node lease that holds the node record and its endpoint
    /// records. A restart within it costs nothing; a node that is gone for
    /// good is forgotten after it (or at once with `axoneme node delete`).
    #[arg(long, env = "AXONEME_NODE_GRACE", default_value = "5m", value_parser = ttl)]
    pub node_grace: Duration,
}

/// The L7 proxy's flags (see [`crate::l7proxy::ProxyConfig`]).
#[derive(Debug, Clone, Args)]
pub struct ProxyFlags {
    /// The L7 proxy's port on this node; 0 = none (L7 rules are then
    /// enforced at L3/L4 only, with a warning).
    #[arg(long, env = "AXONEME_PROXY_PORT", default_value_t = 0)]
    pub proxy_port: u16,
    /// Largest request head in bytes (larger: 431, connection closed).
    #[arg(long, env = "AXONEME_PROXY_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub proxy_max_header_bytes: usize,
    /// Longest request target in bytes (longer: 414, connection closed).
    #[arg(long, env = "AXONEME_PROXY_MAX_URI_BYTES", default_value_t = 8 * 1024)]
    pub proxy_max_uri_bytes: usize,
    /// Time to receive a request head from its first byte (slowloris).
    #[arg(long, env = "AXONEME_PROXY_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub proxy_header_timeout: Duration,
    /// Time to connect to the original destination (then 503).
    #[arg(long, env = "AXONEME_PROXY_CONNECT_TIMEOUT", default_value = "3s", value_parser = duration)]
    pub proxy_connect_timeout: Duration,
    /// Idle upstream connections kept per client and destination.
    #[arg(long, env = "AXONEME_PROXY_MAX_IDLE_UPSTREAMS", default_value_t = 64)]
    pub proxy_max_idle_upstreams: usize,
    /// The proxy listener's backlog.
    #[arg(long, env = "AXONEME_PROXY_LISTEN_BACKLOG", default_value_t = 1024)]
    pub proxy_listen_backlog: u32,
    /// Pass the bytes of a proxied connection between a pod's socket and
    /// the proxy's directly (sockmap) when both are on this node, instead
    /// of through the pod's veth and two TCP stacks. Needs the pods and the
    /// agent under `--cgroup-root` (the sockops program is attached there).
    #[arg(long, env = "AXONEME_PROXY_SOCKMAP", default_value_t = true, action = clap::ArgAction::Set)]
    pub proxy_sockmap: bool,
}

impl ProxyFlags {
    pub fn config(&self) -> crate::l7proxy::ProxyConfig {
        crate::l7proxy::ProxyConfig {
            max_header_bytes: self.proxy_max_header_bytes,
            max_uri_bytes: self.proxy_max_uri_bytes,
            header_timeout: self.proxy_header_timeout,
            connect_timeout: self.proxy_connect_timeout,
            max_idle_upstreams_per_key: self.proxy_max_idle_upstreams,
            listen_backlog: self.proxy_listen_backlog,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct KubernetesConfig {
    /// Kubernetes mode: endpoints take their labels from their Pods (this
    /// node's, watched on the API server); policies, namespace and node
    /// labels still come from the kvstore, mirrored by the operator.
    #[arg(long, env = "AXONEME_KUBERNETES")]
    pub kubernetes: bool,
    /// The kubeconfig to use [default: KUBECONFIG, then the in-cluster
    /// service account].
    #[arg(long, env = "AXONEME_KUBECONFIG", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster's name (the `io.cilium.k8s.policy.cluster` label).
    #[arg(long, env = "AXONEME_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,
}

/// Transparent IPsec between nodes (see docs/architecture.md,
/// "Transparent encryption").
#[derive(Debug, Clone, Args)]
pub struct EncryptionConfig {
    /// Encrypt pod traffic to other nodes that encrypt, with IPsec (ESP,
    /// tunnel mode between the nodes' addresses; needs --ipsec-key-file).
    #[arg(long, env = "AXONEME_ENABLE_IPSEC", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_ipsec: bool,
    /// The IPsec key file: lines `SPI[+] rfc4106(gcm(aes)) HEX-KEY ICV-BITS`
    /// (Cilium's format; the last line is in use). Read again every
    /// --ipsec-key-poll: a new SPI is a key rotation.
    #[arg(long, env = "AXONEME_IPSEC_KEY_FILE")]
    pub ipsec_key_file: Option<PathBuf>,
    /// Only nodes whose labels have all of these encrypt
    /// (`key=value,...`; empty: every node).
    #[arg(long, env = "AXONEME_ENCRYPTION_NODE_SELECTOR", default_value = "", value_parser = parse_labels)]
    pub encryption_node_selector: Labels,
    /// This node's labels, for --encryption-node-selector and host
    /// policies' node selectors (`key=value,...`; over the stored ones:
    /// `axoneme node label`, or in Kubernetes mode the Node's).
    #[arg(long, alias = "node-label", env = "AXONEME_NODE_LABELS", default_value = "", value_parser = parse_labels)]
    pub node_labels: Labels,
    /// Pod traffic to a node that encrypts is never sent in clear: while
    /// the two share no key it is dropped (reason 195), and clear traffic
    /// from its pods is refused.
    #[arg(long, env = "AXONEME_IPSEC_STRICT", default_value_t = false, action = clap::ArgAction::Set)]
    pub ipsec_strict: bool,
    /// How long a replaced key is still installed after the switch to its
    /// successor (packets in flight with it are still decrypted).
    #[arg(long, env = "AXONEME_IPSEC_KEY_ROTATION_DURATION", default_value = "5m", value_parser = duration)]
    pub ipsec_key_rotation_duration: Duration,
    /// How often the key file is read again.
    #[arg(long, env = "AXONEME_IPSEC_KEY_POLL", default_value = "1s", value_parser = duration)]
    pub ipsec_key_poll: Duration,
}

/// Labels as `key=value` pairs.
pub type Labels = std::collections::BTreeMap<String, String>;

/// `key=value,...` (empty: none).
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = Labels::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: not key=value"))?;
        if k.is_empty() {
            return Err(format!("{pair:?}: empty key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

impl EncryptionConfig {
    /// What is wrong with the settings together.
    pub fn check(&self) -> Result<(), String> {
        if self.enable_ipsec && self.ipsec_key_file.is_none() {
            return Err(
                "--enable-ipsec needs --ipsec-key-file (Helm: encryption.ipsec.secretName)".into(),
            );
        }
        Ok(())
    }

    /// Whether this node encrypts: IPsec is on and `labels` (this node's)
    /// match the selector.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.enable_ipsec
            && self
                .encryption_node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// kube-proxy replacement: Services load-balanced by the socket-LB
/// programs on the node's cgroup (or per packet at the pods' veths).
#[derive(Debug, Clone, Args)]
pub struct ServicesConfig {
    /// Load-balance Services in eBPF in place of kube-proxy (the services
    /// `axoneme service` stores in standalone mode; those the operator
    /// mirrors from the API server in Kubernetes mode). `false`: no service
    /// programs (a previous run's are removed); Services are kube-proxy's.
    #[arg(long, env = "AXONEME_KUBE_PROXY_REPLACEMENT", default_value_t = true, action = clap::ArgAction::Set)]
    pub kube_proxy_replacement: bool,
    /// Translate services at the socket (connect, sendmsg, ...: once per
    /// connection, on the node's cgroup). `false`: per packet at the pods'
    /// veths instead (DNAT leaving the pod, reverse NAT of replies entering
    /// it), for pods whose processes are not under `--cgroup-root`.
    #[arg(long, env = "AXONEME_SOCKET_LB", default_value_t = true, action = clap::ArgAction::Set)]
    pub socket_lb: bool,
    /// Services over SCTP from pods with socket LB on: the kernel runs no
    /// socket-LB program for SCTP sockets, so the pods' veths translate
    /// SCTP per packet, at the cost of a protocol check on every packet a
    /// pod sends or receives (without socket LB, SCTP is translated with
    /// the rest; from outside the node, always).
    #[arg(long, env = "AXONEME_ENABLE_SCTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_sctp: bool,
    /// The cgroup2 directory the socket-LB programs attach to: every
    /// process below it (the node's pods) gets services translated.
    #[arg(
        long,
        env = "AXONEME_CGROUP_ROOT",
        default_value = "/run/axoneme/cgroupv2"
    )]
    pub cgroup_root: PathBuf,
    /// Entries of a Maglev table (`M`, prime; the same on every node):
    /// the per-packet LB picks NodePort, ExternalIP and LoadBalancer
    /// backends by Maglev, so a client keeps its backend whichever node it
    /// enters by. Cilium advises `M` > 100 x the backends of a service.
    #[arg(long, env = "AXONEME_MAGLEV_TABLE_SIZE", default_value_t = 1021, value_parser = maglev_size)]
    pub maglev_table_size: u32,
}

fn maglev_size(s: &str) -> Result<u32, String> {
    let m: u32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    axoneme_service::maglev::check_size(m).map_err(|e| e.to_string())?;
    if m > axoneme_bpf_common::lb::LB_MAGLEV_MAX {
        return Err(format!("{m} is more than the Maglev map holds"));
    }
    Ok(m)
}

#[derive(Debug, Clone, Args)]
pub struct ReconcileConfig {
    /// The longest the reconciler lets a burst of changes land before a
    /// pass (a lone change is applied once changes pause for 1 ms).
    #[arg(long, env = "AXONEME_RECONCILE_DEBOUNCE", default_value = "10ms", value_parser = duration)]
    pub reconcile_debounce: Duration,
    /// A full pass this often even without changes.
    #[arg(long, env = "AXONEME_RESYNC_INTERVAL", default_value = "30s", value_parser = duration)]
    pub resync_interval: Duration,
    /// How often the kvstore's members are probed for `status`.
    #[arg(long, env = "AXONEME_KVSTORE_PROBE_INTERVAL", default_value = "2s", value_parser = duration)]
    pub kvstore_probe_interval: Duration,
}

impl Config {
    pub fn pin_dir(&self) -> PathBuf {
        self.datapath
            .bpf_pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::datapath::PIN_ROOT).join(&self.node))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.endpoints
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/axoneme").join(&self.node))
    }
}

fn parse_mode(s: &str) -> Result<EnforcementMode, String> {
    match s {
        "default" => Ok(EnforcementMode::Default),
        "always" => Ok(EnforcementMode::Always),
        "never" => Ok(EnforcementMode::Never),
        other => Err(format!(
            "`{other}` is not an enforcement mode (default, always, never)"
        )),
    }
}

/// A duration with its unit: `250ms`, `15s`, `5m`, `1h30m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| {
        format!(
            "`{s}` is not a duration ({e}); give a number with a unit, such as 500ms, 15s or 5m"
        )
    })
}

/// A lease TTL: whole seconds, 1 s to 24 h.
fn ttl(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.subsec_nanos() != 0 || d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
        return Err(format!("`{s}`: give whole seconds between 1s and 24h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_environment_fallback() {
        let cmd = Config::command();
        let missing: Vec<String> = cmd
            .get_arguments()
            .filter(|a| {
                a.get_long().is_some() && !["help", "version"].contains(&a.get_id().as_str())
            })
            .filter(|a| a.get_env().is_none())
            .map(|a| a.get_long().unwrap_or_default().to_string())
            .collect();
        assert!(missing.is_empty(), "flags without AXONEME_*: {missing:?}");
    }

    #[test]
    fn encryption_settings_are_checked_and_select_nodes_by_label() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["axoneme-agent", "--node", "n1"];
            args.extend(extra);
            Config::try_parse_from(args).map(|c| c.encryption)
        };
        assert_eq!(parse(&[]).unwrap().check(), Ok(()));
        let e = parse(&["--enable-ipsec=true"])
            .unwrap()
            .check()
            .unwrap_err();
        assert!(e.contains("needs --ipsec-key-file"), "{e}");
        let c = parse(&[
            "--enable-ipsec=true",
            "--ipsec-key-file=/k",
            "--encryption-node-selector=zone=a, tier=db",
        ])
        .unwrap();
        assert_eq!(c.check(), Ok(()));
        let labels = |s: &str| parse_labels(s).unwrap();
        assert!(c.selects(&labels("zone=a,tier=db,x=y")));
        assert!(!c.selects(&labels("zone=a")));
        assert!(parse(&["--enable-ipsec=true"])
            .unwrap()
            .selects(&Labels::new()));
        assert!(!parse(&[]).unwrap().selects(&Labels::new()));
        let e = parse(&["--node-labels=zone"]).unwrap_err().to_string();
        assert!(e.contains("\"zone\": not key=value"), "{e}");
        // `--node-label` is the same flag.
        let c = parse(&["--node-label=env=dev"]).unwrap();
        assert_eq!(c.node_labels, labels("env=dev"));
    }

    #[test]
    fn durations_take_units_and_say_what_is_wrong() {
        let c = Config::try_parse_from([
            "axoneme-agent",
            "--node",
            "n1",
            "--endpoint-timeout",
            "1500ms",
            "--node-grace",
            "2m",
        ])
        .unwrap();
        assert_eq!(c.endpoints.endpoint_timeout, Duration::from_millis(1500));
        assert_eq!(c.endpoints.node_grace, Duration::from_secs(120));
        let e = Config::try_parse_from(["axoneme-agent", "--node", "n1", "--node-grace", "10"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`10` is not a duration"), "{e}");
        let e = Config::try_parse_from(["axoneme-agent", "--node", "n1", "--node-grace", "500ms"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole seconds"), "{e}");
    }

    #[test]
    fn the_hubble_tcp_api_is_tls_unless_clear_text_is_asked_for() {
        let tls = |args: &[&str]| {
            let mut all = vec!["axoneme-agent", "--node", "n1"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap().hubble.tcp_tls()
        };
        assert_eq!(tls(&[]), Ok(None));
        let e = tls(&["--hubble-listen-address", ":4244"]).unwrap_err();
        assert!(
            e.contains("--hubble-tls-cert-file") && e.contains("--hubble-disable-tls"),
            "{e}"
        );
        assert_eq!(
            tls(&[
                "--hubble-listen-address",
                ":4244",
                "--hubble-disable-tls=true"
            ]),
            Ok(None)
        );
        assert_eq!(
            tls(&[
                "--hubble-listen-address",
                ":4244",
                "--hubble-tls-cert-file",
                "/c",
                "--hubble-tls-key-file",
                "/k",
                "--hubble-tls-client-ca-files",
                "/a,/b",
            ]),
            Ok(Some(HubbleTls {
                cert: "/c".into(),
                key: "/k".into(),
                client_cas: vec!["/a".into(), "/b".into()],
            }))
        );
        let e = tls(&[
            "--hubble-tls-cert-file",
            "/c",
            "--hubble-tls-key-file",
            "/k",
        ])
        .unwrap_err();
        assert!(e.contains("--hubble-listen-address"), "{e}");
    }

    #[test]
    fn the_metrics_address_defaults_to_9962_and_a_bad_one_names_the_flag() {
        let c = Config::try_parse_from(["axoneme-agent", "--node", "n1"]).unwrap();
        assert_eq!(
            c.prometheus_serve_addr.0,
            Some("[::]:9962".parse().unwrap())
        );
        let c = Config::try_parse_from([
            "axoneme-agent",
            "--node",
            "n1",
            "--prometheus-serve-addr",
            "",
        ])
        .unwrap();
        assert_eq!(c.prometheus_serve_addr.0, None);
        let e = Config::try_parse_from([
            "axoneme-agent",
            "--node",
            "n1",
            "--prometheus-serve-addr",
            "9962",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--prometheus-serve-addr") && e.contains("`9962`"),
            "{e}"
        );
    }
}
