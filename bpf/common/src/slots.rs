//! Address slots: a direct-mapped array in front of a hash keyed by one
//! address (`ENDPOINT_ADDRS`, `ENCRYPT_NODES`), which the programs read
//! without hashing. The hash stays the truth; the agent keeps each slot
//! saying what the hash holds for the addresses that map to it (an
//! address maps to a slot by its last bits, IPv4 in the first half, IPv6
//! in the second, so a dual-stack pod's two addresses never share one):
//!
//! - [`slot_state::EMPTY`]: none, so an address of this slot is in no
//!   entry (a definite miss, without asking the hash);
//! - [`slot_state::ONE`]: exactly one, `addr` → `value`;
//! - [`slot_state::SHARED`]: several: ask the hash.
//!
//! Array values are rewritten in place, so `seq` works as a seqlock, as in
//! [`crate::EndpointSlot`]: odd while the agent rewrites the slot; a
//! program that reads an odd sequence, or a different one after the
//! content, asks the hash.

use crate::family;

/// Slots of each address array (a power of two).
pub const ADDR_SLOTS: u32 = 4096;

/// What an [`AddrSlot`] says about the addresses that map to it.
pub mod slot_state {
    pub const EMPTY: u8 = 0;
    pub const ONE: u8 = 1;
    pub const SHARED: u8 = 2;
}

#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrSlot {
    pub seq: u32,
    /// The hash's value for `addr` (state [`slot_state::ONE`]).
    pub value: u32,
    /// [`family::IPV4`] or [`family::IPV6`] (state [`slot_state::ONE`]).
    pub family: u8,
    /// A [`slot_state`].
    pub state: u8,
    pub pad: [u8; 6],
    /// The address, as in [`crate::IpcacheKey`] (IPv4 in the first 4
    /// bytes, the rest zero).
    pub addr: [u8; 16],
}

impl AddrSlot {
    /// The slot of an address (of family `fam`, laid out as in
    /// [`crate::IpcacheKey`]): its last bits, in its family's half.
    pub const fn index(fam: u8, addr: &[u8; 16]) -> u32 {
        const HALF: u32 = ADDR_SLOTS / 2;
        let (hi, lo, half) = if fam == family::IPV4 {
            (addr[2], addr[3], 0)
        } else {
            (addr[14], addr[15], HALF)
        };
        ((((hi as u32) << 8) | lo as u32) & (HALF - 1)) | half
    }
}

const _: () = assert!(ADDR_SLOTS.is_power_of_two());
const _: () = assert!(core::mem::size_of::<AddrSlot>() == 32);
const _: () = assert!(core::mem::offset_of!(AddrSlot, addr) == 16);
