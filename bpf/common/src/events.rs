//! The event ring buffer's records and rate limit, and the per-packet
//! counters (`METRICS`).

use super::*;

/// Rate limit of the event ring buffer (index 0 of the `CONFIG` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventConfig {
    /// Events per second per CPU; 0 = no events at all.
    pub rate: u32,
    /// Burst size per CPU.
    pub burst: u32,
}

/// Token bucket state per CPU (the `RATE` per-CPU array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateState {
    pub tokens: u64,
    pub last_ns: u64,
}

/// An event in the ring buffer: a drop, a policy verdict or a trace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Event {
    /// [`event_kind`].
    pub kind: u8,
    /// Drops: [`drop_reason`]; traces: [`trace_point`]; verdicts: 0.
    pub reason: u8,
    pub direction: u8,
    pub family: u8,
    pub protocol: u8,
    /// [`match_type`].
    pub match_type: u8,
    /// [`verdict`].
    pub verdict: u8,
    pub pad: u8,
    pub endpoint_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub ifindex: u32,
    /// Packet length.
    pub len: u32,
    /// Network order.
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl Event {
    /// Decodes an event from the bytes the program wrote (native order
    /// fields, as laid out above); `None` if too short.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < core::mem::size_of::<Self>() {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        saddr.copy_from_slice(&b[32..48]);
        daddr.copy_from_slice(&b[48..64]);
        Some(Self {
            kind: b[0],
            reason: b[1],
            direction: b[2],
            family: b[3],
            protocol: b[4],
            match_type: b[5],
            verdict: b[6],
            pad: b[7],
            endpoint_id: u32_at(8),
            src_identity: u32_at(12),
            dst_identity: u32_at(16),
            ifindex: u32_at(20),
            len: u32_at(24),
            sport: u16_at(28),
            dport: u16_at(30),
            saddr,
            daddr,
        })
    }
}

/// What the `METRICS` counters are kept by: Cilium's metrics map key
/// (`struct metrics_key`: reason, direction), plus whether the packet was
/// dropped or forwarded (Cilium tells them apart by reason 0).
///
/// The map is a per-CPU array, not a hash: the key is turned into its slot
/// by [`index`](Self::index), so counting costs no hashing, needs no insert
/// and can never find the map full. Every packet a program sees is counted
/// once per endpoint that judges it, whatever the event rate limit does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricsKey {
    /// [`metrics_kind`].
    pub kind: u8,
    /// Drops: the [`drop_reason`]; forwards: 0.
    pub reason: u8,
    /// [`direction`], seen from the endpoint.
    pub direction: u8,
}

impl MetricsKey {
    /// A forwarded packet in `direction`.
    pub const fn forward(direction: u8) -> Self {
        Self {
            kind: metrics_kind::FORWARD,
            reason: 0,
            direction,
        }
    }

    /// A packet dropped for `reason` in `direction`.
    pub const fn drop(reason: u8, direction: u8) -> Self {
        Self {
            kind: metrics_kind::DROP,
            reason,
            direction,
        }
    }

    /// The key's slot in the `METRICS` array (below [`METRICS_ENTRIES`]).
    pub const fn index(&self) -> u32 {
        ((self.kind as u32 & 1) << 9) | ((self.direction as u32 & 1) << 8) | self.reason as u32
    }

    /// The key of slot `index` (the inverse of [`Self::index`]).
    pub const fn from_index(index: u32) -> Self {
        Self {
            kind: ((index >> 9) & 1) as u8,
            reason: (index & 0xff) as u8,
            direction: ((index >> 8) & 1) as u8,
        }
    }
}

/// What the `VERDICTS` counters are kept by: a new flow's policy verdict
/// (Hubble's `policy_verdicts_total`: direction, match type, action),
/// counted for every new flow the policy judges, whatever the event rate
/// limit does. A per-CPU array indexed like `METRICS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictKey {
    /// [`direction`], seen from the endpoint.
    pub direction: u8,
    /// [`verdict`]: allowed, denied, redirected, audit.
    pub verdict: u8,
    /// [`match_type`]: the kind of entry that decided.
    pub match_type: u8,
}

impl VerdictKey {
    /// The key's slot in the `VERDICTS` array (below [`VERDICTS_ENTRIES`]).
    pub const fn index(&self) -> u32 {
        ((self.direction as u32 & 1) << 6)
            | ((self.verdict as u32 & 7) << 3)
            | (self.match_type as u32 & 7)
    }

    /// The key of slot `index` (the inverse of [`Self::index`]).
    pub const fn from_index(index: u32) -> Self {
        Self {
            direction: ((index >> 6) & 1) as u8,
            verdict: ((index >> 3) & 7) as u8,
            match_type: (index & 7) as u8,
        }
    }
}

/// One CPU's counts of a [`MetricsKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetricsValue {
    pub packets: u64,
    /// Bytes as the program saw them (`skb->len`: from the Ethernet header).
    pub bytes: u64,
}
