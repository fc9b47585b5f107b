//! The ipcache: an address's security identity (an LPM trie of prefixes;
//! unknown addresses are world).

use axoneme_bpf_common::{
    direction, family, IpcacheKey, IpcacheValue, IDENTITY_WORLD, IPCACHE_MAX,
};
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, LpmTrie},
};

use crate::parse::{Addr, Flow};
use crate::At;

#[map]
static IPCACHE: LpmTrie<IpcacheKey, IpcacheValue> = LpmTrie::pinned(IPCACHE_MAX, 0);

/// The peer's identity (an LPM lookup, so only for packets that are not
/// part of a tracked flow, or are dropped), and the source's and
/// destination's.
#[inline(always)]
pub(crate) fn ids(at: &At, flow: &Flow) -> (u32, u32, u32) {
    let peer_addr = if at.dir == direction::INGRESS {
        &flow.saddr
    } else {
        &flow.daddr
    };
    let peer = ipcache_identity(flow.family, peer_addr);
    if at.dir == direction::INGRESS {
        (peer, peer, at.ep.identity)
    } else {
        (peer, at.ep.identity, peer)
    }
}

/// An address as the maps key it (`IPCACHE`'s key data, `ENDPOINT_ADDRS`'
/// key).
#[inline(always)]
pub(crate) fn addr_key(fam: u8, addr: &Addr) -> IpcacheKey {
    IpcacheKey {
        pad: [0; 3],
        family: fam,
        addr: addr.0,
    }
}

/// The key that looks `addr` up in a trie keyed like `IPCACHE` (its whole
/// length: the longest prefix holding it matches).
#[inline(always)]
pub(crate) fn lpm_key(fam: u8, addr: &Addr) -> Key<IpcacheKey> {
    let bits = if fam == family::IPV4 { 32 } else { 128 };
    Key::new(IpcacheKey::prefix_len(bits), addr_key(fam, addr))
}

#[inline(always)]
fn ipcache_identity(fam: u8, addr: &Addr) -> u32 {
    match IPCACHE.get(&lpm_key(fam, addr)) {
        Some(v) => v.identity,
        None => IDENTITY_WORLD,
    }
}
