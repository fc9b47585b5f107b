//! What encryption wants in the kernel, computed from the keys this node
//! holds and the other nodes' records: XFRM states and policies, and the
//! datapath's two maps. Pure, so every rule is unit-tested.
//!
//! Per other node P that encrypts (its record has `encryption`), with this
//! node's address M and P's address of the same family:
//! - for each SPI this node holds: an outbound state M → P (mark: encrypt
//!   mark of the SPI) and an inbound state P → M (mark: decrypt mark of P's
//!   index), keyed per pair when the key is a `+` key;
//! - for each SPI this node holds and each pod CIDR of P: an outbound
//!   policy (any source → the CIDR, the SPI's encrypt mark) through ESP in
//!   tunnel mode M → P;
//! - for each pod CIDR of P and each of this node's of the same family:
//!   - a fallback outbound policy for packets without an SPI in their
//!     mark (our CIDR → P's, lower priority), with an outbound state of the
//!     key P's pods are sent with (SPI [`fallback_spi`] on the wire): what the node itself sends from a pod's address, which
//!     no pod program marks (the L7 proxy's answers and upstream
//!     connections), is encrypted too. In strict mode it is there even
//!     without a key in common, so such traffic is dropped (no state), not
//!     sent in clear;
//!   - forward and inbound policies (P's CIDR → ours) expecting ESP from
//!     P: forward for packets to pods, inbound for the L7 proxy's socket
//!     (a decrypted tunnel-mode packet with no policy is refused by the
//!     kernel). The forward one is optional unless strict (in strict mode
//!     clear traffic from P's pods is dropped); the inbound one always is
//!     (see below);
//! - `ENCRYPT`: P's pod CIDRs → the SPI to send with: the newest key both
//!   hold; none in common: 0 (dropped) in strict mode, no entry (clear)
//!   otherwise;
//! - `ENCRYPT_NODES`: P's address → P's index (decrypt marks).
//!
//! Nodes that do not encrypt, or this node when it does not, get nothing:
//! their traffic stays in clear (documented in docs/architecture.md).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use axoneme_bpf_common::{
    decrypt_mark, encrypt_mark, EncryptValue, MARK_DECRYPT_MASK, MARK_ENCRYPT_MASK,
};
use axoneme_identity::NodeRecord;
use axoneme_ipsec::keys::{derive_pair_key, Key};
use axoneme_ipsec::xfrm::{Dir, PolicyId};
use ipnet::IpNet;

/// The reqid of every state and policy Axoneme adds: how it tells its own
/// from others' when it lists the kernel's.
pub const REQID: u32 = 0xa0e5;

/// This node, as encryption sees it.
#[derive(Debug, Clone)]
pub struct Me<'a> {
    pub name: &'a str,
    pub addresses: &'a [IpAddr],
    pub pod_cidrs: &'a [IpNet],
    pub boot_id: &'a str,
    pub strict: bool,
}

/// The priority of the marked outbound policies, and of the fallback (a
/// larger number loses).
pub const PRIORITY_MARKED: u32 = 100;
pub const PRIORITY_FALLBACK: u32 = 200;

/// The mark of the fallback policy and its state: packets without an SPI
/// in their mark (the datapath marked none of them). A state without a mark
/// would match every mark, the datapath's too.
pub const NO_SPI_MARK: (u32, u32) = (0, 0xf000);

/// The SPI on the wire of the fallback's SA for the key `spi`.
pub fn fallback_spi(spi: u8) -> u32 {
    0x100 | u32::from(spi)
}

/// A state to have: its identity and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantState {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The SPI on the wire (the key's, or [`fallback_spi`]).
    pub spi: u32,
    pub mark: Option<(u32, u32)>,
    pub key: Key,
    pub outbound: bool,
}

impl WantState {
    /// What the kernel lists for it.
    pub fn id(&self) -> axoneme_ipsec::xfrm::StateId {
        axoneme_ipsec::xfrm::StateId {
            src: self.src,
            dst: self.dst,
            spi: self.spi,
            reqid: REQID,
            mark: self.mark,
        }
    }
}

/// A policy to have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantPolicy {
    pub src: IpNet,
    pub dst: IpNet,
    pub dir: Dir,
    pub mark: Option<(u32, u32)>,
    pub tmpl_src: IpAddr,
    pub tmpl_dst: IpAddr,
    pub optional: bool,
    pub priority: u32,
}

impl WantPolicy {
    pub fn id(&self) -> PolicyId {
        PolicyId {
            src: self.src,
            dst: self.dst,
            dir: self.dir,
            mark: self.mark,
            reqid: REQID,
        }
    }
}

/// Everything encryption wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub states: Vec<WantState>,
    pub policies: Vec<WantPolicy>,
    /// Other nodes' pod CIDRs → the SPI to send with (0: drop) and the
    /// node's decrypt index.
    pub prefixes: BTreeMap<IpNet, EncryptValue>,
    /// Other nodes' addresses → their decrypt index.
    pub nodes: BTreeMap<IpAddr, u16>,
    /// Per other node that encrypts: the SPI it is sent with (None: no
    /// key in common).
    pub peers: BTreeMap<String, Option<u8>>,
}

/// The whole-address prefix of `ip`'s family (the outbound policies'
/// source: any pod of this node).
fn any(ip: &IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(_) => "0.0.0.0/0".parse().expect("a prefix"),
        IpAddr::V6(_) => "::/0".parse().expect("a prefix"),
    }
}

/// The key of `src` → `dst` for `key` (derived per pair for `+` keys).
fn pair_key(key: &Key, src: (IpAddr, &str), dst: (IpAddr, &str)) -> Key {
    if !key.per_pair {
        return key.clone();
    }
    Key {
        key: derive_pair_key(&key.key, src.0, dst.0, src.1, dst.1),
        ..key.clone()
    }
}

/// What encryption wants, with `keys` (this node's, newest last) and the
/// peers' decrypt indices from `index` (which assigns new ones).
pub fn desired(
    me: &Me<'_>,
    keys: &[Key],
    nodes: &[NodeRecord],
    index: &mut impl FnMut(IpAddr) -> u16,
) -> Desired {
    let mut d = Desired::default();
    let mine: BTreeSet<u8> = keys.iter().map(|k| k.spi).collect();
    for peer in nodes.iter().filter(|n| n.name != me.name) {
        let Some(enc) = &peer.encryption else {
            continue;
        };
        // The newest key both hold.
        let send = keys
            .iter()
            .rev()
            .map(|k| k.spi)
            .find(|spi| enc.spis.contains(spi));
        d.peers.insert(peer.name.clone(), send);
        for m in me.addresses {
            let Some(p) = peer.addresses.iter().find(|a| a.is_ipv4() == m.is_ipv4()) else {
                continue;
            };
            let idx = index(*p);
            d.nodes.insert(*p, idx);
            // Two SAs each way per key: the datapath's (marked with the
            // SPI) and the fallback's. Each SA numbers its packets, so they
            // need SPIs of their own on the wire: one SPI for both would
            // trip the receiver's replay window.
            for key in keys {
                let out_key = pair_key(key, (*m, me.boot_id), (*p, &enc.boot_id));
                let in_key = pair_key(key, (*p, &enc.boot_id), (*m, me.boot_id));
                d.states.push(WantState {
                    src: *m,
                    dst: *p,
                    spi: u32::from(key.spi),
                    mark: Some((encrypt_mark(key.spi), MARK_ENCRYPT_MASK)),
                    key: out_key,
                    outbound: true,
                });
                for spi in [u32::from(key.spi), fallback_spi(key.spi)] {
                    d.states.push(WantState {
                        src: *p,
                        dst: *m,
                        spi,
                        mark: Some((decrypt_mark(idx), MARK_DECRYPT_MASK)),
                        key: in_key.clone(),
                        outbound: false,
                    });
                }
            }
            // The fallback policy's state: the key P's pods are sent with.
            if let Some(key) = send.and_then(|spi| keys.iter().find(|k| k.spi == spi)) {
                d.states.push(WantState {
                    src: *m,
                    dst: *p,
                    spi: fallback_spi(key.spi),
                    mark: Some(NO_SPI_MARK),
                    key: pair_key(key, (*m, me.boot_id), (*p, &enc.boot_id)),
                    outbound: true,
                });
            }
            for cidr in peer
                .pod_cidrs
                .iter()
                .filter(|c| c.addr().is_ipv4() == m.is_ipv4())
            {
                for spi in &mine {
                    d.policies.push(WantPolicy {
                        src: any(m),
                        dst: *cidr,
                        dir: Dir::Out,
                        mark: Some((encrypt_mark(*spi), MARK_ENCRYPT_MASK)),
                        tmpl_src: *m,
                        tmpl_dst: *p,
                        optional: false,
                        priority: PRIORITY_MARKED,
                    });
                }
                for own in me
                    .pod_cidrs
                    .iter()
                    .filter(|c| c.addr().is_ipv4() == m.is_ipv4())
                {
                    if send.is_some() || me.strict {
                        d.policies.push(WantPolicy {
                            src: *own,
                            dst: *cidr,
                            dir: Dir::Out,
                            mark: Some(NO_SPI_MARK),
                            tmpl_src: *m,
                            tmpl_dst: *p,
                            optional: false,
                            priority: PRIORITY_FALLBACK,
                        });
                    }
                    for dir in [Dir::Fwd, Dir::In] {
                        d.policies.push(WantPolicy {
                            src: *cidr,
                            dst: *own,
                            dir,
                            mark: None,
                            tmpl_src: *p,
                            tmpl_dst: *m,
                            // A packet the datapath hands to the L7 proxy
                            // re-enters the stack by a redirect, which drops
                            // its record of decryption: an inbound template
                            // is never required (the forward one is).
                            optional: dir == Dir::In || !me.strict,
                            priority: 0,
                        });
                    }
                }
                match send {
                    Some(spi) => {
                        d.prefixes.insert(*cidr, EncryptValue::new(spi, idx));
                    }
                    None if me.strict => {
                        d.prefixes.insert(*cidr, EncryptValue::new(0, idx));
                    }
                    None => {}
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_identity::NodeEncryption;
    use axoneme_ipsec::keys::parse;

    const BOOT_A: &str = "3f0b7c2e-5b1a-4a57-9d55-6a3c9a8f4e21";
    const BOOT_B: &str = "b7d3c1a9-0e2f-4c6b-8a17-2f5e9d4c3b10";

    fn keys(text: &str) -> Vec<Key> {
        parse(text).unwrap().keys
    }

    fn key3() -> Vec<Key> {
        keys("3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n")
    }

    fn node(name: &str, addr: &str, cidr: &str, spis: Option<&[u8]>) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            addresses: vec![addr.parse().unwrap()],
            pod_cidrs: vec![cidr.parse().unwrap()],
            encryption: spis.map(|s| NodeEncryption {
                boot_id: BOOT_B.into(),
                spis: s.to_vec(),
            }),
        }
    }

    fn me(strict: bool) -> (Vec<IpAddr>, Vec<IpNet>, bool) {
        (
            vec!["192.168.0.1".parse().unwrap()],
            vec!["10.0.1.0/24".parse().unwrap()],
            strict,
        )
    }

    fn run(strict: bool, keys: &[Key], nodes: &[NodeRecord]) -> Desired {
        let (addresses, cidrs, strict) = me(strict);
        let me = Me {
            name: "a",
            addresses: &addresses,
            pod_cidrs: &cidrs,
            boot_id: BOOT_A,
            strict,
        };
        let mut next = 0;
        desired(&me, keys, nodes, &mut |_| {
            next += 1;
            next
        })
    }

    #[test]
    fn a_peer_that_encrypts_gets_states_policies_and_its_prefix_marked() {
        let d = run(
            false,
            &key3(),
            &[node("b", "192.168.0.2", "10.0.2.0/24", Some(&[3]))],
        );
        // Out (the datapath's and the fallback's) and in (both).
        assert_eq!(d.states.len(), 4);
        let out = d.states.iter().find(|s| s.outbound && s.spi == 3).unwrap();
        let fallback = d
            .states
            .iter()
            .find(|s| s.outbound && s.spi == 0x103)
            .unwrap();
        let inb = d.states.iter().find(|s| !s.outbound).unwrap();
        assert_eq!(out.mark, Some((0x3e00, 0xff00)));
        assert_eq!(fallback.mark, Some(NO_SPI_MARK));
        assert_eq!(inb.mark, Some((0x1_0d00, 0xffff_0f00)));
        assert_eq!(fallback.key, out.key, "the same pair key");
        let inbound: Vec<u32> = d
            .states
            .iter()
            .filter(|s| !s.outbound)
            .map(|s| s.spi)
            .collect();
        assert_eq!(inbound, vec![3, 0x103]);
        // Per pair: each direction its own key, neither the global one.
        assert_ne!(out.key.key, inb.key.key);
        assert_ne!(out.key.key, key3()[0].key);
        let policies: Vec<_> = d
            .policies
            .iter()
            .map(|p| (p.dir, p.mark, p.priority))
            .collect();
        assert_eq!(
            policies,
            vec![
                (Dir::Out, Some((0x3e00, 0xff00)), PRIORITY_MARKED),
                (Dir::Out, Some(NO_SPI_MARK), PRIORITY_FALLBACK),
                (Dir::Fwd, None, 0),
                (Dir::In, None, 0)
            ]
        );
        assert!(d.policies[2].optional, "not strict: clear traffic passes");
        assert_eq!(d.policies[1].src, "10.0.1.0/24".parse::<IpNet>().unwrap());
        assert_eq!(
            d.prefixes,
            BTreeMap::from([("10.0.2.0/24".parse().unwrap(), EncryptValue::new(3, 1))])
        );
        assert_eq!(d.nodes.len(), 1);
    }

    #[test]
    fn the_peers_keys_are_derived_the_other_way_round() {
        // What b computes for b → a is what a computes for its inbound.
        let a = run(
            false,
            &key3(),
            &[node("b", "192.168.0.2", "10.0.2.0/24", Some(&[3]))],
        );
        let inbound = a.states.iter().find(|s| !s.outbound).unwrap();
        let b_out = derive_pair_key(
            &key3()[0].key,
            "192.168.0.2".parse().unwrap(),
            "192.168.0.1".parse().unwrap(),
            BOOT_B,
            BOOT_A,
        );
        assert_eq!(inbound.key.key, b_out);
    }

    #[test]
    fn nodes_that_do_not_encrypt_get_nothing() {
        let d = run(
            true,
            &key3(),
            &[node("b", "192.168.0.2", "10.0.2.0/24", None)],
        );
        assert_eq!(d, Desired::default());
    }

    #[test]
    fn without_a_key_in_common_strict_drops_and_otherwise_clear() {
        let peer = [node("b", "192.168.0.2", "10.0.2.0/24", Some(&[5]))];
        let d = run(true, &key3(), &peer);
        assert_eq!(
            d.prefixes,
            BTreeMap::from([("10.0.2.0/24".parse().unwrap(), EncryptValue::new(0, 1))])
        );
        assert!(d.policies.iter().any(|p| p.dir == Dir::Fwd && !p.optional));
        assert_eq!(d.peers["b"], None);
        // The node's own pod-sourced traffic: a fallback policy with no
        // state, so XFRM drops it.
        assert!(d.policies.iter().any(|p| p.priority == PRIORITY_FALLBACK));
        assert!(!d.states.iter().any(|s| s.outbound && s.spi > 0xff));
        let d = run(false, &key3(), &peer);
        assert!(d.prefixes.is_empty());
        assert!(!d.policies.iter().any(|p| p.priority == PRIORITY_FALLBACK));
    }

    #[test]
    fn during_rotation_both_keys_are_installed_and_the_new_one_sends_once_the_peer_has_it() {
        let both = keys(
            "3 rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n\
             4 rfc4106(gcm(aes)) 89abcdef0123456789abcdef0123456789abcdef 128\n",
        );
        let peer = |spis: &'static [u8]| [node("b", "192.168.0.2", "10.0.2.0/24", Some(spis))];
        let d = run(false, &both, &peer(&[3]));
        // Both keys' states each way, and the fallback's.
        assert_eq!(d.states.len(), 7);
        let marked = d.policies.iter().filter(|p| p.priority == PRIORITY_MARKED);
        assert_eq!(marked.count(), 2);
        assert_eq!(
            d.prefixes.values().map(|v| v.spi).collect::<Vec<_>>(),
            vec![3]
        );
        let fallback = |d: &Desired| {
            let s = d.states.iter().find(|s| s.mark == Some(NO_SPI_MARK));
            s.unwrap().spi
        };
        assert_eq!(fallback(&d), 0x103);
        let d = run(false, &both, &peer(&[3, 4]));
        assert_eq!(
            d.prefixes.values().map(|v| v.spi).collect::<Vec<_>>(),
            vec![4]
        );
        assert_eq!(fallback(&d), 0x104);
    }
}
