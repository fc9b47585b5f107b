//! The endpoint behind an interface: `ENDPOINTS` (the truth, a hash by
//! ifindex) and `ENDPOINT_CACHE`, a copy read without hashing, written by
//! the agent like a seqlock (see [`EndpointSlot`]).

use core::ptr::{addr_of, read_volatile};
use core::sync::atomic::{compiler_fence, Ordering};

use axoneme_bpf_common::{family, EndpointInfo, EndpointSlot, ENDPOINTS_MAX, ENDPOINT_SLOTS};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};

use crate::parse::Addr;

#[map]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(ENDPOINTS_MAX, 0);
/// A copy of `ENDPOINTS` read without hashing (see [`EndpointSlot`]).
#[map]
static ENDPOINT_CACHE: Array<EndpointSlot> = Array::pinned(ENDPOINT_SLOTS, 0);

/// Copies the endpoint behind `ifindex` into `out`: from its cache slot
/// when that holds it and was not being rewritten meanwhile, else from the
/// `ENDPOINTS` hash (the truth; the cache only saves hashing the key).
/// False if neither has it.
#[inline(always)]
pub(crate) fn endpoint(ifindex: u32, out: &mut EndpointInfo) -> bool {
    if let Some(slot) = ENDPOINT_CACHE.get_ptr(EndpointSlot::index(ifindex)) {
        // SAFETY: `slot` points into the array's value, valid for the run;
        // the agent may rewrite it meanwhile, which the sequence tells.
        let mut owner = 0;
        let settled = unsafe {
            read_seqlocked(addr_of!((*slot).seq), || {
                owner = (*slot).ifindex;
                copy_words(addr_of!((*slot).info), out);
            })
        };
        if settled && owner == ifindex {
            return true;
        }
    }
    match ENDPOINTS.get_ptr(ifindex) {
        // SAFETY: a pointer into the hash's value, valid for the run; the
        // agent replaces entries whole, never in place.
        Some(info) => {
            unsafe { copy_words(info, out) };
            true
        }
        None => false,
    }
}

/// Runs `read` (a slot's content read from an array the agent rewrites in
/// place, as a seqlock) between two reads of its sequence at `seq`: true
/// if the sequence was even and unchanged, so what `read` read is one
/// write's whole content. Volatile reads, with compiler fences keeping the
/// content's reads between them; x86-64 keeps loads in order.
///
/// # Safety
/// `seq` must point to a readable `u32` and `read` read only memory valid
/// for the run.
#[inline(always)]
pub(crate) unsafe fn read_seqlocked(seq: *const u32, read: impl FnOnce()) -> bool {
    // SAFETY: per the contract.
    let before = unsafe { read_volatile(seq) };
    compiler_fence(Ordering::SeqCst);
    read();
    compiler_fence(Ordering::SeqCst);
    // SAFETY: as above.
    before & 1 == 0 && unsafe { read_volatile(seq) } == before
}

/// Copies a value of 4-byte words one word at a time. A plain copy
/// returned by value is split into its fields and its address arrays into
/// bytes: a hundred instructions and as many stack slots.
///
/// # Safety
/// `src` must point to a readable `T`; `T` must be a plain value (any bit
/// pattern valid) whose size is a multiple of 4 and alignment at least 4.
#[inline(always)]
pub(crate) unsafe fn copy_words<T>(src: *const T, dst: &mut T) {
    let words = core::mem::size_of::<T>() / 4;
    let src = src as *const u32;
    let dst = dst as *mut T as *mut u32;
    for i in 0..words {
        // SAFETY: both are `T`s by the contract, `words` words long.
        unsafe { dst.add(i).write(src.add(i).read()) };
    }
}

/// Whether `addr` is the endpoint's own address of family `fam` (an
/// endpoint without one owns none).
#[inline(always)]
pub(crate) fn owns(ep: &EndpointInfo, fam: u8, addr: &Addr) -> bool {
    if fam == family::IPV4 {
        ep.ipv4 != [0; 4] && addr.v4() == ep.ipv4
    } else {
        ep.ipv6 != [0; 16] && addr.0 == ep.ipv6
    }
}
