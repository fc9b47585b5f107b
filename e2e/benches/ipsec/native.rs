//! The twin comparison on this machine's own kernel, before the VM boots:
//! a two-node cluster with encryption off (this kernel has no ESP), its
//! pods' path against a bare twin without XFRM on the same nodes, in the
//! same rounds. The VM's phase two measures the same pair under TCG
//! (`axoneme_plain_vs_bare_twin_*`); set side by side, the two say how much
//! of the programs' share of a transaction is the emulation's.
//!
//! Unlike the VM, the host is shared: nothing here moves other processes
//! off a CPU (`clear_first_cpu`); both ends of each measurement are still
//! pinned to the first CPU.

use anyhow::Result;
use axoneme_e2e::{Cluster, ClusterConfig};
use serde_json::{json, Value};

use super::{program_cost, rr, tcp, twin, Runs};

/// Set: the bench runs this comparison alone, without the VM.
pub const ONLY: &str = "AXONEME_IPSEC_BENCH_NATIVE_ONLY";

/// Rounds of the pods' path and the twin's, `secs` each, ratios and the
/// programs' time per transaction.
pub fn compare(secs: f64, rounds: usize) -> Result<Value> {
    let c = Cluster::start(&ClusterConfig::default())?;
    let server = c.add_pod(0, "server", &[("app", "server")])?;
    let client = c.add_pod(1, "client", &[("app", "client")])?;
    let twins = twin::add(&c, &axoneme_e2e::run_prefix("nt"), false)?;
    let mut runs = Runs::default();
    for round in 0..rounds {
        let [ax, tw] = twin::against(&c, (&server, &client), &twins, secs, round)?;
        runs.add("axoneme_plain", ax);
        runs.add("bare_twin", tw);
    }
    twin::check_bare(&c)?;
    let cost = program_cost(&c, &server, &client, secs)?;
    drop(twins);
    let (m_ax, m_tw) = (runs.median("axoneme_plain"), runs.median("bare_twin"));
    let ratio_tcp = runs.paired("axoneme_plain", "bare_twin", tcp);
    let ratio_rr = runs.paired("axoneme_plain", "bare_twin", rr);
    Ok(json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        "tcp_mbps": {"axoneme_plain": m_ax.mbps, "bare_twin": m_tw.mbps},
        "rr_p50_us": {"axoneme_plain": m_ax.p50_us, "bare_twin": m_tw.p50_us},
        "per_round": runs.per_round(),
        "programs_per_transaction": cost,
        "ratios": {
            "axoneme_plain_vs_bare_twin_tcp": ratio_tcp.0,
            "axoneme_plain_vs_bare_twin_rr": ratio_rr.0,
            "axoneme_plain_vs_bare_twin_tcp_rounds": ratio_tcp.1,
            "axoneme_plain_vs_bare_twin_rr_rounds": ratio_rr.1,
        },
    }))
}
