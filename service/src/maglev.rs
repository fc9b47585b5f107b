//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4), as Cilium's
//! `pkg/maglev` uses it: a lookup table of `M` entries per service, each the
//! index of a backend; a connection's hash modulo `M` picks its entry. When
//! a backend comes or goes, most entries keep their backend, so most
//! connections keep theirs on every node, with no shared state.
//!
//! Every node must compute the same table for the same backends, so:
//! - the caller passes backends sorted, by a name every node spells the
//!   same (`addr:port`, say), and an entry is an index into them;
//! - the hash is defined here, not taken from a library that may change it:
//!   SipHash-2-4 ([`siphash24`]) of the backend's name, keyed with the
//!   cluster-wide seed: `h1` (the offset) with keys `(seed, K1)`, `h2` (the
//!   skip) with keys `(seed, K2)`, two independent hashes;
//! - `M` is the same cluster-wide setting.
//!
//! `M` must be prime, so that every skip (`1..M`) is coprime to it and a
//! backend's permutation visits every entry ([`check_size`], for the agent
//! to refuse a non-prime `M` at start-up). [`table`] itself is total: for a
//! non-prime `M` it still fills every entry and terminates (a backend whose
//! permutation has visited `M` entries without a free one takes the next
//! free entry after its last), but the table is not Maglev's.
//!
//! Cilium documents `M > 100 × backends`: with fewer entries per backend a
//! change of backends moves more connections. The table is still computed
//! when a service has more backends than `M / 100` ([`fits`] says whether it
//! has, for the agent to report). Populating takes turns, so every backend gets
//! `⌊M/N⌋` or `⌈M/N⌉` entries; with more backends than entries (`N > M`),
//! only the first `M` backends get one.

use std::fmt;

/// Cilium's default table size (prime).
pub const DEFAULT_M: u32 = 16_381;

/// The largest table size accepted (Cilium's largest choice, prime).
pub const MAX_M: u32 = 131_071;

/// The second SipHash key of the offset hash `h1` (ASCII "maglev-1").
pub const K1: u64 = u64::from_be_bytes(*b"maglev-1");
/// The second SipHash key of the skip hash `h2` (ASCII "maglev-2").
pub const K2: u64 = u64::from_be_bytes(*b"maglev-2");

/// Why a table size cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    NotPrime(u32),
    TooLarge(u32),
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::NotPrime(m) => write!(
                f,
                "Maglev table size {m} is not prime (e.g. 251, 1021, 4093, {DEFAULT_M}, 65521)"
            ),
            SizeError::TooLarge(m) => write!(f, "Maglev table size {m} is above {MAX_M}"),
        }
    }
}

impl std::error::Error for SizeError {}

/// Whether `m` is prime (trial division; `m` is at most a few hundred
/// thousand).
pub fn is_prime(m: u32) -> bool {
    if m < 2 {
        return false;
    }
    if m.is_multiple_of(2) {
        return m == 2;
    }
    let m = u64::from(m);
    let mut d = 3u64;
    while d * d <= m {
        if m % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// Checks a table size: prime and at most [`MAX_M`].
pub fn check_size(m: u32) -> Result<(), SizeError> {
    if m > MAX_M {
        return Err(SizeError::TooLarge(m));
    }
    if !is_prime(m) {
        return Err(SizeError::NotPrime(m));
    }
    Ok(())
}

/// Whether `backends` backends fit a table of `m` entries as Cilium
/// recommends (`m > 100 × backends`).
pub fn fits(m: u32, backends: usize) -> bool {
    (m as usize) > backends.saturating_mul(100)
}

/// SipHash-2-4 of `data` with the key `(k0, k1)` (Aumasson and Bernstein's
/// reference; `k0`/`k1` are the key's two little-endian halves).
pub fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k1 ^ 0x7465_6462_7974_6573;
    let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13);
        *v1 ^= *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16);
        *v3 ^= *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21);
        *v3 ^= *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17);
        *v1 ^= *v2;
        *v2 = v2.rotate_left(32);
    };
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let m = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        v3 ^= m;
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= m;
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    // The length's low byte goes in the top byte of the last word.
    last[7] = data.len().to_le_bytes()[0];
    let m = u64::from_le_bytes(last);
    v3 ^= m;
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^= m;
    v2 ^= 0xff;
    for _ in 0..4 {
        round(&mut v0, &mut v1, &mut v2, &mut v3);
    }
    v0 ^ v1 ^ v2 ^ v3
}

/// The Maglev lookup table of `m` entries for `backends` (sorted by the
/// caller), each entry an index into `backends`; empty for no backends.
/// `seed` is the cluster-wide hash seed. See the module docs for `m`.
pub fn table(backends: &[String], m: u32, seed: u64) -> Vec<u32> {
    const FREE: u32 = u32::MAX;
    if backends.is_empty() || m == 0 {
        return Vec::new();
    }
    let m64 = u64::from(m);
    let below_m = |x: u64| usize::try_from(x % m64).expect("below m, a u32");
    let m = m as usize;
    // Per backend: its next candidate entry, its skip, how many entries
    // of its permutation it has tried.
    let mut next = Vec::with_capacity(backends.len());
    let mut skip = Vec::with_capacity(backends.len());
    for b in backends {
        let h1 = siphash24(seed, K1, b.as_bytes());
        let h2 = siphash24(seed, K2, b.as_bytes());
        next.push(below_m(h1));
        skip.push(if m > 1 {
            usize::try_from(h2 % (m64 - 1)).expect("below m") + 1
        } else {
            1
        });
    }
    let mut tried = vec![0usize; backends.len()];
    let mut entry = vec![FREE; m];
    let mut filled = 0;
    loop {
        for (i, index) in (0..backends.len()).zip(0u32..) {
            let slot = loop {
                let c = next[i];
                next[i] = (c + skip[i]) % m;
                tried[i] += 1;
                if entry[c] == FREE {
                    break c;
                }
                if tried[i] >= m {
                    // Only for a non-prime m: this permutation is a shorter
                    // cycle and every entry of it is taken.
                    let free = (1..m)
                        .map(|d| (c + d) % m)
                        .find(|&s| entry[s] == FREE)
                        .expect("a free entry remains while filled < m");
                    next[i] = (free + skip[i]) % m;
                    break free;
                }
            };
            entry[slot] = index;
            filled += 1;
            if filled == m {
                return entry;
            }
        }
    }
}

#[cfg(test)]
mod tests;
