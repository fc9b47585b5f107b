//! SCTP's checksum after a port rewrite, without reading the packet.
//!
//! SCTP's checksum is a CRC32c over the SCTP packet (common header and
//! chunks, the checksum field taken as zero; no pseudo-header, so address
//! rewrites leave it valid), stored little-endian. A CRC is linear: for
//! two messages of one length, `crc(a) ^ crc(b)` is the plain CRC (zero
//! start, no final inversion) of `a ^ b`. A port rewrite changes the first
//! four bytes of an `n`-byte packet, so the new checksum is the old one
//! xor the plain CRC of those four bytes' difference followed by `n - 4`
//! zero bytes — the four bytes' CRC times `x^(8(n-4))` modulo
//! the polynomial (zlib's `crc32_combine` method), the power from two
//! tables computed at build time: two multiplications of 32 steps whatever
//! the packet's size.
//!
//! A checksum field of 0 is left alone: the sender's stack leaves 0 there
//! when the device computes the CRC later (`CHECKSUM_PARTIAL`, which veths
//! advertise), and that later computation covers the rewritten ports.
//!
//! The update is a global function ([`axoneme_sctp_update`]), which the
//! verifier checks once, on its own, rather than once per path through
//! the translation that reaches a call of it (together, more than its
//! limit of instructions).

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};

/// Updates the checksum at `crc_at` of a `len`-byte SCTP packet whose
/// ports changed by `d` (old xor new, in memory order): 0, or non-zero if
/// it could not be (the packet is to be dropped). Global (exported by the
/// link, see `.cargo/config.toml`): its arguments are the context and
/// plain numbers, as the verifier requires of one.
#[no_mangle]
#[inline(never)]
pub extern "C" fn axoneme_sctp_update(skb: *mut __sk_buff, crc_at: u32, len: u32, d: u32) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(delta) = ports_delta(len, d) else {
        return 1;
    };
    let at = crc_at as usize;
    match ctx.load::<u32>(at) {
        Ok(crc) if ctx.store(at, &(crc ^ delta), 0).is_ok() => 0,
        _ => 1,
    }
}

/// CRC32c's polynomial, bit-reflected (bit 31 is x^0).
const POLY: u32 = 0x82f6_3b78;

/// `a * b` modulo the polynomial, both bit-reflected. (Plain branches, not
/// masks: the verifier forks its state on every `[-1, 0] & constant`, and
/// a chain of those multiplies the paths.)
#[inline(always)]
const fn mul(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut i = 0;
    while i < 32 {
        if a & (1 << (31 - i)) != 0 {
            p ^= b;
        }
        b = times_x(b);
        i += 1;
    }
    p
}

/// `b * x` modulo the polynomial.
#[inline(always)]
const fn times_x(b: u32) -> u32 {
    if b & 1 != 0 {
        (b >> 1) ^ POLY
    } else {
        b >> 1
    }
}

/// x^0 and x^8, bit-reflected.
const ONE: u32 = 1 << 31;
const X8: u32 = 1 << 23;

/// `x^(8k)` for k = 0..256: `k` zero bytes appended.
const ZEROS_LO: [u32; 256] = {
    let mut t = [ONE; 256];
    let mut k = 1;
    while k < 256 {
        t[k] = mul(t[k - 1], X8);
        k += 1;
    }
    t
};

/// `x^(8 * 256k)` for k = 0..256: `256k` zero bytes appended.
const ZEROS_HI: [u32; 256] = {
    let mut t = [ONE; 256];
    let step = mul(ZEROS_LO[255], X8);
    let mut k = 1;
    while k < 256 {
        t[k] = mul(t[k - 1], step);
        k += 1;
    }
    t
};

/// The plain CRC of each byte.
const BYTE_CRC: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = times_x(c);
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// The plain CRC of four bytes (`d`'s bytes in memory order).
#[inline(always)]
fn crc4(d: u32) -> u32 {
    let mut c = 0u32;
    for b in d.to_ne_bytes() {
        let i = (c ^ u32::from(b)) & 0xff;
        // SAFETY: a read of a local. Opaque to the compiler, so that it
        // keeps the mask after it, which bounds the index for the verifier
        // (6.1's does not bound the xor of two bytes).
        let i = unsafe { core::ptr::read_volatile(&i) } & 0xff;
        c = (c >> 8) ^ BYTE_CRC[i as usize];
    }
    c
}

/// What to xor into the checksum (as read little-endian) of an `len`-byte
/// SCTP packet whose ports (its first four bytes) change by `d` (old xor
/// new, as the bytes are in the packet, read in memory order). `None` if
/// `len` cannot hold the common header.
#[inline(always)]
fn ports_delta(len: u32, d: u32) -> Option<u32> {
    if !(12..65536).contains(&len) {
        return None;
    }
    // The bytes after the ports, as zeros: x^(8n), n = 256 hi + lo (below
    // 65,536: `len` is).
    let n = len - 4;
    // SAFETY: a read of a local. Opaque to the compiler, so that it keeps
    // the masks below, which tell the verifier the indexes are in bounds.
    let n = unsafe { core::ptr::read_volatile(&n) };
    let lo = ZEROS_LO[(n & 0xff) as usize];
    let hi = ZEROS_HI[((n >> 8) & 0xff) as usize];
    Some(mul(mul(crc4(d), lo), hi))
}
