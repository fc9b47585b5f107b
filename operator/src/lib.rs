//! The Axoneme operator: leader election, identity allocation and GC.

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
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::allocator::{AllocatorConfig, LeaderExit};
pub use crate::config::Args;
use crate::metrics::Metrics;

/// Runs one operator replica until `cancel` fires.
pub async fn run(args: Args, cancel: CancellationToken) -> anyhow::Result<()> {
    let kv_config = args.kv.to_config().context("etcd settings")?;
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
    let kube_client = if args.kubernetes {
        Some(
            axoneme_crds::kube::Client::try_default()
                .await
                .context("--kubernetes: no usable kubeconfig or in-cluster config")?,
        )
    } else {
        None
    };
    let kv = KvStore::connect(kv_config)
        .await
        .context("connecting to etcd")?;
    let metrics = Metrics::new(&id);
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
    let (leading, leading_rx) = watch::channel(false);
    let controllers = kube_client.map(|client| {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let result = k8s::run(client, leading_rx, cancel.clone()).await;
            // The controllers stopping on their own stops the operator.
            cancel.cancel();
            result
        })
    });

    let result = lead_loop(
        &kv,
        &layout,
        &id,
        args.lease_ttl,
        &cfg,
        &ipam,
        &metrics,
        &leading,
        &caches,
        &cancel,
    )
    .instrument(tracing::info_span!("operator", %id))
    .await;
    cancel.cancel();
    drop(leading);
    if let Some(task) = controllers {
        match task.await {
            Ok(Err(e)) => warn!(error = %e, "policy status controllers failed"),
            Err(e) => warn!(error = %e, "policy status controller task failed"),
            Ok(Ok(())) => {}
        }
    }
    match server.await {
        Ok(Err(e)) => warn!(error = %e, "metrics server failed"),
        Err(e) => warn!(error = %e, "metrics server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

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
    leading: &watch::Sender<bool>,
    caches: &Caches,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let lead = match election::campaign(kv, layout, id, ttl, cancel).await {
            Ok(Some(lead)) => lead,
            Ok(None) => return Ok(()),
            Err(e) => {
                warn!(error = %e, "campaign failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        metrics.set_leader(true);
        leading.send_replace(true);
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
        };
        term.cancel();
        metrics.set_leader(false);
        leading.send_replace(false);
        match exit {
            None => warn!("lost leadership (lease)"),
            Some(LeaderExit::Cancelled) => {
                election::resign(kv, &lead).await;
                info!("resigned leadership on shutdown");
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
