//! The node-record task: this node's pod CIDRs, from the operator's
//! allocation (a watch, not a poll), into the node's IPAM and the node
//! record on the node lease, so other nodes route them here; and the
//! encryption task's part of the record (its keys and boot id).

use std::sync::Arc;

use axoneme_identity::{Layout, NodeCidrs, NodeEncryption, NodeRecord, WatchCache};
use ipnet::IpNet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::endpoints::Endpoints;
use crate::lease::Leased;
use crate::reconcile::backoff;

pub struct Announcer {
    pub layout: Layout,
    pub cidrs: WatchCache<NodeCidrs>,
    pub leased: Leased,
    /// The record as announced at start (with the CIDRs allocated then).
    pub record: NodeRecord,
    pub endpoints: Arc<Endpoints>,
    /// The pod CIDRs, published for the encryption task.
    pub cidrs_out: watch::Sender<Vec<IpNet>>,
    /// The encryption task's part of the record.
    pub encryption: watch::Receiver<Option<NodeEncryption>>,
}

impl Announcer {
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut changes = self.cidrs.subscribe();
        // The record announced at start already has the CIDRs of the
        // allocation it read.
        if !self.record.pod_cidrs.is_empty() {
            self.endpoints.set_cidrs(self.record.pod_cidrs.clone());
            self.cidrs_out.send_replace(self.record.pod_cidrs.clone());
        }
        let cidr_key = self.layout.node_cidrs(&self.record.name);
        let node_key = self.layout.node(&self.record.name);
        let mut encryption_open = true;
        loop {
            let want = self
                .cidrs
                .get(&cidr_key)
                .map(|c| c.pod_cidrs.clone())
                .unwrap_or_default();
            let mut changed = false;
            if !want.is_empty() && want != self.record.pod_cidrs {
                info!(cidrs = ?want, "pod CIDRs from the operator");
                self.endpoints.set_cidrs(want.clone());
                self.cidrs_out.send_replace(want.clone());
                self.record.pod_cidrs = want;
                changed = true;
            }
            let encryption = self.encryption.borrow_and_update().clone();
            if encryption != self.record.encryption {
                self.record.encryption = encryption;
                changed = true;
            }
            if changed {
                let value = serde_json::to_vec(&self.record)?;
                let mut failures = 0;
                loop {
                    let put = tokio::select! {
                        r = self.leased.put(&node_key, value.clone()) => r,
                        _ = cancel.cancelled() => return Ok(()),
                    };
                    match put {
                        Ok(()) => break,
                        Err(e) => {
                            failures += 1;
                            warn!(error = %e, failures, "cannot update the node record; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff(failures)) => {}
                                _ = cancel.cancelled() => return Ok(()),
                            }
                        }
                    }
                }
            }
            tokio::select! {
                _ = changes.recv() => {}
                // The encryption task gone (or never run): only the CIDRs
                // from here on.
                r = self.encryption.changed(), if encryption_open => encryption_open = r.is_ok(),
                _ = cancel.cancelled() => return Ok(()),
            }
        }
    }
}
