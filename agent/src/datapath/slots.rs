//! A hash keyed by one address (`ENDPOINT_ADDRS`, `ENCRYPT_NODES`) and
//! the direct-mapped array of [`AddrSlot`]s the programs read it through
//! (`bpf/common/src/slots.rs`), written together by their one writer: the
//! hash is the truth, and each slot says what the hash holds for the
//! addresses that map to it (none, one, or several: ask the hash).
//!
//! A new entry goes into the hash first, then its slot; a removed one
//! leaves its slot first: a program that reads the slot in between misses
//! an address on its way in or out, never finds one the hash lacks.

use std::collections::BTreeMap;
use std::path::Path;

use axoneme_bpf_common::{slot_state, AddrSlot, IpcacheKey, ADDR_SLOTS};
use aya::maps::{Array, HashMap, MapData, MapError};
use aya::{Ebpf, Pod};

use super::maps::{ignore_missing, pinned, typed};
use super::{map_error, DatapathError};

/// A hash of addresses and its slots.
pub struct AddrIndex {
    name: &'static str,
    slots_name: &'static str,
    hash: HashMap<MapData, IpcacheKey, u32>,
    slots: Array<MapData, AddrSlot>,
}

impl std::fmt::Debug for AddrIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddrIndex")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The slot of a key.
fn index(key: &IpcacheKey) -> u32 {
    AddrSlot::index(key.family, &key.addr)
}

/// What a slot says of `entries`, the hash's entries that map to it.
fn slot_of(entries: &[(IpcacheKey, u32)]) -> AddrSlot {
    match entries {
        [] => AddrSlot::default(),
        [(key, value)] => one(key, *value),
        _ => shared(),
    }
}

/// A slot of exactly one address, `key` → `value`.
fn one(key: &IpcacheKey, value: u32) -> AddrSlot {
    AddrSlot {
        value,
        family: key.family,
        state: slot_state::ONE,
        addr: key.addr,
        ..AddrSlot::default()
    }
}

/// A slot of several addresses: the programs ask the hash.
fn shared() -> AddrSlot {
    AddrSlot {
        state: slot_state::SHARED,
        ..AddrSlot::default()
    }
}

/// Whether `slot` (state [`slot_state::ONE`]) is `key`'s.
fn holds(slot: &AddrSlot, key: &IpcacheKey) -> bool {
    slot.state == slot_state::ONE && slot.family == key.family && slot.addr == key.addr
}

impl AddrIndex {
    /// The maps of a datapath just loaded, their slots made to agree with
    /// the hash (pins adopted from an earlier run, or from a version
    /// without slots, may not).
    pub(super) fn take(
        ebpf: &mut Ebpf,
        name: &'static str,
        slots_name: &'static str,
    ) -> Result<Self, DatapathError> {
        let mut index = AddrIndex {
            name,
            slots_name,
            hash: typed(ebpf, name)?,
            slots: typed(ebpf, slots_name)?,
        };
        index.rebuild()?;
        Ok(index)
    }

    /// The maps pinned under `dir` by a loaded datapath (read only).
    pub(super) fn open_pinned(
        dir: &Path,
        name: &'static str,
        slots_name: &'static str,
    ) -> Result<Self, DatapathError> {
        Ok(AddrIndex {
            name,
            slots_name,
            hash: pinned(dir, name)?,
            slots: pinned(dir, slots_name)?,
        })
    }

    /// The value for `key`, if the hash has one.
    pub fn get(&self, key: &IpcacheKey) -> Result<Option<u32>, DatapathError> {
        match self.hash.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(self.name, "lookup", source)),
        }
    }

    /// Every entry of the hash.
    pub fn entries(&self) -> Result<Vec<(IpcacheKey, u32)>, DatapathError> {
        self.hash
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| map_error(self.name, "iterate", source))
    }

    /// Sets `key` → `value` (a no-op if it is so already).
    pub fn insert(&mut self, key: IpcacheKey, value: u32) -> Result<(), DatapathError> {
        if self.get(&key)? == Some(value) {
            return Ok(());
        }
        self.hash
            .insert(key, value, 0)
            .map_err(|source| map_error(self.name, "insert", source))?;
        let i = index(&key);
        let slot = self.slot(i)?;
        let want = if slot.state == slot_state::EMPTY || holds(&slot, &key) {
            one(&key, value)
        } else {
            shared()
        };
        self.write_slot(i, slot, want)
    }

    /// Removes `key` (absent is fine).
    pub fn remove(&mut self, key: &IpcacheKey) -> Result<(), DatapathError> {
        let i = index(key);
        let slot = self.slot(i)?;
        let want = if holds(&slot, key) {
            Some(AddrSlot::default())
        } else if slot.state == slot_state::SHARED {
            let rest: Vec<_> = self
                .entries()?
                .into_iter()
                .filter(|(k, _)| k != key && index(k) == i)
                .collect();
            Some(slot_of(&rest))
        } else {
            None
        };
        if let Some(want) = want {
            self.write_slot(i, slot, want)?;
        }
        ignore_missing(self.hash.remove(key), self.name)
    }

    /// Makes every slot say what the hash holds.
    pub fn rebuild(&mut self) -> Result<(), DatapathError> {
        let mut by_slot: BTreeMap<u32, Vec<(IpcacheKey, u32)>> = BTreeMap::new();
        for (key, value) in self.entries()? {
            by_slot.entry(index(&key)).or_default().push((key, value));
        }
        for i in 0..ADDR_SLOTS {
            let want = slot_of(by_slot.get(&i).map_or(&[], Vec::as_slice));
            let slot = self.slot(i)?;
            self.write_slot(i, slot, want)?;
        }
        Ok(())
    }

    /// The slot the programs read `key` through, as it is now.
    pub fn slot_of_key(&self, key: &IpcacheKey) -> Result<AddrSlot, DatapathError> {
        self.slot(index(key))
    }

    /// Slot `i` as it is now.
    fn slot(&self, i: u32) -> Result<AddrSlot, DatapathError> {
        self.slots
            .get(&i, 0)
            .map_err(|source| map_error(self.slots_name, "read", source))
    }

    /// Rewrites slot `i` (`slot`, as read) to `want`'s content, if it
    /// differs.
    fn write_slot(&mut self, i: u32, slot: AddrSlot, want: AddrSlot) -> Result<(), DatapathError> {
        if (AddrSlot { seq: 0, ..slot }) == want {
            return Ok(());
        }
        write_seqlocked(&mut self.slots, self.slots_name, i, slot, want, |s| {
            &mut s.seq
        })
    }
}

/// Rewrites element `i` of an array read by the programs as a seqlock
/// (`slot`: as read; `want`: the new content), in three map updates:
/// sequence odd, content, sequence even. Each leaves the bytes the others
/// write unchanged; an odd sequence left by an interrupted write stays odd
/// until the next.
pub(super) fn write_seqlocked<T: Pod>(
    array: &mut Array<MapData, T>,
    name: &'static str,
    i: u32,
    slot: T,
    want: T,
    seq: impl Fn(&mut T) -> &mut u32,
) -> Result<(), DatapathError> {
    let mut read = slot;
    let writing = *seq(&mut read) | 1;
    let with_seq = |mut v: T, s: u32| {
        *seq(&mut v) = s;
        v
    };
    for step in [
        with_seq(slot, writing),
        with_seq(want, writing),
        with_seq(want, writing.wrapping_add(1)),
    ] {
        array
            .set(i, step, 0)
            .map_err(|source| map_error(name, "write", source))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_bpf_common::family;

    fn v4(last: u8, third: u8) -> IpcacheKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 1, third, last]);
        IpcacheKey {
            pad: [0; 3],
            family: family::IPV4,
            addr,
        }
    }

    #[test]
    fn a_slot_says_none_one_or_shared() {
        assert_eq!(slot_of(&[]).state, slot_state::EMPTY);
        let one = slot_of(&[(v4(7, 0), 42)]);
        assert_eq!((one.state, one.value), (slot_state::ONE, 42));
        assert!(holds(&one, &v4(7, 0)));
        assert!(!holds(&one, &v4(8, 0)));
        assert_eq!(
            slot_of(&[(v4(7, 0), 1), (v4(7, 16), 2)]).state,
            slot_state::SHARED
        );
    }

    #[test]
    fn addresses_map_to_their_last_bits() {
        // 10.1.0.7 and 10.1.16.7 share a slot (2,048 slots per family:
        // 11 bits); an IPv6 address never shares one with an IPv4 one.
        assert_eq!(index(&v4(7, 0)), index(&v4(7, 16)));
        assert_ne!(index(&v4(7, 0)), index(&v4(8, 0)));
        let mut v6 = v4(0, 0);
        v6.family = family::IPV6;
        v6.addr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x07];
        assert_eq!(index(&v6), 0x907);
        v6.addr[15] = 7;
        v6.addr[14] = 0;
        assert_ne!(index(&v6), index(&v4(7, 0)));
    }
}
