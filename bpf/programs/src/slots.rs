//! Lookups in a hash keyed by one address through its direct-mapped
//! array of [`AddrSlot`]s (`ENDPOINT_ADDRS`, `ENCRYPT_NODES`): one read of
//! the array, no hashing, whenever the slot settles it; the hash when the
//! slot is shared by several addresses or being rewritten.

use core::ptr::addr_of;

use axoneme_bpf_common::{slot_state, AddrSlot, IpcacheKey};
use aya_ebpf::maps::{Array, HashMap};

use crate::endpoint::{copy_words, read_seqlocked};
use crate::ipcache::addr_key;
use crate::parse::Addr;

/// The value `hash` has for `addr` (of family `fam`), found through
/// `slots` where its slot settles it.
#[inline(always)]
pub(crate) fn lookup(
    slots: &Array<AddrSlot>,
    hash: &HashMap<IpcacheKey, u32>,
    fam: u8,
    addr: &Addr,
) -> Option<u32> {
    if let Some(slot) = slots.get_ptr(AddrSlot::index(fam, &addr.0)) {
        let mut copy = AddrSlot::default();
        // SAFETY: `slot` points into the array's value, valid for the run;
        // the agent may rewrite it meanwhile, which the sequence tells.
        let settled =
            unsafe { read_seqlocked(addr_of!((*slot).seq), || copy_words(slot, &mut copy)) };
        if settled {
            match copy.state {
                slot_state::EMPTY => return None,
                slot_state::ONE => {
                    return (copy.family == fam && same(&copy.addr, addr)).then_some(copy.value)
                }
                _ => {}
            }
        }
    }
    // SAFETY: copied out at once.
    unsafe { hash.get(&addr_key(fam, addr)) }.copied()
}

/// Whether a slot's address is `addr`: two 8-byte compares (both are
/// 8-byte aligned: `AddrSlot` and `Addr` are).
#[inline(always)]
fn same(slot_addr: &[u8; 16], addr: &Addr) -> bool {
    let a = slot_addr.as_ptr() as *const u64;
    let b = addr.0.as_ptr() as *const u64;
    // SAFETY: both point to 16 readable bytes aligned to 8 (the field's
    // offset in the align(8) `AddrSlot` is 16; `Addr` is align(8)).
    unsafe { a.read() == b.read() && a.add(1).read() == b.add(1).read() }
}
