//! Validation of policy rules, with the field path of every error
//! (`spec.ingress[0].toPorts[0].ports[0].port: 80800 is not a valid port (1-65535)`).
//!
//! Validation collects every error rather than stopping at the first, and
//! rejects features that are not built yet with "is not supported yet":
//! a policy is never enforced with part of it silently ignored.

use std::fmt;

use axoneme_identity::{Label, Source};
use ipnet::IpNet;

use crate::api::*;
use crate::document::PolicyKind;
use crate::entity::Entity;

pub use axoneme_identity::labels::{check_dns_label, check_dns_subdomain};

/// One problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// ICMP type names Cilium accepts, with their IPv4 and IPv6 numbers.
pub const ICMP_TYPES: &[(&str, Option<u8>, Option<u8>)] = &[
    ("EchoReply", Some(0), Some(129)),
    ("DestinationUnreachable", Some(3), Some(1)),
    ("Redirect", Some(5), Some(137)),
    ("EchoRequest", Some(8), Some(128)),
    ("RouterAdvertisement", Some(9), Some(134)),
    ("RouterSelection", Some(10), Some(133)),
    ("TimeExceeded", Some(11), Some(3)),
    ("ParameterProblem", Some(12), Some(4)),
    ("Timestamp", Some(13), None),
    ("TimestampReply", Some(14), None),
    ("Photuris", Some(40), None),
    ("ExtendedEchoRequest", Some(42), Some(160)),
    ("ExtendedEchoReply", Some(43), Some(161)),
    ("PacketTooBig", None, Some(2)),
    ("MLDQuery", None, Some(130)),
    ("MLDReport", None, Some(131)),
    ("MLDDone", None, Some(132)),
    ("NeighborSolicitation", None, Some(135)),
    ("NeighborAdvertisement", None, Some(136)),
];

struct Ctx<'a> {
    errors: &'a mut Vec<FieldError>,
    warnings: &'a mut Vec<FieldError>,
}

impl Ctx<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(FieldError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn unsupported<T>(&mut self, path: &str, field: &str, value: &Option<T>) {
        if value.is_some() {
            self.err(
                &format!("{path}.{field}"),
                format!("{field} is not supported yet"),
            );
        }
    }
}

/// Validates one rule found at `path` in a policy of `kind`. Warnings are
/// what validation cannot decide offline (a named port must be declared
/// by the pods it refers to).
pub fn rule(
    rule: &Rule,
    kind: PolicyKind,
    path: &str,
    errors: &mut Vec<FieldError>,
    warnings: &mut Vec<FieldError>,
) {
    let mut c = Ctx { errors, warnings };
    match (&rule.endpoint_selector, &rule.node_selector) {
        (None, None) => c.err(path, "a rule needs endpointSelector (or nodeSelector)"),
        (Some(_), Some(_)) => c.err(
            &format!("{path}.nodeSelector"),
            "give endpointSelector or nodeSelector, not both",
        ),
        (Some(sel), None) => selector(&mut c, sel, &format!("{path}.endpointSelector")),
        (None, Some(sel)) => {
            if kind == PolicyKind::CiliumNetworkPolicy {
                c.err(
                    &format!("{path}.nodeSelector"),
                    "nodeSelector is only valid in a CiliumClusterwideNetworkPolicy",
                );
            } else {
                selector(&mut c, sel, &format!("{path}.nodeSelector"));
            }
            // The host's traffic never goes through the L7 proxy.
            for (field, egress) in [("ingress", false), ("egress", true)] {
                for (i, s) in rule.allow_sections(egress).iter().enumerate() {
                    for (j, p) in s.to_ports.iter().enumerate() {
                        if p.rules.is_some() {
                            c.err(
                                &format!("{path}.{field}[{i}].toPorts[{j}].rules"),
                                "L7 rules are not supported in host policies (nodeSelector): \
                                 the node's own traffic is enforced at L3/L4 only",
                            );
                        }
                    }
                }
            }
        }
    }
    for (i, (r, s)) in rule
        .ingress
        .iter()
        .zip(rule.allow_sections(false))
        .enumerate()
    {
        let p = format!("{path}.ingress[{i}]");
        peers(&mut c, &p, "from", &s);
        c.unsupported(&p, "fromGroups", &r.from_groups);
        c.unsupported(&p, "authentication", &r.authentication);
        port_rules(&mut c, &p, false, s.to_ports, s.icmps);
    }
    for (i, (r, s)) in rule
        .ingress_deny
        .iter()
        .zip(rule.deny_sections(false))
        .enumerate()
    {
        let p = format!("{path}.ingressDeny[{i}]");
        peers(&mut c, &p, "from", &s);
        c.unsupported(&p, "fromGroups", &r.from_groups);
        deny_ports(&mut c, &p, false, s.deny_ports, s.icmps);
    }
    for (i, (r, s)) in rule
        .egress
        .iter()
        .zip(rule.allow_sections(true))
        .enumerate()
    {
        let p = format!("{path}.egress[{i}]");
        peers(&mut c, &p, "to", &s);
        c.unsupported(&p, "toServices", &r.to_services);
        c.unsupported(&p, "toFQDNs", &r.to_fqdns);
        c.unsupported(&p, "toGroups", &r.to_groups);
        c.unsupported(&p, "authentication", &r.authentication);
        port_rules(&mut c, &p, true, s.to_ports, s.icmps);
    }
    for (i, (r, s)) in rule
        .egress_deny
        .iter()
        .zip(rule.deny_sections(true))
        .enumerate()
    {
        let p = format!("{path}.egressDeny[{i}]");
        peers(&mut c, &p, "to", &s);
        c.unsupported(&p, "toServices", &r.to_services);
        c.unsupported(&p, "toGroups", &r.to_groups);
        deny_ports(&mut c, &p, true, s.deny_ports, s.icmps);
    }
}

/// Parses a selector key (`app`, `k8s:app`, `any:app`, `reserved:host`) with
/// a value, the way selectors match labels.
pub fn selector_label(key: &str, value: &str) -> Result<Label, String> {
    let text = if value.is_empty() {
        key.to_string()
    } else {
        format!("{key}={value}")
    };
    Label::parse_with_source(&text, Source::Any).map_err(|e| e.to_string())
}

fn selector(c: &mut Ctx<'_>, sel: &EndpointSelector, path: &str) {
    for (k, v) in &sel.match_labels {
        if let Err(e) = selector_label(k, v) {
            c.err(&format!("{path}.matchLabels.{k}"), e);
        }
    }
    for (i, req) in sel.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        if let Err(e) = selector_label(&req.key, "") {
            c.err(&format!("{p}.key"), e);
        }
        match req.operator {
            SelectorOperator::In | SelectorOperator::NotIn => {
                if req.values.is_empty() {
                    c.err(
                        &format!("{p}.values"),
                        format!("operator {:?} needs at least one value", req.operator),
                    );
                }
                for (j, v) in req.values.iter().enumerate() {
                    if let Err(e) = selector_label(&req.key, v) {
                        c.err(&format!("{p}.values[{j}]"), e);
                    }
                }
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                if !req.values.is_empty() {
                    c.err(
                        &format!("{p}.values"),
                        format!("operator {:?} takes no values", req.operator),
                    );
                }
            }
        }
    }
}

fn peers(c: &mut Ctx<'_>, path: &str, dir: &str, s: &PeerSection<'_>) {
    let PeerSection {
        endpoints,
        nodes,
        requires,
        cidrs,
        cidr_sets,
        entities,
        ..
    } = *s;
    for (i, s) in endpoints.iter().enumerate() {
        selector(c, s, &format!("{path}.{dir}Endpoints[{i}]"));
    }
    for (i, s) in nodes.iter().enumerate() {
        selector(c, s, &format!("{path}.{dir}Nodes[{i}]"));
    }
    for (i, s) in requires.iter().enumerate() {
        selector(c, s, &format!("{path}.{dir}Requires[{i}]"));
    }
    for (i, s) in cidrs.iter().enumerate() {
        if let Err(e) = parse_cidr(s) {
            c.err(&format!("{path}.{dir}CIDR[{i}]"), e);
        }
    }
    for (i, set) in cidr_sets.iter().enumerate() {
        let p = format!("{path}.{dir}CIDRSet[{i}]");
        if set.cidr_group_ref.is_some() {
            c.err(
                &format!("{p}.cidrGroupRef"),
                "cidrGroupRef is not supported yet",
            );
        }
        let Some(cidr) = &set.cidr else {
            if set.cidr_group_ref.is_none() {
                c.err(&format!("{p}.cidr"), "is required");
            }
            continue;
        };
        let net = match parse_cidr(cidr) {
            Ok(n) => n,
            Err(e) => {
                c.err(&format!("{p}.cidr"), e);
                continue;
            }
        };
        for (j, ex) in set.except.iter().enumerate() {
            match parse_cidr(ex) {
                Ok(e) if !net.contains(&e) => c.err(
                    &format!("{p}.except[{j}]"),
                    format!("{ex} is not inside {cidr}"),
                ),
                Ok(_) => {}
                Err(e) => c.err(&format!("{p}.except[{j}]"), e),
            }
        }
    }
    for (i, e) in entities.iter().enumerate() {
        if let Err(e) = e.parse::<Entity>() {
            c.err(&format!("{path}.{dir}Entities[{i}]"), e.to_string());
        }
    }
}

/// A CIDR, or a bare address meaning a host prefix (as Cilium accepts).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{s} has host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not a CIDR"))
}

/// A validated port entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub protocol: Protocol,
    pub port: PortSpec,
}

/// What a `port` field stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// `port` to `end` (both included; equal for one port; 0-65535 for
    /// port 0 or none, "every port").
    Range(u16, u16),
    /// A named port, lower-cased: resolved per endpoint (`compile`).
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Any,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Any => "ANY",
        }
    }

    /// The IP protocol numbers it stands for (ANY: TCP, UDP and SCTP).
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[6],
            Protocol::Udp => &[17],
            Protocol::Sctp => &[132],
            Protocol::Any => &[6, 17, 132],
        }
    }
}

pub fn parse_protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p {
        None | Some("ANY") => Ok(Protocol::Any),
        Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        // Cilium's other protocols (the CRD schema admits them).
        Some(p @ ("ICMP" | "ICMPV6" | "VRRP" | "IGMP")) => Err(format!(
            "protocol {p} is not supported yet in toPorts (TCP, UDP, SCTP or ANY; \
             ICMP types go in icmps)"
        )),
        Some(other) => Err(format!("{other:?} is not one of TCP, UDP, SCTP, ANY")),
    }
}

/// Reads a `port` value: a number 1-65535, 0 or nothing (every port), or a
/// port name. Names are compared case-insensitively, as Cilium does, so
/// they come back lower-cased.
pub fn parse_port(v: &str) -> Result<PortSpec, String> {
    match v.parse::<i64>() {
        _ if v.is_empty() => Ok(PortSpec::Range(0, 65535)),
        Ok(0) => Ok(PortSpec::Range(0, 65535)),
        Ok(n) if (1..=65535).contains(&n) => Ok(PortSpec::Range(
            u16::try_from(n).expect("in range"),
            u16::try_from(n).expect("in range"),
        )),
        Ok(n) => Err(format!("{n} is not a valid port (1-65535)")),
        Err(_) => {
            let name = v.to_ascii_lowercase();
            match axoneme_identity::check_port_name(&name) {
                Ok(()) => Ok(PortSpec::Name(name)),
                Err(_) => Err(format!(
                    "{v:?} is neither a valid port (1-65535) nor a port name \
                     (1-15 letters, digits and '-', at least one letter)"
                )),
            }
        }
    }
}

/// What validation says of a named port offline: whether any pod declares
/// it is only known where the pods are (`compile::undeclared_named_ports`).
pub fn named_port_warning(name: &str, egress: bool, protocol: Protocol) -> String {
    let whose = if egress {
        "the destination pods"
    } else {
        "the pods the rule selects"
    };
    let protocol = match protocol {
        Protocol::Any => String::new(),
        p => format!(" and protocol {}", p.as_str()),
    };
    format!(
        "named port {name:?} matches only where {whose} declare a container port of that \
         name{protocol}; where none does, it matches nothing"
    )
}

/// A port entry as computation reads it (`None` when validation rejects it).
pub fn port_entry(pp: &PortProtocol) -> Option<Ports> {
    let protocol = parse_protocol(pp.protocol.as_deref()).ok()?;
    let port = match (parse_port(&pp.port.0).ok()?, pp.end_port) {
        (PortSpec::Range(0, _), Some(_)) => return None,
        (PortSpec::Range(p, _), Some(e)) => {
            PortSpec::Range(p, u16::try_from(e).ok().filter(|e| *e >= p)?)
        }
        (PortSpec::Name(_), Some(_)) => return None,
        (spec, None) => spec,
    };
    Some(Ports { protocol, port })
}

/// Validates one `ports[]` entry; errors go under `path`. `egress` says
/// whose named ports a name refers to (the destination's, else the
/// selected endpoint's own).
fn port_protocol(c: &mut Ctx<'_>, pp: &PortProtocol, path: &str, egress: bool) -> Option<Ports> {
    let protocol = match parse_protocol(pp.protocol.as_deref()) {
        Ok(p) => Some(p),
        Err(e) => {
            c.err(&format!("{path}.protocol"), e);
            None
        }
    };
    let port = match parse_port(&pp.port.0) {
        Ok(p) => Some(p),
        Err(e) => {
            c.err(&format!("{path}.port"), e);
            None
        }
    };
    let port = match (port, pp.end_port) {
        (Some(PortSpec::Range(0, _)), Some(e)) => {
            c.err(
                &format!("{path}.endPort"),
                format!("{e}: a range needs a first port (port 0 or none is every port)"),
            );
            None
        }
        (Some(PortSpec::Range(p, _)), Some(e)) if e >= i32::from(p) && e <= 65535 => {
            Some(PortSpec::Range(p, u16::try_from(e).expect("checked range")))
        }
        (Some(PortSpec::Range(p, _)), Some(e)) => {
            c.err(
                &format!("{path}.endPort"),
                format!("{e} must be between port ({p}) and 65535"),
            );
            None
        }
        (Some(PortSpec::Name(n)), Some(_)) => {
            c.err(
                &format!("{path}.endPort"),
                format!("a range needs a numeric port, not the named port {n:?}"),
            );
            None
        }
        (port, _) => port,
    };
    if let Some(PortSpec::Name(n)) = &port {
        let message = named_port_warning(n, egress, protocol.unwrap_or(Protocol::Any));
        c.warn(&format!("{path}.port"), message);
    }
    Some(Ports {
        protocol: protocol?,
        port: port?,
    })
}

fn port_rules(c: &mut Ctx<'_>, path: &str, egress: bool, rules: &[PortRule], icmps: &[IcmpRule]) {
    if !rules.is_empty() && !icmps.is_empty() {
        c.err(
            &format!("{path}.icmps"),
            "toPorts and icmps cannot be combined in one rule",
        );
    }
    for (i, r) in rules.iter().enumerate() {
        let p = format!("{path}.toPorts[{i}]");
        c.unsupported(&p, "terminatingTLS", &r.terminating_tls);
        c.unsupported(&p, "originatingTLS", &r.originating_tls);
        c.unsupported(&p, "serverNames", &r.server_names);
        c.unsupported(&p, "listener", &r.listener);
        let ports: Vec<Option<Ports>> = r
            .ports
            .iter()
            .enumerate()
            .map(|(j, pp)| port_protocol(c, pp, &format!("{p}.ports[{j}]"), egress))
            .collect();
        if let Some(l7) = &r.rules {
            let rp = format!("{p}.rules");
            c.unsupported(&rp, "kafka", &l7.kafka);
            c.unsupported(&rp, "dns", &l7.dns);
            c.unsupported(&rp, "l7proto", &l7.l7proto);
            c.unsupported(&rp, "l7", &l7.l7);
            if r.ports.is_empty() && !l7.http.is_empty() {
                c.err(&format!("{p}.ports"), "L7 rules need at least one port");
            }
            for (j, pp) in ports.iter().enumerate() {
                let Some(pp) = pp else { continue };
                if !l7.http.is_empty() && !matches!(pp.protocol, Protocol::Tcp | Protocol::Any) {
                    c.err(
                        &format!("{p}.ports[{j}].protocol"),
                        "HTTP rules need TCP (or ANY) ports",
                    );
                }
                if !l7.http.is_empty() && pp.port == PortSpec::Range(0, 65535) {
                    c.err(
                        &format!("{p}.ports[{j}].port"),
                        "L7 rules on every port (port 0 or none) are not supported yet",
                    );
                } else if !l7.http.is_empty() && matches!(pp.port, PortSpec::Range(a, b) if a != b)
                {
                    c.err(
                        &format!("{p}.ports[{j}].endPort"),
                        "L7 rules on a port range are not supported",
                    );
                }
            }
            for (j, h) in l7.http.iter().enumerate() {
                http_rule(c, h, &format!("{rp}.http[{j}]"));
            }
        }
    }
    icmp_rules(c, path, icmps);
}

fn deny_ports(
    c: &mut Ctx<'_>,
    path: &str,
    egress: bool,
    rules: &[PortDenyRule],
    icmps: &[IcmpRule],
) {
    if !rules.is_empty() && !icmps.is_empty() {
        c.err(
            &format!("{path}.icmps"),
            "toPorts and icmps cannot be combined in one rule",
        );
    }
    for (i, r) in rules.iter().enumerate() {
        for (j, pp) in r.ports.iter().enumerate() {
            port_protocol(c, pp, &format!("{path}.toPorts[{i}].ports[{j}]"), egress);
        }
    }
    icmp_rules(c, path, icmps);
}

/// Compiles an HTTP rule field as a full-match regex (Cilium issue #13280:
/// `/status` must not match `/status/x`).
pub fn full_match(expr: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{expr})$")).map_err(|e| {
        let msg = e.to_string();
        let last = msg.lines().last().unwrap_or(&msg).trim().to_string();
        format!("{expr:?} is not a valid regular expression: {last}")
    })
}

fn http_rule(c: &mut Ctx<'_>, h: &HttpRule, path: &str) {
    for (field, value) in [("method", &h.method), ("path", &h.path), ("host", &h.host)] {
        if let Some(v) = value {
            if let Err(e) = full_match(v) {
                c.err(&format!("{path}.{field}"), e);
            }
        }
    }
    for (i, hdr) in h.headers.iter().enumerate() {
        let name = hdr.split(':').next().unwrap_or("").trim();
        if name.is_empty() || !name.chars().all(is_token_char) {
            c.err(
                &format!("{path}.headers[{i}]"),
                format!("{hdr:?} is not `Name` or `Name: value` with a valid header name"),
            );
        }
    }
    for (i, m) in h.header_matches.iter().enumerate() {
        let p = format!("{path}.headerMatches[{i}]");
        if m.name.is_empty() || !m.name.chars().all(is_token_char) {
            c.err(
                &format!("{p}.name"),
                format!("{:?} is not a valid header name", m.name),
            );
        }
        if let Some(mm) = &m.mismatch {
            c.err(
                &format!("{p}.mismatch"),
                format!("mismatch action {mm:?} is not supported yet (a mismatch denies)"),
            );
        }
        c.unsupported(&p, "secret", &m.secret);
    }
}

/// RFC 9110 token characters (header names).
fn is_token_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch)
}

/// Resolves an ICMP type (number or name) for a family; errors say why not.
pub fn icmp_type(family: Option<&str>, t: &str) -> Result<(bool, u8), String> {
    let v6 = match family {
        None | Some("IPv4") => false,
        Some("IPv6") => true,
        Some(other) => return Err(format!("family {other:?} is not IPv4 or IPv6")),
    };
    if let Ok(n) = t.parse::<i64>() {
        return u8::try_from(n)
            .map(|n| (v6, n))
            .map_err(|_| format!("ICMP type {n} is not 0-255"));
    }
    let entry = ICMP_TYPES
        .iter()
        .find(|(name, _, _)| *name == t)
        .ok_or_else(|| format!("{t:?} is not an ICMP type name"))?;
    let n = if v6 { entry.2 } else { entry.1 };
    n.map(|n| (v6, n)).ok_or_else(|| {
        format!(
            "{t} is not an {} type",
            if v6 { "ICMPv6" } else { "ICMPv4" }
        )
    })
}

fn icmp_rules(c: &mut Ctx<'_>, path: &str, icmps: &[IcmpRule]) {
    for (i, r) in icmps.iter().enumerate() {
        if r.fields.is_empty() {
            c.err(&format!("{path}.icmps[{i}].fields"), "must not be empty");
        }
        for (j, f) in r.fields.iter().enumerate() {
            if let Err(e) = icmp_type(f.family.as_deref(), &f.icmp_type.0) {
                c.err(&format!("{path}.icmps[{i}].fields[{j}]"), e);
            }
        }
    }
}
