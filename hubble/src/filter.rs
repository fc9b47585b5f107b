//! Hubble's filter semantics over flows. A [`FlowFilter`] matches when
//! every field it sets matches, and a field matches when any of its values
//! does; a request keeps a flow when any whitelist filter matches (or
//! there is none) and no blacklist filter does. Fields Axoneme does not
//! fill (FQDNs, DNS, workloads, trace ids, TCP flags) are refused with an
//! error naming them instead of silently matching nothing.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use thiserror::Error;

use crate::flow::{layer4, layer7, Endpoint, Flow, FlowFilter};
use crate::selector::Selector;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid filter {field} {value:?}: {reason}")]
pub struct FilterError {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

fn error(field: &'static str, value: impl ToString, reason: impl ToString) -> FilterError {
    FilterError {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

type Pred = Box<dyn Fn(&Flow) -> bool + Send + Sync>;

/// One compiled [`FlowFilter`].
pub struct Compiled(Vec<Pred>);

impl Compiled {
    pub fn matches(&self, flow: &Flow) -> bool {
        self.0.iter().all(|p| p(flow))
    }
}

/// A request's whitelist and blacklist.
#[derive(Default)]
pub struct Filters {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

impl Filters {
    pub fn new(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        Ok(Filters {
            whitelist: whitelist.iter().map(compile).collect::<Result<_, _>>()?,
            blacklist: blacklist.iter().map(compile).collect::<Result<_, _>>()?,
        })
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

fn source(f: &Flow) -> Option<&Endpoint> {
    f.source.as_ref()
}

fn destination(f: &Flow) -> Option<&Endpoint> {
    f.destination.as_ref()
}

fn ip_of(f: &Flow, src: bool) -> Option<IpAddr> {
    let ip = f.ip.as_ref()?;
    let text = if src { &ip.source } else { &ip.destination };
    text.parse().ok()
}

/// The L4 ports `(source, destination)`, if the flow has ports.
fn ports(f: &Flow) -> Option<(u32, u32)> {
    match f.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => Some((t.source_port, t.destination_port)),
        layer4::Protocol::Udp(u) => Some((u.source_port, u.destination_port)),
        layer4::Protocol::Sctp(s) => Some((s.source_port, s.destination_port)),
        _ => None,
    }
}

fn http(f: &Flow) -> Option<&crate::flow::Http> {
    match f.l7.as_ref()?.record.as_ref()? {
        layer7::Record::Http(h) => Some(h),
    }
}

/// `[namespace/][pod-name-prefix]`: the namespace must be equal (an empty
/// one only matches endpoints without one, as Hubble's server does; its
/// CLI, like `axoneme observe`, adds `default/` when none is given).
fn pod_filter(
    field: &'static str,
    values: &[String],
    side: fn(&Flow) -> Option<&Endpoint>,
) -> Result<Pred, FilterError> {
    let mut wanted = Vec::new();
    for v in values {
        let (ns, prefix) = v.split_once('/').unwrap_or(("", v));
        if ns.is_empty() && prefix.is_empty() {
            return Err(error(field, v, "must be [namespace/][<name>]"));
        }
        wanted.push((ns.to_string(), prefix.to_string()));
    }
    Ok(Box::new(move |f| {
        let Some(ep) = side(f) else { return false };
        if ep.namespace.is_empty() && ep.pod_name.is_empty() {
            return false;
        }
        wanted
            .iter()
            .any(|(ns, prefix)| *ns == ep.namespace && ep.pod_name.starts_with(prefix.as_str()))
    }))
}

fn ip_filter(field: &'static str, values: &[String], src: bool) -> Result<Pred, FilterError> {
    let mut nets = Vec::new();
    for v in values {
        let net = match v.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => v
                .parse::<IpNet>()
                .map_err(|_| error(field, v, "not an IP address or CIDR"))?,
        };
        nets.push(net);
    }
    Ok(Box::new(move |f| {
        ip_of(f, src).is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
    }))
}

fn label_filter(
    field: &'static str,
    values: &[String],
    side: fn(&Flow) -> Option<&Endpoint>,
) -> Result<Pred, FilterError> {
    let selectors = values
        .iter()
        .map(|v| Selector::parse(v).map_err(|e| error(field, v, e.reason)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Box::new(move |f| {
        side(f).is_some_and(|ep| selectors.iter().any(|s| s.matches(&ep.labels)))
    }))
}

fn port_filter(field: &'static str, values: &[String], src: bool) -> Result<Pred, FilterError> {
    let ports_wanted = values
        .iter()
        .map(|v| {
            v.parse::<u16>()
                .map(u32::from)
                .map_err(|_| error(field, v, "not a port number (0-65535)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Box::new(move |f| {
        ports(f).is_some_and(|(s, d)| ports_wanted.contains(if src { &s } else { &d }))
    }))
}

/// `404` (one code) or `4+` (a class), as Hubble takes them.
fn status_filter(values: &[String]) -> Result<Pred, FilterError> {
    let mut ranges = Vec::new();
    for v in values {
        let bad = || {
            error(
                "http_status_code",
                v,
                "expected a code (404) or a class (4+)",
            )
        };
        let range = if let Some(class) = v.strip_suffix('+') {
            let c: u32 = class.parse().map_err(|_| bad())?;
            if !(1..=5).contains(&c) {
                return Err(bad());
            }
            c * 100..=c * 100 + 99
        } else {
            let c: u32 = v.parse().map_err(|_| bad())?;
            if !(100..=599).contains(&c) {
                return Err(bad());
            }
            c..=c
        };
        ranges.push(range);
    }
    Ok(Box::new(move |f| {
        http(f).is_some_and(|h| h.code != 0 && ranges.iter().any(|r| r.contains(&h.code)))
    }))
}

fn protocol_filter(values: &[String]) -> Result<Pred, FilterError> {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Tcp,
        Udp,
        Sctp,
        Icmp,
        Icmpv4,
        Icmpv6,
        Http,
    }
    let wanted = values
        .iter()
        .map(|v| {
            Ok(match v.to_ascii_lowercase().as_str() {
                "tcp" => P::Tcp,
                "udp" => P::Udp,
                "sctp" => P::Sctp,
                "icmp" => P::Icmp,
                "icmpv4" => P::Icmpv4,
                "icmpv6" => P::Icmpv6,
                "http" => P::Http,
                _ => {
                    return Err(error(
                        "protocol",
                        v,
                        "known: tcp, udp, sctp, icmp, icmpv4, icmpv6, http",
                    ))
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Box::new(move |f| {
        let l4 = f.l4.as_ref().and_then(|l| l.protocol.as_ref());
        wanted.iter().any(|p| match p {
            P::Http => http(f).is_some(),
            P::Tcp => matches!(l4, Some(layer4::Protocol::Tcp(_))),
            P::Udp => matches!(l4, Some(layer4::Protocol::Udp(_))),
            P::Sctp => matches!(l4, Some(layer4::Protocol::Sctp(_))),
            P::Icmpv4 => matches!(l4, Some(layer4::Protocol::IcmPv4(_))),
            P::Icmpv6 => matches!(l4, Some(layer4::Protocol::IcmPv6(_))),
            P::Icmp => matches!(
                l4,
                Some(layer4::Protocol::IcmPv4(_) | layer4::Protocol::IcmPv6(_))
            ),
        })
    }))
}

/// Glob over node names: `*` stands for any run of characters.
fn glob(pattern: &str) -> Result<Regex, regex::Error> {
    let body: Vec<String> = pattern.split('*').map(regex::escape).collect();
    Regex::new(&format!("^{}$", body.join(".*")))
}

/// Compiles one filter; an error names the field and value at fault.
pub fn compile(ff: &FlowFilter) -> Result<Compiled, FilterError> {
    let mut p: Vec<Pred> = Vec::new();
    for (field, set) in [
        ("source_fqdn", !ff.source_fqdn.is_empty()),
        ("destination_fqdn", !ff.destination_fqdn.is_empty()),
        ("dns_query", !ff.dns_query.is_empty()),
        ("source_workload", !ff.source_workload.is_empty()),
        ("destination_workload", !ff.destination_workload.is_empty()),
        ("trace_id", !ff.trace_id.is_empty()),
        ("tcp_flags", !ff.tcp_flags.is_empty()),
    ] {
        if set {
            return Err(error(field, "", "not supported by this agent's flows"));
        }
    }
    if !ff.uuid.is_empty() {
        let ids = ff.uuid.clone();
        p.push(Box::new(move |f| ids.contains(&f.uuid)));
    }
    if !ff.source_ip.is_empty() {
        p.push(ip_filter("source_ip", &ff.source_ip, true)?);
    }
    if !ff.destination_ip.is_empty() {
        p.push(ip_filter("destination_ip", &ff.destination_ip, false)?);
    }
    if !ff.source_pod.is_empty() {
        p.push(pod_filter("source_pod", &ff.source_pod, source)?);
    }
    if !ff.destination_pod.is_empty() {
        p.push(pod_filter(
            "destination_pod",
            &ff.destination_pod,
            destination,
        )?);
    }
    // Axoneme's flows carry no service names: a service filter matches
    // nothing, as it would in Hubble for flows without services.
    if !ff.source_service.is_empty() || !ff.destination_service.is_empty() {
        p.push(Box::new(|_| false));
    }
    if !ff.source_label.is_empty() {
        p.push(label_filter("source_label", &ff.source_label, source)?);
    }
    if !ff.destination_label.is_empty() {
        p.push(label_filter(
            "destination_label",
            &ff.destination_label,
            destination,
        )?);
    }
    if !ff.traffic_direction.is_empty() {
        let dirs = ff.traffic_direction.clone();
        p.push(Box::new(move |f| dirs.contains(&f.traffic_direction)));
    }
    if !ff.verdict.is_empty() {
        let verdicts = ff.verdict.clone();
        p.push(Box::new(move |f| verdicts.contains(&f.verdict)));
    }
    if !ff.event_type.is_empty() {
        let types = ff.event_type.clone();
        p.push(Box::new(move |f| {
            f.event_type.as_ref().is_some_and(|e| {
                types.iter().any(|t| {
                    t.r#type == e.r#type && (!t.match_sub_type || t.sub_type == e.sub_type)
                })
            })
        }));
    }
    if !ff.http_status_code.is_empty() {
        p.push(status_filter(&ff.http_status_code)?);
    }
    if !ff.protocol.is_empty() {
        p.push(protocol_filter(&ff.protocol)?);
    }
    if !ff.source_port.is_empty() {
        p.push(port_filter("source_port", &ff.source_port, true)?);
    }
    if !ff.destination_port.is_empty() {
        p.push(port_filter(
            "destination_port",
            &ff.destination_port,
            false,
        )?);
    }
    if !ff.reply.is_empty() {
        let replies = ff.reply.clone();
        p.push(Box::new(move |f| {
            f.is_reply
                .as_ref()
                .is_some_and(|r| replies.contains(&r.value))
        }));
    }
    if !ff.source_identity.is_empty() {
        let ids = ff.source_identity.clone();
        p.push(Box::new(move |f| {
            source(f).is_some_and(|e| ids.contains(&e.identity))
        }));
    }
    if !ff.destination_identity.is_empty() {
        let ids = ff.destination_identity.clone();
        p.push(Box::new(move |f| {
            destination(f).is_some_and(|e| ids.contains(&e.identity))
        }));
    }
    if !ff.http_method.is_empty() {
        let methods = ff.http_method.clone();
        p.push(Box::new(move |f| {
            http(f).is_some_and(|h| methods.iter().any(|m| m.eq_ignore_ascii_case(&h.method)))
        }));
    }
    if !ff.http_path.is_empty() {
        let paths = ff
            .http_path
            .iter()
            .map(|v| Regex::new(v).map_err(|e| error("http_path", v, e)))
            .collect::<Result<Vec<_>, _>>()?;
        p.push(Box::new(move |f| {
            http(f).is_some_and(|h| {
                let path = url_path(&h.url);
                paths.iter().any(|r| r.is_match(path))
            })
        }));
    }
    if !ff.node_name.is_empty() {
        let globs = ff
            .node_name
            .iter()
            .map(|v| glob(v).map_err(|e| error("node_name", v, e)))
            .collect::<Result<Vec<_>, _>>()?;
        p.push(Box::new(move |f| {
            globs.iter().any(|g| g.is_match(&f.node_name))
        }));
    }
    if !ff.ip_version.is_empty() {
        let versions = ff.ip_version.clone();
        p.push(Box::new(move |f| {
            f.ip.as_ref()
                .is_some_and(|ip| versions.contains(&ip.ip_version))
        }));
    }
    Ok(Compiled(p))
}

/// The path of an absolute URL (`http://host/path?q` → `/path`) or of an
/// origin-form target.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = if url.contains("://") {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        rest
    };
    path.split(['?', '#']).next().unwrap_or(path)
}

#[cfg(test)]
mod tests;
