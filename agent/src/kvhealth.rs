//! The kvstore probe task: asks every etcd member for its status every
//! probe interval (each ask bounded by the request timeout) and publishes
//! the answer, so `status` says how the kvstore is without waiting on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axoneme_api::ComponentStatus;
use axoneme_kvstore::{KvStore, MemberHealth};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The last probe.
#[derive(Debug, Clone)]
pub struct KvHealth {
    pub members: Vec<MemberHealth>,
    pub probed_at: Instant,
}

impl KvHealth {
    /// Healthy: a member that knows a raft leader answered.
    pub fn ok(&self) -> bool {
        self.members.iter().any(|m| m.is_leader || m.healthy)
    }

    /// The `status` line: healthy members, the leader, how old the probe
    /// is, and why the others failed.
    pub fn component(this: Option<&KvHealth>) -> ComponentStatus {
        let Some(h) = this else {
            return ComponentStatus {
                name: "kvstore".into(),
                ok: false,
                message: "not probed yet".into(),
            };
        };
        let healthy = h.members.iter().filter(|m| m.healthy).count();
        let leader = h.members.iter().find(|m| m.is_leader);
        let mut message = format!(
            "{healthy}/{} etcd members healthy, raft leader {} (probed {} ms ago)",
            h.members.len(),
            leader.map_or("none", |m| m.endpoint.as_str()),
            h.probed_at.elapsed().as_millis()
        );
        if let Some(e) = h
            .members
            .iter()
            .find_map(|m| m.error.as_ref().map(|e| format!("{}: {e}", m.endpoint)))
        {
            message.push_str(&format!("; {e}"));
        }
        ComponentStatus {
            name: "kvstore".into(),
            ok: h.ok() && healthy * 2 > h.members.len(),
            message,
        }
    }
}

pub async fn run(
    kv: KvStore,
    every: Duration,
    out: watch::Sender<Option<Arc<KvHealth>>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut was_ok = true;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        let members = tokio::select! {
            m = kv.member_health() => m,
            _ = cancel.cancelled() => return Ok(()),
        };
        let h = KvHealth {
            members,
            probed_at: Instant::now(),
        };
        let ok = KvHealth::component(Some(&h)).ok;
        if ok != was_ok {
            if ok {
                info!("kvstore healthy again");
            } else {
                warn!(status = %KvHealth::component(Some(&h)).message, "kvstore unhealthy; enforcing the last known state");
            }
            was_ok = ok;
        }
        out.send_replace(Some(Arc::new(h)));
    }
}
