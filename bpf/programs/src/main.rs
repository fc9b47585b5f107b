//! Axoneme's datapath programs.
//!
//! Built for `bpfel-unknown-none` with Debian's rustc-web and bpf-linker by
//! `cargo xtask build-bpf`; the agent embeds the resulting object. (The
//! toolchain's smoke-test program is its own object: `smoke.rs`.)
#![no_std]
#![no_main]
// `lock xadd` on map counters: core's atomics are not built for BPF.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod datapath;

use axoneme_bpf_common::tc_action::{TC_ACT_OK, TC_ACT_SHOT};
use aya_ebpf::bindings;

// The shared constants are what userspace tests compare against: keep them
// identical to the kernel's.
const _: () = assert!(TC_ACT_OK == bindings::TC_ACT_OK);
const _: () = assert!(TC_ACT_SHOT == bindings::TC_ACT_SHOT);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Nothing can panic in the programs (no indexing out of bounds, no
    // arithmetic overflow checks in release); a reachable panic would show up
    // as a verifier rejection ("infinite loop detected").
    loop {}
}

/// License string checked by the kernel for GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
