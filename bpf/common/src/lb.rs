//! Service load balancing: the maps the socket-LB programs read and the
//! agent's services unit writes (Cilium's `lb4_*`/`lb6_*` maps, one set for
//! both families: addresses are 16 bytes, IPv4 in the first 4).
//!
//! A frontend (`address:port/protocol`) has a master entry at slot 0 of
//! [`LB_SERVICES`](super::map_names::LB_SERVICES) holding the number of
//! backends new connections may use, and one entry per backend at slots
//! `1..=count` holding a backend id; [`LB_BACKENDS`](super::map_names::LB_BACKENDS)
//! maps ids to addresses. The writer keeps every state a reader can see
//! usable: backends are written before the slots that name them, slots
//! before a master that counts them; a master shrinks before its surplus
//! slots go, and backends go last.

/// Network-order port in a `u16` as the wire has it.
pub type NetPort = u16;

/// A frontend slot: the key of [`LB_SERVICES`](super::map_names::LB_SERVICES).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbKey {
    /// The frontend's address; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    /// The frontend's port, network order.
    pub port: NetPort,
    /// IP protocol number (6, 17, 132).
    pub proto: u8,
    /// [`super::family`].
    pub family: u8,
    /// 0: the master entry; `1..=count`: a backend slot.
    pub slot: u16,
    pub pad: [u8; 2],
}

/// A value of [`LB_SERVICES`](super::map_names::LB_SERVICES).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbService {
    /// Backend slots: the backend's id. Master: its Maglev row + 1 in
    /// [`LB_MAGLEV`](super::map_names::LB_MAGLEV) (external frontends the
    /// per-packet LB serves); 0: none (slots picked at random).
    pub backend_id: u32,
    /// Master: how many slots new connections choose from (0: the
    /// service has no usable backend; connects are refused).
    pub count: u16,
    /// The frontend's reverse-NAT id (a key of
    /// [`LB_REVNAT`](super::map_names::LB_REVNAT)).
    pub rev_nat: u16,
    /// Master: `sessionAffinity: ClientIP`'s timeout in seconds; 0: none.
    pub affinity_timeout: u32,
    /// Master: [`svc_flags`].
    pub flags: u8,
    pub pad: [u8; 3],
}

/// [`LbService::flags`] of a master.
pub mod svc_flags {
    /// A NodePort, ExternalIP or LoadBalancer frontend: reachable from
    /// outside the node, so the per-packet LB on the node's device serves it.
    pub const EXTERNAL: u8 = 1;
    /// `externalTrafficPolicy: Local`: only this node's backends have slots,
    /// and the client's address is kept (no SNAT).
    pub const LOCAL_ONLY: u8 = 2;
}

/// [`LbBackend::flags`].
pub mod backend_flags {
    /// The backend is a pod of this node (no SNAT needed to reach it).
    pub const LOCAL: u8 = 1;
}

/// A value of [`LB_BACKENDS`](super::map_names::LB_BACKENDS), keyed by a
/// backend id (`u32`, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbBackend {
    pub addr: [u8; 16],
    /// Network order.
    pub port: NetPort,
    pub family: u8,
    /// [`backend_flags`].
    pub flags: u8,
    pub pad: [u8; 4],
}

/// A value of [`LB_REVNAT`](super::map_names::LB_REVNAT), keyed by a
/// reverse-NAT id (`u16` in a `u32` key): the frontend replies come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbRevNat {
    pub addr: [u8; 16],
    /// Network order.
    pub port: NetPort,
    pub family: u8,
    pub pad: [u8; 5],
}

/// Key of [`LB_SOCK_REVNAT`](super::map_names::LB_SOCK_REVNAT): a socket
/// (its cookie) and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: [u8; 16],
    /// Network order.
    pub port: NetPort,
    pub family: u8,
    pub pad: [u8; 5],
}

/// Value of [`LB_SOCK_REVNAT`](super::map_names::LB_SOCK_REVNAT): the
/// service the socket addressed, which `recvmsg` and `getpeername` show.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    pub addr: [u8; 16],
    /// Network order.
    pub port: NetPort,
    pub rev_nat: u16,
    pub pad: [u8; 4],
}

/// Key of [`LB_AFFINITY`](super::map_names::LB_AFFINITY): a client (its
/// network namespace's cookie: a pod) and a frontend (its reverse-NAT id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub rev_nat: u32,
    pub pad: [u8; 4],
}

/// Key of [`LB_AFFINITY_ADDR`](super::map_names::LB_AFFINITY_ADDR): a
/// client by its address (the per-packet LB has no socket to tell a pod
/// by; Cilium's `lb4_affinity_key` keys the same) and a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityAddrKey {
    pub addr: [u8; 16],
    pub rev_nat: u32,
    pub family: u8,
    pub pad: [u8; 3],
}

/// Value of [`LB_AFFINITY`](super::map_names::LB_AFFINITY) and
/// [`LB_AFFINITY_ADDR`](super::map_names::LB_AFFINITY_ADDR).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// When the client last used it: `bpf_ktime_get_ns()` in seconds.
    pub last_used_s: u32,
}

/// Key of [`LB_AFFINITY_MATCH`](super::map_names::LB_AFFINITY_MATCH):
/// present while the backend is one new connections to the frontend may
/// use, so an affine client whose backend left is sent elsewhere.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityMatchKey {
    pub backend_id: u32,
    pub rev_nat: u32,
}

/// A flow's addresses and ports as a packet carries them: the key of
/// [`LB_NAT_FWD`](super::map_names::LB_NAT_FWD) (a client's packet to a
/// frontend) and [`LB_NAT_REV`](super::map_names::LB_NAT_REV) (a reply, as it
/// arrives).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatTuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network order.
    pub sport: NetPort,
    pub dport: NetPort,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// Value of [`LB_NAT_FWD`](super::map_names::LB_NAT_FWD): where a flow to
/// an external frontend goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatFwd {
    pub backend_addr: [u8; 16],
    /// This node's address, the source towards a backend on another node.
    pub snat_addr: [u8; 16],
    /// Network order.
    pub backend_port: NetPort,
    /// Network order; 0: no SNAT.
    pub snat_port: NetPort,
    /// The backend's id, to notice that it left.
    pub backend_id: u32,
}

/// Value of [`LB_NAT_REV`](super::map_names::LB_NAT_REV): what a reply's
/// addresses become.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatRev {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network order.
    pub sport: NetPort,
    pub dport: NetPort,
    /// [`NatRev::REDIRECT`], [`NatRev::POD`].
    pub flags: u8,
    pub pad: [u8; 3],
}

impl NatRev {
    /// A SNATed flow's reply: translated at the device's ingress and sent
    /// out again there (a local backend's reply is translated at egress).
    pub const REDIRECT: u8 = 1;
    /// A flow a pod's veth translated (per-packet LB without socket LB):
    /// its replies are translated where they enter the pod.
    pub const POD: u8 = 2;
}

/// The only value of [`LB_NODE`](super::map_names::LB_NODE): this node's
/// addresses (IPv4 in the first 4 bytes; all zero: none of that family).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeAddrs {
    pub ipv4: [u8; 16],
    pub ipv6: [u8; 16],
    /// Entries per Maglev row (the table size `M`, prime); 0: no Maglev.
    pub maglev_m: u32,
    pub pad: u32,
}

/// Key of [`KUBE_PROXY_SENT`](super::map_names::KUBE_PROXY_SENT): a pod's
/// TCP connection by its source address and port, as it left the pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SentKey {
    pub addr: [u8; 16],
    /// Network order.
    pub port: NetPort,
    pub family: u8,
    pub pad: u8,
}

/// Value of [`KUBE_PROXY_SENT`](super::map_names::KUBE_PROXY_SENT): where
/// the connection was sent (a Service's address, if kube-proxy translates
/// it in the node's stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SentTo {
    pub addr: [u8; 16],
    /// Network order.
    pub port: NetPort,
    pub pad: [u8; 2],
}

/// Frontend slots (masters and backend slots together).
pub const LB_SERVICES_MAX: u32 = 256 * 1024;
pub const LB_BACKENDS_MAX: u32 = 64 * 1024;
pub const LB_REVNAT_MAX: u32 = 64 * 1024;
pub const LB_SOCK_REVNAT_MAX: u32 = 256 * 1024;
pub const LB_AFFINITY_MAX: u32 = 64 * 1024;
/// Translated flows from outside the node (each of the two NAT maps).
pub const LB_NAT_MAX: u32 = 256 * 1024;
/// Maglev entries, all rows together (row `r`, entry `i` at `(r-1)*M + i`):
/// 1,027 rows of the default `M` = 1021.
pub const LB_MAGLEV_MAX: u32 = 1 << 20;

/// IP protocol numbers the service maps key.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Values of the programs' `AXONEME_POD_LB` constant: which packets the
/// pods' veths translate for services.
pub mod pod_lb {
    /// None: no kube-proxy replacement.
    pub const OFF: u8 = 0;
    /// SCTP only: socket LB serves TCP and UDP, and the kernel runs no
    /// cgroup connect or sendmsg program for an SCTP socket.
    pub const SCTP: u8 = 1;
    /// Every TCP, UDP and SCTP packet: socket LB off.
    pub const ALL: u8 = 2;
}

const _: () = assert!(core::mem::size_of::<LbKey>() == 24);
const _: () = assert!(core::mem::size_of::<LbService>() == 16);
const _: () = assert!(core::mem::size_of::<LbBackend>() == 24);
const _: () = assert!(core::mem::size_of::<LbRevNat>() == 24);
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 24);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityMatchKey>() == 8);
const _: () = assert!(core::mem::size_of::<NatTuple>() == 40);
const _: () = assert!(core::mem::size_of::<NatFwd>() == 40);
const _: () = assert!(core::mem::size_of::<NatRev>() == 40);
const _: () = assert!(core::mem::size_of::<NodeAddrs>() == 40);
const _: () = assert!(core::mem::size_of::<SentKey>() == 20);
const _: () = assert!(core::mem::size_of::<SentTo>() == 20);

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]

    use super::*;

    // SAFETY (all below): repr(C), Copy, only integer and byte-array fields,
    // every padding byte is an explicit field (sizes asserted above).
    unsafe impl aya::Pod for LbKey {}
    unsafe impl aya::Pod for LbService {}
    unsafe impl aya::Pod for LbBackend {}
    unsafe impl aya::Pod for LbRevNat {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for AffinityMatchKey {}
    unsafe impl aya::Pod for AffinityAddrKey {}
    unsafe impl aya::Pod for NatTuple {}
    unsafe impl aya::Pod for NatFwd {}
    unsafe impl aya::Pod for NatRev {}
    unsafe impl aya::Pod for NodeAddrs {}
    unsafe impl aya::Pod for SentKey {}
    unsafe impl aya::Pod for SentTo {}
}
