//! The paired comparison: every configuration's pair beside the bare one,
//! in short alternating blocks, so the host's swings cancel in each ratio.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use axoneme_e2e::bench::pick;
use axoneme_e2e::netns::{Node, Pod};

use crate::traffic::{
    blast, median, percentile, pin, round_trips, rx_packets, udp_flow, CLIENT_CPU,
};
use crate::{smoke, support, PAIRS, PAIR_RR_BLOCK, PAIR_UDP_BLOCK, RR_PORT};

/// Configurations against the bare veth with the host's swings taken out:
/// client/server pairs side by side on the same node (`sides[0]` the
/// never-attached one), and short blocks alternating between them (the
/// order rotating every pair), so both sides of each ratio ran within
/// milliseconds of each other. Returns, per other side, the medians of the
/// per-block ratios (side / bare) of the small-UDP packet rate and of the
/// round-trip p50.
pub(crate) fn paired(sides: &[(&Pod, &Pod)]) -> Result<Vec<(f64, f64)>> {
    let n = sides.len();
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for &(client, server) in sides {
        udp.push(udp_flow(client, server)?);
        let addr = SocketAddr::from((server.ip, RR_PORT));
        tcp.push(client.ns.enter(move || -> Result<TcpStream> {
            let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            conn.set_nodelay(true)?;
            Ok(conn)
        })??);
    }
    let (pairs, udp_block, rr_block) = pick(
        (PAIRS, PAIR_UDP_BLOCK, PAIR_RR_BLOCK),
        (smoke::PAIRS, smoke::PAIR_UDP_BLOCK, smoke::PAIR_RR_BLOCK),
    );
    let rx = || -> Result<Vec<u64>> { sides.iter().map(|s| s.1.ns.enter(rx_packets)?).collect() };
    let before = rx()?;
    let blocks = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Vec<(f64, f64)>>> {
            pin(CLIENT_CPU);
            let mut blocks = Vec::new();
            for pair in 0..pairs {
                let mut block = vec![(0f64, 0f64); n];
                for i in (0..n).map(|i| (i + pair) % n) {
                    let t = Instant::now();
                    blast(&udp[i], udp_block)?;
                    let pps = udp_block as f64 / t.elapsed().as_secs_f64();
                    let rr = percentile(round_trips(&mut tcp[i], rr_block)?, 500);
                    block[i] = (pps, rr);
                }
                blocks.push(block);
            }
            Ok(blocks)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("paired measurement panicked"))?
    })?;
    std::thread::sleep(Duration::from_millis(50));
    let after = rx()?;
    // Every datagram arrived, on every side (the round trips add more).
    let sent = (pairs * udp_block) as u64;
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        ensure!(
            a - b >= sent * 99 / 100,
            "pair {i}: {} of {sent} datagrams arrived",
            a - b
        );
    }
    Ok((1..n)
        .map(|i| {
            let ratios = |f: &dyn Fn(&(f64, f64)) -> f64| {
                median(blocks.iter().map(|b| f(&b[i]) / f(&b[0])).collect())
            };
            (ratios(&|x| x.0), ratios(&|x| x.1))
        })
        .collect())
}

/// A minimal program on both host veths of a pair, the floor any TC
/// program pays: `axoneme_smoke`, the toolchain's smoke test (parse
/// IPv4/UDP with direct packet access, one hash lookup for UDP; its own
/// object, its map not pinned).
pub(crate) fn attach_floor(node: &Node, pair: (&Pod, &Pod)) -> Result<support::Smoke> {
    use aya::programs::{tc, TcAttachType};
    let mut smoke = support::Smoke::load()?;
    let program = smoke.program();
    node.ns.enter(|| -> Result<()> {
        for pod in [pair.0, pair.1] {
            let _ = tc::qdisc_add_clsact(&pod.host_if);
            for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
                let link = program.attach(&pod.host_if, dir)?;
                // Kept attached until the namespace goes.
                std::mem::forget(program.take_link(link)?);
            }
        }
        Ok(())
    })??;
    Ok(smoke)
}
