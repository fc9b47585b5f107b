//! Pod addresses from the node's pod CIDRs (one per family), handed out
//! lowest first and released on delete. The agent rebuilds the used set
//! from its endpoint state files on start, so a restart keeps every pod's
//! address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Why no address could be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("this node has no pod CIDR yet (the operator has not given one)")]
    NoCidr,
    #[error("pod CIDR {0} has no free address")]
    Exhausted(IpNet),
}

/// The node's address allocator.
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    cidrs: Vec<IpNet>,
    used: BTreeMap<IpAddr, String>,
}

impl Ipam {
    pub fn new(cidrs: Vec<IpNet>) -> Self {
        Ipam {
            cidrs,
            used: BTreeMap::new(),
        }
    }

    pub fn cidrs(&self) -> &[IpNet] {
        &self.cidrs
    }

    /// Marks `addr` as `owner`'s (restoring state); addresses outside the
    /// CIDRs are kept as used too, so they are never handed out twice.
    pub fn restore(&mut self, addr: IpAddr, owner: &str) {
        self.used.insert(addr, owner.to_string());
    }

    /// One address from each CIDR for `owner`, or none at all.
    pub fn allocate(&mut self, owner: &str) -> Result<Vec<IpAddr>, IpamError> {
        if self.cidrs.is_empty() {
            return Err(IpamError::NoCidr);
        }
        let mut got = Vec::new();
        for cidr in &self.cidrs {
            match self.free_in(cidr) {
                Some(a) => got.push(a),
                None => return Err(IpamError::Exhausted(*cidr)),
            }
        }
        for a in &got {
            self.used.insert(*a, owner.to_string());
        }
        Ok(got)
    }

    /// Releases every address of `owner`; returns them.
    pub fn release(&mut self, owner: &str) -> Vec<IpAddr> {
        let mine: Vec<IpAddr> = self
            .used
            .iter()
            .filter(|(_, o)| o.as_str() == owner)
            .map(|(a, _)| *a)
            .collect();
        for a in &mine {
            self.used.remove(a);
        }
        mine
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// The lowest free host address: not the network address, and for
    /// IPv4 not the broadcast address.
    fn free_in(&self, cidr: &IpNet) -> Option<IpAddr> {
        let network = cidr.network();
        let broadcast = cidr.broadcast();
        cidr.hosts()
            .filter(|a| *a != network && !(a.is_ipv4() && *a == broadcast))
            .find(|a| !self.used.contains_key(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_one_per_family_lowest_first_and_releases() {
        let mut ipam = Ipam::new(vec![
            "10.200.1.0/30".parse().unwrap(),
            "fd00:a0::100/126".parse().unwrap(),
        ]);
        let a = ipam.allocate("a").unwrap();
        assert_eq!(
            a,
            vec![
                "10.200.1.1".parse::<IpAddr>().unwrap(),
                "fd00:a0::101".parse().unwrap()
            ]
        );
        let b = ipam.allocate("b").unwrap();
        assert_eq!(b[0], "10.200.1.2".parse::<IpAddr>().unwrap());
        // A /30 has two usable IPv4 addresses.
        assert_eq!(
            ipam.allocate("c"),
            Err(IpamError::Exhausted("10.200.1.0/30".parse().unwrap()))
        );
        // A failed allocation takes nothing.
        assert_eq!(ipam.in_use(), 4);
        assert_eq!(ipam.release("a").len(), 2);
        assert_eq!(ipam.allocate("c").unwrap(), a);
        assert!(ipam.release("nobody").is_empty());
    }

    #[test]
    fn restored_addresses_are_not_given_again() {
        let mut ipam = Ipam::new(vec!["10.200.1.0/29".parse().unwrap()]);
        ipam.restore("10.200.1.1".parse().unwrap(), "old");
        assert_eq!(
            ipam.allocate("new").unwrap(),
            vec!["10.200.1.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(Ipam::default().allocate("x"), Err(IpamError::NoCidr));
    }
}
