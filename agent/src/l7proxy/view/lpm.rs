//! Longest-prefix match over the ipcache's prefixes: one hash table per
//! prefix length that occurs, tried from the longest down. An ipcache
//! holds few distinct lengths (endpoint addresses are /32 and /128, policy
//! CIDRs add a handful), so a lookup is one hash probe for an endpoint and
//! a few for anything else, whatever the number of prefixes — where a scan
//! of every prefix cost time linear in the ipcache (docs/benchmarks.md,
//! "identity lookup").

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// One address family: for each prefix length that occurs, longest first,
/// the masked prefixes of that length.
struct Family<V> {
    lengths: Vec<(u8, HashMap<u128, V>)>,
}

impl<V> Default for Family<V> {
    fn default() -> Self {
        Family {
            lengths: Vec::new(),
        }
    }
}

/// The mask of a `len`-bit prefix within `bits` bits, as the low bits of
/// a `u128` (an IPv4 address is its `u32` value).
fn mask(bits: u8, len: u8) -> u128 {
    let all = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    if len == 0 {
        0
    } else {
        all & !((1u128 << (bits - len)) - 1)
    }
}

impl<V> Family<V> {
    fn insert(&mut self, bits: u8, addr: u128, len: u8, value: V) {
        let key = addr & mask(bits, len);
        let at = match self.lengths.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(at) => at,
            Err(at) => {
                self.lengths.insert(at, (len, HashMap::new()));
                at
            }
        };
        self.lengths[at].1.insert(key, value);
    }

    fn get(&self, bits: u8, addr: u128) -> Option<&V> {
        self.lengths
            .iter()
            .find_map(|(len, table)| table.get(&(addr & mask(bits, *len))))
    }
}

/// Values by IP prefix; [`Lpm::get`] answers the value of the longest
/// prefix containing an address.
pub struct Lpm<V> {
    v4: Family<V>,
    v6: Family<V>,
}

impl<V> Default for Lpm<V> {
    fn default() -> Self {
        Lpm {
            v4: Family::default(),
            v6: Family::default(),
        }
    }
}

impl<V> Lpm<V> {
    /// Sets the value of `net` (its host bits are ignored).
    pub fn insert(&mut self, net: IpNet, value: V) {
        match net {
            IpNet::V4(n) => self
                .v4
                .insert(32, u32::from(n.addr()).into(), n.prefix_len(), value),
            IpNet::V6(n) => self
                .v6
                .insert(128, u128::from(n.addr()), n.prefix_len(), value),
        }
    }

    /// The value of the longest prefix that contains `ip`. An IPv4-mapped
    /// IPv6 address is looked up as IPv6 (callers canonicalise first).
    pub fn get(&self, ip: IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(a) => self.v4.get(32, u32::from(a).into()),
            IpAddr::V6(a) => self.v6.get(128, u128::from(a)),
        }
    }
}

impl<V> FromIterator<(IpNet, V)> for Lpm<V> {
    fn from_iter<I: IntoIterator<Item = (IpNet, V)>>(iter: I) -> Self {
        let mut lpm = Lpm::default();
        for (net, v) in iter {
            lpm.insert(net, v);
        }
        lpm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious answer: every prefix that contains `ip`, the longest.
    fn scan(nets: &[(IpNet, u32)], ip: IpAddr) -> Option<u32> {
        nets.iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, v)| *v)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_in_both_families() {
        let nets = [
            (net("0.0.0.0/0"), 1),
            (net("10.0.0.0/8"), 2),
            (net("10.1.0.0/16"), 3),
            (net("10.1.2.3/32"), 4),
            (net("::/0"), 5),
            (net("fd00::/8"), 6),
            (net("fd00::1/128"), 7),
            // Host bits are ignored.
            (net("192.168.1.77/24"), 8),
        ];
        let lpm: Lpm<u32> = nets.iter().copied().collect();
        for (ip, want) in [
            ("10.1.2.3", 4),
            ("10.1.2.4", 3),
            ("10.2.0.1", 2),
            ("11.0.0.1", 1),
            ("192.168.1.1", 8),
            ("fd00::1", 7),
            ("fd00::2", 6),
            ("fe80::1", 5),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(lpm.get(ip), Some(&want), "{ip}");
            assert_eq!(scan(&nets, ip), Some(want), "{ip}");
        }
        let empty: Lpm<u32> = Lpm::default();
        assert_eq!(empty.get("10.0.0.1".parse().unwrap()), None);
        let v4_only: Lpm<u32> = [(net("0.0.0.0/0"), 1)].into_iter().collect();
        assert_eq!(v4_only.get("::1".parse().unwrap()), None);
    }

    fn any_net() -> impl Strategy<Value = IpNet> {
        // Few distinct high bits so that prefixes nest and overlap.
        prop_oneof![
            (0u32..4, any::<u32>(), 0u8..=32).prop_map(|(hi, lo, len)| {
                let a = std::net::Ipv4Addr::from((hi << 30) | (lo >> 2));
                IpNet::V4(ipnet::Ipv4Net::new(a, len).unwrap())
            }),
            (0u128..4, any::<u128>(), 0u8..=128).prop_map(|(hi, lo, len)| {
                let a = std::net::Ipv6Addr::from((hi << 126) | (lo >> 2));
                IpNet::V6(ipnet::Ipv6Net::new(a, len).unwrap())
            }),
        ]
    }

    proptest! {
        /// Agrees with the scan it replaces, for addresses inside and
        /// outside the prefixes.
        #[test]
        fn agrees_with_a_scan(
            nets in proptest::collection::btree_map(any_net(), any::<u32>(), 0..40),
            probes in proptest::collection::vec(any_net(), 1..40),
        ) {
            // One value per prefix as the ipcache has (keyed by the
            // truncated prefix, as the table keys it).
            let nets: Vec<(IpNet, u32)> = nets
                .into_iter()
                .map(|(n, v)| (n.trunc(), v))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect();
            let lpm: Lpm<u32> = nets.iter().copied().collect();
            for p in probes {
                for ip in [p.addr(), p.network(), p.broadcast()] {
                    prop_assert_eq!(lpm.get(ip).copied(), scan(&nets, ip), "{}", ip);
                }
            }
        }
    }
}
