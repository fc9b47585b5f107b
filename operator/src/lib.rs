//! The Axoneme operator: leader election, identity allocation and GC,
//! policy status, IPAM, and in Kubernetes mode the bridge between the API
//! and the kvstore ([`k8s`]).

#![forbid(unsafe_code)]

pub mod allocator;
pub mod config;
pub mod election;
pub mod ipam;
pub mod k8s;
pub mod metrics;
pub mod policy_status;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axoneme_identity::{IdentityRange, LabelFilter, Layout, NodeRecord, Raw, WatchCache};
use axoneme_kvstore::KvStore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::allocator::{AllocatorConfig, LeaderExit};
pub use crate::config::Args;
use crate::metrics::Metrics;

/// Runs one operator replica until `cancel` fires.
pub async fn run(args: Args, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut kv_config = args.kv.to_config().context("etcd settings")?;
    let range = IdentityRange::new(args.cluster_id, args.identity_min, args.identity_max)
        .context("identity range")?;
    let filter = LabelFilter::new(&args.label_filter).context("--label-filter")?;
    let id = args.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let cfg = AllocatorConfig {
        range,
        filter,
        gc_grace: args.identity_gc_grace,
        gc_interval: args.identity_gc_interval,
        max_in_flight: usize::try_from(args.max_in_flight).unwrap_or(64),
    };
    let ipam = args.ipam().map_err(anyhow::Error::msg)?;
    let layout = Layout::new(&args.kvstore_prefix);
    // Connect to the API server first, so a missing config fails at once.
    // The managed etcd's members through the API server, not cluster DNS
    // (which needs the pod network, which needs Axoneme).
    let kube_client = if args.kubernetes {
        let (client, members, name) = axoneme_crds::client::connect_and_find_etcd(
            args.kubeconfig.as_deref(),
            &kv_config.endpoints,
            kv_config.server_name(),
        )
        .await?;
        kv_config.set_members(members, name);
        Some(client)
    } else {
        None
    };
    let kv = KvStore::connect(kv_config)
        .await
        .context("connecting to etcd")?;
    let metrics = Metrics::new(&id);
    kv.observe_with(Arc::new(metrics.kvstore.clone()));
    let server = tokio::spawn(metrics::serve(
        args.metrics_addr,
        metrics.clone(),
        cancel.clone(),
    ));
    let caches = Caches {
        endpoints: WatchCache::start(kv.clone(), layout.endpoints_prefix()),
        policies: WatchCache::start(kv.clone(), layout.policies_prefix()),
        nodes: WatchCache::start(kv.clone(), layout.nodes_prefix()),
    };
    info!(%id, %range, kubernetes = args.kubernetes, "operator started");
    let kube = kube_client.map(|client| {
        metrics.set_kubernetes();
        k8s::Kube::start(
            client,
            &kv,
            &layout,
            caches.policies.clone(),
            metrics.clone(),
            &cancel,
        )
    });

    let result = lead_loop(
        &kv,
        &layout,
        &id,
        args.lease_ttl,
        &cfg,
        &ipam,
        &metrics,
        &caches,
        kube.as_ref(),
        &cancel,
    )
    .instrument(tracing::info_span!("operator", %id))
    .await;
    cancel.cancel();
    match server.await {
        Ok(Err(e)) => warn!(error = %e, "metrics server failed"),
        Err(e) => warn!(error = %e, "metrics server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// How long a stopping leader tries to hand over before it exits.
const RESIGN_WAIT: Duration = Duration::from_secs(2);

/// Watch caches every replica keeps warm, so a takeover starts from a full view.
struct Caches {
    endpoints: WatchCache<Raw>,
    policies: WatchCache<Raw>,
    nodes: WatchCache<NodeRecord>,
}

#[allow(clippy::too_many_arguments)]
async fn lead_loop(
    kv: &KvStore,
    layout: &Layout,
    id: &str,
    ttl: i64,
    cfg: &AllocatorConfig,
    ipam: &ipam::IpamConfig,
    metrics: &Arc<Metrics>,
    caches: &Caches,
    kube: Option<&k8s::Kube>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        // A stop never waits on etcd: a call in flight (retried up to the
        // kvstore's deadline while etcd is gone) is dropped.
        let campaign = tokio::select! {
            r = election::campaign(kv, layout, id, ttl, cancel) => r,
            _ = cancel.cancelled() => return Ok(()),
        };
        let lead = match campaign {
            Ok(Some(lead)) => lead,
            Ok(None) => return Ok(()),
            Err(e) => {
                warn!(error = %e, "campaign failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
        };
        metrics.set_leader(true);
        let term = cancel.child_token();
        let exit = tokio::select! {
            _ = election::hold(kv, &lead, ttl, &term) => None,
            exit = allocator::run(
                kv.clone(), layout.clone(), lead.clone(), cfg.clone(),
                metrics.clone(), caches.endpoints.clone(), term.clone(),
            ) => Some(exit),
            exit = policy_status::run(
                kv.clone(), layout.clone(), lead.clone(), metrics.clone(),
                caches.policies.clone(), term.clone(),
            ) => Some(exit),
            exit = ipam::run(
                kv.clone(), layout.clone(), lead.clone(), ipam.clone(),
                caches.nodes.clone(), term.clone(),
            ) => Some(exit),
            exit = async {
                match kube {
                    Some(k) => k.lead(kv, layout, &lead, &term).await,
                    None => std::future::pending().await,
                }
            } => Some(exit),
            // The loops end on `term`, but one may be inside an etcd call.
            _ = cancel.cancelled() => Some(LeaderExit::Cancelled),
        };
        term.cancel();
        metrics.set_leader(false);
        match exit {
            None => warn!("lost leadership (lease)"),
            Some(LeaderExit::Cancelled) => {
                // Handing over at once spares the standby a lease TTL; with
                // etcd gone the lease expires by itself.
                match tokio::time::timeout(RESIGN_WAIT, election::resign(kv, &lead)).await {
                    Ok(()) => info!("resigned leadership on shutdown"),
                    Err(_) => warn!(
                        "etcd did not answer within {RESIGN_WAIT:?}: leadership ends when its lease expires"
                    ),
                }
                return Ok(());
            }
            Some(LeaderExit::Fenced) => warn!("lost leadership (fenced write)"),
            Some(LeaderExit::Failed(e)) => {
                warn!(error = %e, "leader work failed; resigning and re-campaigning");
                election::resign(kv, &lead).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
