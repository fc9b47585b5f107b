//! Packet fuzzing through `BPF_PROG_TEST_RUN`: random and mutated frames
//! (IPv4 options, IPv6 extension headers, fragments, bad lengths, bytes
//! overwritten, truncation) run through the real programs of an endpoint
//! whose policy allows exactly one flow in each direction: TCP port 80 to
//! and from peer B. A plain parser of the frame as mutated (the reference
//! below) says what each frame is; whatever the program cannot make sense
//! of it must drop, and it must never pass a frame the policy denies. No
//! run may fail or hang. CI runs `CASES` frames; `PROPTEST_CASES` raises
//! it.

mod support;

use axoneme_agent::datapath::{policy_entry, FROM_CONTAINER, TO_CONTAINER};
use axoneme_bpf_common::{endpoint_flags, tc_action::TC_ACT_SHOT, EndpointInfo, IpcacheValue};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Direction, Key, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::*;

const CASES: u32 = 20_000;

const A_ID: u32 = 1000;
const B_ID: u32 = 1001;
const C_ID: u32 = 1002;
const ALLOWED_PORT: u16 = 80;

/// The endpoint, the allowed peer, a denied peer and a world address.
const V4: [[u8; 4]; 4] = [
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [10, 0, 0, 9],
    [203, 0, 113, 7],
];

fn v6(i: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    if i == 3 {
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[15] = 7;
    } else {
        a[0] = 0xfd;
        a[15] = V4[i][3];
    }
    a
}

fn setup() -> TestDatapath {
    let mut dp = load_small_ct();
    let m = &mut dp.maps;
    let both = endpoint_flags::INGRESS_ENFORCED | endpoint_flags::EGRESS_ENFORCED;
    m.set_endpoint(
        1,
        EndpointInfo::new(A_ID, A_ID, both, &[V4[0].into(), v6(0).into()]),
    )
    .unwrap();
    for (i, id) in [(0, A_ID), (1, B_ID), (2, C_ID)] {
        let value = IpcacheValue {
            identity: id,
            ..IpcacheValue::default()
        };
        m.set_ipcache(&std::net::IpAddr::from(V4[i]).into(), value)
            .unwrap();
        m.set_ipcache(&std::net::IpAddr::from(v6(i)).into(), value)
            .unwrap();
    }
    for dir in [Direction::Ingress, Direction::Egress] {
        let key = Key {
            identity: NumericIdentity(B_ID),
            protocol: IPPROTO_TCP,
            port: ALLOWED_PORT,
            prefix: 16,
        };
        let (k, v) = policy_entry(A_ID, dir, &key, &Verdict::Allow, 0);
        dp.maps.set_policy(&k, v).unwrap();
    }
    dp
}

/// What a frame is made of before it is mutated.
#[derive(Debug, Clone)]
struct Frame {
    ingress: bool,
    ipv6: bool,
    /// Index into the addresses: 1 allowed, 2 denied, 3 world.
    peer: usize,
    protocol: u8,
    dport: u16,
    tcp_flags: u8,
    /// IPv4: 4-byte option words (IHL 5 + this).
    options: usize,
    /// IPv4 flags and fragment offset.
    frag: u16,
    /// IPv6: extension headers before the L4 header.
    ext: Vec<u8>,
    /// IPv6 fragment header's offset and M flag.
    ext_frag: u16,
    /// Bytes overwritten: (position, value), positions modulo the length.
    overwrites: Vec<(usize, u8)>,
    /// Cut the frame, to more than its Ethernet header (see `mutate`).
    truncate: Option<usize>,
}

prop_compose! {
    fn frames()(
        ingress in any::<bool>(),
        ipv6 in any::<bool>(),
        peer in 1usize..4,
        protocol in prop::sample::select(vec![IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, 132, 1, 58, 47]),
        dport in prop_oneof![Just(ALLOWED_PORT), Just(81u16), Just(443u16), any::<u16>()],
        tcp_flags in any::<u8>(),
        options in prop_oneof![Just(0usize), 1usize..11],
        frag in prop_oneof![Just(0u16), Just(0x2000u16), Just(0x4000u16), any::<u16>()],
        ext in prop::collection::vec(prop::sample::select(vec![0u8, 43, 44, 51, 60]), 0..6),
        ext_frag in prop_oneof![Just(0u16), Just(1u16), any::<u16>()],
        overwrites in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        truncate in prop::option::weighted(0.3, any::<usize>()),
    ) -> Frame {
        Frame { ingress, ipv6, peer, protocol, dport, tcp_flags, options, frag, ext, ext_frag, overwrites, truncate }
    }
}

fn l4(f: &Frame) -> Vec<u8> {
    match f.protocol {
        IPPROTO_TCP => {
            let mut t = tcp(40000, f.dport, TCP_SYN);
            t[13] = f.tcp_flags | TCP_SYN;
            t
        }
        IPPROTO_UDP | 132 => udp(40000, f.dport, b"payload"),
        1 | 58 => icmp(8 + 120 * u8::from(f.protocol == 58), 0, 7, b"ping"),
        _ => vec![0; 12],
    }
}

/// The frame before mutation.
fn build(f: &Frame) -> Vec<u8> {
    let (src, dst) = if f.ingress { (f.peer, 0) } else { (0, f.peer) };
    let mut protocol = f.protocol;
    if f.ipv6 && protocol == 1 {
        protocol = 58;
    }
    let payload = l4(f);
    if !f.ipv6 {
        let mut pkt = ipv4(V4[src], V4[dst], protocol, &payload, f.frag, 7);
        // Options (NOPs) after the fixed header; IHL and total length follow.
        let words = f.options;
        pkt.splice(34..34, std::iter::repeat_n(1u8, words * 4));
        pkt[14] = 0x45 + u8::try_from(words).unwrap();
        let total = u16::try_from(pkt.len() - 14).unwrap();
        pkt[16..18].copy_from_slice(&total.to_be_bytes());
        return pkt;
    }
    // Extension headers, each 8 bytes (AH: length 0 means 8), ending in L4.
    let mut body = Vec::new();
    for (i, &h) in f.ext.iter().enumerate() {
        let next = f.ext.get(i + 1).copied().unwrap_or(protocol);
        let mut e = [0u8; 8];
        e[0] = next;
        if h == 44 {
            e[2..4].copy_from_slice(&f.ext_frag.to_be_bytes());
            e[7] = 9;
        }
        body.extend_from_slice(&e);
    }
    body.extend_from_slice(&payload);
    let first = f.ext.first().copied().unwrap_or(protocol);
    ipv6(v6(src), v6(dst), first, &body)
}

fn mutate(f: &Frame, mut pkt: Vec<u8>) -> Vec<u8> {
    for &(at, value) in &f.overwrites {
        let n = pkt.len();
        pkt[at % n] = value;
    }
    // The kernel refuses to test-run an Ethernet header alone or less (a
    // device never hands a program such a frame).
    if let Some(t) = f.truncate {
        pkt.truncate(15 + t % (pkt.len() - 14));
    }
    pkt
}

/// What the reference reads in a frame.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Traffic policy does not apply to (ARP; IPv6 neighbour and listener
    /// discovery): the program may pass it.
    Exempt,
    /// An IP packet: its peer (source on ingress, destination on egress),
    /// protocol and destination port (`None` for a later fragment).
    Flow {
        peer: Vec<u8>,
        protocol: u8,
        dport: Option<u16>,
    },
    /// Anything else: not to be passed.
    Malformed,
}

fn reference(pkt: &[u8], ingress: bool) -> Seen {
    let byte = |i: usize| pkt.get(i).copied();
    let word = |i: usize| Some(u16::from_be_bytes([byte(i)?, byte(i + 1)?]));
    let Some(ethertype) = word(12) else {
        return Seen::Malformed;
    };
    let (src, dst, protocol, l4, later) = match ethertype {
        0x0806 => return Seen::Exempt,
        0x0800 => {
            let Some(vihl) = byte(14) else {
                return Seen::Malformed;
            };
            let ihl = usize::from(vihl & 0x0f) * 4;
            let total = word(16).map(usize::from).unwrap_or(0);
            if vihl >> 4 != 4 || ihl < 20 || total < ihl || pkt.len() < 34 {
                return Seen::Malformed;
            }
            let frag = word(20).unwrap_or(0);
            let later = frag & 0x1fff != 0;
            (
                pkt[26..30].to_vec(),
                pkt[30..34].to_vec(),
                pkt[23],
                14 + ihl,
                later,
            )
        }
        0x86dd => {
            if pkt.len() < 54 || pkt[14] >> 4 != 6 {
                return Seen::Malformed;
            }
            let mut next = pkt[20];
            let mut off = 54;
            let mut later = false;
            for _ in 0..4 {
                if !matches!(next, 0 | 43 | 44 | 51 | 60) {
                    break;
                }
                let Some(h) = pkt.get(off..off + 8) else {
                    return Seen::Malformed;
                };
                let len = match next {
                    51 => (usize::from(h[1]) + 2) * 4,
                    44 => {
                        later |= u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0;
                        8
                    }
                    _ => (usize::from(h[1]) + 1) * 8,
                };
                next = h[0];
                off += len;
            }
            if matches!(next, 0 | 43 | 44 | 51 | 60) {
                return Seen::Malformed;
            }
            (pkt[22..38].to_vec(), pkt[38..54].to_vec(), next, off, later)
        }
        _ => return Seen::Malformed,
    };
    let peer = if ingress { src } else { dst };
    if later {
        return Seen::Flow {
            peer,
            protocol,
            dport: None,
        };
    }
    if protocol == 58 && matches!(byte(l4), Some(130..=137 | 143)) {
        return Seen::Exempt;
    }
    let dport = match protocol {
        IPPROTO_TCP | IPPROTO_UDP | 132 => match word(l4 + 2) {
            Some(p) => Some(p),
            None => return Seen::Malformed,
        },
        _ => Some(0),
    };
    Seen::Flow {
        peer,
        protocol,
        dport,
    }
}

/// The shortest frame the kernel test-runs: the Ethernet header and one
/// byte, or the whole fixed IP header.
fn kernel_minimum(pkt: &[u8]) -> usize {
    match pkt.get(12..14) {
        Some([0x08, 0x00]) => 14 + 20,
        Some([0x86, 0xdd]) => 14 + 40,
        _ => 15,
    }
}

/// Whether policy lets `seen` through: TCP to or from B on the allowed
/// port; a later fragment only of TCP with B (its ports come from its
/// first fragment).
fn allowed(seen: &Seen) -> bool {
    match seen {
        Seen::Exempt => true,
        Seen::Malformed => false,
        Seen::Flow {
            peer,
            protocol,
            dport,
        } => {
            let b = peer.as_slice() == V4[1] || peer.as_slice() == v6(1);
            b && *protocol == IPPROTO_TCP && dport.is_none_or(|p| p == ALLOWED_PORT)
        }
    }
}

#[test]
fn mutated_frames_never_pass_where_policy_denies() {
    // The runner takes a `Fn`: the datapath and the counts in cells.
    let dp = std::cell::RefCell::new(setup());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let (passed, total) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let refused = std::cell::Cell::new(0u32);
    let result = runner.run(&frames(), |f| {
        let pkt = mutate(&f, build(&f));
        let program = if f.ingress { TO_CONTAINER } else { FROM_CONTAINER };
        // Each frame judged on its own, with no flow before it.
        let mut dp = dp.borrow_mut();
        dp.maps.clear_ct().unwrap();
        let action = match dp.test_run(program, &pkt) {
            Ok(action) => action,
            // The kernel refuses to test-run an IP frame shorter than its
            // fixed header (a device could hand one to the program, the
            // test harness cannot).
            Err(_) if pkt.len() < kernel_minimum(&pkt) => {
                refused.set(refused.get() + 1);
                return Ok(());
            }
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "the run failed: {}",
                    error_chain(&e)
                )))
            }
        };
        let seen = reference(&pkt, f.ingress);
        total.set(total.get() + 1);
        if action != TC_ACT_SHOT {
            passed.set(passed.get() + 1);
            prop_assert!(
                allowed(&seen),
                "{program} passed (action {action}) a frame policy denies: {seen:?}\nframe {pkt:02x?}"
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (passed, total, refused) = (passed.get(), total.get(), refused.get());
    eprintln!("datapath fuzz: {total} frames run, {passed} passed; {refused} too short to run");
    assert!(
        passed > 0 && passed < total,
        "{passed} of {total} frames passed"
    );
}

/// The property is not met by dropping everything: the allowed flow,
/// unmutated, passes in both directions and families, and B's next port
/// does not.
#[test]
fn the_allowed_flow_passes_unmutated() {
    let mut dp = setup();
    for ingress in [true, false] {
        for ipv6 in [false, true] {
            for (dport, pass) in [(ALLOWED_PORT, true), (ALLOWED_PORT + 1, false)] {
                let f = Frame {
                    ingress,
                    ipv6,
                    peer: 1,
                    protocol: IPPROTO_TCP,
                    dport,
                    tcp_flags: TCP_SYN,
                    options: 0,
                    frag: 0,
                    ext: Vec::new(),
                    ext_frag: 0,
                    overwrites: Vec::new(),
                    truncate: None,
                };
                let pkt = build(&f);
                let program = if ingress {
                    TO_CONTAINER
                } else {
                    FROM_CONTAINER
                };
                dp.maps.clear_ct().unwrap();
                let action = run(&dp, program, &pkt);
                assert_eq!(action != TC_ACT_SHOT, pass, "{f:?}: action {action}");
                assert_eq!(allowed(&reference(&pkt, ingress)), pass, "{f:?}");
            }
        }
    }
}
