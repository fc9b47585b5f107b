//! Identity allocation benchmark (`cargo xtask bench identity`).
//!
//! On a real 3-member etcd, in one run:
//! 1. the ceiling: raw create-if-absent transactions/s from one client at the
//!    operator's concurrency (64), both 1-put and the allocator's 3-put shape;
//! 2. new identities/s: a backlog of endpoint records, each with its own label
//!    set, written in 128-op transactions so the writer costs next to
//!    nothing, allocated by a real (release) operator process;
//! 3. latency from "endpoint record written" to "identity visible in a
//!    watching agent's caches" (assignment and identity record), p50/p99.
//!
//! Writes JSON to `$AXONEME_BENCH_OUT` (default target/bench/identity.json).
//!
//! Under `cargo test` (no `--bench` argument) it runs in its smoke form
//! instead: a few hundred transactions, identities and samples with the
//! debug operator, every check on, nothing written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use axoneme_e2e::bench::{pick, write_figures};
use axoneme_e2e::{EtcdCluster, OperatorProc};
use axoneme_identity::{
    identity_cache, CacheEvent, EndpointIdentity, EndpointRecord, Layout, WatchCache,
};
use axoneme_kvstore::{Compare, CompareOp, KvConfig, KvStore, Txn, TxnOp};
use futures::stream::{self, StreamExt};

const CONCURRENCY: usize = 64;
const RAW_TXNS: usize = 10_000;
const IDENTITIES: usize = 10_000;
const LATENCY_SAMPLES: usize = 1_000;

/// [`RAW_TXNS`], or the smoke form's count.
fn raw_txns() -> usize {
    pick(RAW_TXNS, 300)
}

/// [`IDENTITIES`], or the smoke form's count.
fn identities() -> usize {
    pick(IDENTITIES, 300)
}

/// [`LATENCY_SAMPLES`], or the smoke form's count.
fn latency_samples() -> usize {
    pick(LATENCY_SAMPLES, 100)
}

async fn raw_rate(kv: &KvStore, tag: &str, puts: usize) -> Result<f64> {
    let start = Instant::now();
    let results: Vec<Result<bool>> = stream::iter(0..raw_txns())
        .map(|i| {
            let kv = kv.clone();
            let tag = tag.to_string();
            async move {
                let key = format!("bench/raw/{tag}/{i}");
                let txn = Txn::new()
                    .when(vec![
                        Compare::create_revision(
                            key.clone(),
                            CompareOp::Equal,
                            0
                        );
                        puts
                    ])
                    .and_then(
                        (0..puts)
                            .map(|p| TxnOp::put(format!("{key}/{p}"), vec![b'x'; 200], None))
                            .collect::<Vec<_>>(),
                    );
                Ok(kv.txn(txn).await?.succeeded)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let ok = results
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    ensure!(
        ok == raw_txns(),
        "only {ok}/{} raw transactions succeeded",
        raw_txns()
    );
    Ok(raw_txns() as f64 / start.elapsed().as_secs_f64())
}

fn record(i: usize, tag: &str) -> (String, String, Vec<u8>) {
    let node = format!("node-{}", i % 8);
    let id = format!("{tag}-{i}");
    let rec = EndpointRecord {
        id: id.clone(),
        node: node.clone(),
        labels: vec![format!("app={tag}-{i}"), "team=bench".into()],
        addresses: vec![],
        namespace: None,
        interface: None,
        pod_name: None,
        pod_uid: None,
        named_ports: Default::default(),
        policy_audit_mode: false,
    };
    (node, id, serde_json::to_vec(&rec).expect("serializes"))
}

async fn throughput(kv: &KvStore, layout: &Layout) -> Result<f64> {
    let start = Instant::now();
    for chunk in (0..identities()).collect::<Vec<_>>().chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                let (node, id, value) = record(*i, "tp");
                TxnOp::put(layout.endpoint(&node, &id), value, None)
            })
            .collect();
        kv.txn(Txn::new().and_then(ops)).await?;
    }
    let prefix = layout.endpoint_identities_prefix();
    loop {
        let n = kv.count_prefix(&prefix).await?;
        if n >= identities() as i64 {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(300),
            "allocation stalled at {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(identities() as f64 / start.elapsed().as_secs_f64())
}

/// Endpoint → when its record was written, completed when an agent's caches
/// hold both its assignment and its identity.
async fn latency(kv: &KvStore, layout: &Layout) -> Result<hdrhistogram::Histogram<u64>> {
    let identities = identity_cache(kv.clone(), layout);
    let assignments: WatchCache<EndpointIdentity> =
        WatchCache::start(kv.clone(), layout.endpoint_identities_prefix());
    identities.ready().await;
    assignments.ready().await;
    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let hist = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new(3)?));
    let watcher = {
        let (pending, hist) = (pending.clone(), hist.clone());
        let (identities, assignments) = (identities.clone(), assignments.clone());
        let id_prefix = layout.identity_ids_prefix();
        let ep_prefix = layout.endpoint_identities_prefix();
        tokio::spawn(async move {
            let mut a_sub = assignments.subscribe();
            let mut i_sub = identities.subscribe();
            // Identity id → endpoints waiting for its record.
            let mut waiting: HashMap<u32, Vec<String>> = HashMap::new();
            let done = |ep: &str| {
                if let Some(t) = pending.lock().unwrap().remove(ep) {
                    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                    hist.lock().unwrap().record(us).ok();
                }
            };
            loop {
                tokio::select! {
                    ev = a_sub.recv() => if let CacheEvent::Upsert { key, value } = ev {
                        let ep = key.trim_start_matches(&ep_prefix).to_string();
                        if let Some(id) = value.identity {
                            if identities.get(&format!("{id_prefix}{}", id.0)).is_some() {
                                done(&ep);
                            } else {
                                waiting.entry(id.0).or_default().push(ep);
                            }
                        }
                    },
                    ev = i_sub.recv() => if let CacheEvent::Upsert { value, .. } = ev {
                        for ep in waiting.remove(&value.id.0).unwrap_or_default() {
                            done(&ep);
                        }
                    },
                }
            }
        })
    };
    for i in 0..latency_samples() {
        let (node, id, value) = record(i, "lat");
        pending
            .lock()
            .unwrap()
            .insert(format!("{node}/{id}"), Instant::now());
        kv.put(&layout.endpoint(&node, &id), value, 0).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.lock().unwrap().is_empty() {
        ensure!(
            Instant::now() < deadline,
            "some endpoints never became visible"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher.abort();
    let h = hist.lock().unwrap().clone();
    Ok(h)
}

async fn bench() -> Result<serde_json::Value> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await??;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    let layout = Layout::default();
    eprintln!(
        "bench identity: raw transaction ceiling ({} txns, {CONCURRENCY} in flight)",
        raw_txns()
    );
    let raw1 = raw_rate(&kv, "one", 1).await?;
    let raw3 = raw_rate(&kv, "three", 3).await?;
    let bin = axoneme_e2e::bin_path("axoneme-operator");
    ensure!(
        bin.exists(),
        "{} missing: run through `cargo xtask bench identity` (or build the binaries first)",
        bin.display()
    );
    let mut op = OperatorProc::start(
        &bin,
        "bench",
        &etcd.endpoints(),
        &["--max-in-flight".into(), CONCURRENCY.to_string()],
        etcd.dir(),
    )?;
    op.wait_up(Duration::from_secs(10))?;
    eprintln!("bench identity: allocating {} new identities", identities());
    let ids_per_s = throughput(&kv, &layout).await?;
    eprintln!(
        "bench identity: latency over {} endpoints",
        latency_samples()
    );
    let lat = latency(&kv, &layout).await?;
    // The bench sees each assignment in etcd as soon as the transaction
    // commits; the operator counts it when it handles the reply a moment
    // later: give the last reply time to be handled.
    let expected = (identities() + latency_samples()) as f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let allocated = loop {
        let n = op
            .metric("axoneme_identity_allocations_total")
            .context("reading operator metrics")?;
        if n >= expected || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(
        (allocated - expected).abs() < 0.5,
        "operator reports {allocated} allocations, expected {expected}"
    );
    let ms = |q: f64| lat.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "etcd": {
            "members": 3,
            "data": if std::env::var_os("AXONEME_ETCD_DISK").is_some() { "disk" } else { "tmpfs (/dev/shm)" },
            "version": "3.4 (Debian etcd-server)",
        },
        "concurrency": CONCURRENCY,
        "raw_txn_per_s": raw1,
        "raw_txn_3put_per_s": raw3,
        "identities": identities(),
        "identities_per_s": ids_per_s,
        "identities_vs_raw_txn": ids_per_s / raw1,
        "identities_vs_raw_3put_txn": ids_per_s / raw3,
        "latency_ms": {
            "samples": lat.len(),
            "p50": ms(0.5),
            "p99": ms(0.99),
            "max": lat.max() as f64 / 1000.0,
        },
    }))
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench` (the full form, see
    // `axoneme_e2e::bench`); nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(bench())?;
    println!(
        "identity: {:.0} new identities/s ({:.0}% of {:.0} raw txn/s), record→agent cache p50 {:.2} ms p99 {:.2} ms",
        result["identities_per_s"].as_f64().unwrap_or_default(),
        100.0 * result["identities_vs_raw_txn"].as_f64().unwrap_or_default(),
        result["raw_txn_per_s"].as_f64().unwrap_or_default(),
        result["latency_ms"]["p50"].as_f64().unwrap_or_default(),
        result["latency_ms"]["p99"].as_f64().unwrap_or_default(),
    );
    write_figures("identity", &result)
}
