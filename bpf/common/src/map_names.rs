//! The maps' names: the programs' map statics are named so (aya's `#[map]`
//! names a map after its static), and the agent opens and pins them by
//! these. `agent/src/datapath` (unit tests) checks that the objects have exactly
//! these maps ([`DATAPATH`] in the production object,
//! [`SMOKE`] in the smoke-test one).

/// LPM trie: address prefix → identity ([`super::IpcacheKey`]).
pub const IPCACHE: &str = "IPCACHE";
/// Hash: host-veth ifindex → [`super::EndpointInfo`] (the truth).
pub const ENDPOINTS: &str = "ENDPOINTS";
/// Array: a copy of `ENDPOINTS` read without hashing
/// ([`super::EndpointSlot`]).
pub const ENDPOINT_CACHE: &str = "ENDPOINT_CACHE";
/// Hash: a local endpoint's address → its host-veth ifindex (local
/// delivery).
pub const ENDPOINT_ADDRS: &str = "ENDPOINT_ADDRS";
/// Array: `ENDPOINT_ADDRS` read without hashing ([`super::AddrSlot`]).
pub const ENDPOINT_ADDR_SLOTS: &str = "ENDPOINT_ADDR_SLOTS";
/// LPM trie: every endpoint's policy entries ([`super::PolicyKey`]).
pub const POLICY: &str = "POLICY";
/// LRU hash: IPv6 flows ([`super::CtKey`]).
pub const CT: &str = "CT";
/// LRU hash: IPv4 flows ([`super::CtKey4`]).
pub const CT4: &str = "CT4";
/// LRU hash: a first fragment's ports, for the later fragments.
pub const FRAGS: &str = "FRAGS";
/// Ring buffer of [`super::Event`]s.
pub const EVENTS: &str = "EVENTS";
/// Array of one [`super::EventConfig`]: the events' rate limit.
pub const EVENT_CONFIG: &str = "EVENT_CONFIG";
/// Per-CPU array: each CPU's token bucket (not pinned).
pub const EVENT_RATE: &str = "EVENT_RATE";
/// Per-CPU array of the [`super::counter`]s.
pub const COUNTERS: &str = "COUNTERS";
/// Per-CPU array: the flow an ICMP error quotes, from the parser to
/// conntrack (not pinned; programs only).
pub const QUOTED: &str = "QUOTED";
/// Per-CPU array of [`super::MetricsValue`]s: packets and bytes by
/// [`super::MetricsKey`] (its [`index`](super::MetricsKey::index)).
pub const METRICS: &str = "METRICS";
/// Per-CPU array: new flows' policy verdicts by [`super::VerdictKey`].
pub const VERDICTS: &str = "VERDICTS";
/// Hash: a frontend's master and backend slots ([`super::lb::LbKey`]).
pub const LB_SERVICES: &str = "LB_SERVICES";
/// Hash: backend id → [`super::lb::LbBackend`].
pub const LB_BACKENDS: &str = "LB_BACKENDS";
/// Hash: reverse-NAT id → the frontend ([`super::lb::LbRevNat`]).
pub const LB_REVNAT: &str = "LB_REVNAT";
/// LRU hash: a socket and its backend → the service it addressed
/// ([`super::lb::SockRevKey`]).
pub const LB_SOCK_REVNAT: &str = "LB_SOCK_REVNAT";
/// LRU hash: a client's backend per frontend under `ClientIP` affinity
/// ([`super::lb::AffinityKey`]).
pub const LB_AFFINITY: &str = "LB_AFFINITY";
/// Hash: the (backend, frontend) pairs affinity may keep using
/// ([`super::lb::AffinityMatchKey`]).
pub const LB_AFFINITY_MATCH: &str = "LB_AFFINITY_MATCH";
/// LRU hash: a client address's backend per frontend under `ClientIP`
/// affinity, for the per-packet LB ([`super::lb::AffinityAddrKey`]).
pub const LB_AFFINITY_ADDR: &str = "LB_AFFINITY_ADDR";
/// LRU hash: a flow from outside the node to an external frontend →
/// its backend (and SNAT) ([`super::lb::NatTuple`]).
pub const LB_NAT_FWD: &str = "LB_NAT_FWD";
/// LRU hash: a translated flow's reply → its rewrite
/// ([`super::lb::NatRev`]).
pub const LB_NAT_REV: &str = "LB_NAT_REV";
/// Array of one [`super::lb::NodeAddrs`]: the SNAT source.
pub const LB_NODE: &str = "LB_NODE";
/// Per-CPU array: a new translated flow's entries, built off the stack
/// (not pinned; programs only).
pub const LB_NAT_SCRATCH: &str = "LB_NAT_SCRATCH";
/// Per-CPU array: the per-packet LB at a pod's veth's packet, frontend
/// and backend, off the veth programs' stack (not pinned; programs
/// only).
pub const POD_SCRATCH: &str = "POD_SCRATCH";
/// Array of backend ids: the Maglev rows of external frontends
/// ([`super::lb::LbService`]'s master `backend_id`).
pub const LB_MAGLEV: &str = "LB_MAGLEV";
/// LRU hash: beside kube-proxy, where each of the node's pods sent its
/// TCP connections ([`super::lb::SentKey`] → [`super::lb::SentTo`]).
pub const KUBE_PROXY_SENT: &str = "KUBE_PROXY_SENT";
/// LPM trie: another node's pod CIDR → how its pods' traffic is
/// encrypted ([`super::EncryptValue`]; keyed like `IPCACHE`).
pub const ENCRYPT: &str = "ENCRYPT";
/// Hash: another node's underlay address (`IPCACHE`'s key data) → its
/// index in decrypt marks ([`super::decrypt_mark`]).
pub const ENCRYPT_NODES: &str = "ENCRYPT_NODES";
/// Array: `ENCRYPT_NODES` read without hashing ([`super::AddrSlot`]).
pub const ENCRYPT_NODE_SLOTS: &str = "ENCRYPT_NODE_SLOTS";
pub const LIFELINE: &str = "LIFELINE";
/// Sock hash: pods' sockets of connections the node's L7 proxy serves
/// ([`super::SockKey`]), written by the sockops program.
pub const SOCK_PODS: &str = "SOCK_PODS";
/// Sock hash: the node proxy's sockets of the same connections.
pub const SOCK_PROXY: &str = "SOCK_PROXY";
/// Array of one `u64`: the network namespace cookie of the node's
/// namespace, where the proxy's sockets live (0: no acceleration).
pub const SOCK_NODE: &str = "SOCK_NODE";
/// LRU hash: sockets that sent a message through the TCP stack, which
/// never redirect later ones (their peer could still have the earlier
/// bytes unread).
pub const SOCK_PASSED: &str = "SOCK_PASSED";
/// Per-CPU array of [`super::sock_stat`] counts.
pub const SOCK_STATS: &str = "SOCK_STATS";
/// Every map of the production object (`axoneme-bpf`).
pub const DATAPATH: [&str; 39] = [
    ENCRYPT,
    LIFELINE,
    ENCRYPT_NODES,
    ENCRYPT_NODE_SLOTS,
    IPCACHE,
    ENDPOINTS,
    ENDPOINT_CACHE,
    ENDPOINT_ADDRS,
    ENDPOINT_ADDR_SLOTS,
    POLICY,
    CT,
    CT4,
    FRAGS,
    EVENTS,
    EVENT_CONFIG,
    EVENT_RATE,
    COUNTERS,
    QUOTED,
    METRICS,
    VERDICTS,
    LB_SERVICES,
    LB_BACKENDS,
    LB_REVNAT,
    LB_SOCK_REVNAT,
    LB_AFFINITY,
    LB_AFFINITY_MATCH,
    LB_AFFINITY_ADDR,
    LB_NAT_FWD,
    LB_NAT_REV,
    LB_NODE,
    LB_NAT_SCRATCH,
    POD_SCRATCH,
    LB_MAGLEV,
    KUBE_PROXY_SENT,
    SOCK_PODS,
    SOCK_PROXY,
    SOCK_NODE,
    SOCK_PASSED,
    SOCK_STATS,
];

/// Hash: UDP destination ports (host order) the smoke-test program
/// drops.
pub const SMOKE_DENY_PORTS: &str = "SMOKE_DENY_PORTS";
/// Every map of the smoke-test object (`axoneme-bpf-smoke`).
pub const SMOKE: [&str; 1] = [SMOKE_DENY_PORTS];
