//! Transparent IPsec's marks under `BPF_PROG_TEST_RUN`
//! (`bpf/programs/src/encrypt.rs`): pod A (10.0.0.1, ifindex 1) sends to
//! pods of another node (10.0.2.0/24) that encrypts; the node at
//! 192.168.0.2 is its underlay address.

mod support;

use axoneme_agent::datapath::{FROM_CONTAINER, NODEPORT_EGRESS, NODEPORT_INGRESS, TO_CONTAINER};
use axoneme_agent::encrypt::sync::EncryptWriter;
use axoneme_bpf_common::{
    decrypt_mark, drop_reason, event_kind,
    tc_action::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    EncryptValue, EndpointInfo, IpcacheValue,
};
use support::*;

const A4: [u8; 4] = [10, 0, 0, 1];
const REMOTE_POD: [u8; 4] = [10, 0, 2, 5];
const OTHER_POD: [u8; 4] = [10, 0, 3, 5];
const PEER_NODE: [u8; 4] = [192, 168, 0, 2];
const UNKNOWN_NODE: [u8; 4] = [192, 168, 0, 9];
const ESP: u8 = 50;

fn setup(encrypt: bool) -> (TestDatapath, axoneme_agent::datapath::EncryptMaps) {
    let mut dp = load_options(LoadOptions {
        encrypt,
        ..LoadOptions::default()
    });
    dp.maps.set_event_rate(1_000_000, 1_000_000).unwrap();
    dp.maps
        .set_endpoint(1, EndpointInfo::new(1000, 1000, 0, &[A4.into()]))
        .unwrap();
    for (net, identity) in [("10.0.0.1/32", 1000), ("10.0.2.0/24", 2000)] {
        let v = IpcacheValue {
            identity,
            ..IpcacheValue::default()
        };
        dp.maps.set_ipcache(&net.parse().unwrap(), v).unwrap();
    }
    let mut maps = dp.take_encrypt_maps().unwrap();
    maps.set_prefix("10.0.2.0/24".parse().unwrap(), EncryptValue::new(3, 7))
        .unwrap();
    maps.set_node(PEER_NODE.into(), 7).unwrap();
    (dp, maps)
}

fn syn(dst: [u8; 4], sport: u16) -> Vec<u8> {
    ipv4(A4, dst, IPPROTO_TCP, &tcp(sport, 80, TCP_SYN), 0, 1)
}

fn esp(src: [u8; 4]) -> Vec<u8> {
    let mut payload = 0x0000_0003u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&1u32.to_be_bytes());
    payload.extend_from_slice(&[0xab; 32]);
    ipv4(src, [192, 168, 0, 1], ESP, &payload, 0, 1)
}

#[test]
fn pod_traffic_to_a_node_that_encrypts_is_marked_with_the_keys_spi() {
    let (dp, _maps) = setup(true);
    let (action, mark) = dp
        .test_run_mark_out(FROM_CONTAINER, &syn(REMOTE_POD, 40000))
        .unwrap();
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(mark, 0x3e00, "encrypt magic 0x0e00, SPI 3 in bits 12-15");
    // Pods of nodes that do not encrypt: unmarked, in clear.
    let (action, mark) = dp
        .test_run_mark_out(FROM_CONTAINER, &syn(OTHER_POD, 40001))
        .unwrap();
    assert_eq!((action, mark), (TC_ACT_OK, 0));
}

#[test]
fn without_a_key_in_common_the_flow_is_dropped_even_when_tracked() {
    let (mut dp, mut maps) = setup(true);
    let packet = syn(REMOTE_POD, 40002);
    assert_eq!(run(&dp, FROM_CONTAINER, &packet), TC_ACT_OK);
    dp.maps.drain_events();
    // The peer's key went (strict): the same flow is dropped, never sent
    // in clear.
    maps.set_prefix("10.0.2.0/24".parse().unwrap(), EncryptValue::new(0, 7))
        .unwrap();
    let (action, mark) = dp.test_run_mark_out(FROM_CONTAINER, &packet).unwrap();
    assert_eq!((action, mark), (TC_ACT_SHOT, 0));
    let drops: Vec<u8> = dp
        .maps
        .drain_events()
        .iter()
        .filter(|e| e.kind == event_kind::DROP)
        .map(|e| e.reason)
        .collect();
    assert_eq!(drops, vec![drop_reason::DROP_UNENCRYPTED]);
}

#[test]
fn esp_from_a_known_node_gets_its_decrypt_mark_and_nothing_else_does() {
    let (dp, _maps) = setup(true);
    let (action, mark) = dp
        .test_run_mark_out(NODEPORT_INGRESS, &esp(PEER_NODE))
        .unwrap();
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        mark, 0x0007_0d00,
        "decrypt magic 0x0d00, node index 7 in bits 16-31"
    );
    // An unknown node's ESP: no mark, so no inbound state matches it.
    let (_, mark) = dp
        .test_run_mark_out(NODEPORT_INGRESS, &esp(UNKNOWN_NODE))
        .unwrap();
    assert_eq!(mark, 0);
    let udp_packet = ipv4(
        PEER_NODE,
        [192, 168, 0, 1],
        IPPROTO_UDP,
        &udp(1, 2, b"x"),
        0,
        1,
    );
    let (_, mark) = dp.test_run_mark_out(NODEPORT_INGRESS, &udp_packet).unwrap();
    assert_eq!(mark, 0, "only ESP is marked");
}

/// ESP's node is found through its slot of `ENCRYPT_NODE_SLOTS`, or
/// through the hash when two nodes' addresses share it (192.168.0.2 and
/// 192.168.16.2 do): each gets its own index, and a node that left none.
#[test]
fn nodes_whose_addresses_share_a_slot_each_get_their_own_decrypt_mark() {
    const SLOT_SHARER: [u8; 4] = [192, 168, 16, 2];
    let (dp, mut maps) = setup(true);
    let mark = |src| dp.test_run_mark_out(NODEPORT_INGRESS, &esp(src)).unwrap().1;
    maps.set_node(SLOT_SHARER.into(), 9).unwrap();
    assert_eq!(mark(PEER_NODE), decrypt_mark(7));
    assert_eq!(mark(SLOT_SHARER), decrypt_mark(9));
    maps.remove_node(SLOT_SHARER.into()).unwrap();
    assert_eq!(mark(PEER_NODE), decrypt_mark(7));
    assert_eq!(mark(SLOT_SHARER), 0);
    maps.remove_node(PEER_NODE.into()).unwrap();
    assert_eq!(mark(PEER_NODE), 0);
}

#[test]
fn loaded_without_encryption_nothing_is_marked() {
    let (dp, _maps) = setup(false);
    let (_, mark) = dp
        .test_run_mark_out(FROM_CONTAINER, &syn(REMOTE_POD, 40003))
        .unwrap();
    assert_eq!(mark, 0);
    let (_, mark) = dp
        .test_run_mark_out(NODEPORT_INGRESS, &esp(PEER_NODE))
        .unwrap();
    assert_eq!(mark, 0);
}

/// What XFRM decrypted comes back to the device's ingress with its decrypt
/// mark: a pod of the node whose ESP it was, for a local pod, is put
/// straight into the pod with the mark cleared; a source that is not that
/// node's pod, or anything in clear, goes up the stack, where the forward
/// XFRM policies check it.
#[test]
fn decrypted_traffic_from_the_senders_pods_is_delivered_into_the_pod() {
    let (dp, _maps) = setup(true);
    let to_a =
        |src: [u8; 4], sport: u16| ipv4(src, A4, IPPROTO_TCP, &tcp(sport, 80, TCP_SYN), 0, 1);
    let mark = decrypt_mark(7);
    let run = |packet: &[u8], mark: u32| {
        dp.test_run_mark_in_out(NODEPORT_INGRESS, packet, mark)
            .unwrap()
    };
    assert_eq!(run(&to_a(REMOTE_POD, 41000), mark), (TC_ACT_REDIRECT, 0));
    for (packet, mark) in [
        // Another node's ESP (index 8) for node 7's pod.
        (to_a(REMOTE_POD, 41001), decrypt_mark(8)),
        // Node 7's ESP from a source none of its pods have.
        (to_a(OTHER_POD, 41002), mark),
        // In clear.
        (to_a(REMOTE_POD, 41003), 0),
    ] {
        assert_eq!(run(&packet, mark), (TC_ACT_OK, mark));
    }
}

/// No program of the datapath writes a packet directly: a direct write
/// anywhere in one makes the verifier prepend its unclone prologue, which
/// runs on every packet the program sees. On the device's ingress that is
/// ESP too: the prologue makes a cloned packet's head private but leaves
/// its pages shared, so XFRM then decrypts in place in pages a capture on
/// the underlay still holds (docs/architecture.md, "Transparent
/// encryption"); in the pods' program it is a helper call for every TCP
/// segment a pod sends (each a clone). The smoke object's program that
/// writes a byte directly has the prologue: the check sees it.
#[test]
fn no_program_gets_the_unclone_prologue() {
    let smoke = Smoke::load().unwrap();
    let control = smoke.0.program(SMOKE_WRITE_PROGRAM).unwrap();
    assert!(
        unclone_prologue(control.fd().unwrap()),
        "the check finds the prologue where it is"
    );
    for encrypt in [true, false] {
        let (dp, _maps) = setup(encrypt);
        for name in [
            FROM_CONTAINER,
            TO_CONTAINER,
            NODEPORT_INGRESS,
            NODEPORT_EGRESS,
        ] {
            assert!(
                !unclone_prologue(dp.program(name).unwrap().fd().unwrap()),
                "loaded with encryption {encrypt}: {name} writes packets directly"
            );
        }
    }
}

/// Whether the kernel runs the program `fd` is behind
/// `bpf_unclone_prologue`: `r6 = *(u8 *)(r1 + cloned offset); w6 &= mask;
/// if r6 == 0 goto +7`.
fn unclone_prologue(fd: &aya::programs::ProgramFd) -> bool {
    let insns = xlated(fd);
    let op = |i: usize| (insns[i][0], insns[i][1]);
    insns.len() > 3
        && op(0) == (0x71, 0x16) // ldxb r6, [r1 + off]
        && op(1) == (0x54, 0x06) // and w6, imm
        && op(2) == (0x15, 0x06) // jeq r6, imm, +off
        && insns[2][4..8] == [0; 4]
}

/// A loaded program's instructions as the kernel runs them (after the
/// verifier's rewrites): `BPF_OBJ_GET_INFO_BY_FD`'s translated dump. The
/// one raw syscall of the tests: aya reports only the dump's length.
#[allow(unsafe_code)]
fn xlated(fd: &aya::programs::ProgramFd) -> Vec<[u8; 8]> {
    use std::os::fd::{AsFd, AsRawFd};
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let fd = fd.as_fd().as_raw_fd();
    // `struct bpf_prog_info`, room to spare (the kernel wants the tail
    // beyond its own size zero): `xlated_prog_len` at byte 20,
    // `xlated_prog_insns` at byte 32.
    let info_call = |info: &mut [u8; 256]| {
        let mut attr = InfoAttr {
            bpf_fd: u32::try_from(fd).unwrap(),
            info_len: 256,
            info: info.as_mut_ptr() as u64,
        };
        // SAFETY: the attribute and the buffer it points to outlive the
        // call, and are as large as they say.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD,
                &mut attr as *mut InfoAttr,
                std::mem::size_of::<InfoAttr>(),
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    };
    let mut info = [0u8; 256];
    info_call(&mut info);
    let len = u32::from_ne_bytes(info[20..24].try_into().unwrap());
    let mut insns = vec![[0u8; 8]; len as usize / 8];
    let mut info = [0u8; 256];
    info[20..24].copy_from_slice(&len.to_ne_bytes());
    info[32..40].copy_from_slice(&(insns.as_mut_ptr() as u64).to_ne_bytes());
    info_call(&mut info);
    insns
}
