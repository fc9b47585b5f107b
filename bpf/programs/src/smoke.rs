//! The toolchain's smoke test: a minimal SCHED_CLS program that proves the
//! eBPF build end to end (codegen, BTF, maps, direct packet access accepted
//! by the verifier, BPF_PROG_TEST_RUN). Its own object
//! (`axoneme-bpf-smoke`), which only tests and benches load
//! (`agent/tests/datapath_smoke.rs`; the floor of `agent/benches/datapath/`);
//! the agent's datapath is `main.rs`.
#![no_std]
#![no_main]

mod object;

use axoneme_bpf_common::{
    tc_action::{TC_ACT_OK, TC_ACT_SHOT},
    SMOKE_DENY_PORTS_MAX,
};
use aya_ebpf::{macros::classifier, macros::map, maps::HashMap, programs::TcContext};

/// UDP destination ports (host byte order) that `axoneme_smoke` drops
/// (`map_names::SMOKE_DENY_PORTS`).
#[map]
static SMOKE_DENY_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(SMOKE_DENY_PORTS_MAX, 0);

const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HDR_LEN: usize = 20;
const IPPROTO_UDP: u8 = 17;
const UDP_HDR_LEN: usize = 8;
/// Fragment offset bits of the IPv4 `frag_off` field (host order).
const IP_OFFSET_MASK: u16 = 0x1fff;

/// Why a packet cannot be parsed. Every variant maps to `TC_ACT_SHOT`.
enum ParseError {
    /// The packet is shorter than the headers it announces.
    Truncated,
    /// The IPv4 header length field is below the minimum.
    BadIhl,
}

/// Drops UDP/IPv4 packets whose destination port is in `SMOKE_DENY_PORTS`,
/// and packets too short for the headers they announce; passes the rest.
#[classifier]
pub fn axoneme_smoke(ctx: TcContext) -> i32 {
    match try_axoneme_smoke(&ctx) {
        Ok(action) => action,
        Err(ParseError::Truncated | ParseError::BadIhl) => TC_ACT_SHOT,
    }
}

/// Writes its packet's first byte back in place: a direct write, so the
/// verifier prepends its unclone prologue. The control of the test that
/// no program of the datapath has that prologue (`agent/tests/encrypt.rs`).
#[classifier]
pub fn axoneme_smoke_write(ctx: TcContext) -> i32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // The Ethernet header's length: a bound the verifier follows (one byte,
    // `data < data_end`, compiles to a test it does not).
    if data + ETH_HDR_LEN <= data_end {
        let byte = data as *mut u8;
        // SAFETY: byte 0 lies within the packet's linear data (checked on
        // the packet pointers); volatile, so the store is not folded away.
        unsafe { core::ptr::write_volatile(byte, core::ptr::read_volatile(byte)) };
    }
    TC_ACT_OK
}

fn try_axoneme_smoke(ctx: &TcContext) -> Result<i32, ParseError> {
    let data = ctx.data();
    let data_end = ctx.data_end();

    // Ethernet: 6 dst + 6 src + 2 ethertype.
    let eth = bytes_at::<ETH_HDR_LEN>(data, data_end, 0)?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP {
        return Ok(TC_ACT_OK);
    }

    // IPv4: only the fixed part is needed to find the protocol and L4 offset.
    let ip = bytes_at::<IPV4_MIN_HDR_LEN>(data, data_end, ETH_HDR_LEN)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HDR_LEN {
        return Err(ParseError::BadIhl);
    }
    if ip[9] != IPPROTO_UDP {
        return Ok(TC_ACT_OK);
    }
    // Non-first fragments carry no UDP header: nothing to match on.
    if u16::from_be_bytes([ip[6], ip[7]]) & IP_OFFSET_MASK != 0 {
        return Ok(TC_ACT_OK);
    }

    // UDP: 2 sport + 2 dport + 2 len + 2 csum.
    let udp = bytes_at::<UDP_HDR_LEN>(data, data_end, ETH_HDR_LEN + ihl)?;
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    if SMOKE_DENY_PORTS.get_ptr(dport).is_some() {
        return Ok(TC_ACT_SHOT);
    }
    Ok(TC_ACT_OK)
}

/// Returns the `N` packet bytes at `offset`, or `Truncated` if the packet is
/// shorter. The comparison is on the packet pointers themselves, the form the
/// verifier needs to accept the direct packet access that follows.
#[inline(always)]
fn bytes_at<const N: usize>(
    data: usize,
    data_end: usize,
    offset: usize,
) -> Result<&'static [u8; N], ParseError> {
    let start = data + offset;
    if start + N > data_end {
        return Err(ParseError::Truncated);
    }
    // SAFETY: [start, start + N) lies within [data, data_end), the packet's
    // linear data, which stays valid and unmodified for the whole program run
    // (this program never calls a helper that changes packet data). `[u8; N]`
    // has alignment 1 and every bit pattern is valid.
    Ok(unsafe { &*(start as *const [u8; N]) })
}
