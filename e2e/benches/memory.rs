//! `cargo xtask bench memory`: the resident memory of one agent holding 100
//! local endpoints, 10,000 identities and 1,000 policy rules (release
//! binaries, a real two-node cluster).
//!
//! - 100 pods on node 0 through CNI ADD, in 10 label sets (`app=local-N`);
//! - 10,000 endpoint records of node 1 written straight into etcd, each
//!   with labels of its own (`app=remote-I`, `group=g-(I/10)`), so the
//!   operator allocates 10,000 identities and node 0's ipcache holds their
//!   addresses;
//! - 100 CiliumNetworkPolicies of 10 ingress rules each (1,000 rules):
//!   policy P selects `app=local-(P%10)`; its rule R admits the 10
//!   identities of group `g-(10P+R)` on TCP 8080. So each local endpoint
//!   is selected by 10 policies, 100 rules, 1,000 policy-map entries.
//!
//! Node 0's agent's VmRSS is read from `/proc` when it is idle (the
//! baseline, same run: no pods, no records, no policies), with the pods,
//! with the identities in its ipcache, and once its maps hold everything
//! above (ipcache entries and one endpoint's policy
//! entries polled through its API); VmHWM is its peak. The operator's RSS
//! is reported beside it. Target (issue 15): the agent under 40 MiB.
//!
//! Under `cargo test` (no `--bench`) it runs in its smoke form: 10 pods,
//! 100 identities, 20 rules, every check on, nothing written.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::bench::{pick, rss_mib, smoke, write_figures};
use axoneme_e2e::{Cluster, ClusterConfig};
use axoneme_identity::{EndpointRecord, Layout};
use axoneme_kvstore::{KvConfig, KvStore, Txn, TxnOp};
use serde_json::json;

/// (local pods, remote identities, policies); 10 rules per policy, 10
/// label sets of local pods, 10 identities per group.
const FULL: (usize, usize, usize) = (100, 10_000, 100);
const SMOKE: (usize, usize, usize) = (10, 100, 2);
const RULES_PER_POLICY: usize = 10;
const LOCAL_SETS: usize = 10;
const GROUP: usize = 10;
const TARGET_MIB: f64 = 40.0;

fn policies(n: usize) -> String {
    let mut out = String::new();
    for p in 0..n {
        out.push_str(&format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: mem-{p}\n  namespace: default\nspec:\n  endpointSelector:\n    matchLabels:\n      app: local-{}\n  ingress:\n",
            p % LOCAL_SETS
        ));
        for r in 0..RULES_PER_POLICY {
            out.push_str(&format!(
                "  - fromEndpoints:\n    - matchLabels:\n        group: g-{}\n    toPorts:\n    - ports:\n      - port: \"8080\"\n        protocol: TCP\n",
                p * RULES_PER_POLICY + r
            ));
        }
    }
    out
}

/// Polls `f` every 200 ms until it gives `Some`, for at most `within`.
fn eventually<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if started.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn json_len(c: &Cluster, args: &[&str]) -> Result<usize> {
    let out = c.cli(0, args)?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array().map_or(0, Vec::len))
}

fn main() -> Result<()> {
    let (pods_n, remote_n, policies_n) = pick(FULL, SMOKE);
    let rules_n = policies_n * RULES_PER_POLICY;
    let c = Cluster::start(&ClusterConfig::default())?;
    let agent = c.nodes[0].agent.as_ref().context("node 0's agent")?.pid();
    let operator = c.operators[0].proc.pid();
    // Idle: the agent has loaded its programs and announced its node.
    std::thread::sleep(Duration::from_secs(2));
    let (idle, _) = rss_mib(agent)?;
    println!("agent idle: {idle:.1} MiB");

    // Local endpoints.
    let started = Instant::now();
    let mut pods = Vec::new();
    for i in 0..pods_n {
        let app = format!("local-{}", i % LOCAL_SETS);
        pods.push(c.add_pod(0, &format!("m{i}"), &[("app", &app)])?);
    }
    println!("{pods_n} local pods in {:?}", started.elapsed());
    let (with_pods, _) = rss_mib(agent)?;

    // Remote endpoints, straight into etcd (as node 1's agent would write
    // them), 100 to a transaction.
    let layout = Layout::default();
    let node1 = c.nodes[1].name.clone();
    let endpoints = c.etcd().endpoints();
    let runtime = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    runtime.block_on(async {
        let kv = KvStore::connect(KvConfig::new(endpoints)).await?;
        let ids: Vec<usize> = (0..remote_n).collect();
        for chunk in ids.chunks(100) {
            let ops = chunk
                .iter()
                .map(|i| {
                    let id = format!("remote-{i}");
                    let rec = EndpointRecord {
                        id: id.clone(),
                        node: node1.clone(),
                        labels: vec![
                            format!("k8s:app=remote-{i}"),
                            format!("k8s:group=g-{}", i / GROUP),
                            "k8s:io.kubernetes.pod.namespace=default".into(),
                        ],
                        // 10.210.0.0/16: outside the pod CIDRs.
                        addresses: vec![format!("10.210.{}.{}", i / 250, i % 250 + 1)],
                        namespace: Some("default".into()),
                        interface: None,
                        pod_name: None,
                        pod_uid: None,
                        named_ports: Default::default(),
                        policy_audit_mode: false,
                    };
                    Ok(TxnOp::put(
                        layout.endpoint(&node1, &id),
                        serde_json::to_vec(&rec)?,
                        None,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            kv.txn(Txn::new().and_then(ops)).await?;
        }
        anyhow::Ok(())
    })?;
    println!(
        "{remote_n} remote endpoint records in {:?}",
        started.elapsed()
    );
    let within = pick(Duration::from_secs(120), Duration::from_secs(60));
    let ipcache = eventually("the ipcache", within, || {
        let n = json_len(&c, &["-o", "json", "bpf", "ipcache", "list"])?;
        Ok((n >= remote_n + pods_n).then_some(n))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let (with_identities, _) = rss_mib(agent)?;

    // Policies.
    let file = c.dir.join("memory-policies.yaml");
    std::fs::write(&file, policies(policies_n))?;
    let file = file.to_str().context("path")?.to_string();
    let out = c.cli(0, &["--timeout", "30s", "policy", "import", &file])?;
    if !out.status.success() {
        bail!("policy import: {}", String::from_utf8_lossy(&out.stderr));
    }

    // A local endpoint's 10 rules × 10 identities × 10 policies in its
    // policy map.
    let per_endpoint = (policies_n / LOCAL_SETS).max(1) * RULES_PER_POLICY * GROUP;
    let probe = &pods[0];
    let policy_entries = eventually("endpoint m0's policy map", within, || {
        let n = json_len(
            &c,
            &["-o", "json", "bpf", "policy", "get", &probe.container_id],
        )?;
        Ok((n >= per_endpoint).then_some(n))
    })?;
    println!("converged {:?} after the import: {ipcache} ipcache entries, {policy_entries} policy entries for m0", started.elapsed());
    // Let allocator churn settle.
    std::thread::sleep(Duration::from_secs(2));
    let (loaded, peak) = rss_mib(agent)?;
    let (op_rss, _) = rss_mib(operator)?;
    println!(
        "agent: {loaded:.1} MiB resident ({peak:.1} MiB peak); idle {idle:.1}, with the pods {with_pods:.1}, with the identities {with_identities:.1} MiB; operator {op_rss:.1} MiB"
    );
    if !smoke() && loaded >= TARGET_MIB {
        println!("target not met: {loaded:.1} MiB >= {TARGET_MIB} MiB");
    }
    write_figures(
        "memory",
        &json!({
            "local_endpoints": pods_n,
            "remote_identities": remote_n,
            "policies": policies_n,
            "rules": rules_n,
            "ipcache_entries": ipcache,
            "policy_entries_per_endpoint": policy_entries,
            "agent_rss_idle_mib": idle,
            "agent_rss_with_pods_mib": with_pods,
            "agent_rss_with_identities_mib": with_identities,
            "malloc_arena_max": std::env::var("MALLOC_ARENA_MAX").ok(),
            "agent_rss_mib": loaded,
            "agent_rss_peak_mib": peak,
            "agent_rss_vs_idle": loaded / idle,
            "operator_rss_mib": op_rss,
            "target_agent_rss_mib": TARGET_MIB,
            "target_met": loaded < TARGET_MIB,
        }),
    )?;
    drop(pods);
    Ok(())
}
