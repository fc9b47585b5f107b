//! What the programs themselves cost: their run time per packet from the
//! kernel's statistics under traffic, and per run under
//! `BPF_PROG_TEST_RUN` with and without observability.

use std::time::Duration;

use anyhow::{ensure, Result};
use axoneme_agent::datapath::Datapath;
use axoneme_bpf_common::{endpoint_flags, EndpointInfo};
use axoneme_e2e::bench::pick;
use axoneme_e2e::netns::Pod;
use axoneme_policy::compile::{Direction, PROTO_TCP, PROTO_UDP};
use serde_json::{json, Value};

use crate::config::{allow, id};
use crate::traffic::{median, udp_stream};
use crate::{smoke, support, CLIENT_ID, RR_PORT, SERVER_ID, UDP_PORT};

/// The programs' own run time per packet on the established UDP flow, from
/// the kernel's BPF statistics (enabled only for this measurement, so they
/// cost nothing elsewhere).
pub(crate) fn bpf_cost(dp: &Datapath, client: &Pod, server: &Pod) -> Result<Value> {
    const PROGRAMS: [&str; 2] = ["axoneme_from_container", "axoneme_to_container"];
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let sample = || -> Result<Vec<(Duration, u64)>> {
        PROGRAMS
            .iter()
            .map(|name| {
                let info = dp.program(name)?.info()?;
                Ok((info.run_time(), info.run_count()))
            })
            .collect()
    };
    let before = sample()?;
    udp_stream(client, server)?;
    let after = sample()?;
    drop(stats);
    let ns = |i: usize| {
        let runs = after[i].1.saturating_sub(before[i].1).max(1);
        after[i].0.saturating_sub(before[i].0).as_nanos() as f64 / runs as f64
    };
    Ok(json!({ "bpf_from_container_ns": ns(0), "bpf_to_container_ns": ns(1) }))
}

/// Runs per case in one `BPF_PROG_TEST_RUN`.
pub(crate) const TEST_RUN_REPEAT: u32 = 1_000_000;

/// The programs' time per run under `BPF_PROG_TEST_RUN`, in the kernel
/// with no traffic and no statistics overhead, so it is steady enough to
/// compare code changes: 64-byte UDP/IPv4 packets of an established flow
/// each way, a TCP ACK of an established flow, and a packet policy denies
/// (conntrack miss, ipcache and policy lookups; its event rate-limited
/// away). `axoneme_smoke` on the same packet is the floor (the harness'
/// own per-run cost and a minimal parse). Medians over 5 interleaved runs.
pub(crate) fn program_cost() -> Result<Value> {
    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const W: [u8; 4] = [10, 0, 0, 9];
    let dp = &mut support::load();
    // The same programs loaded without counting and events: what
    // observability costs per packet (`*_quiet_ns` beside each case).
    let quiet = &mut support::load_options(support::LoadOptions {
        observe: false,
        ..Default::default()
    });
    let smoke = &mut support::Smoke::load()?;
    for dp in [&mut *dp, &mut *quiet] {
        dp.maps.set_endpoint(
            1,
            EndpointInfo::new(
                CLIENT_ID,
                CLIENT_ID,
                endpoint_flags::EGRESS_ENFORCED,
                &[A.into()],
            ),
        )?;
        dp.maps
            .set_ipcache(&"10.0.0.2/32".parse()?, id(SERVER_ID))?;
        for (protocol, port) in [(PROTO_UDP, UDP_PORT), (PROTO_TCP, RR_PORT)] {
            allow(dp, CLIENT_ID, Direction::Egress, SERVER_ID, protocol, port)?;
        }
    }
    let payload = [0u8; 64];
    let v4 = |src, dst, protocol, l4: Vec<u8>| support::ipv4(src, dst, protocol, &l4, 0, 1);
    let (udp, tcp) = (support::IPPROTO_UDP, support::IPPROTO_TCP);
    let out = v4(A, B, udp, support::udp(40000, UDP_PORT, &payload));
    let back = v4(B, A, udp, support::udp(UDP_PORT, 40000, &payload));
    let syn = v4(A, B, tcp, support::tcp(40001, RR_PORT, support::TCP_SYN));
    let ack = v4(A, B, tcp, support::tcp(40001, RR_PORT, support::TCP_ACK));
    let denied = v4(A, W, udp, support::udp(40002, UDP_PORT, &payload));
    let from = "axoneme_from_container";
    let to = "axoneme_to_container";
    // The flows are opened by one ordinary run each.
    for dp in [&*dp, &*quiet] {
        ensure!(
            dp.test_run(from, &out)? == 0,
            "the UDP flow was not allowed"
        );
        ensure!(
            dp.test_run(from, &syn)? == 0,
            "the TCP flow was not allowed"
        );
    }
    // (`None`: the smoke object's program.)
    let cases: [(&str, Option<&'static str>, &[u8], i32); 5] = [
        ("floor_smoke", None, &out, 0),
        ("udp4_established_egress", Some(from), &out, 0),
        ("udp4_established_reply", Some(to), &back, 0),
        ("tcp4_established_egress", Some(from), &ack, 0),
        ("udp4_denied", Some(from), &denied, 2),
    ];
    let mut times = vec![Vec::new(); cases.len()];
    let mut quiet_times = vec![Vec::new(); cases.len()];
    let repeat = pick(TEST_RUN_REPEAT, smoke::TEST_RUN_REPEAT);
    for _ in 0..pick(5, smoke::TEST_RUNS) {
        for (((name, program, packet, want), t), qt) in
            cases.iter().zip(&mut times).zip(&mut quiet_times)
        {
            let Some(program) = program else {
                let (action, per_run) = smoke.run_repeated(packet, repeat)?;
                ensure!(action == *want, "{name}: TC action {action}");
                t.push(per_run.as_nanos() as f64);
                continue;
            };
            // Both loads of the case back to back, so a slow spell of the
            // host hits both.
            for (dp, t) in [(&*dp, &mut *t), (&*quiet, &mut *qt)] {
                let (action, per_run) = dp.test_run_repeated(program, packet, repeat)?;
                ensure!(
                    action == *want,
                    "{name}: TC action {action}, expected {want}"
                );
                t.push(per_run.as_nanos() as f64);
            }
        }
    }
    // The switch works: the quiet load counted nothing.
    ensure!(
        quiet.maps.traffic()?.is_empty() && quiet.maps.counters()? == Default::default(),
        "the datapath loaded without observability counted packets"
    );
    ensure!(
        !dp.maps.traffic()?.is_empty(),
        "the datapath counted no packet"
    );
    let ns: Vec<f64> = times.into_iter().map(median).collect();
    let mut v = json!({});
    for (((name, program, ..), x), qt) in cases.iter().zip(&ns).zip(quiet_times) {
        v[format!("{name}_ns")] = json!(x);
        if program.is_some() {
            v[format!("{name}_over_floor_ns")] = json!(x - ns[0]);
            let quiet_ns = median(qt);
            v[format!("{name}_quiet_ns")] = json!(quiet_ns);
            v[format!("{name}_observe_cost_ns")] = json!(x - quiet_ns);
        }
    }
    // The programs' size as the kernel has them (subprograms included):
    // instructions after the verifier's rewrites (`bpftool prog show`'s
    // xlated size / 8) and the instructions the verifier processed.
    for program in [from, to] {
        let info = dp.program(program)?.info()?;
        let key = program.trim_start_matches("axoneme_");
        v[format!("{key}_xlated_insns")] = json!(info.size_translated().unwrap_or(0) / 8);
        v[format!("{key}_verified_insns")] = json!(info.verified_instruction_count());
    }
    Ok(v)
}
