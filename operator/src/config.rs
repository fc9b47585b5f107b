//! Command-line configuration of the operator.

use std::net::SocketAddr;
use std::time::Duration;

use axoneme_kvstore::KvArgs;

/// Parses `500ms`, `5s`, `15m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 5s, 15m, 1h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Ok(d)
}

/// axoneme-operator: allocates security identities, leader-elected on etcd.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "axoneme-operator", version)]
pub struct Args {
    #[command(flatten)]
    pub kv: KvArgs,
    #[command(flatten)]
    pub log: axoneme_config::logging::LogArgs,
    /// This replica's name in leader election (default: hostname-pid).
    #[arg(long, env = "AXONEME_OPERATOR_ID")]
    pub id: Option<String>,
    /// Root of Axoneme's keys in etcd.
    #[arg(long, default_value = axoneme_identity::layout::DEFAULT_ROOT)]
    pub kvstore_prefix: String,
    /// Leader lease TTL in seconds: a dead leader is replaced within it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(i64).range(1..=3600))]
    pub lease_ttl: i64,
    /// How long an identity must be unused before it is deleted.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub identity_gc_grace: Duration,
    /// How often identity GC runs.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub identity_gc_interval: Duration,
    /// Cluster id (0-255): bits 16-23 of every identity.
    #[arg(long, default_value_t = 0)]
    pub cluster_id: u8,
    /// Lowest identity number allocated (at least 256).
    #[arg(long, default_value_t = 256)]
    pub identity_min: u16,
    /// Highest identity number allocated.
    #[arg(long, default_value_t = 65535)]
    pub identity_max: u16,
    /// Extra identity-relevant label patterns (`[source:][!]regex`), repeatable.
    #[arg(long = "label-filter")]
    pub label_filter: Vec<String>,
    /// Address of /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9963")]
    pub metrics_addr: SocketAddr,
    /// Concurrent etcd writes of the leader.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_in_flight: u32,
    /// Kubernetes mode: watch CiliumNetworkPolicy,
    /// CiliumClusterwideNetworkPolicy, NetworkPolicy, Namespaces and Nodes,
    /// mirror them into the kvstore for the agents, write the policies'
    /// conditions and CiliumIdentity/CiliumEndpoint/CiliumNode objects (the
    /// leader only). Without it the operator is standalone: policies live
    /// in etcd.
    #[arg(long, env = "AXONEME_KUBERNETES")]
    pub kubernetes: bool,
    /// Kubeconfig for Kubernetes mode (default: `KUBECONFIG`,
    /// `~/.kube/config`, or the in-cluster config).
    #[arg(long, env = "AXONEME_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Cluster pool of IPv4 pod addresses; every node gets one CIDR from it.
    #[arg(long, default_value = "10.200.0.0/16")]
    pub cluster_pool_ipv4_cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's IPv4 pod CIDR.
    #[arg(long, default_value_t = 24)]
    pub cluster_pool_ipv4_mask_size: u8,
    /// Cluster pool of IPv6 pod addresses (none by default: IPv4 only).
    #[arg(long)]
    pub cluster_pool_ipv6_cidr: Option<ipnet::Ipv6Net>,
    /// Prefix length of each node's IPv6 pod CIDR.
    #[arg(long, default_value_t = 112)]
    pub cluster_pool_ipv6_mask_size: u8,
    /// How long a node must be gone before its pod CIDRs are released.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub node_cidr_release_after: Duration,
    /// A directory of flags, one file per flag named like it (the mounted
    /// `axoneme-config` ConfigMap); flags and environment variables win.
    #[arg(long = axoneme_config::FLAG, env = axoneme_config::ENV)]
    pub config_dir: Option<std::path::PathBuf>,
}

impl Args {
    /// The IPAM pools, checked.
    pub fn ipam(&self) -> Result<crate::ipam::IpamConfig, String> {
        let mut pools = vec![crate::ipam::Pool::new(
            self.cluster_pool_ipv4_cidr.into(),
            self.cluster_pool_ipv4_mask_size,
        )
        .map_err(|e| format!("--cluster-pool-ipv4-mask-size: {e}"))?];
        if let Some(v6) = self.cluster_pool_ipv6_cidr {
            pools.push(
                crate::ipam::Pool::new(v6.into(), self.cluster_pool_ipv6_mask_size)
                    .map_err(|e| format!("--cluster-pool-ipv6-mask-size: {e}"))?,
            );
        }
        Ok(crate::ipam::IpamConfig {
            pools,
            release_after: self.node_cidr_release_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("fast").is_err());
    }
}
