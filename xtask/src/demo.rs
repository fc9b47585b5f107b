//! `cargo xtask demo`: a local Axoneme control plane — a 3-member etcd and
//! two leader-elected operators — allocating identities for a few hundred
//! endpoints, then surviving the loss of the leading operator.
//!
//! The cluster stays up afterwards (tear it down with `--down`) unless
//! `--once` is given.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::{EtcdCluster, OperatorProc};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Tear the cluster down at the end instead of leaving it running.
    #[arg(long)]
    once: bool,
    /// Tear down a cluster a previous demo left running, then exit.
    #[arg(long)]
    down: bool,
    /// How many endpoint records to create.
    #[arg(long, default_value_t = 300)]
    endpoints: usize,
}

const APPS: &[&str] = &[
    "frontend", "checkout", "payments", "catalog", "cart", "search", "auth", "intruder",
];
const ENVS: &[&str] = &["prod", "staging"];
const LEASE_TTL: &str = "5";

fn state_file(root: &Path) -> PathBuf {
    root.join("target").join("demo").join("state.json")
}

/// Stops what a kept demo left running: only the PIDs it recorded, and only
/// if they still are etcd or Axoneme processes.
fn down(root: &Path) -> Result<()> {
    let path = state_file(root);
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("demo: nothing to tear down ({} not found)", path.display());
        return Ok(());
    };
    let state: serde_json::Value = serde_json::from_str(&text)?;
    for pid in state["pids"].as_array().into_iter().flatten() {
        let pid = pid.as_u64().unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("etcd") || cmdline.contains("axoneme") {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
            println!("demo: stopped pid {pid}");
        }
    }
    for dir in state["dirs"].as_array().into_iter().flatten() {
        if let Some(dir) = dir.as_str() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    std::fs::remove_file(&path)?;
    println!("demo: torn down");
    Ok(())
}

struct Demo {
    cli: PathBuf,
    etcd_endpoints: String,
}

impl Demo {
    fn axoneme(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.cli)
            .args(args)
            .env("AXONEME_ETCD_ENDPOINTS", &self.etcd_endpoints)
            .output()
            .with_context(|| format!("running {}", self.cli.display()))?;
        if !out.status.success() {
            bail!(
                "axoneme {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn show(&self, args: &[&str]) -> Result<()> {
        println!("\n$ axoneme {}", args.join(" "));
        print!("{}", self.axoneme(args)?);
        Ok(())
    }

    /// Creates endpoints `range` with 8 parallel writers, each waiting for its identity.
    fn put_endpoints(
        &self,
        range: std::ops::Range<usize>,
        labels: impl Fn(usize) -> Vec<String> + Sync,
    ) -> Result<()> {
        let chunks: Vec<Vec<usize>> = (0..8)
            .map(|w| range.clone().filter(|i| i % 8 == w).collect())
            .collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|chunk| {
                    let labels = &labels;
                    s.spawn(move || -> Result<()> {
                        for &i in chunk {
                            let node = format!("node-{}", 1 + i % 2);
                            let id = format!("ep-{i}");
                            let mut args = vec![
                                "endpoint".to_string(),
                                "put".into(),
                                "--node".into(),
                                node,
                                "--id".into(),
                                id,
                                "--wait".into(),
                                "15".into(),
                            ];
                            for l in labels(i) {
                                args.push("--label".into());
                                args.push(l);
                            }
                            let args: Vec<&str> = args.iter().map(String::as_str).collect();
                            self.axoneme(&args)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("writer thread"))
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(())
    }
}

fn leader(ops: &[OperatorProc]) -> Option<usize> {
    ops.iter().position(|o| {
        o.http_get("/healthz")
            .is_ok_and(|b| b.contains("\"leader\":true"))
    })
}

fn wait_leader(ops: &[OperatorProc], timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(i) = leader(ops) {
            return Ok(i);
        }
        if Instant::now() > deadline {
            bail!("no operator became leader within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(root: &Path, args: DemoArgs) -> Result<()> {
    if args.down {
        return down(root);
    }
    if state_file(root).exists() {
        println!("demo: a previous demo is still up; tearing it down first");
        down(root)?;
    }
    super::build_all(root, false)?;
    let bin = root.join("target").join("debug");

    println!("\n[1/6] etcd: starting a 3-member cluster on loopback");
    let etcd = EtcdCluster::start(3)?;
    let endpoints = etcd.endpoints();
    println!("      members: {}", endpoints.join(" "));
    let demo = Demo {
        cli: bin.join("axoneme"),
        etcd_endpoints: endpoints.join(","),
    };

    println!("[2/6] operators: starting two replicas (lease TTL {LEASE_TTL} s)");
    let mut ops = Vec::new();
    for id in ["operator-a", "operator-b"] {
        let mut op = OperatorProc::start(
            &bin.join("axoneme-operator"),
            id,
            &endpoints,
            &["--lease-ttl".into(), LEASE_TTL.into()],
            etcd.dir(),
        )?;
        op.wait_up(Duration::from_secs(10))?;
        println!(
            "      {id}: pid {}, metrics http://{}/metrics",
            op.proc.pid(),
            op.metrics_addr
        );
        ops.push(op);
    }
    let first = wait_leader(&ops, Duration::from_secs(10))?;
    println!("      leader: {}", ops[first].id);

    let n = args.endpoints;
    println!(
        "[3/6] endpoints: writing {n} records ({} apps x {} envs, 2 nodes, a per-pod hash label the filter drops)",
        APPS.len(),
        ENVS.len()
    );
    let started = Instant::now();
    demo.put_endpoints(0..n, |i| {
        vec![
            format!("k8s:app={}", APPS[i % APPS.len()]),
            format!("k8s:env={}", ENVS[(i / APPS.len()) % ENVS.len()]),
            format!("k8s:pod-template-hash=h{i:05}"),
        ]
    })?;
    println!(
        "      all {n} endpoints have identities after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    demo.show(&["identity", "list"])?;

    println!(
        "\n[4/6] failover: kill -9 the leading operator ({})",
        ops[first].id
    );
    let killed_at = Instant::now();
    ops[first].proc.kill9();
    let second = wait_leader(&ops, Duration::from_secs(30))?;
    println!(
        "      {} leads after {:.2} s (bounded by the {LEASE_TTL} s lease)",
        ops[second].id,
        killed_at.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    demo.put_endpoints(n..n + 20, |_| {
        vec!["k8s:app=reports".into(), "k8s:env=prod".into()]
    })?;
    println!(
        "      20 new endpoints (app=reports) got their identity from {} in {:.2} s",
        ops[second].id,
        started.elapsed().as_secs_f64()
    );
    demo.show(&["identity", "list", "--allocated-only"])?;

    println!("\n[5/6] policy: the seed CiliumNetworkPolicy, checked offline, then stored and judged by the operator");
    let seed = root.join("../shared/testdata/seed-payments-policy.yaml");
    let seed = seed.to_str().context("seed path")?;
    demo.show(&["policy", "validate", seed])?;
    demo.show(&["policy", "import", seed, "--wait", "10"])?;

    println!("\n[6/6] status");
    demo.show(&["status", "--verbose"])?;

    if args.once {
        println!("\ndemo: done; tearing down (--once)");
        return Ok(());
    }
    let mut pids = Vec::new();
    for op in ops {
        let mut p = op.proc;
        if p.is_running() {
            pids.push(p.detach());
        }
    }
    let (etcd_pids, dir) = etcd.detach();
    pids.extend(etcd_pids);
    let state = state_file(root);
    std::fs::create_dir_all(state.parent().expect("has parent"))?;
    std::fs::write(
        &state,
        serde_json::to_string_pretty(&serde_json::json!({
            "pids": pids,
            "dirs": [dir],
            "etcd_endpoints": demo.etcd_endpoints,
        }))?,
    )?;
    println!(
        "\nThe cluster is still running. Try:\n\
         \n  export AXONEME_ETCD_ENDPOINTS={}\
         \n  target/debug/axoneme status --verbose\
         \n  target/debug/axoneme identity list\
         \n  target/debug/axoneme endpoint list --node node-1\
         \n  target/debug/axoneme endpoint put --node node-1 --id mine --label k8s:app=mine --wait 5\
         \n  target/debug/axoneme policy list\
         \n\nLogs: {}\nTear down: cargo xtask demo --down",
        demo.etcd_endpoints,
        dir.display()
    );
    Ok(())
}
