//! The enforcement programs under `BPF_PROG_TEST_RUN`, each test a
//! setup / packet / check triple: the TC verdict, and the event the program
//! wrote to the ring buffer (Cilium's drop reasons and verdict events).
//!
//! The endpoint under test is "pod A" (10.0.0.1, fd00::1, identity 1000)
//! behind ifindex 1 (test runs come through loopback). `to_container` sees
//! what A receives (its ingress), `from_container` what A sends (egress).
//! Peer B is 10.0.0.2 / fd00::2, identity 2000; 10.0.1.0/24 has identity
//! 3000; every other address is world (2).

#[path = "../support/mod.rs"]
mod support;

mod arrival;
mod delivery;
mod endpoints;
mod observability;
mod packets;
mod policy;

use axoneme_agent::datapath::{policy_entry, FROM_CONTAINER, TO_CONTAINER};
use axoneme_bpf_common::{
    ct_flags, direction, drop_reason, endpoint_flags, event_kind, family, match_type,
    tc_action::TC_ACT_OK, tc_action::TC_ACT_REDIRECT, tc_action::TC_ACT_SHOT, trace_point,
    verdict as ev, CtKey, CtValue, EndpointInfo, EndpointSlot, Event, IpcacheValue, MetricsKey,
    MetricsValue, ENDPOINT_SLOTS,
};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Direction, Key, Verdict};
use support::*;

const A4: [u8; 4] = [10, 0, 0, 1];
const B4: [u8; 4] = [10, 0, 0, 2];
const NET3: [u8; 4] = [10, 0, 1, 9];
const WORLD4: [u8; 4] = [192, 0, 2, 50];
const A_ID: u32 = 1000;
const B_ID: u32 = 2000;

fn a6() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = 1;
    a
}

fn b6() -> [u8; 16] {
    let mut a = a6();
    a[15] = 2;
    a
}

fn setup(flags: u8) -> TestDatapath {
    setup_loaded(load(), flags)
}

/// [`setup`] on a datapath loaded by the caller.
fn setup_loaded(mut dp: TestDatapath, flags: u8) -> TestDatapath {
    let m = &mut dp.maps;
    m.set_event_rate(1_000_000, 1_000_000).unwrap();
    m.set_endpoint(
        1,
        EndpointInfo::new(A_ID, A_ID, flags, &[A4.into(), a6().into()]),
    )
    .unwrap();
    let id = |identity| IpcacheValue {
        identity,
        ..IpcacheValue::default()
    };
    for (net, identity) in [
        ("10.0.0.1/32", A_ID),
        ("10.0.0.2/32", B_ID),
        // Another pod of A's identity.
        ("10.0.0.3/32", A_ID),
        ("10.0.1.0/24", 3000),
        ("fd00::1/128", A_ID),
        ("fd00::2/128", B_ID),
    ] {
        m.set_ipcache(&net.parse().unwrap(), id(identity)).unwrap();
    }
    dp
}

const BOTH: u8 = endpoint_flags::INGRESS_ENFORCED | endpoint_flags::EGRESS_ENFORCED;

fn key(identity: u32, protocol: u8, port: u16, prefix: u8) -> Key {
    Key {
        identity: NumericIdentity(identity),
        protocol,
        port,
        prefix,
    }
}

fn allow(dp: &mut TestDatapath, dir: Direction, k: Key) {
    let (k, v) = policy_entry(A_ID, dir, &k, &Verdict::Allow, 0);
    dp.maps.set_policy(&k, v).unwrap();
}

fn deny(dp: &mut TestDatapath, dir: Direction, k: Key) {
    let (k, v) = policy_entry(A_ID, dir, &k, &Verdict::Deny, 0);
    dp.maps.set_policy(&k, v).unwrap();
}

/// An L7 entry: the flow goes to the proxy on port 15001 (any HTTP rule).
fn redirect(dp: &mut TestDatapath, dir: Direction, k: Key) {
    let rules = std::sync::Arc::new(vec![axoneme_policy::api::HttpRule::default()]);
    let (k, v) = policy_entry(A_ID, dir, &k, &Verdict::Redirect(rules), 15001);
    dp.maps.set_policy(&k, v).unwrap();
}

/// Runs a packet and returns the verdict and the events it produced.
fn send(dp: &mut TestDatapath, program: &'static str, packet: &[u8]) -> (i32, Vec<Event>) {
    let action = run(dp, program, packet);
    (action, dp.maps.drain_events())
}

fn drops(events: &[Event]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e.kind == event_kind::DROP)
        .map(|e| e.reason)
        .collect()
}

fn verdicts(events: &[Event]) -> Vec<(u8, u32, u32, u8)> {
    events
        .iter()
        .filter(|e| e.kind == event_kind::POLICY_VERDICT)
        .map(|e| (e.verdict, e.src_identity, e.dst_identity, e.match_type))
        .collect()
}

fn syn_from(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    ipv4(src, A4, IPPROTO_TCP, &tcp(sport, dport, TCP_SYN), 0x4000, 1)
}

/// The programs copy and clear keys with plain loads and stores: no call to
/// the byte-by-byte `memset`/`memmove`/`memcpy`/`memcmp`/`bcmp` that
/// bpf-linker exports (with LLVM's in-order memcpy expansion they were
/// called on every packet; see docs/architecture.md, "eBPF toolchain").
#[test]
fn programs_call_no_memory_builtins() {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
    let file = object::File::parse(axoneme_agent::datapath::Datapath::object()).unwrap();
    let mut calls = Vec::new();
    let mut programs = 0;
    for section in file.sections() {
        if section.name() != Ok("classifier") {
            continue;
        }
        programs += 1;
        for (_, reloc) in section.relocations() {
            if let RelocationTarget::Symbol(i) = reloc.target() {
                let name = file.symbol_by_index(i).unwrap().name().unwrap();
                if ["memset", "memmove", "memcpy", "memcmp", "bcmp"].contains(&name) {
                    calls.push(name.to_string());
                }
            }
        }
    }
    assert_eq!(programs, 1, "one `classifier` section holds the programs");
    assert!(calls.is_empty(), "calls to memory builtins: {calls:?}");
}
