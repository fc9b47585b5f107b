//! Transparent IPsec's part of the datapath (the agent's `encrypt` task
//! owns the XFRM states and policies and these maps):
//!
//! - [`leaving`]: a pod's packet leaving for another node's pod, when that
//!   node encrypts, gets the encrypt mark with the key's SPI; the node's
//!   XFRM policy for that mark sends it through ESP (tunnel mode between
//!   the two nodes' addresses; routing stays direct). A node that encrypts
//!   but shares no key yet: dropped (strict), never sent in clear.
//! - [`arriving`]: an ESP packet on the node's device gets the decrypt
//!   mark with the sending node's index, which picks that node's inbound
//!   state (per node pair keys). The decrypted packet keeps its pod
//!   source address and is judged by the source's identity as any other.

use axoneme_bpf_common::{
    decrypt_mark, encrypt_mark, family, AddrSlot, EncryptValue, IpcacheKey, ADDR_SLOTS,
    ENCRYPT_MAX, ENCRYPT_NODES_MAX, MARK_DECRYPT, MARK_ENCRYPT, MARK_MASK,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie},
    programs::TcContext,
};

use crate::ipcache::lpm_key;
use crate::parse::{peek, Addr, Flow, ETH_HLEN};
use crate::slots;

#[map]
static ENCRYPT: LpmTrie<IpcacheKey, EncryptValue> = LpmTrie::pinned(ENCRYPT_MAX, 0);

#[map]
static ENCRYPT_NODES: HashMap<IpcacheKey, u32> = HashMap::pinned(ENCRYPT_NODES_MAX, 0);
/// `ENCRYPT_NODES` read without hashing ([`crate::slots`]).
#[map]
static ENCRYPT_NODE_SLOTS: Array<AddrSlot> = Array::pinned(ADDR_SLOTS, 0);

/// Non-zero: this node encrypts. Set by the agent when it loads the
/// programs; a constant to the verifier, which drops this module's code
/// when it is 0.
#[no_mangle]
static AXONEME_ENCRYPT: u8 = 0;

#[inline(always)]
pub(crate) fn enabled() -> bool {
    // SAFETY: a plain read of a static; volatile, so the compiler does not
    // fold the value the loader replaces.
    unsafe { core::ptr::read_volatile(&AXONEME_ENCRYPT) != 0 }
}

const ESP: u8 = 50;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// A pod's packet that leaves the node (no local endpoint has its
/// destination): marked for encryption when the destination is a pod of
/// a node that encrypts. `Err(())`: that node has no key in common with
/// this one yet, drop it.
#[inline(never)]
pub(crate) fn leaving(ctx: &TcContext, flow: &Flow) -> Result<(), ()> {
    let Some(v) = ENCRYPT.get(&lpm_key(flow.family, &flow.daddr)) else {
        return Ok(());
    };
    if v.spi == 0 {
        return Err(());
    }
    // The whole mark (a pod's packet carries none of ours): a
    // read-modify-write of part of it compiles to a byte store into the
    // context, which the verifier refuses.
    ctx.set_mark(encrypt_mark(v.spi));
    Ok(())
}

/// An ESP packet arriving on the node's device from another node: the
/// decrypt mark of that node (unknown nodes get none, and no inbound
/// state matches them: XFRM drops the packet). True for any ESP packet.
#[inline(never)]
pub(crate) fn arriving(ctx: &TcContext) -> bool {
    // Read in place where the headers are in the linear data (every
    // packet this program sees when encryption is on comes here first).
    let Ok(ethertype) = peek::<2>(ctx, 12) else {
        return false;
    };
    let mut saddr = Addr::default();
    let fam = match u16::from_be_bytes(ethertype) {
        ETH_P_IP => {
            if peek::<1>(ctx, ETH_HLEN + 9).ok() != Some([ESP]) {
                return false;
            }
            let Ok(a) = peek::<4>(ctx, ETH_HLEN + 12) else {
                return true;
            };
            saddr.0[..4].copy_from_slice(&a);
            family::IPV4
        }
        ETH_P_IPV6 => {
            if peek::<1>(ctx, ETH_HLEN + 6).ok() != Some([ESP]) {
                return false;
            }
            let Ok(a) = peek::<16>(ctx, ETH_HLEN + 8) else {
                return true;
            };
            saddr.0 = a;
            family::IPV6
        }
        _ => return false,
    };
    if let Some(index) = slots::lookup(&ENCRYPT_NODE_SLOTS, &ENCRYPT_NODES, fam, &saddr) {
        // The whole mark, as in `leaving`.
        ctx.set_mark(decrypt_mark(index as u16));
    }
    true
}

/// A packet XFRM decrypted, back on the node's device: tunnel mode hands
/// the inner packet to the device's receive path again, with the mark
/// [`arriving`] gave the ESP packet (a mark never comes from the wire:
/// crossing into the node's namespace clears it).
#[inline(always)]
pub(crate) fn decrypted(ctx: &TcContext) -> bool {
    // SAFETY: a read of the context's mark.
    let mark = unsafe { (*ctx.skb.skb).mark };
    mark & MARK_MASK == MARK_DECRYPT
}

/// Whether a packet [`decrypted`] comes from a pod of the node whose ESP
/// it was (the index in its decrypt mark is the one `ENCRYPT` gives its
/// source's prefix): what the forward XFRM policy of that node's pods
/// would check in the stack (its template: ESP from that node).
#[inline(never)]
pub(crate) fn from_sender(ctx: &TcContext, flow: &Flow) -> bool {
    // SAFETY: a read of the context's mark.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let index = (mark >> 16) as u16;
    let prefix = ENCRYPT.get(&lpm_key(flow.family, &flow.saddr));
    matches!(prefix, Some(v) if index != 0 && v.node == index)
}

/// ESP leaving by the node's device that XFRM made of a pod's packet: the
/// outer packet keeps the encrypt mark [`leaving`] gave the inner one
/// (Axoneme's states set no output mark).
#[inline(always)]
pub(crate) fn sealed(ctx: &TcContext) -> bool {
    // SAFETY: a read of the context's mark.
    let mark = unsafe { (*ctx.skb.skb).mark };
    mark & MARK_MASK == MARK_ENCRYPT
}
