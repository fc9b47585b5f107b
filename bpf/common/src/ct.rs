//! Conntrack and fragment-tracking keys and values.

use super::*;

/// A conntrack key, always in the flow's original orientation (the first
/// packet's source and destination) and per endpoint and direction, so the
/// two endpoints of a node-local flow each keep their own entry. The `CT`
/// map holds IPv6 flows with this key, `CT4` IPv4 flows with [`CtKey4`];
/// the agent shows both in this form.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network order. ICMP echo: the identifier in both ports.
    pub sport: u16,
    pub dport: u16,
    pub endpoint_id: u32,
    pub protocol: u8,
    /// Direction of the first packet, seen from the endpoint.
    pub direction: u8,
    pub family: u8,
    pub pad: u8,
}

/// [`CtKey`] of an IPv4 flow, in its own map (`CT4`): a 20-byte key hashes
/// and compares in less than half the time of the 44-byte one, on every
/// packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Network order. ICMP echo: the identifier in both ports.
    pub sport: u16,
    pub dport: u16,
    pub endpoint_id: u32,
    pub protocol: u8,
    /// Direction of the first packet, seen from the endpoint.
    pub direction: u8,
    pub pad: [u8; 2],
}

impl CtKey4 {
    /// The IPv4 key of `key`, `None` unless it is an IPv4 key.
    pub fn from_key(key: &CtKey) -> Option<Self> {
        if key.family != family::IPV4 {
            return None;
        }
        let mut k = CtKey4 {
            sport: key.sport,
            dport: key.dport,
            endpoint_id: key.endpoint_id,
            protocol: key.protocol,
            direction: key.direction,
            ..CtKey4::default()
        };
        k.saddr.copy_from_slice(&key.saddr[..4]);
        k.daddr.copy_from_slice(&key.daddr[..4]);
        Some(k)
    }

    /// The family-neutral form of this key.
    pub fn to_key(&self) -> CtKey {
        let mut k = CtKey {
            sport: self.sport,
            dport: self.dport,
            endpoint_id: self.endpoint_id,
            protocol: self.protocol,
            direction: self.direction,
            family: family::IPV4,
            ..CtKey::default()
        };
        k.saddr[..4].copy_from_slice(&self.saddr);
        k.daddr[..4].copy_from_slice(&self.daddr);
        k
    }
}

/// A conntrack entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`) after which the entry is dead.
    pub expires_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// The peer's identity when the flow was created.
    pub peer_identity: u32,
    /// L7 proxy port (network order), 0 = none.
    pub proxy_port: u16,
    /// Bit set of [`ct_flags`].
    pub flags: u8,
    pub pad: u8,
}

/// Key of the fragment map: one datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id: u32,
    pub protocol: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// The ports of a datagram's first fragment (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
}
