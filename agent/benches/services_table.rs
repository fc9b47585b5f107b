//! `cargo xtask bench services-table`: the services unit's pass on its own,
//! without the kernel (the in-memory [`FakeLb`] seam): building the LB
//! table from 1 / 1,000 / 10,000 ClusterIP Services of 4 backends each and
//! syncing it over what the maps hold, (a) when nothing changed and (b)
//! after one Service was added. Every pass is O(Services) today; these
//! figures are the floor under the end-to-end "Service change to first
//! use" of `cargo xtask bench services`, and the baseline for making the
//! pass incremental. p50/p99 over repeated passes, JSON to
//! `AXONEME_BENCH_OUT`.
//!
//! Under `cargo test` (no `--bench` argument) it runs in its smoke form:
//! sizes 1 and 100, a few passes, every check on, nothing written.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anyhow::{ensure, Result};
use axoneme_agent::services::sync::{sync, FakeLb};
use axoneme_agent::services::table::{build, Ids, Table};
use axoneme_e2e::bench::{pick, summary, write_figures};
use axoneme_service::{Backend, BackendState, Frontend, FrontendKind, Protocol};
use serde_json::{json, Value};

const BACKENDS: u32 = 4;

/// Service `i`: ClusterIP 10.96.x.y:80, backends 10.1.x.y:8080 (distinct
/// for every Service).
fn service(i: u32) -> Frontend {
    let [_, a, b, c] = i.to_be_bytes();
    Frontend {
        service: format!("default/s{i}"),
        port_name: "http".into(),
        kind: FrontendKind::ClusterIP,
        addr: IpAddr::V4(Ipv4Addr::new(10, 96 + a, b, c)),
        port: 80,
        protocol: Protocol::Tcp,
        backends: (0..BACKENDS)
            .map(|k| {
                let [_, x, y, z] = (i * BACKENDS + k).to_be_bytes();
                Backend {
                    addr: IpAddr::V4(Ipv4Addr::new(10, 1 + x, y, z)),
                    port: 8080,
                    node: Some("node-0".into()),
                    state: BackendState::Active,
                }
            })
            .collect(),
        affinity_timeout: None,
        local_only: false,
    }
}

/// One pass as the unit makes it; its time in milliseconds and the map
/// operations it made.
fn pass(
    frontends: &[Frontend],
    ids: &mut Ids,
    lb: &mut FakeLb,
    have: &mut Table,
) -> Result<(f64, usize)> {
    let started = Instant::now();
    let want = build(frontends.iter(), "node-0", &[], ids)?;
    let c = sync(lb, have, &want)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    lb.log.clear();
    Ok((ms, c.written + c.removed))
}

fn measure(size: u32, passes: usize) -> Result<Value> {
    let mut frontends: Vec<Frontend> = (0..size).map(service).collect();
    let mut ids = Ids::new();
    let mut lb = FakeLb::default();
    let mut have = Table::default();
    let (first_ms, ops) = pass(&frontends, &mut ids, &mut lb, &mut have)?;
    // Per Service: its master, a slot and a backend per backend, its
    // reverse-NAT entry.
    let per_service = 2 + 2 * BACKENDS as usize;
    ensure!(
        ops == size as usize * per_service,
        "first pass made {ops} map operations for {size} Services, expected {}",
        size as usize * per_service
    );
    let mut steady = Vec::with_capacity(passes);
    let mut added = Vec::with_capacity(passes);
    for n in 0..passes {
        let (ms, ops) = pass(&frontends, &mut ids, &mut lb, &mut have)?;
        ensure!(
            ops == 0,
            "a pass with nothing changed made {ops} map operations"
        );
        steady.push(ms);
        frontends.push(service(size + u32::try_from(n)?));
        let (ms, ops) = pass(&frontends, &mut ids, &mut lb, &mut have)?;
        ensure!(
            ops == per_service,
            "adding one Service made {ops} map operations, expected {per_service}"
        );
        added.push(ms);
    }
    ensure!(
        lb.consistent(),
        "the maps are inconsistent after the passes"
    );
    let v = json!({
        "services": size,
        "backends_per_service": BACKENDS,
        "first_pass_ms": first_ms,
        "unchanged_pass": summary(&steady),
        "one_added_pass": summary(&added),
    });
    println!("services-table: {v}");
    Ok(v)
}

fn main() -> Result<()> {
    let sizes: &[u32] = pick(&[1, 1_000, 10_000], &[1, 100]);
    let passes = pick(50, 3);
    let results = sizes
        .iter()
        .map(|&s| measure(s, passes))
        .collect::<Result<Vec<_>>>()?;
    write_figures("services-table", &json!({ "sizes": results }))
}
