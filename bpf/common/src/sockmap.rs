//! The L7 proxy's socket acceleration (Cilium's sockops/sockmap, as
//! Merbridge does for sidecars): a pod's socket and the node proxy's
//! socket of the same redirected connection pass their bytes to each
//! other's receive queue (`bpf_msg_redirect_hash`) instead of through two
//! TCP stacks, the pod's veth and the node's TPROXY rule. See
//! docs/architecture.md, "L7 proxy: socket acceleration".

/// A TCP socket as it sees itself: its own address and port first. IPv4
/// (and IPv4-mapped IPv6) addresses use the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    /// Network order.
    pub local_port: u16,
    /// Network order.
    pub remote_port: u16,
    /// [`super::family::IPV4`] or [`super::family::IPV6`].
    pub family: u8,
    pub pad: [u8; 3],
}

impl SockKey {
    /// The key of the socket at the other end of the connection.
    pub fn peer(&self) -> SockKey {
        SockKey {
            local: self.remote,
            remote: self.local,
            local_port: self.remote_port,
            remote_port: self.local_port,
            family: self.family,
            pad: [0; 3],
        }
    }
}

/// Which of the two sock hashes a socket joins: `SOCK_PODS` or
/// `SOCK_PROXY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockSide {
    Pod,
    Proxy,
}

/// Where the sockops program puts a socket that became established:
/// `in_node` (in the node's network namespace, the proxy's), `active` (it
/// connected), and what conntrack says of its connection's first packet:
/// `redirected` (handed to this node's proxy, the client on this node) or
/// `upstream` (the proxy's own flow to an endpoint of this node). The
/// first leg is a pod connecting and the proxy accepting; the second the
/// proxy connecting and a pod accepting; any other socket (and a tuple
/// that is both, the proxy's upstream reusing its client's) is left alone.
pub fn sock_side(
    in_node: bool,
    active: bool,
    redirected: bool,
    upstream: bool,
) -> Option<SockSide> {
    let fits = match (redirected, upstream) {
        (true, false) => active != in_node,
        (false, true) => active == in_node,
        _ => false,
    };
    match (fits, in_node) {
        (false, _) => None,
        (true, true) => Some(SockSide::Proxy),
        (true, false) => Some(SockSide::Pod),
    }
}

/// Sockets in each of `SOCK_PODS` and `SOCK_PROXY` (a socket leaves its
/// map when it closes).
pub const SOCK_MAX: u32 = 64 * 1024;

/// Indexes of `SOCK_STATS`, a per-CPU array of message counts.
pub mod sock_stat {
    /// Messages handed to the peer socket's receive queue.
    pub const REDIRECTED: u32 = 0;
    /// Messages sent through the TCP stack: the peer socket was not (or,
    /// for an earlier message, had not been) in its map.
    pub const PASSED: u32 = 1;
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

const _: () = assert!(core::mem::size_of::<SockKey>() == 40);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_and_its_peer_swap_ends() {
        let k = SockKey {
            local: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            local_port: 40000u16.to_be(),
            remote_port: 8080u16.to_be(),
            family: crate::family::IPV4,
            pad: [0; 3],
        };
        let p = k.peer();
        assert_eq!((p.local, p.remote), (k.remote, k.local));
        assert_eq!((p.local_port, p.remote_port), (k.remote_port, k.local_port));
        assert_eq!(p.family, k.family);
        assert_eq!(p.peer(), k);
    }

    #[test]
    fn only_the_two_legs_ends_join_and_each_its_own_map() {
        use SockSide::*;
        // (in_node, active, redirected, upstream) -> side
        let want = [
            // First leg: the client pod connects, the proxy accepts.
            ((false, true, true, false), Some(Pod)),
            ((true, false, true, false), Some(Proxy)),
            // ... never the other way round.
            ((false, false, true, false), None),
            ((true, true, true, false), None),
            // Second leg: the proxy connects, the server pod accepts.
            ((true, true, false, true), Some(Proxy)),
            ((false, false, false, true), Some(Pod)),
            ((true, false, false, true), None),
            ((false, true, false, true), None),
        ];
        for ((in_node, active, redirected, upstream), side) in want {
            assert_eq!(
                sock_side(in_node, active, redirected, upstream),
                side,
                "in_node {in_node} active {active} redirected {redirected} upstream {upstream}"
            );
        }
        // Neither, or both (the upstream reusing its client's tuple): no
        // socket joins.
        for in_node in [false, true] {
            for active in [false, true] {
                assert_eq!(sock_side(in_node, active, false, false), None);
                assert_eq!(sock_side(in_node, active, true, true), None);
            }
        }
    }
}
