//! The families read at scrape time: the datapath's traffic counters
//! (per-CPU, summed here), map use, conntrack entries, and what the
//! reconciler and the caches published. Reads only: the maps through
//! read-only handles on their pins, never through their writer.

use std::sync::Arc;

use axoneme_bpf_common::{direction, family, map_names, match_type, metrics_kind, verdict};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;

use crate::datapath::{DatapathError, MapReader};
use crate::node::NodeState;
use crate::reconcile::DatapathView;
use crate::views::drop_reason_text;

/// What the scrape-time families are read from.
pub struct Sources {
    maps: Arc<MapReader>,
    state: NodeState,
    view: watch::Receiver<Arc<DatapathView>>,
    /// Transparent IPsec, when it is on.
    encrypt: Option<watch::Receiver<axoneme_api::EncryptStatus>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Sources {
    pub fn new(
        maps: Arc<MapReader>,
        state: NodeState,
        view: watch::Receiver<Arc<DatapathView>>,
    ) -> Self {
        Sources {
            maps,
            state,
            view,
            encrypt: None,
        }
    }

    /// With the `ipsec_*` families, from the encryption task's status.
    pub fn with_encrypt(mut self, status: watch::Receiver<axoneme_api::EncryptStatus>) -> Self {
        self.encrypt = Some(status);
        self
    }

    /// Entries in map `name` now.
    fn entries(&self, name: &str) -> Result<usize, DatapathError> {
        let m = &self.maps;
        match name {
            map_names::IPCACHE => m.ipcache_entries().map(|v| v.len()),
            map_names::ENDPOINTS => m.endpoints().map(|v| v.len()),
            map_names::ENDPOINT_ADDRS => m.endpoint_addresses(),
            map_names::POLICY => m.policy_entries().map(|v| v.len()),
            map_names::CT4 | map_names::CT => {
                let fam = if name == map_names::CT4 {
                    family::IPV4
                } else {
                    family::IPV6
                };
                m.ct_entries()
                    .map(|v| v.iter().filter(|(k, _)| k.family == fam).count())
            }
            _ => Ok(0),
        }
    }
}

type Labels = Vec<(&'static str, String)>;

fn direction_label(dir: u8) -> String {
    // Cilium's words.
    if dir == direction::INGRESS {
        "INGRESS".into()
    } else {
        "EGRESS".into()
    }
}

/// A `/proc/net/xfrm_stat` counter's name as Cilium's `ipsec_xfrm_error`
/// labels: (`error`, `type`), e.g. `XfrmInStateProtoError` →
/// (`state_proto_error`, `inbound`).
fn xfrm_error_labels(name: &str) -> (String, &'static str) {
    let (kind, rest) = if let Some(r) = name.strip_prefix("XfrmIn") {
        ("inbound", r)
    } else if let Some(r) = name.strip_prefix("XfrmOut") {
        ("outbound", r)
    } else if let Some(r) = name.strip_prefix("XfrmFwd") {
        ("forward", r)
    } else {
        ("other", name.strip_prefix("Xfrm").unwrap_or(name))
    };
    let mut error = String::new();
    for (i, c) in rest.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            error.push('_');
        }
        error.push(c.to_ascii_lowercase());
    }
    (error, kind)
}

fn reason_label(reason: u8) -> String {
    match drop_reason_text(reason) {
        "" => reason.to_string(),
        text => text.to_string(),
    }
}

/// One family of samples.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(labels: Labels, v: u64) -> (Labels, ConstCounter<u64>) {
    (labels, ConstCounter::new(v))
}

fn gauge(labels: Labels, v: f64) -> (Labels, ConstGauge<f64>) {
    (labels, ConstGauge::new(v))
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let e = &mut encoder;

        // The datapath's per-CPU counters: every packet, not the events.
        match self.maps.traffic() {
            Ok(traffic) => {
                let drops = || traffic.iter().filter(|(k, _)| k.kind == metrics_kind::DROP);
                let forwards = || {
                    traffic
                        .iter()
                        .filter(|(k, _)| k.kind == metrics_kind::FORWARD)
                };
                let by_reason = |k: &axoneme_bpf_common::MetricsKey| {
                    vec![
                        ("reason", reason_label(k.reason)),
                        ("direction", direction_label(k.direction)),
                    ]
                };
                let by_dir = |k: &axoneme_bpf_common::MetricsKey| {
                    vec![("direction", direction_label(k.direction))]
                };
                family(
                    e,
                    "drop_count",
                    "Packets dropped by the datapath, by reason and direction",
                    Counter,
                    drops().map(|(k, v)| counter(by_reason(k), v.packets)),
                )?;
                family(
                    e,
                    "drop_bytes",
                    "Bytes dropped by the datapath, by reason and direction",
                    Counter,
                    drops().map(|(k, v)| counter(by_reason(k), v.bytes)),
                )?;
                family(
                    e,
                    "forward_count",
                    "Packets forwarded by the datapath, by direction",
                    Counter,
                    forwards().map(|(k, v)| counter(by_dir(k), v.packets)),
                )?;
                family(
                    e,
                    "forward_bytes",
                    "Bytes forwarded by the datapath, by direction",
                    Counter,
                    forwards().map(|(k, v)| counter(by_dir(k), v.bytes)),
                )?;
            }
            Err(err) => tracing::debug!(error = %err, "metrics: cannot read the traffic counters"),
        }
        // New flows' verdicts (Hubble's `policy_verdicts_total` labels).
        match self.maps.verdicts() {
            Ok(verdicts) => family(
                e,
                "policy_verdicts",
                "New flows judged by policy in the datapath, by direction, match type and action",
                Counter,
                verdicts.iter().map(|(k, v)| {
                    let action = match k.verdict {
                        verdict::DENIED => "dropped",
                        verdict::REDIRECTED => "redirected",
                        verdict::AUDIT => "audit",
                        _ => "forwarded",
                    };
                    counter(
                        vec![
                            ("direction", direction_label(k.direction).to_lowercase()),
                            ("match", match_type::name(k.match_type).to_lowercase()),
                            ("action", action.into()),
                        ],
                        v.packets,
                    )
                }),
            )?,
            Err(err) => tracing::debug!(error = %err, "metrics: cannot read the verdict counters"),
        }
        if let Ok(c) = self.maps.counters() {
            family(
                e,
                "datapath_events",
                "Datapath events by outcome (sent, or not: rate_limited, ringbuf_full)",
                Counter,
                [
                    counter(vec![("outcome", "sent".into())], c.events_sent),
                    counter(
                        vec![("outcome", "rate_limited".into())],
                        c.events_rate_limited,
                    ),
                    counter(
                        vec![("outcome", "ringbuf_full".into())],
                        c.events_ringbuf_full,
                    ),
                ],
            )?;
            family(
                e,
                "proxy_sockmap_messages",
                "Messages of the L7 proxy's node-local connections by path: redirected \
                 socket to socket, or passed through the TCP stack (--proxy-sockmap)",
                Counter,
                [
                    counter(vec![("path", "redirected".into())], c.sockmap_redirected),
                    counter(vec![("path", "passed".into())], c.sockmap_passed),
                ],
            )?;
        }

        let mut pressure = Vec::new();
        let mut ct = Vec::new();
        for (name, capacity) in self.maps.capacities() {
            let Ok(n) = self.entries(name) else { continue };
            pressure.push(gauge(
                vec![("map_name", name.to_string())],
                n as f64 / f64::from((*capacity).max(1)),
            ));
            if *name == map_names::CT4 || *name == map_names::CT {
                let fam = if *name == map_names::CT4 {
                    "ipv4"
                } else {
                    "ipv6"
                };
                ct.push(gauge(vec![("family", fam.into())], n as f64));
            }
        }
        family(
            e,
            "bpf_map_pressure",
            "Fill of each BPF map: entries over capacity (1 = full)",
            Gauge,
            pressure,
        )?;
        family(
            e,
            "datapath_conntrack_entries",
            "Conntrack entries, by address family",
            Gauge,
            ct,
        )?;

        let view = self.view.borrow().clone();
        let node = self.state.node();
        let layout = self.state.layout();
        let local = self.state.records().read(|records| {
            records
                .keys()
                .filter(|k| layout.split_endpoint_key(k).is_some_and(|(n, _)| n == node))
                .count()
        });
        let ready = view.programmed.len();
        family(
            e,
            "endpoint",
            "Endpoints of this node",
            Gauge,
            [gauge(vec![], local.max(ready) as f64)],
        )?;
        family(
            e,
            "endpoint_state",
            "Endpoints of this node by state (ready: identity and policy in the datapath)",
            Gauge,
            [
                gauge(vec![("endpoint_state", "ready".into())], ready as f64),
                gauge(
                    vec![("endpoint_state", "waiting-for-identity".into())],
                    local.saturating_sub(ready) as f64,
                ),
            ],
        )?;
        family(
            e,
            "identity",
            "Security identities this agent knows, by type",
            Gauge,
            [gauge(
                vec![("type", "cluster_local".into())],
                self.state.identities().len() as f64,
            )],
        )?;
        family(
            e,
            "policy",
            "Policies enforced on this node",
            Gauge,
            [gauge(vec![], view.policies.len() as f64)],
        )?;
        family(
            e,
            "policy_max_revision",
            "Highest kvstore revision of the policies enforced on this node",
            Gauge,
            [gauge(
                vec![],
                view.policies.values().copied().max().unwrap_or(0) as f64,
            )],
        )?;
        if let Some(st) = &self.encrypt {
            let st = st.borrow().clone();
            family(
                e,
                "ipsec_keys",
                "IPsec keys installed (a replaced key stays for its grace period)",
                Gauge,
                [gauge(vec![], st.keys.len() as f64)],
            )?;
            family(
                e,
                "ipsec_xfrm_states",
                "XFRM states Axoneme installed, by direction",
                Gauge,
                [
                    gauge(vec![("direction", "in".into())], st.states_in as f64),
                    gauge(vec![("direction", "out".into())], st.states_out as f64),
                ],
            )?;
            family(
                e,
                "ipsec_xfrm_error",
                "The kernel's XFRM errors (/proc/net/xfrm_stat in the node's namespace)",
                Counter,
                st.xfrm_errors.iter().map(|(name, n)| {
                    let (error, kind) = xfrm_error_labels(name);
                    counter(vec![("error", error), ("type", kind.into())], *n)
                }),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod xfrm_tests {
    #[test]
    fn xfrm_counters_are_labelled_as_cilium_does() {
        assert_eq!(
            super::xfrm_error_labels("XfrmInStateProtoError"),
            ("state_proto_error".into(), "inbound")
        );
        assert_eq!(
            super::xfrm_error_labels("XfrmOutNoStates"),
            ("no_states".into(), "outbound")
        );
        assert_eq!(
            super::xfrm_error_labels("XfrmFwdHdrError"),
            ("hdr_error".into(), "forward")
        );
    }
}
