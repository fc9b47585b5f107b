//! Named ports: what `port: http` in a `toPorts` entry stands for.
//!
//! A pod declares named ports in its spec (`containers[].ports[].name`); a
//! policy naming one matches, per endpoint, the ports of that name (and
//! protocol): an ingress rule the selected endpoint's own, an egress rule
//! the destination's (see docs/architecture.md, "Named ports").
//!
//! The datapath keeps one policy map per identity, so the engine resolves
//! names per identity: an identity's named ports are the union over every
//! endpoint of it that the agent reports.

use std::collections::{BTreeMap, BTreeSet};

use axoneme_identity::NamedPorts;

/// The `(protocol number, port)` pairs each port name stands for: one per
/// name for an endpoint, the union over its endpoints for an identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortNames(BTreeMap<String, BTreeSet<(u8, u16)>>);

impl PortNames {
    pub const fn new() -> Self {
        PortNames(BTreeMap::new())
    }

    /// One endpoint's named ports (names lower-cased, as policies' are).
    pub fn of_endpoint(ports: &NamedPorts) -> Self {
        let mut out = PortNames::new();
        for (name, p) in ports {
            out.insert(&name.to_ascii_lowercase(), p.protocol.number(), p.port);
        }
        out
    }

    pub fn insert(&mut self, name: &str, protocol: u8, port: u16) {
        self.0
            .entry(name.to_string())
            .or_default()
            .insert((protocol, port));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `(protocol, port)` pairs `name` stands for, if any.
    pub fn get(&self, name: &str) -> Option<&BTreeSet<(u8, u16)>> {
        self.0.get(name)
    }

    /// Whether `name` stands for any port (of any protocol).
    pub fn declares(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|s| !s.is_empty())
    }

    /// The ports `name` stands for with `protocol`.
    pub fn resolve<'a>(&'a self, name: &str, protocol: u8) -> impl Iterator<Item = u16> + 'a {
        self.0
            .get(name)
            .into_iter()
            .flat_map(move |s| s.iter().filter(move |(p, _)| *p == protocol))
            .map(|(_, port)| *port)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u8, u16)> {
        self.0
            .iter()
            .flat_map(|(n, s)| s.iter().map(move |(p, port)| (n.as_str(), *p, *port)))
    }
}

impl<'a> FromIterator<(&'a str, u8, u16)> for PortNames {
    fn from_iter<I: IntoIterator<Item = (&'a str, u8, u16)>>(iter: I) -> Self {
        let mut out = PortNames::new();
        for (n, p, port) in iter {
            out.insert(n, p, port);
        }
        out
    }
}

/// Named ports for no endpoint.
pub static NO_PORTS: PortNames = PortNames::new();

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_identity::{NamedPort, PortProtocol};

    #[test]
    fn endpoint_ports_resolve_by_name_and_protocol() {
        let mut ports = NamedPorts::new();
        ports.insert(
            "HTTP".into(),
            NamedPort {
                protocol: PortProtocol::Tcp,
                port: 8080,
            },
        );
        ports.insert(
            "dns".into(),
            NamedPort {
                protocol: PortProtocol::Udp,
                port: 53,
            },
        );
        let p = PortNames::of_endpoint(&ports);
        assert_eq!(p.resolve("http", 6).collect::<Vec<_>>(), vec![8080]);
        assert!(p.resolve("http", 17).next().is_none());
        assert_eq!(p.resolve("dns", 17).collect::<Vec<_>>(), vec![53]);
        assert!(p.declares("dns") && !p.declares("web"));
        assert_eq!(p.iter().count(), 2);
    }
}
