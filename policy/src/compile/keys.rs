//! The policy map's keys and their algebra: port ranges as prefix blocks,
//! intersection, the lookup in Cilium's order, and the closure of an
//! entry set under intersection (see the parent module's docs).

use std::collections::BTreeMap;
use std::sync::Arc;

use axoneme_identity::NumericIdentity;

use crate::api::HttpRule;

pub const ANY_IDENTITY: NumericIdentity = NumericIdentity(0);
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A policy-map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Key {
    /// 0 = any peer.
    pub identity: NumericIdentity,
    /// 0 = any protocol.
    pub protocol: u8,
    /// First port of the block (ICMP: the type).
    pub port: u16,
    /// Significant bits of `port`: 0 = any port, 16 = exactly `port`.
    pub prefix: u8,
}

fn port_mask(prefix: u8) -> u16 {
    if prefix == 0 {
        0
    } else {
        u16::MAX << (16 - u32::from(prefix))
    }
}

impl Key {
    pub fn any() -> Key {
        Key {
            identity: ANY_IDENTITY,
            protocol: PROTO_ANY,
            port: 0,
            prefix: 0,
        }
    }

    /// The last port of the block.
    pub fn end_port(&self) -> u16 {
        self.port | !port_mask(self.prefix)
    }

    fn contains_port(&self, port: u16) -> bool {
        port & port_mask(self.prefix) == self.port
    }

    /// The flows both keys cover, if any.
    pub fn intersect(&self, other: &Key) -> Option<Key> {
        let identity = match (self.identity, other.identity) {
            (a, b) if a == b => a,
            (ANY_IDENTITY, b) => b,
            (a, ANY_IDENTITY) => a,
            _ => return None,
        };
        let protocol = match (self.protocol, other.protocol) {
            (a, b) if a == b => a,
            (PROTO_ANY, b) => b,
            (a, PROTO_ANY) => a,
            _ => return None,
        };
        // Prefix blocks are nested or disjoint.
        let (narrow, wide) = if self.prefix >= other.prefix {
            (self, other)
        } else {
            (other, self)
        };
        if !wide.contains_port(narrow.port) {
            return None;
        }
        Some(Key {
            identity,
            protocol,
            port: narrow.port,
            prefix: narrow.prefix,
        })
    }
}

/// Splits `start..=end` into prefix-aligned blocks.
pub fn port_blocks(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(start), u32::from(end));
    while lo <= hi {
        // Largest aligned block starting at lo that fits.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let prefix = 16 - size.trailing_zeros();
        out.push((
            u16::try_from(lo).expect("port"),
            u8::try_from(prefix).expect("prefix"),
        ));
        lo += size;
    }
    out
}

/// What an entry does with a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// Allowed at L4, sent to the L7 proxy with these rules (any may match).
    Redirect(Arc<Vec<HttpRule>>),
}

impl Verdict {
    /// The union of two allow verdicts.
    fn join(&self, other: &Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Deny, _) | (_, Verdict::Deny) => Verdict::Deny,
            (Verdict::Allow, _) | (_, Verdict::Allow) => Verdict::Allow,
            (Verdict::Redirect(a), Verdict::Redirect(b)) => {
                if b.iter().all(|r| a.contains(r)) {
                    return Verdict::Redirect(a.clone());
                }
                let mut rules = a.as_ref().clone();
                for r in b.iter() {
                    if !rules.contains(r) {
                        rules.push(r.clone());
                    }
                }
                Verdict::Redirect(Arc::new(rules))
            }
        }
    }
}

/// One direction of one endpoint's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionPolicy {
    /// Whether unmatched traffic is denied (else it is allowed).
    pub enforced: bool,
    pub entries: BTreeMap<Key, Verdict>,
}

/// Why a lookup denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No entry allowed the flow (Cilium drop reason 133).
    PolicyDenied,
    /// A deny entry matched (Cilium drop reason 181).
    DenyRule,
}

impl DenyReason {
    pub fn code(self) -> u8 {
        match self {
            DenyReason::PolicyDenied => 133,
            DenyReason::DenyRule => 181,
        }
    }
}

/// A lookup's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(DenyReason),
    Redirect(Arc<Vec<HttpRule>>),
}

impl DirectionPolicy {
    /// Looks a flow up in Cilium's order.
    pub fn lookup(&self, peer: NumericIdentity, protocol: u8, port: u16) -> Decision {
        let probes = [
            (peer, protocol, true),
            (ANY_IDENTITY, protocol, true),
            (peer, protocol, false),
            (ANY_IDENTITY, protocol, false),
            (peer, PROTO_ANY, false),
            (ANY_IDENTITY, PROTO_ANY, false),
        ];
        for (identity, protocol, specific) in probes {
            let prefixes: &[u8] = if specific {
                &[16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
            } else {
                &[0]
            };
            for &prefix in prefixes {
                let key = Key {
                    identity,
                    protocol,
                    port: port & port_mask(prefix),
                    prefix,
                };
                if let Some(v) = self.entries.get(&key) {
                    return match v {
                        Verdict::Allow => Decision::Allow,
                        Verdict::Deny => Decision::Deny(DenyReason::DenyRule),
                        Verdict::Redirect(r) => Decision::Redirect(r.clone()),
                    };
                }
            }
        }
        if self.enforced {
            Decision::Deny(DenyReason::PolicyDenied)
        } else {
            Decision::Allow
        }
    }

    pub(super) fn insert(&mut self, key: Key, verdict: Verdict) {
        match self.entries.get_mut(&key) {
            Some(v) => *v = v.join(&verdict),
            None => {
                self.entries.insert(key, verdict);
            }
        }
    }

    /// Closes the entry set under intersection (see the module docs).
    pub(super) fn close(&mut self) {
        // Entries interact only within one peer identity and with ANY.
        let mut by_peer: BTreeMap<NumericIdentity, Vec<Key>> = BTreeMap::new();
        for k in self.entries.keys() {
            by_peer.entry(k.identity).or_default().push(*k);
        }
        let any: Vec<Key> = by_peer.get(&ANY_IDENTITY).cloned().unwrap_or_default();
        let groups: Vec<Vec<Key>> = by_peer
            .iter()
            .map(|(id, keys)| {
                if *id == ANY_IDENTITY {
                    keys.clone()
                } else {
                    keys.iter().chain(any.iter()).copied().collect()
                }
            })
            .collect();
        for keys in groups {
            self.close_group(keys);
        }
    }

    fn close_group(&mut self, mut keys: Vec<Key>) {
        // Allows first: overlaps get the union; repeat until nothing changes.
        let mut changed = true;
        while changed {
            changed = false;
            let allows: Vec<Key> = keys
                .iter()
                .filter(|k| !matches!(self.entries.get(k), Some(Verdict::Deny)))
                .copied()
                .collect();
            for (i, a) in allows.iter().enumerate() {
                for b in &allows[i + 1..] {
                    let Some(k) = a.intersect(b) else { continue };
                    let joined = self.entries[a].join(&self.entries[b]);
                    let new = match self.entries.get(&k) {
                        Some(cur) => cur.join(&joined),
                        None => joined,
                    };
                    if self.entries.get(&k) != Some(&new) {
                        if !self.entries.contains_key(&k) {
                            keys.push(k);
                        }
                        self.entries.insert(k, new);
                        changed = true;
                    }
                }
            }
        }
        // Then denies override every overlap.
        let denies: Vec<Key> = keys
            .iter()
            .filter(|k| matches!(self.entries.get(k), Some(Verdict::Deny)))
            .copied()
            .collect();
        let others: Vec<Key> = keys
            .iter()
            .filter(|k| !matches!(self.entries.get(k), Some(Verdict::Deny)))
            .copied()
            .collect();
        for d in &denies {
            for a in &others {
                if let Some(k) = d.intersect(a) {
                    self.entries.insert(k, Verdict::Deny);
                }
            }
        }
    }
}

/// Both directions of one endpoint's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl EndpointPolicy {
    pub fn direction(&self, d: Direction) -> &DirectionPolicy {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn direction_mut(&mut self, d: Direction) -> &mut DirectionPolicy {
        match d {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_blocks_cover_ranges_exactly() {
        assert_eq!(port_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(8000, 8003), vec![(8000, 14)]);
        for (a, b) in [(1, 1000), (80, 8080), (1023, 1025), (65000, 65535), (0, 1)] {
            let blocks = port_blocks(a, b);
            let mut covered: Vec<u16> = Vec::new();
            for (start, prefix) in &blocks {
                let k = Key {
                    identity: ANY_IDENTITY,
                    protocol: 6,
                    port: *start,
                    prefix: *prefix,
                };
                covered.extend(k.port..=k.end_port());
            }
            let want: Vec<u16> = (a..=b).collect();
            assert_eq!(covered, want, "{a}-{b}");
            assert!(blocks.len() <= 32);
        }
    }

    #[test]
    fn intersections() {
        let k = |identity, protocol, port, prefix| Key {
            identity: NumericIdentity(identity),
            protocol,
            port,
            prefix,
        };
        assert_eq!(
            k(0, 0, 0, 0).intersect(&k(300, 6, 80, 16)),
            Some(k(300, 6, 80, 16))
        );
        assert_eq!(
            k(300, 6, 0, 0).intersect(&k(0, 6, 80, 16)),
            Some(k(300, 6, 80, 16))
        );
        assert_eq!(k(300, 6, 0, 0).intersect(&k(301, 6, 80, 16)), None);
        assert_eq!(k(300, 6, 0, 0).intersect(&k(300, 17, 80, 16)), None);
        assert_eq!(k(0, 6, 8000, 14).intersect(&k(0, 6, 8004, 16)), None);
        assert_eq!(
            k(0, 6, 8000, 14).intersect(&k(0, 6, 8002, 16)),
            Some(k(0, 6, 8002, 16))
        );
    }
}
