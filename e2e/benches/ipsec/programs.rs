//! What Axoneme's programs themselves cost per transaction on a path: the
//! kernel's BPF statistics (run time and count per program) around one
//! request/response run, for every program attached at tc on the nodes'
//! interfaces. Statistics are on only for that run (they add two clock
//! reads per program run), never during the measured rounds.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use axoneme_e2e::netns::{run, Netns};
use serde_json::{json, Value};

/// The names of `ns`'s interfaces.
pub fn interfaces(ns: &Netns) -> Result<Vec<String>> {
    let out = ns.ip(&["-j", "link", "show"])?;
    let links: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    Ok(links
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect())
}

/// Every program attached at tc in `nodes` (label, namespace): its id →
/// where ("label device hook").
pub fn attached(nodes: &[(&str, &Netns)]) -> Result<BTreeMap<u32, String>> {
    let mut at = BTreeMap::new();
    for (label, ns) in nodes {
        for dev in interfaces(ns)? {
            for hook in ["ingress", "egress"] {
                let out = match run(&["tc", "-n", &ns.name, "filter", "show", "dev", &dev, hook]) {
                    Ok(out) => out,
                    // Gone since it was listed: a veth whose peer's
                    // namespace was dropped goes a moment later (the
                    // kernel cleans namespaces up asynchronously).
                    Err(_) if !interfaces(ns)?.contains(&dev) => break,
                    Err(e) => return Err(e),
                };
                let text = String::from_utf8_lossy(&out.stdout);
                let mut words = text.split_whitespace();
                while let Some(w) = words.next() {
                    if let Some(id) = (w == "id").then(|| words.next()).flatten() {
                        if let Ok(id) = id.parse() {
                            at.insert(id, format!("{label} {dev} {hook}"));
                        }
                    }
                }
            }
        }
    }
    Ok(at)
}

/// Run time and count of each program in `ids`.
fn sample(ids: &BTreeMap<u32, String>) -> Result<BTreeMap<u32, (Duration, u64)>> {
    let mut s = BTreeMap::new();
    for p in aya::programs::loaded_programs() {
        let p = p?;
        if ids.contains_key(&p.id()) {
            s.insert(p.id(), (p.run_time(), p.run_count()));
        }
    }
    Ok(s)
}

/// The programs' time per transaction while `transact` runs (it returns
/// how many transactions it made), in total and per attachment (runs per
/// transaction, nanoseconds per run).
pub fn per_transaction(
    nodes: &[(&str, &Netns)],
    transact: impl FnOnce() -> Result<(u64, f64)>,
) -> Result<Value> {
    let at = attached(nodes)?;
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let before = sample(&at)?;
    let (n, p50_us) = transact()?;
    let after = sample(&at)?;
    drop(stats);
    let n = n.max(1) as f64;
    let mut programs = serde_json::Map::new();
    let mut total = 0.0;
    for (id, place) in &at {
        let (Some(b), Some(a)) = (before.get(id), after.get(id)) else {
            continue;
        };
        let runs = a.1.saturating_sub(b.1);
        if runs == 0 {
            continue;
        }
        let ns = a.0.saturating_sub(b.0).as_nanos() as f64;
        total += ns / n;
        programs.insert(
            place.clone(),
            json!({
                "runs_per_transaction": runs as f64 / n,
                "ns_per_run": ns / runs as f64,
            }),
        );
    }
    Ok(json!({
        "transactions": n,
        "p50_us": p50_us,
        "ns_per_transaction": total,
        "programs": programs,
    }))
}
