//! How the agent and the operator answer `GET /metrics`: the format a
//! scraper asked for (content negotiation on `Accept`), rendered from a
//! prometheus-client [`Registry`].
//!
//! In OpenMetrics a counter family `x` has samples `x_total`; tools that
//! read the classic text format (version 0.0.4: `promtool check metrics`,
//! curl, scrapers that send no `Accept`) then see samples of a family with
//! no help and no type (promtool exits 3). So the classic format is the
//! default, as client_golang's `promhttp` does it, and OpenMetrics is
//! served to scrapers that prefer it (Prometheus does). Both encoders are
//! prometheus-client's; what is ours is the negotiation.
#![forbid(unsafe_code)]

use prometheus_client::registry::Registry;

mod serve;
pub use serve::serve;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4.
    Text,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format to answer a request with the `Accept` header `accept`
    /// (`None`: no header) in: OpenMetrics when the header prefers it
    /// (by `q`) over the text format, else the text format, the default
    /// (also on a tie, such as `*/*`, and for anything unparsable).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut text, mut open_metrics) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    // NaN and garbage count as refused.
                    "q" => {
                        q = v
                            .trim()
                            .parse()
                            .ok()
                            .filter(|q: &f32| q.is_finite())
                            .unwrap_or(0.0)
                    }
                    "version" => version = Some(v.trim().trim_matches('"').to_string()),
                    _ => {}
                }
            }
            if q <= 0.0 {
                continue;
            }
            // Only the OpenMetrics versions this text is valid for.
            let om_version_ok = version
                .as_deref()
                .is_none_or(|v| v == "1.0.0" || v == "0.0.1");
            match media.as_str() {
                "application/openmetrics-text" if om_version_ok => {
                    open_metrics = open_metrics.max(q)
                }
                "application/*" => open_metrics = open_metrics.max(q),
                "text/plain" | "text/*" => text = text.max(q),
                "*/*" => {
                    text = text.max(q);
                    open_metrics = open_metrics.max(q);
                }
                _ => {}
            }
        }
        if open_metrics > text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// `registry` in `format`.
pub fn render(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, registry),
    }
    .expect("encoding to a String cannot fail");
    out
}

/// The response to `GET /metrics` with the `Accept` header `accept`:
/// its `Content-Type` and body.
pub fn respond(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let format = Format::negotiate(accept);
    (format.content_type(), render(registry, format))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::exemplar::CounterWithExemplar;
    use prometheus_client::metrics::family::Family as Fam;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::Unit;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Drop {
        reason: String,
        direction: String,
    }

    fn registry() -> Registry {
        let mut r = Registry::with_prefix("axoneme");
        let drops = Fam::<Drop, Counter>::default();
        drops
            .get_or_create(&Drop {
                reason: "Policy denied".into(),
                direction: "INGRESS".into(),
            })
            .inc_by(3);
        // A label value that looks like an exemplar and needs escapes.
        drops
            .get_or_create(&Drop {
                reason: "a \"quoted\" # {x=\"1\"} \\ value".into(),
                direction: "EGRESS".into(),
            })
            .inc();
        r.register("drop_count", "Dropped packets", drops);
        let g = Gauge::<i64>::default();
        g.set(7);
        r.register("endpoint_count", "Endpoints", g);
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.05);
        h.observe(3.0);
        r.register_with_unit(
            "policy_implementation_delay",
            "Time to enforce",
            Unit::Seconds,
            h,
        );
        r.register(
            "build",
            "Build",
            Info::new(vec![("version".to_string(), "0.1.0".to_string())]),
        );
        let e = CounterWithExemplar::<Vec<(String, String)>>::default();
        e.inc_by(2, Some(vec![("trace".into(), "abc".into())]), None);
        r.register("with_exemplar", "Counter with an exemplar", e);
        r
    }

    #[test]
    fn negotiation_prefers_text_unless_openmetrics_is_preferred() {
        use Format::*;
        let cases: &[(Option<&str>, Format)] = &[
            (None, Text),
            (Some(""), Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some("text/plain;version=0.0.4"), Text),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                OpenMetrics,
            ),
            // What Prometheus 2.x sends.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // Text preferred by q.
            (
                Some("application/openmetrics-text;q=0.3,text/plain;q=0.9"),
                Text,
            ),
            // Refused (q=0), or a version this text is not.
            (Some("application/openmetrics-text;q=0"), Text),
            (Some("application/openmetrics-text;version=2.0.0"), Text),
            (Some("APPLICATION/OpenMetrics-Text"), OpenMetrics),
            (Some("application/json"), Text),
            (Some(";;,,q=="), Text),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(*accept), *want, "{accept:?}");
        }
        assert!(Text.content_type().starts_with("text/plain; version=0.0.4"));
        assert!(OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text; version=1.0.0"));
    }

    #[test]
    fn openmetrics_is_prometheus_clients_own_output() {
        let om = render(&registry(), Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE axoneme_drop_count counter\n"), "{om}");
    }

    #[test]
    fn the_text_format_names_counter_families_after_their_samples() {
        let text = render(&registry(), Format::Text);
        let expected = [
            "# HELP axoneme_drop_count_total Dropped packets.",
            "# TYPE axoneme_drop_count_total counter",
            "# HELP axoneme_endpoint_count Endpoints.",
            "# TYPE axoneme_endpoint_count gauge",
            "axoneme_endpoint_count 7",
            "# HELP axoneme_policy_implementation_delay_seconds Time to enforce.",
            "# TYPE axoneme_policy_implementation_delay_seconds histogram",
            "axoneme_policy_implementation_delay_seconds_sum 3.05",
            "axoneme_policy_implementation_delay_seconds_count 2",
            "axoneme_policy_implementation_delay_seconds_bucket{le=\"0.1\"} 1",
            "axoneme_policy_implementation_delay_seconds_bucket{le=\"+Inf\"} 2",
            "# HELP axoneme_build_info Build.",
            "# TYPE axoneme_build_info gauge",
            "axoneme_build_info{version=\"0.1.0\"} 1",
            "# TYPE axoneme_with_exemplar_total counter",
            "axoneme_with_exemplar_total 2",
        ];
        let lines: Vec<&str> = text.lines().collect();
        for want in expected {
            assert!(lines.contains(&want), "{want:?} missing from\n{text}");
        }
        // Both drop samples, the tricky label value intact and escaped.
        let drops: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("axoneme_drop_count_total{"))
            .collect();
        assert_eq!(drops.len(), 2, "{text}");
        assert!(
            drops.contains(
                &r#"axoneme_drop_count_total{reason="a \"quoted\" # {x=\"1\"} \\ value",direction="EGRESS"} 1"#
            ),
            "{drops:?}"
        );
        for absent in ["# EOF", "# UNIT", "_created", "trace=\"abc\""] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        // Every family's HELP and TYPE name the samples that follow them.
        let mut family = "";
        for l in &lines {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(family), "{l} after # TYPE {family}");
            }
        }
    }
}
