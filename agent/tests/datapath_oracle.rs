//! Differential test: random identities and policies (the policy crate's
//! generators), compiled by the policy engine into the real datapath maps;
//! then every (endpoint, direction, peer, protocol, port) flow is run
//! through the real programs with `BPF_PROG_TEST_RUN` and its verdict and
//! drop reason compared with the reference oracle's. CI runs a small number
//! of cases (`PROPTEST_CASES` raises it); each case is thousands of flows.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use axoneme_agent::datapath::{policy_entry, FROM_CONTAINER, TO_CONTAINER};
use axoneme_bpf_common::{
    endpoint_flags, event_kind, tc_action::TC_ACT_OK, tc_action::TC_ACT_REDIRECT,
    tc_action::TC_ACT_SHOT, verdict as ev, EndpointInfo, IpcacheValue,
};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{cidr_identities, compute, Direction, EnforcementMode};
use axoneme_policy::oracle::{direction_verdict, OracleVerdict};
use axoneme_policy::testgen::{identities, policy, setup, PORTS, PROTOS};
use ipnet::IpNet;
use proptest::prelude::*;
use support::*;

const PROXY_PORT: u16 = 15001;
/// An address no ipcache entry covers: world.
const WORLD: [u8; 4] = [203, 0, 113, 77];

fn packet(src: [u8; 4], dst: [u8; 4], protocol: u8, port: u16) -> Vec<u8> {
    let l4 = match protocol {
        IPPROTO_TCP => tcp(40000, port, TCP_SYN),
        // SCTP's first 4 bytes are the ports too.
        IPPROTO_UDP | 132 => udp(40000, port, b"x"),
        IPPROTO_ICMP => icmp(u8::try_from(port).expect("ICMP types fit"), 0, 9, b"x"),
        other => panic!("protocol {other}"),
    };
    ipv4(src, dst, protocol, &l4, 0, 1)
}

fn check(
    labels: &[axoneme_identity::LabelSet],
    docs: &[serde_json::Value],
    mode: EnforcementMode,
) -> Result<usize, TestCaseError> {
    let (policies, ids, endpoints) = setup(labels, docs);
    let mut dp = load_small_ct();
    dp.maps.set_event_rate(u32::MAX, u32::MAX).unwrap();

    // Addresses: workloads 10.200.0.x, reserved identities 10.255.0.<id>,
    // other nodes 10.254.0.x
    // (as if the agent had programmed them), CIDR identities their prefix.
    // Each workload also has a twin at 10.201.0.x: the peer of its own
    // identity that the subject sends to (its own address is local: a
    // packet to it would be delivered into the subject and judged as its
    // ingress too, and a real pod's packets to itself never leave it).
    let mut addr: BTreeMap<NumericIdentity, [u8; 4]> = BTreeMap::new();
    let mut twin: BTreeMap<NumericIdentity, [u8; 4]> = BTreeMap::new();
    let set = |net: IpNet, id: NumericIdentity, dp: &mut TestDatapath| {
        let value = IpcacheValue {
            identity: id.0,
            ..IpcacheValue::default()
        };
        dp.maps.set_ipcache(&net, value).unwrap();
    };
    for (id, _) in ids.iter() {
        let a = if id.is_node_scope() {
            // Other nodes' addresses.
            [10, 254, 0, u8::try_from(id.0 & 0xff).unwrap()]
        } else if id.is_local_scope() {
            continue;
        } else if id.0 == 2 {
            addr.insert(id, WORLD);
            continue;
        } else if id.is_reserved() {
            [10, 255, 0, u8::try_from(id.0).unwrap()]
        } else {
            let n = u8::try_from(id.0 - 255).unwrap();
            let other = [10, 201, 0, n];
            twin.insert(id, other);
            set(IpNet::from(std::net::IpAddr::from(other)), id, &mut dp);
            [10, 200, 0, n]
        };
        addr.insert(id, a);
        set(IpNet::from(std::net::IpAddr::from(a)), id, &mut dp);
    }
    for (net, id) in cidr_identities(&policies) {
        let IpNet::V4(v4) = net else { continue };
        addr.insert(id, v4.network().octets());
        set(net, id, &mut dp);
    }

    let mut flows = 0;
    for &subject in &endpoints {
        let subject_labels = ids.get(subject).unwrap().clone();
        let ports = ids.ports(subject);
        let compiled = compute(&policies, &ids, &subject_labels, ports, mode);
        let mut flags = 0;
        for (dir, flag) in [
            (Direction::Ingress, endpoint_flags::INGRESS_ENFORCED),
            (Direction::Egress, endpoint_flags::EGRESS_ENFORCED),
        ] {
            let d = compiled.direction(dir);
            if d.enforced {
                flags |= flag;
            }
            for (key, verdict) in &d.entries {
                let (k, v) = policy_entry(subject.0, dir, key, verdict, PROXY_PORT);
                dp.maps.set_policy(&k, v).unwrap();
            }
        }
        let me = addr[&subject];
        let info = EndpointInfo::new(subject.0, subject.0, flags, &[me.into()]);
        dp.maps.set_endpoint(1, info).unwrap();
        for (&peer, &peer_addr) in &addr {
            for dir in [Direction::Ingress, Direction::Egress] {
                for &proto in PROTOS {
                    for &port in PORTS {
                        // An ICMP "port" is the type: one byte.
                        if proto == IPPROTO_ICMP && port > 255 {
                            continue;
                        }
                        let (program, pkt) = match dir {
                            Direction::Ingress => {
                                (TO_CONTAINER, packet(peer_addr, me, proto, port))
                            }
                            Direction::Egress => {
                                let to = if peer == subject {
                                    twin[&peer]
                                } else {
                                    peer_addr
                                };
                                (FROM_CONTAINER, packet(me, to, proto, port))
                            }
                        };
                        let action = run(&dp, program, &pkt);
                        if action != TC_ACT_SHOT {
                            // Each flow must be judged as new.
                            dp.maps.clear_ct().unwrap();
                        }
                        let events = dp.maps.drain_events();
                        let want = direction_verdict(
                            &policies,
                            &ids,
                            &subject_labels,
                            ports,
                            dir,
                            peer,
                            proto,
                            port,
                            mode,
                        );
                        let drop = events
                            .iter()
                            .find(|e| e.kind == event_kind::DROP)
                            .map(|e| e.reason);
                        let seen = events
                            .iter()
                            .find(|e| e.kind == event_kind::POLICY_VERDICT)
                            .map(|e| e.verdict);
                        let ctx = || {
                            format!(
                            "subject {subject} {dir:?} peer {peer} ({}) proto {proto} port {port}: oracle {want:?}, datapath action {action} drop {drop:?} verdict {seen:?}\npolicies: {}",
                            Ipv4Addr::from(peer_addr),
                            serde_json::to_string_pretty(docs).unwrap()
                        )
                        };
                        match &want {
                            OracleVerdict::Allow => {
                                prop_assert_eq!(action, TC_ACT_OK, "{}", ctx());
                                prop_assert_eq!(seen, Some(ev::ALLOWED), "{}", ctx());
                            }
                            OracleVerdict::Redirect(_) => {
                                // Both directions go to the node's proxy.
                                prop_assert_eq!(action, TC_ACT_REDIRECT, "{}", ctx());
                                prop_assert_eq!(seen, Some(ev::REDIRECTED), "{}", ctx());
                            }
                            OracleVerdict::Deny(code) => {
                                prop_assert_eq!(action, TC_ACT_SHOT, "{}", ctx());
                                prop_assert_eq!(drop, Some(*code), "{}", ctx());
                            }
                        }
                        flows += 1;
                    }
                }
            }
        }
    }
    Ok(flows)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn datapath_verdicts_match_the_oracle(
        labels in identities(),
        docs in (0usize..3).prop_flat_map(|n| (0..n + 1).map(policy).collect::<Vec<_>>()),
        mode in prop::sample::select(vec![EnforcementMode::Default, EnforcementMode::Default, EnforcementMode::Always, EnforcementMode::Never]),
    ) {
        let flows = check(&labels, &docs, mode)?;
        prop_assert!(flows > 0);
        // Shown with --nocapture: the figure for docs/benchmarks.md.
        eprintln!("datapath/oracle case: {flows} flows agree");
    }
}
