//! Map keys, values and constants shared by the eBPF programs (`bpf/programs`)
//! and the agent.
//!
//! Every type is `#[repr(C)]`, `Copy` and has explicit padding fields, so that
//! both sides agree on the layout byte for byte and a value built with
//! `Default`/struct literals never carries uninitialised padding into a map
//! (the verifier rejects map updates with uninitialised stack bytes, and the
//! kernel would otherwise copy stale bytes into hash keys).
//!
//! Fields documented as "network order" hold the value exactly as it appears on
//! the wire (big endian), which is what the eBPF side reads straight from packet
//! headers; the helpers convert from host order.
//!
//! With the `user` feature the types implement [`aya::Pod`] so the agent can use
//! them as map keys and values. That is the only `unsafe` in this crate.
#![no_std]
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]
#![cfg_attr(feature = "user", deny(unsafe_code))]

use core::net::IpAddr;

mod codes;
mod ct;
mod encrypt;
mod events;
mod host;
pub mod lb;
mod proxy;
mod slots;
mod sockmap;

pub use codes::*;
pub use ct::*;
pub use encrypt::*;
pub use events::*;
pub use host::*;
pub use proxy::*;
pub use slots::*;
pub use sockmap::*;

pub mod map_names;

/// Security identity of peers the ipcache does not know.
pub const IDENTITY_WORLD: u32 = 2;

/// The loopback device's ifindex (the same in every network namespace):
/// redirected packets re-enter the node's stack there.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Conntrack lifetimes (Cilium's defaults).
pub const CT_SYN_TIMEOUT_S: u64 = 60;
pub const CT_LIFETIME_TCP_S: u64 = 21_600;
pub const CT_CLOSE_TIMEOUT_S: u64 = 10;
pub const CT_LIFETIME_NONTCP_S: u64 = 60;

/// Map capacities.
pub const IPCACHE_MAX: u32 = 512 * 1024;
pub const ENDPOINTS_MAX: u32 = 64 * 1024;
/// Addresses of local endpoints (an IPv4 and an IPv6 address each).
pub const ENDPOINT_ADDRS_MAX: u32 = 2 * ENDPOINTS_MAX;
/// Slots of the endpoint cache (a power of two: the slot of an ifindex is
/// its low bits).
pub const ENDPOINT_SLOTS: u32 = 64 * 1024;
/// All endpoints' policy entries share one LPM trie (allocated on demand).
pub const POLICY_MAX: u32 = 1024 * 1024;
/// Entries of each conntrack map (`CT4` for IPv4, `CT` for IPv6).
pub const CT_MAX: u32 = 256 * 1024;
pub const FRAGS_MAX: u32 = 8 * 1024;
pub const EVENTS_BYTES: u32 = 1024 * 1024;
/// Slots of the `METRICS` array: every [`MetricsKey`] has one.
pub const METRICS_ENTRIES: u32 = 1 << 10;
/// Slots of the `VERDICTS` array: every [`VerdictKey`] has one.
pub const VERDICTS_ENTRIES: u32 = 1 << 7;

/// Capacity of the smoke-test program's deny map.
pub const SMOKE_DENY_PORTS_MAX: u32 = 64;

/// Data of an ipcache LPM key: the prefix length counts the 32 bits of
/// `pad` + `family` first, then address bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheKey {
    pub pad: [u8; 3],
    /// [`family::IPV4`] or [`family::IPV6`].
    pub family: u8,
    /// The address; IPv4 uses the first 4 bytes, the rest is zero.
    pub addr: [u8; 16],
}

impl IpcacheKey {
    /// Bits of the key before the address.
    pub const HEADER_BITS: u32 = 32;

    /// The LPM prefix length for an address prefix of `bits`.
    pub const fn prefix_len(bits: u8) -> u32 {
        Self::HEADER_BITS + bits as u32
    }
}

/// What the ipcache knows about an address or prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    pub identity: u32,
    /// The node (underlay IPv4, network order) hosting the address; zero
    /// when local or not an endpoint.
    pub tunnel_endpoint: [u8; 4],
    /// IPsec key index; 0 = none.
    pub encrypt_key: u8,
    pub pad: [u8; 3],
}

/// A local endpoint, keyed by the ifindex of its host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// The endpoint's number: the first field of its policy entries' keys.
    pub endpoint_id: u32,
    /// The endpoint's security identity.
    pub identity: u32,
    /// Bit set of [`endpoint_flags`].
    pub flags: u8,
    pub pad: [u8; 3],
    /// The endpoint's IPv4 address (all zeros: none): the only IPv4 source
    /// its packets may carry (anti-spoofing).
    pub ipv4: [u8; 4],
    /// The endpoint's IPv6 address (all zeros: none), likewise.
    pub ipv6: [u8; 16],
}

/// A slot of the endpoint cache: an array indexed by the low bits of the
/// host-side veth's ifindex, which the programs read without hashing. The
/// `ENDPOINTS` hash stays the truth; a slot is only a copy of one of its
/// entries, and the programs use it only when it is for their ifindex and
/// was not being rewritten while they read it.
///
/// Array values are rewritten in place, so `seq` works as a seqlock: the
/// agent makes it odd (one map update), writes the new content (a second),
/// then makes it even again (a third). A program that reads an odd
/// sequence, or a different one after the content, uses the hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointSlot {
    pub seq: u32,
    /// The ifindex this slot is for; 0 (no device has it): empty.
    pub ifindex: u32,
    pub info: EndpointInfo,
}

impl EndpointSlot {
    /// The slot of `ifindex`.
    pub const fn index(ifindex: u32) -> u32 {
        ifindex & (ENDPOINT_SLOTS - 1)
    }
}

impl EndpointInfo {
    /// An endpoint with its addresses: the first of each family counts; a
    /// packet from any other address is dropped as spoofed (fail closed;
    /// an endpoint gets one address per pool).
    pub fn new(endpoint_id: u32, identity: u32, flags: u8, addresses: &[IpAddr]) -> Self {
        let mut info = EndpointInfo {
            endpoint_id,
            identity,
            flags,
            ..EndpointInfo::default()
        };
        for addr in addresses.iter().rev() {
            match addr {
                IpAddr::V4(a) => info.ipv4 = a.octets(),
                IpAddr::V6(a) => info.ipv6 = a.octets(),
            }
        }
        info
    }
}

/// Data of a policy LPM key: Cilium's `{identity, direction, proto, dport}`
/// preceded by the endpoint's number, since one trie holds every endpoint's
/// entries. `endpoint_id`, `identity` and `direction` are always matched
/// exactly; then `protocol` (8 bits, or none for "any protocol"), then the
/// leading bits of `dport` (a port range as prefix blocks).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub endpoint_id: u32,
    /// Peer identity; 0 = any peer.
    pub identity: u32,
    /// [`direction::INGRESS`] or [`direction::EGRESS`].
    pub direction: u8,
    /// IP protocol number; 0 = any (and then any port).
    pub protocol: u8,
    /// Destination port (ICMP: the type), network order.
    pub dport: u16,
    /// Never part of the prefix; always zero. It makes the key 16 bytes, so
    /// that the value, which the kernel's LPM trie stores right after the
    /// key, is 8-byte aligned: the datapath adds to its counters atomically,
    /// and an 8-byte atomic that straddles a cache line is a split lock,
    /// which the kernel punishes with a ~10 ms sleep.
    pub pad: u32,
}

impl PolicyKey {
    /// Bits always matched exactly: endpoint, identity, direction.
    pub const EXACT_BITS: u32 = 72;

    /// Builds a key from a destination port given in host order.
    pub const fn new(
        endpoint_id: u32,
        identity: u32,
        direction: u8,
        protocol: u8,
        dport_host: u16,
    ) -> Self {
        Self {
            endpoint_id,
            identity,
            direction,
            protocol,
            dport: dport_host.to_be(),
            pad: 0,
        }
    }

    /// The LPM prefix length of an entry for `protocol` (0 = any) and a port
    /// block of `port_prefix` leading bits (0 = any port, 16 = one port).
    pub const fn prefix_len(protocol: u8, port_prefix: u8) -> u32 {
        if protocol == 0 {
            Self::EXACT_BITS
        } else {
            Self::EXACT_BITS + 8 + port_prefix as u32
        }
    }

    /// The destination port in host order.
    pub const fn dport_host(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

/// Value of a policy entry (Cilium's `struct policy_entry`, simplified).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// L7 proxy port, network order; 0 when no redirect.
    pub proxy_port: u16,
    /// Bit set of [`policy_flags`].
    pub flags: u8,
    /// The entry's [`match_type`] (from its key's shape), for events.
    pub match_type: u8,
    /// Explicit padding; always zero.
    pub pad: [u8; 4],
    /// Packets that matched this entry (updated by the datapath).
    pub packets: u64,
    /// Bytes that matched this entry (updated by the datapath).
    pub bytes: u64,
}

impl PolicyValue {
    /// An allow entry without proxy redirect.
    pub const ALLOW: Self = Self {
        proxy_port: 0,
        flags: 0,
        match_type: 0,
        pad: [0; 4],
        packets: 0,
        bytes: 0,
    };

    /// A deny entry.
    pub const DENY: Self = Self {
        flags: policy_flags::DENY,
        ..Self::ALLOW
    };

    /// An allow entry redirecting to the L7 proxy on `port` (host order).
    pub const fn redirect(port: u16) -> Self {
        Self {
            proxy_port: port.to_be(),
            ..Self::ALLOW
        }
    }

    /// Whether this entry denies the traffic.
    pub const fn is_deny(&self) -> bool {
        self.flags & policy_flags::DENY != 0
    }
}

const _: () = assert!(core::mem::size_of::<IpcacheKey>() == 20);
const _: () = assert!(core::mem::size_of::<IpcacheValue>() == 12);
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 32);
const _: () = assert!(core::mem::size_of::<EndpointSlot>() == 40);
const _: () = assert!(ENDPOINT_SLOTS.is_power_of_two());
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 16);
// LPM tries store the value right after the key data: a key of a multiple of
// 8 bytes keeps the policy value's atomic counters 8-byte aligned (see `pad`).
const _: () = assert!(core::mem::size_of::<PolicyKey>().is_multiple_of(8));
const _: () = assert!(core::mem::align_of::<PolicyKey>() == 4);
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 24);
const _: () = assert!(core::mem::align_of::<PolicyValue>() == 8);
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);
const _: () = assert!(core::mem::size_of::<CtKey4>() == 20);
const _: () = assert!(core::mem::size_of::<CtValue>() == 32);
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);
const _: () = assert!(core::mem::size_of::<FragValue>() == 4);
const _: () = assert!(core::mem::size_of::<EventConfig>() == 8);
const _: () = assert!(core::mem::size_of::<RateState>() == 16);
const _: () = assert!(core::mem::size_of::<Event>() == 64);
const _: () = assert!(core::mem::size_of::<MetricsValue>() == 16);
const _: () = assert!(MetricsKey::drop(255, 1).index() < METRICS_ENTRIES);
const _: () = assert!(
    VerdictKey {
        direction: 1,
        verdict: 7,
        match_type: 7
    }
    .index()
        < VERDICTS_ENTRIES
);

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]

    use super::*;

    // SAFETY (all below): repr(C), Copy, only integer and byte-array fields,
    // every padding byte is an explicit field (sizes asserted above), so
    // every bit pattern is valid.
    unsafe impl aya::Pod for IpcacheKey {}
    unsafe impl aya::Pod for IpcacheValue {}
    unsafe impl aya::Pod for EncryptValue {}
    unsafe impl aya::Pod for LifelineKey {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for EndpointSlot {}
    unsafe impl aya::Pod for AddrSlot {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtKey4 {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for EventConfig {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for MetricsValue {}
    unsafe impl aya::Pod for SockKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn map_names_are_distinct() {
        let all = map_names::DATAPATH.iter().chain(&map_names::SMOKE);
        for (i, a) in all.clone().enumerate() {
            assert!(!a.is_empty());
            assert_eq!(
                all.clone().filter(|b| b == &a).count(),
                1,
                "{a} (#{i}) twice"
            );
        }
    }

    #[test]
    fn policy_key_layout_matches_cilium_order() {
        assert_eq!(offset_of!(PolicyKey, endpoint_id), 0);
        assert_eq!(offset_of!(PolicyKey, identity), 4);
        assert_eq!(offset_of!(PolicyKey, direction), 8);
        assert_eq!(offset_of!(PolicyKey, protocol), 9);
        assert_eq!(offset_of!(PolicyKey, dport), 10);
        assert_eq!(offset_of!(PolicyKey, pad), 12);
    }

    #[test]
    fn policy_prefixes() {
        assert_eq!(PolicyKey::prefix_len(0, 0), 72);
        assert_eq!(PolicyKey::prefix_len(6, 0), 80);
        assert_eq!(PolicyKey::prefix_len(6, 16), 96);
        assert_eq!(
            PolicyKey::prefix_len(6, 16) as usize,
            core::mem::size_of::<PolicyKey>() * 8 - 32,
            "every field but the padding"
        );
        assert_eq!(IpcacheKey::prefix_len(32), 64);
        assert_eq!(IpcacheKey::prefix_len(128), 160);
    }

    #[test]
    fn policy_value_layout_has_no_implicit_padding() {
        assert_eq!(offset_of!(PolicyValue, proxy_port), 0);
        assert_eq!(offset_of!(PolicyValue, flags), 2);
        assert_eq!(offset_of!(PolicyValue, match_type), 3);
        assert_eq!(offset_of!(PolicyValue, pad), 4);
        assert_eq!(offset_of!(PolicyValue, packets), 8);
        assert_eq!(offset_of!(PolicyValue, bytes), 16);
    }

    #[test]
    fn other_layouts_have_no_implicit_padding() {
        assert_eq!(offset_of!(CtKey, sport), 32);
        assert_eq!(offset_of!(CtKey, endpoint_id), 36);
        assert_eq!(offset_of!(CtKey, pad), 43);
        assert_eq!(offset_of!(CtValue, peer_identity), 24);
        assert_eq!(offset_of!(CtValue, pad), 31);
        assert_eq!(offset_of!(Event, endpoint_id), 8);
        assert_eq!(offset_of!(Event, saddr), 32);
        assert_eq!(offset_of!(FragKey, id), 32);
    }

    #[test]
    fn ports_are_stored_in_network_order() {
        let key = PolicyKey::new(1, 42, direction::EGRESS, 17, 53);
        assert_eq!(key.dport.to_ne_bytes(), [0, 53]);
        assert_eq!(key.dport_host(), 53);
        assert_eq!(
            PolicyValue::redirect(15001).proxy_port.to_ne_bytes(),
            [0x3a, 0x99]
        );
    }

    #[test]
    fn events_decode_from_their_bytes() {
        let e = Event {
            kind: event_kind::DROP,
            reason: drop_reason::DROP_POLICY,
            endpoint_id: 7,
            src_identity: 300,
            dst_identity: 301,
            sport: 1234u16.to_be(),
            dport: 80u16.to_be(),
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Event::default()
        };
        let mut bytes = [0u8; 64];
        bytes[0] = e.kind;
        bytes[1] = e.reason;
        bytes[8..12].copy_from_slice(&7u32.to_ne_bytes());
        bytes[12..16].copy_from_slice(&300u32.to_ne_bytes());
        bytes[16..20].copy_from_slice(&301u32.to_ne_bytes());
        bytes[28..30].copy_from_slice(&1234u16.to_be_bytes());
        bytes[30..32].copy_from_slice(&80u16.to_be_bytes());
        bytes[32..36].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(Event::from_bytes(&bytes), Some(e));
        assert_eq!(Event::from_bytes(&bytes[..63]), None);
    }

    #[test]
    fn metrics_keys_have_distinct_slots_and_come_back_from_them() {
        let mut seen = [false; METRICS_ENTRIES as usize];
        for kind in [metrics_kind::FORWARD, metrics_kind::DROP] {
            for dir in [direction::INGRESS, direction::EGRESS] {
                for reason in 0..=255u8 {
                    let key = MetricsKey {
                        kind,
                        reason,
                        direction: dir,
                    };
                    let i = key.index();
                    assert!(!seen[i as usize], "{key:?} shares slot {i}");
                    seen[i as usize] = true;
                    assert_eq!(MetricsKey::from_index(i), key);
                }
            }
        }
    }

    #[test]
    fn verdict_keys_have_distinct_slots_and_come_back_from_them() {
        let mut seen = [false; VERDICTS_ENTRIES as usize];
        for direction in [direction::INGRESS, direction::EGRESS] {
            for verdict in [
                verdict::ALLOWED,
                verdict::DENIED,
                verdict::REDIRECTED,
                verdict::AUDIT,
            ] {
                for match_type in 0..=match_type::ALL {
                    let key = VerdictKey {
                        direction,
                        verdict,
                        match_type,
                    };
                    let i = key.index();
                    assert!(!seen[i as usize], "{key:?} shares slot {i}");
                    seen[i as usize] = true;
                    assert_eq!(VerdictKey::from_index(i), key);
                }
            }
        }
    }

    #[test]
    fn deny_flag() {
        assert!(PolicyValue::DENY.is_deny());
        assert!(!PolicyValue::ALLOW.is_deny());
        assert_eq!(PolicyValue::default(), PolicyValue::ALLOW);
    }

    #[cfg(feature = "user")]
    #[test]
    fn types_are_pod() {
        fn assert_pod<T: aya::Pod>() {}
        assert_pod::<PolicyKey>();
        assert_pod::<PolicyValue>();
        assert_pod::<CtKey>();
        assert_pod::<Event>();
    }
}
