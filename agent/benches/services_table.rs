//! `cargo xtask bench services-table`: the services unit's pass on its own,
//! without the kernel (the in-memory [`FakeLb`] seam), over 1 / 1,000 /
//! 10,000 stored ClusterIP Services of 4 backends each: the first pass
//! over all of them, then passes after (a) nothing changed, (b) one Service
//! was added, (c) one backend was added to a Service, (d) a resync (every
//! record re-read, none changed); and the cost of the API's whole view.
//! These are the floor under the end-to-end "Service change to first use"
//! of `cargo xtask bench services`. p50/p99 over repeated passes, JSON to
//! `AXONEME_BENCH_OUT`.
//!
//! Under `cargo test` (no `--bench` argument) it runs in its smoke form:
//! sizes 1 and 100, a few passes, every check on, nothing written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use axoneme_agent::services::sync::FakeLb;
use axoneme_agent::services::table::Table;
use axoneme_agent::services::{Dirty, Programmed, Unit};
use axoneme_e2e::bench::{pick, summary, write_figures};
use axoneme_identity::Raw;
use serde_json::{json, Value};

const BACKENDS: u32 = 4;

/// Service `i`'s stored record: ClusterIP 10.96.x.y:80, `backends`
/// endpoints 10.1.x.y:8080 (distinct for every Service), on node-0.
fn record(i: u32, backends: u32, rev: i64) -> Arc<Raw> {
    let [_, a, b, c] = i.to_be_bytes();
    let endpoints: Vec<Value> = (0..backends)
        .map(|k| {
            let [_, x, y, z] = (i * 8 + k).to_be_bytes();
            json!({"addresses": [format!("10.{}.{y}.{z}", 1 + x)], "nodeName": "node-0",
                   "ports": [{"port": 8080}]})
        })
        .collect();
    let rec = json!({
        "namespace": "default", "name": format!("s{i}"),
        "spec": {"clusterIPs": [format!("10.{}.{b}.{c}", 96 + a)],
                 "ports": [{"port": 80, "targetPort": 8080}]},
        "endpoints": endpoints,
    });
    Arc::new(Raw {
        value: serde_json::to_vec(&rec).expect("a record serializes"),
        mod_revision: rev,
    })
}

/// One pass and its publication (the published view stays alive until
/// the next, as in the agent's watch channel); its time in milliseconds
/// and the map operations it made.
fn pass(
    unit: &mut Unit,
    lb: &mut FakeLb,
    store: &BTreeMap<String, Arc<Raw>>,
    dirty: Dirty,
    published: &mut Arc<Programmed>,
) -> Result<(f64, usize)> {
    let started = Instant::now();
    let error = unit.pass(lb, store, &dirty);
    *published = Arc::new(unit.programmed().clone());
    let ms = started.elapsed().as_secs_f64() * 1e3;
    ensure!(error.is_none(), "pass failed: {error:?}");
    let ops = lb.log.len();
    lb.log.clear();
    Ok((ms, ops))
}

fn measure(size: u32, passes: usize) -> Result<Value> {
    let mut rev = 0i64;
    let mut next_rev = || {
        rev += 1;
        rev
    };
    let mut store: BTreeMap<String, Arc<Raw>> = (0..size)
        .map(|i| (format!("s{i}"), record(i, BACKENDS, next_rev())))
        .collect();
    let mut lb = FakeLb::default();
    let mut published = Arc::default();
    let mut unit = Unit::new("node-0".into(), Vec::new(), None, Table::default());
    let (first_ms, ops) = pass(&mut unit, &mut lb, &store, Dirty::All, &mut published)?;
    // Per Service: its master, a slot and a backend per backend, its
    // reverse-NAT entry.
    let per_service = 2 + 2 * BACKENDS as usize;
    ensure!(
        ops == size as usize * per_service,
        "first pass made {ops} map operations for {size} Services, expected {}",
        size as usize * per_service
    );
    let (mut steady, mut added, mut grown) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..passes {
        let (ms, ops) = pass(
            &mut unit,
            &mut lb,
            &store,
            Dirty::keys::<&str>([]),
            &mut published,
        )?;
        ensure!(
            ops == 0,
            "a pass with nothing changed made {ops} map operations"
        );
        steady.push(ms);
        let new = size + u32::try_from(n)?;
        store.insert(format!("s{new}"), record(new, BACKENDS, next_rev()));
        let (ms, ops) = pass(
            &mut unit,
            &mut lb,
            &store,
            Dirty::keys([format!("s{new}")]),
            &mut published,
        )?;
        ensure!(
            ops == per_service,
            "adding one Service made {ops} map operations, expected {per_service}"
        );
        added.push(ms);
        // A fifth backend for the Service just added: the backend, its
        // slot, the master's count.
        store.insert(format!("s{new}"), record(new, BACKENDS + 1, next_rev()));
        let (ms, ops) = pass(
            &mut unit,
            &mut lb,
            &store,
            Dirty::keys([format!("s{new}")]),
            &mut published,
        )?;
        ensure!(
            ops == 3,
            "adding one backend made {ops} map operations, expected 3"
        );
        grown.push(ms);
    }
    let mut resync = Vec::new();
    let mut view = Vec::new();
    for _ in 0..passes.min(10) {
        let (ms, ops) = pass(&mut unit, &mut lb, &store, Dirty::All, &mut published)?;
        ensure!(
            ops == 0,
            "a resync with nothing changed made {ops} map operations"
        );
        resync.push(ms);
        let started = Instant::now();
        let v = unit.programmed().view();
        view.push(started.elapsed().as_secs_f64() * 1e3);
        ensure!(
            v.frontends.len() == store.len(),
            "the view shows {} frontends",
            v.frontends.len()
        );
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
        "one_backend_added_pass": summary(&grown),
        "resync_pass": summary(&resync),
        "whole_view": summary(&view),
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
