//! What every object of this crate carries, whichever binary it is (the
//! datapath, `main.rs`, or the smoke test, `smoke.rs`): the panic handler
//! and the license.

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
