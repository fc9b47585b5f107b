//! The host firewall's part of the datapath's contract: the node's host
//! endpoint is an `ENDPOINTS` entry keyed by the node device's ifindex,
//! and `LIFELINE` holds what its policy never cuts.

/// An address and port the node's own traffic may always use, whatever
/// the host policy says (the agent's kvstore members, the Kubernetes API
/// server): a packet of the host whose source or destination is one of
/// these passes unjudged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LifelineKey {
    /// IPv4 in the first 4 bytes (the rest zero), or IPv6.
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub protocol: u8,
    /// [`crate::family`].
    pub family: u8,
}

/// Entries of `LIFELINE`: a handful of kvstore members and API servers.
pub const LIFELINE_MAX: u32 = 64;

/// The host's identity (`reserved:host`): the host endpoint's, and that
/// of the node's own addresses in this node's ipcache.
pub const IDENTITY_HOST: u32 = 1;
