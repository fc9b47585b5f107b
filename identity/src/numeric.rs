//! Numeric identities: Cilium's reserved numbers and the cluster range.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A security identity as carried in the datapath (24 significant bits:
/// bits 0-15 the identity, 16-23 the cluster id; the top byte is a scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NumericIdentity(pub u32);

/// Node-local CIDR/FQDN identities have this scope bit set (never in etcd).
pub const LOCAL_SCOPE: u32 = 1 << 24;
/// Node-local identities of the other nodes (their addresses, with
/// `reserved:remote-node` and the node's labels) are in this part of the
/// local scope; CIDR identities below it.
pub const NODE_SCOPE: u32 = LOCAL_SCOPE | 1 << 23;
/// First user-reserved number (128-255 are fixed mappings chosen by users).
pub const USER_RESERVED_MIN: u32 = 128;
/// First identity of the cluster range.
pub const CLUSTER_MIN: u16 = 256;

impl NumericIdentity {
    pub const UNKNOWN: NumericIdentity = NumericIdentity(0);

    pub fn is_reserved(self) -> bool {
        self.0 < u32::from(CLUSTER_MIN)
    }

    pub fn is_local_scope(self) -> bool {
        self.0 & LOCAL_SCOPE != 0
    }

    /// One of the other nodes' node-local identities.
    pub fn is_node_scope(self) -> bool {
        self.0 & NODE_SCOPE == NODE_SCOPE
    }

    pub fn reserved(self) -> Option<ReservedIdentity> {
        ReservedIdentity::ALL.into_iter().find(|r| r.id() == self)
    }

    pub fn cluster_id(self) -> u8 {
        ((self.0 >> 16) & 0xff) as u8
    }
}

impl fmt::Display for NumericIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Cilium's reserved identities, with Cilium's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservedIdentity {
    Unknown,
    Host,
    World,
    Unmanaged,
    Health,
    Init,
    RemoteNode,
    KubeApiserver,
    Ingress,
    WorldIpv4,
    WorldIpv6,
}

impl ReservedIdentity {
    pub const ALL: [ReservedIdentity; 11] = [
        ReservedIdentity::Unknown,
        ReservedIdentity::Host,
        ReservedIdentity::World,
        ReservedIdentity::Unmanaged,
        ReservedIdentity::Health,
        ReservedIdentity::Init,
        ReservedIdentity::RemoteNode,
        ReservedIdentity::KubeApiserver,
        ReservedIdentity::Ingress,
        ReservedIdentity::WorldIpv4,
        ReservedIdentity::WorldIpv6,
    ];

    pub fn id(self) -> NumericIdentity {
        NumericIdentity(match self {
            ReservedIdentity::Unknown => 0,
            ReservedIdentity::Host => 1,
            ReservedIdentity::World => 2,
            ReservedIdentity::Unmanaged => 3,
            ReservedIdentity::Health => 4,
            ReservedIdentity::Init => 5,
            ReservedIdentity::RemoteNode => 6,
            ReservedIdentity::KubeApiserver => 7,
            ReservedIdentity::Ingress => 8,
            ReservedIdentity::WorldIpv4 => 9,
            ReservedIdentity::WorldIpv6 => 10,
        })
    }

    /// The name in `reserved:<name>` labels and entity names.
    pub fn name(self) -> &'static str {
        match self {
            ReservedIdentity::Unknown => "unknown",
            ReservedIdentity::Host => "host",
            ReservedIdentity::World => "world",
            ReservedIdentity::Unmanaged => "unmanaged",
            ReservedIdentity::Health => "health",
            ReservedIdentity::Init => "init",
            ReservedIdentity::RemoteNode => "remote-node",
            ReservedIdentity::KubeApiserver => "kube-apiserver",
            ReservedIdentity::Ingress => "ingress",
            ReservedIdentity::WorldIpv4 => "world-ipv4",
            ReservedIdentity::WorldIpv6 => "world-ipv6",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The part of the identity space this cluster allocates from:
/// `(cluster_id << 16) | n` for `n` in `min..=max` (default 256-65535).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRange {
    pub cluster_id: u8,
    pub min: u16,
    pub max: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("identity range {min}-{max} is empty")]
    Empty { min: u16, max: u16 },
    #[error("identity range starts at {0}, inside the reserved numbers (the cluster range starts at 256)")]
    OverlapsReserved(u16),
}

impl Default for IdentityRange {
    fn default() -> Self {
        IdentityRange {
            cluster_id: 0,
            min: CLUSTER_MIN,
            max: u16::MAX,
        }
    }
}

impl IdentityRange {
    pub fn new(cluster_id: u8, min: u16, max: u16) -> Result<Self, RangeError> {
        if min < CLUSTER_MIN {
            return Err(RangeError::OverlapsReserved(min));
        }
        if min > max {
            return Err(RangeError::Empty { min, max });
        }
        Ok(IdentityRange {
            cluster_id,
            min,
            max,
        })
    }

    fn base(&self) -> u32 {
        u32::from(self.cluster_id) << 16
    }

    pub fn first(&self) -> NumericIdentity {
        NumericIdentity(self.base() | u32::from(self.min))
    }

    pub fn last(&self) -> NumericIdentity {
        NumericIdentity(self.base() | u32::from(self.max))
    }

    pub fn size(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    pub fn contains(&self, id: NumericIdentity) -> bool {
        id >= self.first() && id <= self.last()
    }

    pub fn iter(&self) -> impl Iterator<Item = NumericIdentity> {
        let base = self.base();
        (self.min..=self.max).map(move |n| NumericIdentity(base | u32::from(n)))
    }
}

impl fmt::Display for IdentityRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first(), self.last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_numbers_match_cilium() {
        let expect = [
            ("unknown", 0),
            ("host", 1),
            ("world", 2),
            ("unmanaged", 3),
            ("health", 4),
            ("init", 5),
            ("remote-node", 6),
            ("kube-apiserver", 7),
            ("ingress", 8),
            ("world-ipv4", 9),
            ("world-ipv6", 10),
        ];
        for (name, id) in expect {
            let r = ReservedIdentity::from_name(name).unwrap();
            assert_eq!(r.id(), NumericIdentity(id));
            assert_eq!(NumericIdentity(id).reserved(), Some(r));
            assert!(r.id().is_reserved());
        }
        assert_eq!(NumericIdentity(11).reserved(), None);
    }

    #[test]
    fn ranges() {
        let r = IdentityRange::default();
        assert_eq!((r.first().0, r.last().0, r.size()), (256, 65535, 65280));
        assert!(r.contains(NumericIdentity(256)) && r.contains(NumericIdentity(65535)));
        assert!(!r.contains(NumericIdentity(255)) && !r.contains(NumericIdentity(65536)));
        let c = IdentityRange::new(3, 256, 300).unwrap();
        assert_eq!(c.first().0, (3 << 16) | 256);
        assert_eq!(c.first().cluster_id(), 3);
        assert_eq!(c.iter().count(), 45);
        assert!(
            !c.contains(NumericIdentity(256)),
            "other cluster's ids are outside"
        );
        assert_eq!(
            IdentityRange::new(0, 100, 300),
            Err(RangeError::OverlapsReserved(100))
        );
        assert_eq!(
            IdentityRange::new(0, 300, 299),
            Err(RangeError::Empty { min: 300, max: 299 })
        );
        assert!(NumericIdentity(LOCAL_SCOPE | 5).is_local_scope());
    }
}
