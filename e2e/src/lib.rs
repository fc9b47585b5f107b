//! The local cluster harness: real etcd members, operator and agent
//! processes, each with per-run names, ports and directories, stopped by PID
//! and cleaned up on drop (set `AXONEME_KEEP=1` to keep state for debugging).

#![forbid(unsafe_code)]

pub mod bench;
pub mod capture;
pub mod cgroup;
pub mod cluster;
pub mod etcd;
pub mod expect;
pub mod helm;
pub mod http;
pub mod hubble;
pub mod kube;
pub mod kube_proxy;
pub mod netns;
pub mod operator;
pub mod probe;
pub mod process;
pub mod services;
pub mod tls;
pub mod vm;

pub use cluster::{Cluster, ClusterConfig, CniPod, SeedPods};
pub use etcd::EtcdCluster;
pub use kube::KubeControlPlane;
pub use operator::OperatorProc;
pub use process::{bin_path, free_port, Proc};

/// Whether the user asked to keep processes' state for debugging.
pub fn keep() -> bool {
    std::env::var_os("AXONEME_KEEP").is_some_and(|v| v != "0" && !v.is_empty())
}

/// A short prefix unique to this process and call, for names that must not
/// collide between parallel tests and stale runs.
pub fn run_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "ax{}{}{}",
        tag,
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}
