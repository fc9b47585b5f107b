//! Policy entities (`fromEntities`, `toEntities`): Cilium's names for
//! classes of peers, and the one table saying which identities each stands
//! for (Cilium keeps the same table as `EntitySelectorMapping` in
//! pkg/policy/api/entity.go, as label selectors).
//!
//! Validation, computation, the engine's dependency tracking and the
//! NetworkPolicy translation all go through [`Entity`]; the API types keep
//! the names as strings so that validation reports every unknown one with
//! its field path.

use std::fmt;
use std::str::FromStr;

use axoneme_identity::{NumericIdentity, ReservedIdentity};

use ReservedIdentity as R;

/// A policy entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    All,
    World,
    WorldIpv4,
    WorldIpv6,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Ingress,
    Init,
    Health,
    Unmanaged,
    None,
}

/// What an entity stands for. The parts add up: `cluster` is seven
/// reserved identities and every workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Members {
    /// Every peer, known or not: the map's ANY identity.
    pub any: bool,
    /// These reserved identities (named whether known yet or not).
    pub reserved: &'static [ReservedIdentity],
    /// Every node-local CIDR identity (each carries `reserved:world`).
    pub cidrs: bool,
    /// Every other node's identity (each carries `reserved:remote-node`).
    pub nodes: bool,
    /// Every workload identity: what the selector `{}` selects.
    pub endpoints: bool,
}

impl Members {
    const NOTHING: Members = Members {
        any: false,
        reserved: &[],
        cidrs: false,
        nodes: false,
        endpoints: false,
    };

    const fn reserved(reserved: &'static [ReservedIdentity]) -> Members {
        Members {
            reserved,
            ..Members::NOTHING
        }
    }

    /// Whether `id` is one of the reserved identities named.
    pub fn names_reserved(&self, id: NumericIdentity) -> bool {
        self.reserved.iter().any(|r| r.id() == id)
    }
}

/// The table: every entity, its name, what it stands for. In the order
/// of the enum (checked by a test), which is also the order error
/// messages list the names in.
const TABLE: [(Entity, &str, Members); 13] = [
    (
        Entity::All,
        "all",
        Members {
            any: true,
            ..Members::NOTHING
        },
    ),
    (
        Entity::World,
        "world",
        Members {
            reserved: &[R::World, R::WorldIpv4, R::WorldIpv6],
            cidrs: true,
            ..Members::NOTHING
        },
    ),
    (
        Entity::WorldIpv4,
        "world-ipv4",
        Members::reserved(&[R::WorldIpv4]),
    ),
    (
        Entity::WorldIpv6,
        "world-ipv6",
        Members::reserved(&[R::WorldIpv6]),
    ),
    (
        Entity::Cluster,
        "cluster",
        Members {
            reserved: &[
                R::Host,
                R::RemoteNode,
                R::Init,
                R::Health,
                R::Unmanaged,
                R::KubeApiserver,
                R::Ingress,
            ],
            endpoints: true,
            nodes: true,
            ..Members::NOTHING
        },
    ),
    (Entity::Host, "host", Members::reserved(&[R::Host])),
    (
        Entity::RemoteNode,
        "remote-node",
        Members {
            reserved: &[R::RemoteNode],
            nodes: true,
            ..Members::NOTHING
        },
    ),
    (
        Entity::KubeApiserver,
        "kube-apiserver",
        Members::reserved(&[R::KubeApiserver]),
    ),
    (Entity::Ingress, "ingress", Members::reserved(&[R::Ingress])),
    (Entity::Init, "init", Members::reserved(&[R::Init])),
    (Entity::Health, "health", Members::reserved(&[R::Health])),
    (
        Entity::Unmanaged,
        "unmanaged",
        Members::reserved(&[R::Unmanaged]),
    ),
    // Selects nothing, but is a peer: a section naming only `none` allows
    // nothing (NetworkPolicy's empty `from`/`to` lists translate to it).
    (Entity::None, "none", Members::NOTHING),
];

impl Entity {
    /// Every entity, in the table's order.
    pub fn iter() -> impl Iterator<Item = Entity> {
        TABLE.iter().map(|(e, _, _)| *e)
    }

    fn row(self) -> &'static (Entity, &'static str, Members) {
        &TABLE[self as usize]
    }

    /// The name policies use.
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// What this entity stands for.
    pub fn members(self) -> &'static Members {
        &self.row().2
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an entity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not an entity (want one of {})", valid_names())]
pub struct UnknownEntity {
    pub name: String,
}

fn valid_names() -> String {
    Entity::iter()
        .map(Entity::name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Entity {
    type Err = UnknownEntity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TABLE
            .iter()
            .find(|(_, name, _)| *name == s)
            .map(|(e, _, _)| *e)
            .ok_or_else(|| UnknownEntity {
                name: s.to_string(),
            })
    }
}

/// The entities a rule section names, as a set. A name that is not an
/// entity (validation rejects it before computation) counts as `none`:
/// it is a peer that selects nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EntitySet(u16);

impl EntitySet {
    pub fn parse<S: AsRef<str>>(names: &[S]) -> EntitySet {
        let mut set = EntitySet::default();
        for n in names {
            let e = n.as_ref().parse().unwrap_or(Entity::None);
            set.0 |= 1 << e as u16;
        }
        set
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, e: Entity) -> bool {
        self.0 & (1 << e as u16) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Entity> {
        Entity::iter().filter(move |e| self.contains(*e))
    }

    /// Whether `f` holds for what some entity of the set stands for.
    pub fn has(self, f: impl Fn(&Members) -> bool) -> bool {
        self.iter().any(|e| f(e.members()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_enum_order_and_names_round_trip() {
        for (i, (e, name, _)) in TABLE.iter().enumerate() {
            assert_eq!(*e as usize, i, "{name}");
            assert_eq!(name.parse::<Entity>(), Ok(*e));
            assert_eq!(e.to_string(), *name);
        }
    }

    #[test]
    fn reserved_entities_are_named_as_their_identities() {
        // Every reserved identity but `unknown` and `world` is an entity of
        // its own name standing for exactly that identity.
        for r in ReservedIdentity::ALL {
            if matches!(r, R::Unknown | R::World) {
                continue;
            }
            let e: Entity = r.name().parse().unwrap();
            assert_eq!(e.members().reserved, &[r], "{e}");
            assert!(e.members().names_reserved(r.id()));
        }
        // `cluster` stands for every reserved identity but the world ones.
        let cluster = Entity::Cluster.members();
        for r in ReservedIdentity::ALL {
            let world = matches!(r, R::Unknown | R::World | R::WorldIpv4 | R::WorldIpv6);
            assert_eq!(cluster.names_reserved(r.id()), !world, "{}", r.name());
        }
    }

    #[test]
    fn unknown_names_are_named_with_the_valid_ones() {
        let err = "moon".parse::<Entity>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"moon\" is not an entity (want one of all, world, world-ipv4, world-ipv6, \
             cluster, host, remote-node, kube-apiserver, ingress, init, health, unmanaged, none)"
        );
        // In a section, an unknown name is a peer selecting nothing.
        let set = EntitySet::parse(&["moon", "host"]);
        assert_eq!(set.iter().collect::<Vec<_>>(), [Entity::Host, Entity::None]);
        assert!(EntitySet::parse::<&str>(&[]).is_empty());
    }
}
