//! kube-proxy replacement: the services unit. One task owns the LB maps
//! (their one writer): it watches the service records in the kvstore
//! (written by `axoneme service` in standalone mode), expands them into
//! frontends (`axoneme_service`), computes the maps' content for this node
//! ([`table`]) and applies the difference in a reader-safe order
//! ([`sync`]). What it programmed is published as a [`ServicesView`] for
//! the API (`axoneme service list`, `axoneme bpf lb list`, `status`).
//!
//! The socket-LB programs that read the maps are attached to the node's
//! cgroup at start (`datapath/lb.rs`).
//!
//! A record that does not parse is reported and skipped, and the
//! service's last good version stays programmed: bad input never takes a
//! working service down.

pub mod sync;
pub mod table;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axoneme_api::MapStatus;
pub use axoneme_api::{BackendView, FrontendView, ServicesView};
use axoneme_identity::{CacheEvent, Raw, WatchCache};
use axoneme_service::{BackendState, Frontend, ServiceRecord};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::sync::LbWriter;
use self::table::{Ids, Table};

/// How long a burst of changes may land before one pass.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// How long after a failed pass the next one runs.
const RETRY: Duration = Duration::from_secs(1);

/// The services unit's inputs.
pub struct Inputs {
    pub node: String,
    pub node_ips: Vec<IpAddr>,
    pub records: WatchCache<Raw>,
    /// External frontends' Maglev tables (the same on every node).
    pub maglev: table::Maglev,
}

/// The last good version of every record, and the keys whose newest
/// version is bad.
#[derive(Default)]
struct Records {
    /// Per key: the revision, and the record's frontends (expanded once per
    /// version, not on every pass).
    good: BTreeMap<String, (i64, Vec<Frontend>)>,
    invalid: BTreeMap<String, (i64, String)>,
}

impl Records {
    fn refresh(&mut self, raw: &BTreeMap<String, Raw>) {
        self.good.retain(|k, _| raw.contains_key(k));
        self.invalid.retain(|k, _| raw.contains_key(k));
        for (key, r) in raw {
            let seen = |rev: Option<i64>| rev == Some(r.mod_revision);
            if seen(self.good.get(key).map(|g| g.0)) || seen(self.invalid.get(key).map(|b| b.0)) {
                continue;
            }
            match serde_json::from_slice::<ServiceRecord>(&r.value) {
                Ok(rec) => {
                    self.invalid.remove(key);
                    self.good
                        .insert(key.clone(), (r.mod_revision, rec.frontends()));
                }
                Err(e) => {
                    warn!(key, error = %e, "service record does not parse: its last good version stays");
                    self.invalid
                        .insert(key.clone(), (r.mod_revision, e.to_string()));
                }
            }
        }
    }

    fn frontends(&self) -> Vec<&Frontend> {
        self.good.values().flat_map(|(_, f)| f).collect()
    }
}

/// Runs the unit until `cancel`.
pub async fn run<W: LbWriter + Send>(
    mut writer: W,
    inputs: Inputs,
    out: watch::Sender<Arc<ServicesView>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    inputs.records.ready().await;
    let mut sub = inputs.records.subscribe();
    // What the maps hold, and the ids a previous run gave out.
    let mut have = writer.read()?;
    let mut ids = Ids::adopt(&have.backends, &have.revnat).with_maglev(inputs.maglev);
    let mut records = Records::default();
    let mut passes = 0u64;
    loop {
        tokio::time::sleep(DEBOUNCE).await;
        let started = std::time::Instant::now();
        inputs.records.read(|raw| records.refresh(raw));
        let frontends = records.frontends();
        let result = table::build(
            frontends.iter().copied(),
            &inputs.node,
            &inputs.node_ips,
            &mut ids,
        )
        .map_err(anyhow::Error::from)
        .and_then(|want| {
            let changes = sync::sync(&mut writer, &mut have, &want)?;
            Ok((want, changes))
        });
        passes += 1;
        let error = match &result {
            Ok((_, c)) => {
                if c.written + c.removed > 0 {
                    info!(
                        frontends = frontends.len(),
                        written = c.written,
                        removed = c.removed,
                        pass_ms = started.elapsed().as_millis(),
                        "services programmed"
                    );
                }
                None
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "services pass failed; retrying");
                Some(format!("{e:#}"))
            }
        };
        out.send_replace(Arc::new(view(
            &frontends,
            &inputs.node,
            &have,
            &records,
            passes,
            error,
        )));
        let retry = result.is_err();
        tokio::select! {
            ev = sub.recv() => { let _: CacheEvent<Raw> = ev; }
            _ = tokio::time::sleep(RETRY), if retry => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

/// The services unit's line in `status`.
pub fn component(v: &ServicesView) -> axoneme_api::ComponentStatus {
    let message = if !v.enabled {
        "kube-proxy replacement off: Services are left to kube-proxy".to_string()
    } else if let Some(e) = &v.error {
        format!("kube-proxy replacement: the last pass failed: {e}")
    } else {
        let mut m = format!(
            "kube-proxy replacement (socket LB): {} frontends programmed",
            v.frontends.len()
        );
        if !v.invalid.is_empty() {
            m.push_str(&format!(
                "; {} records do not parse (their last good version stays)",
                v.invalid.len()
            ));
        }
        m
    };
    axoneme_api::ComponentStatus {
        name: "services".into(),
        ok: !v.enabled || v.error.is_none(),
        message,
    }
}

fn view(
    frontends: &[&Frontend],
    node: &str,
    have: &Table,
    records: &Records,
    passes: u64,
    error: Option<String>,
) -> ServicesView {
    use axoneme_bpf_common::{lb, map_names};
    let frontends = frontends
        .iter()
        .map(|f| {
            let selected = f.selectable(node);
            FrontendView {
                service: f.service.clone(),
                kind: f.kind.as_str().to_string(),
                frontend: f.display_addr(),
                backends: f
                    .backends
                    .iter()
                    .map(|b| BackendView {
                        address: std::net::SocketAddr::new(b.addr, b.port).to_string(),
                        node: b.node.clone(),
                        state: match b.state {
                            BackendState::Active => "active",
                            BackendState::Terminating => "terminating",
                            BackendState::NotReady => "not-ready",
                        }
                        .to_string(),
                        selected: selected.iter().any(|s| std::ptr::eq(*s, b)),
                    })
                    .collect(),
                affinity_timeout: f.affinity_timeout,
                local_only: f.local_only,
            }
        })
        .collect();
    ServicesView {
        enabled: true,
        passes,
        synced: error.is_none(),
        error,
        frontends,
        maps: [
            (
                map_names::LB_SERVICES,
                have.services.len(),
                lb::LB_SERVICES_MAX,
            ),
            (
                map_names::LB_BACKENDS,
                have.backends.len(),
                lb::LB_BACKENDS_MAX,
            ),
            (map_names::LB_REVNAT, have.revnat.len(), lb::LB_REVNAT_MAX),
            (
                map_names::LB_MAGLEV,
                have.maglev.values().map(Vec::len).sum(),
                lb::LB_MAGLEV_MAX,
            ),
        ]
        .into_iter()
        .map(|(name, entries, max)| MapStatus {
            name: name.to_string(),
            max_entries: max,
            entries: u64::try_from(entries).unwrap_or(u64::MAX),
        })
        .collect(),
        invalid: records
            .invalid
            .iter()
            .map(|(k, (_, e))| (k.clone(), e.clone()))
            .collect(),
    }
}
