//! `cargo xtask bench proxy-view`: the L7 proxy's identity lookup, which
//! every request makes for both ends, over 10,000 prefixes as a cluster's
//! ipcache has them (endpoint addresses of both families and a dozen
//! policy CIDRs): ns per lookup of the view's longest-prefix-match table
//! against the linear scan it replaced, for endpoint addresses (exact
//! prefixes) and for others (the longest containing CIDR, or world). Every
//! answer is checked against the scan's first. JSON to `AXONEME_BENCH_OUT`.
//!
//! Under `cargo test` (no `--bench` argument) it runs in its smoke form:
//! two rounds, every check on, nothing written.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use anyhow::{ensure, Result};
use axoneme_agent::l7proxy::view::fixtures::{ipcache, probes, scan};
use axoneme_agent::l7proxy::ProxyView;
use axoneme_e2e::bench::{pick, write_figures};
use axoneme_identity::NumericIdentity;
use ipnet::IpNet;
use serde_json::json;

/// Passes over the probe addresses per timing: full, smoke.
const ROUNDS: (usize, usize) = (200, 2);

/// ns per call of `lookup` over `ips`, `rounds` times each.
fn time(lookup: &dyn Fn(IpAddr) -> NumericIdentity, ips: &[IpAddr], rounds: usize) -> f64 {
    let start = Instant::now();
    let mut sum = 0u64;
    for _ in 0..rounds {
        for ip in ips {
            sum = sum.wrapping_add(u64::from(std::hint::black_box(lookup(*ip)).0));
        }
    }
    std::hint::black_box(sum);
    start.elapsed().as_nanos() as f64 / (rounds * ips.len()) as f64
}

fn main() -> Result<()> {
    let m = ipcache();
    let view = ProxyView::new(m.clone(), HashMap::new(), HashMap::new());
    let probes = probes();
    for ip in &probes {
        ensure!(
            view.identity(*ip) == scan(&m, *ip),
            "{ip}: the view says {}, the scan {}",
            view.identity(*ip),
            scan(&m, *ip)
        );
    }
    let (endpoints, others): (Vec<IpAddr>, Vec<IpAddr>) = probes
        .into_iter()
        .partition(|ip| m.contains_key(&IpNet::from(*ip)));
    ensure!(
        !endpoints.is_empty() && !others.is_empty(),
        "the probes must have endpoint addresses and others"
    );
    let rounds = pick(ROUNDS.0, ROUNDS.1);
    let mut doc = json!({ "prefixes": m.len(), "rounds": rounds });
    for (what, ips) in [
        ("endpoint_addresses", &endpoints),
        ("other_addresses", &others),
    ] {
        let view_ns = time(&|ip| view.identity(ip), ips, rounds);
        let scan_ns = time(&|ip| scan(&m, ip), ips, rounds);
        println!(
            "proxy view, {what}: prefix table {view_ns:.0} ns, scan {scan_ns:.0} ns per lookup"
        );
        doc[what] = json!({
            "probes": ips.len(),
            "view_ns": view_ns,
            "scan_ns": scan_ns,
            "scan_over_view": scan_ns / view_ns,
        });
    }
    write_figures("proxy-view", &doc)
}
