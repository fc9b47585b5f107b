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

/// Traffic direction, as seen from the endpoint (Cilium's `TRAFFIC_DIRECTION`).
pub mod direction {
    /// Traffic entering the endpoint.
    pub const INGRESS: u8 = 0;
    /// Traffic leaving the endpoint.
    pub const EGRESS: u8 = 1;
}

/// Bits of [`PolicyValue::flags`].
pub mod policy_flags {
    /// The entry denies the traffic (deny wins over allow).
    pub const DENY: u8 = 1;
}

/// Drop reasons, numerically identical to Cilium's `DROP_*` codes
/// (`bpf/lib/common.h`), so tooling that knows Cilium's codes reads ours.
pub mod drop_reason {
    /// Policy denied the packet (no allow entry matched).
    pub const DROP_POLICY: u8 = 133;
    /// Packet headers are truncated or invalid for connection tracking.
    pub const DROP_CT_INVALID_HDR: u8 = 135;
    /// An explicit deny policy matched.
    pub const DROP_POLICY_DENY: u8 = 181;
}

/// TC actions returned by SCHED_CLS programs (`linux/pkt_cls.h`).
pub mod tc_action {
    /// Continue processing the packet.
    pub const TC_ACT_OK: i32 = 0;
    /// Drop the packet.
    pub const TC_ACT_SHOT: i32 = 2;
}

/// Capacity of the smoke-test program's deny map.
pub const SMOKE_DENY_PORTS_MAX: u32 = 64;

/// Key of the per-endpoint policy map (Cilium's `struct policy_key`, simplified).
///
/// `dport == 0` with `protocol == 0` is the L3-only (any port, any protocol) entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    /// Numeric security identity of the peer.
    pub identity: u32,
    /// [`direction::INGRESS`] or [`direction::EGRESS`].
    pub direction: u8,
    /// IP protocol number (6 = TCP, 17 = UDP), 0 for any.
    pub protocol: u8,
    /// Destination port, network order; 0 for any.
    pub dport: u16,
}

impl PolicyKey {
    /// Builds a key from a destination port given in host order.
    pub const fn new(identity: u32, direction: u8, protocol: u8, dport_host: u16) -> Self {
        Self {
            identity,
            direction,
            protocol,
            dport: dport_host.to_be(),
        }
    }

    /// The destination port in host order.
    pub const fn dport_host(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

/// Value of the per-endpoint policy map (Cilium's `struct policy_entry`, simplified).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// L7 proxy port, network order; 0 when no redirect.
    pub proxy_port: u16,
    /// Bit set of [`policy_flags`].
    pub flags: u8,
    /// Explicit padding; always zero.
    pub pad: [u8; 5],
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
        pad: [0; 5],
        packets: 0,
        bytes: 0,
    };

    /// A deny entry.
    pub const DENY: Self = Self {
        flags: policy_flags::DENY,
        ..Self::ALLOW
    };

    /// Whether this entry denies the traffic.
    pub const fn is_deny(&self) -> bool {
        self.flags & policy_flags::DENY != 0
    }
}

const _: () = assert!(core::mem::size_of::<PolicyKey>() == 8);
const _: () = assert!(core::mem::align_of::<PolicyKey>() == 4);
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 24);
const _: () = assert!(core::mem::align_of::<PolicyValue>() == 8);

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]

    use super::{PolicyKey, PolicyValue};

    // SAFETY: repr(C), Copy, only integer fields, no implicit padding
    // (4 + 1 + 1 + 2 = 8 bytes, size asserted above): every bit pattern is valid.
    unsafe impl aya::Pod for PolicyKey {}

    // SAFETY: repr(C), Copy, only integer fields, padding is the explicit `pad`
    // field (2 + 1 + 5 + 8 + 8 = 24 bytes, size asserted above): every bit
    // pattern is valid.
    unsafe impl aya::Pod for PolicyValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn policy_key_layout_matches_cilium_order() {
        assert_eq!(offset_of!(PolicyKey, identity), 0);
        assert_eq!(offset_of!(PolicyKey, direction), 4);
        assert_eq!(offset_of!(PolicyKey, protocol), 5);
        assert_eq!(offset_of!(PolicyKey, dport), 6);
    }

    #[test]
    fn policy_value_layout_has_no_implicit_padding() {
        assert_eq!(offset_of!(PolicyValue, proxy_port), 0);
        assert_eq!(offset_of!(PolicyValue, flags), 2);
        assert_eq!(offset_of!(PolicyValue, pad), 3);
        assert_eq!(offset_of!(PolicyValue, packets), 8);
        assert_eq!(offset_of!(PolicyValue, bytes), 16);
    }

    #[test]
    fn dport_is_stored_in_network_order() {
        let key = PolicyKey::new(42, direction::EGRESS, 17, 53);
        assert_eq!(key.dport.to_ne_bytes(), [0, 53]);
        assert_eq!(key.dport_host(), 53);
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
    }
}
