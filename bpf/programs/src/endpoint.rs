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
        // SAFETY: `slot` points into the array's value, valid for the run.
        // The agent may rewrite it meanwhile: the sequence read before and
        // after tells (volatile reads, with compiler fences keeping the
        // content's reads between them; x86-64 keeps loads in order).
        unsafe {
            let seq = read_volatile(addr_of!((*slot).seq));
            compiler_fence(Ordering::SeqCst);
            let owner = (*slot).ifindex;
            copy_words(addr_of!((*slot).info), out);
            compiler_fence(Ordering::SeqCst);
            if seq & 1 == 0 && owner == ifindex && read_volatile(addr_of!((*slot).seq)) == seq {
                return true;
            }
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
