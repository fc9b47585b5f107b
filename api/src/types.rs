//! Request and response bodies.

use serde::{Deserialize, Serialize};

/// CNI error codes (CNI spec, "Error" section) the agent and plugin use.
pub mod cni_code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (CNI_COMMAND, CNI_NETNS...).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (bad JSON).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition (no identity yet, no pod
    /// CIDR yet, the agent not reachable).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific (100+): the endpoint request itself is invalid
    /// (labels, container ID).
    pub const INVALID_ENDPOINT: u32 = 100;
    /// Plugin-specific: the node's pod CIDR has no free address.
    pub const IPAM_EXHAUSTED: u32 = 101;
    /// Plugin-specific: CHECK found the endpoint not as created.
    pub const CHECK_FAILED: u32 = 102;
}

/// An error from the agent: a CNI code, a message and details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct ApiError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ApiError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        ApiError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// `POST /v1/cni/add`: create the endpoint of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRequest {
    pub container_id: String,
    /// The pod's network namespace (a path, as CNI_NETNS gives it).
    pub netns: String,
    /// The interface name inside the pod (CNI_IFNAME).
    pub ifname: String,
    /// The pod's labels as `source:key=value` or `key=value` (then `k8s:`).
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The Pod's UID, as the runtime knows it (Kubernetes mode checks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// How long to wait for the identity and the policy to be in place;
    /// the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// An address given to the pod, with its gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, e.g. `10.200.1.7/32`.
    pub address: String,
    pub gateway: String,
}

/// A route installed in the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// The answer to an add: the endpoint is enforced when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResponse {
    /// The endpoint's name in etcd (`endpoints/v1/<node>/<endpoint>`).
    pub endpoint: String,
    pub identity: u32,
    /// The host-side veth.
    pub host_interface: String,
    pub host_mac: String,
    /// The pod-side interface's MAC.
    pub mac: String,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
}

/// `POST /v1/cni/del`: remove a container's endpoint; succeeds when there
/// is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelRequest {
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// `POST /v1/endpoints/{name}/config`: an endpoint's options (standalone
/// mode; in Kubernetes mode they come from the Pod). Absent fields keep
/// their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Policy audit mode: flows the endpoint's policy would drop are
    /// reported (verdict `audit`) and let through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_audit_mode: Option<bool>,
}

/// `POST /v1/policy/explain`: a flow to explain with what the agent
/// enforces. The answer is an `axoneme_policy::explain::ExplainReport`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The source: an endpoint (`NODE/NAME`, or `NAME` on this node), a
    /// Pod (`pod:NAMESPACE/NAME`) or an address.
    pub from: String,
    /// The destination, likewise.
    pub to: String,
    /// TCP, UDP, SCTP, ICMP or ICMPv6.
    pub protocol: String,
    /// The destination port (ICMP: the type).
    pub port: u16,
    /// An HTTP request to judge against the HTTP rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// `POST /v1/cni/check`: is the container's endpoint as created?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// Addresses the runtime's prevResult lists (CIDR notation).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// An endpoint served by this agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    pub interface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    pub addresses: Vec<String>,
    pub labels: Vec<String>,
    /// In the datapath's endpoints map with its policy.
    pub enforced: bool,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    /// In policy audit mode in the datapath (the agent's
    /// `--policy-audit-mode`, or the endpoint's own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub policy_audit_mode: bool,
}

/// One ipcache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcacheEntry {
    pub prefix: String,
    pub identity: u32,
}

/// One policy-map entry of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub direction: String,
    /// 0 = any.
    pub identity: u32,
    /// `ANY`, `TCP`, `UDP`, `ICMP`, ... or a number.
    pub protocol: String,
    /// `8080`, `8080-8095`, or `ANY`.
    pub ports: String,
    /// `allow`, `deny` or `redirect`.
    pub verdict: String,
    pub proxy_port: u16,
    pub packets: u64,
    pub bytes: u64,
}

/// One conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtEntry {
    pub protocol: String,
    pub src: String,
    pub dst: String,
    pub state: String,
    /// Who handles the flow besides the datapath: `proxy:PORT` for a flow
    /// redirected to the L7 proxy, `proxy-upstream` for one of the proxy's
    /// own upstream connections, empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
    pub expires_in_s: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// A BPF map with its use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStatus {
    pub name: String,
    pub max_entries: u32,
    pub entries: u64,
}

/// One component's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub ok: bool,
    pub message: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub ok: bool,
    pub components: Vec<ComponentStatus>,
    #[serde(default)]
    pub pod_cidrs: Vec<String>,
    pub maps: Vec<MapStatus>,
    pub programs_attached: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub policies: usize,
    /// The etcd revision of the newest policy change applied.
    pub policy_revision: i64,
    /// The datapath's sync units (one per map), in the order they run.
    #[serde(default)]
    pub sync_units: Vec<SyncUnitStatus>,
}

/// One of the reconciler's sync units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncUnitStatus {
    /// `attach`, `policy`, `ipcache` or `endpoints`.
    pub name: String,
    /// In sync as of the last pass.
    pub ok: bool,
    /// Failures since the last success (the unit backs off meanwhile).
    pub consecutive_failures: u32,
    pub failures_total: u64,
    /// Map writes and removals made, in all.
    pub changes_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A datapath event (drop or policy verdict), as `GET /v1/events` lists
/// the agent's most recent ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Unix milliseconds when the agent read it.
    pub time_ms: u64,
    /// `drop`, `policy-verdict` or `http`.
    pub kind: String,
    /// Cilium's drop reason number (0 for verdicts).
    pub reason: u8,
    /// The reason in words.
    pub reason_text: String,
    /// `allowed`, `denied`, `redirected` or empty.
    pub verdict: String,
    pub direction: String,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub src: String,
    pub dst: String,
    pub protocol: String,
    pub sport: u16,
    pub dport: u16,
    pub ifindex: u32,
    /// Which kind of policy entry decided a verdict: `L3-only`, `L3-L4`,
    /// `L4-only`, `all` or `none`.
    pub match_type: String,
    /// For `http` events (the L7 proxy): the request and its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInfo>,
}

/// One request the L7 proxy judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpInfo {
    pub method: String,
    pub path: String,
    pub host: String,
    pub status: u16,
    pub latency_us: u64,
}
