//! The reference oracle: a plainly written evaluator of what policies say
//! about one flow, used only by tests (feature `oracle`). It shares nothing
//! with `compile` but the parsed API types and the entity names: it walks
//! every rule for every flow, the slow and obvious way, so that the compiled
//! map entries can be checked against it.

use axoneme_identity::{LabelSet, NumericIdentity, Source};

use crate::api::{
    EndpointSelector, HttpRule, IcmpRule, PeerSection, PortProtocol, SelectorOperator,
};
use crate::compile::{Direction, EnforcementMode};
use crate::document::Policy;
use crate::entity::Entity;
use crate::ports::PortNames;
use crate::selector::Identities;

/// The oracle's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OracleVerdict {
    Allow,
    /// With Cilium's drop reason: 133 policy denied, 181 deny rule.
    Deny(u8),
    /// Allowed at L4; requests must match one of these rules.
    Redirect(Vec<HttpRule>),
}

/// An HTTP request, for `verdict` with L7.
pub use crate::l7::HttpRequest as Request;

fn label_value<'a>(labels: &'a LabelSet, key: &str) -> Option<&'a str> {
    // A selector key is `[source:]key`; no source or `any` matches any source.
    let (source, key) = match key.split_once(':') {
        Some((s, k)) if s.parse::<Source>().is_ok() => (s.parse::<Source>().ok(), k),
        _ => (None, key),
    };
    let l = labels.get(key)?;
    match source {
        None | Some(Source::Any) => Some(&l.value),
        Some(s) if s == l.source => Some(&l.value),
        Some(_) => None,
    }
}

fn names_reserved(sel: &EndpointSelector) -> bool {
    sel.match_labels.keys().any(|k| k.starts_with("reserved:"))
        || sel
            .match_expressions
            .iter()
            .any(|e| e.key.starts_with("reserved:"))
}

fn selector_matches(sel: &EndpointSelector, ns: Option<&str>, labels: &LabelSet) -> bool {
    for (k, v) in &sel.match_labels {
        if label_value(labels, k) != Some(v.as_str()) {
            return false;
        }
    }
    for e in &sel.match_expressions {
        let v = label_value(labels, &e.key);
        let ok = match e.operator {
            SelectorOperator::In => v.is_some_and(|v| e.values.iter().any(|x| x == v)),
            SelectorOperator::NotIn => !v.is_some_and(|v| e.values.iter().any(|x| x == v)),
            SelectorOperator::Exists => v.is_some(),
            SelectorOperator::DoesNotExist => v.is_none(),
        };
        if !ok {
            return false;
        }
    }
    let names_ns = sel
        .match_labels
        .keys()
        .chain(sel.match_expressions.iter().map(|e| &e.key))
        .any(|k| k.rsplit(':').next() == Some("io.kubernetes.pod.namespace"));
    if let (Some(ns), false) = (ns, names_ns || names_reserved(sel)) {
        let l = labels.get("io.kubernetes.pod.namespace");
        if !l.is_some_and(|l| l.source == Source::K8s && l.value == ns) {
            return false;
        }
    }
    true
}

fn is_cidr_identity(id: NumericIdentity) -> bool {
    id.0 & (1 << 24) != 0
}

fn peer_prefix(labels: &LabelSet) -> Option<ipnet::IpNet> {
    labels
        .iter()
        .find(|l| l.source == Source::Cidr)
        .and_then(|l| crate::validate::parse_cidr(&l.key).ok())
}

/// The oracle's own reading of each entity, in raw numbers: independent of
/// the entity table computation uses, so that the differential tests check
/// the table (the match on `Entity` makes a new entity a compile error here).
fn entity_has(entity: &str, peer: NumericIdentity, known: bool) -> bool {
    let Ok(entity) = entity.parse::<Entity>() else {
        return false;
    };
    let n = peer.0;
    match entity {
        Entity::All => true,
        Entity::World => matches!(n, 2 | 9 | 10) || is_cidr_identity(peer),
        Entity::WorldIpv4 => n == 9,
        Entity::WorldIpv6 => n == 10,
        Entity::Cluster => matches!(n, 1 | 3..=8) || (known && n >= 256 && !is_cidr_identity(peer)),
        Entity::Host => n == 1,
        Entity::RemoteNode => n == 6,
        Entity::KubeApiserver => n == 7,
        Entity::Ingress => n == 8,
        Entity::Init => n == 5,
        Entity::Health => n == 4,
        Entity::Unmanaged => n == 3,
        Entity::None => false,
    }
}

fn peer_matches(
    f: &PeerSection<'_>,
    ns: Option<&str>,
    peer: NumericIdentity,
    ids: &Identities,
) -> bool {
    let labels = ids.get(peer);
    if f.endpoints.is_empty()
        && f.cidrs.is_empty()
        && f.cidr_sets.is_empty()
        && f.entities.is_empty()
    {
        return true;
    }
    if let Some(labels) = labels {
        let reserved = peer.0 < 256;
        for sel in f.endpoints {
            let kind_ok = if names_reserved(sel) {
                reserved || is_cidr_identity(peer)
            } else {
                !reserved && !is_cidr_identity(peer)
            };
            if kind_ok && selector_matches(sel, ns, labels) {
                return true;
            }
        }
    }
    if f.entities
        .iter()
        .any(|e| entity_has(e, peer, labels.is_some()))
    {
        return true;
    }
    // A /0 covers the world identities of its family.
    let zero = f
        .cidrs
        .iter()
        .map(String::as_str)
        .chain(f.cidr_sets.iter().filter_map(|s| s.cidr.as_deref()))
        .filter_map(|c| crate::validate::parse_cidr(c).ok())
        .filter(|n| n.prefix_len() == 0);
    for n in zero {
        let family = if n.addr().is_ipv4() { 9 } else { 10 };
        if peer.0 == 2 || peer.0 == family {
            return true;
        }
    }
    if let Some(p) = labels
        .filter(|_| is_cidr_identity(peer))
        .and_then(peer_prefix)
    {
        for c in f.cidrs {
            if crate::validate::parse_cidr(c).is_ok_and(|n| n.contains(&p)) {
                return true;
            }
        }
        for s in f.cidr_sets {
            let Some(n) = s
                .cidr
                .as_deref()
                .and_then(|c| crate::validate::parse_cidr(c).ok())
            else {
                continue;
            };
            let excepted = s
                .except
                .iter()
                .filter_map(|e| crate::validate::parse_cidr(e).ok())
                .any(|e| e.contains(&p));
            if n.contains(&p) && !excepted {
                return true;
            }
        }
    }
    false
}

/// Whether a `ports[]` entry covers the flow; a port name matches the
/// ports `names` (the endpoint's whose port it is) gives it for the flow's
/// protocol.
fn port_matches(pp: &PortProtocol, protocol: u8, port: u16, names: &PortNames) -> bool {
    let proto_ok = match pp.protocol.as_deref() {
        None | Some("ANY") => matches!(protocol, 6 | 17 | 132),
        Some("TCP") => protocol == 6,
        Some("UDP") => protocol == 17,
        Some("SCTP") => protocol == 132,
        _ => false,
    };
    // Port 0, or none: every port.
    if pp.port.0.is_empty() || pp.port.0.parse::<u16>() == Ok(0) {
        return proto_ok && pp.end_port.is_none();
    }
    let Ok(first) = pp.port.0.parse::<u16>() else {
        let name = pp.port.0.to_ascii_lowercase();
        return proto_ok
            && pp.end_port.is_none()
            && names
                .get(&name)
                .is_some_and(|set| set.contains(&(protocol, port)));
    };
    let last = pp
        .end_port
        .and_then(|e| u16::try_from(e).ok())
        .unwrap_or(first);
    proto_ok && port >= first && port <= last.max(first)
}

fn icmp_matches(icmps: &[IcmpRule], protocol: u8, port: u16) -> bool {
    icmps.iter().flat_map(|r| &r.fields).any(|f| {
        match crate::validate::icmp_type(f.family.as_deref(), &f.icmp_type.0) {
            Ok((v6, t)) => protocol == if v6 { 58 } else { 1 } && port == u16::from(t),
            Err(_) => false,
        }
    })
}

/// What `subject`'s policy in `dir` says about a flow with `peer`.
/// `subject_ports` are the subject's named ports (those of ingress rules);
/// the peer's (for egress rules) are in `ids`.
#[allow(clippy::too_many_arguments)]
pub fn direction_verdict(
    policies: &[Policy],
    ids: &Identities,
    subject: &LabelSet,
    subject_ports: &PortNames,
    dir: Direction,
    peer: NumericIdentity,
    protocol: u8,
    port: u16,
    mode: EnforcementMode,
) -> OracleVerdict {
    if mode == EnforcementMode::Never {
        return OracleVerdict::Allow;
    }
    let mut enforced = mode == EnforcementMode::Always;
    let mut requires: Vec<(&EndpointSelector, Option<&str>)> = Vec::new();
    let mut denied = false;
    let mut allow_all = false;
    let mut l7: Vec<HttpRule> = Vec::new();
    let mut allow_checks = Vec::new();
    // Whose named ports the rules name: the destination's.
    let names = match dir {
        Direction::Ingress => subject_ports,
        Direction::Egress => ids.ports(peer),
    };
    for p in policies {
        let ns = p.namespace.as_deref();
        for (_, rule) in &p.rules {
            let Some(sel) = &rule.endpoint_selector else {
                continue;
            };
            if !selector_matches(sel, ns, subject) {
                continue;
            }
            let dd = rule.enable_default_deny.as_ref().and_then(|d| match dir {
                Direction::Ingress => d.ingress,
                Direction::Egress => d.egress,
            });
            let egress = dir == Direction::Egress;
            let (allows, denies) = (rule.allow_sections(egress), rule.deny_sections(egress));
            if (!allows.is_empty() || !denies.is_empty()) && dd != Some(false) {
                enforced = true;
            }
            for d in denies {
                let ports: Vec<&PortProtocol> =
                    d.deny_ports.iter().flat_map(|t| &t.ports).collect();
                let l4 = (ports.is_empty() && d.icmps.is_empty() && !d.has_no_peers())
                    || ports
                        .iter()
                        .any(|pp| port_matches(pp, protocol, port, names))
                    || icmp_matches(d.icmps, protocol, port);
                if l4 && peer_matches(&d, ns, peer, ids) {
                    denied = true;
                }
            }
            for a in allows {
                requires.extend(a.requires.iter().map(|r| (r, ns)));
                allow_checks.push((a, ns));
            }
        }
    }
    if denied {
        return OracleVerdict::Deny(181);
    }
    let meets_requires = requires.is_empty()
        || ids
            .get(peer)
            .is_some_and(|l| requires.iter().all(|(r, ns)| selector_matches(r, *ns, l)));
    if meets_requires {
        for (a, ns) in allow_checks {
            let (to_ports, icmps) = (a.to_ports, a.icmps);
            if !peer_matches(&a, ns, peer, ids) {
                continue;
            }
            let no_peers = a.has_no_peers();
            // `ingress: [{}]`: no peers and no ports allows nothing.
            if to_ports.is_empty() && icmps.is_empty() && !no_peers {
                allow_all = true;
            }
            for pr in to_ports {
                if pr
                    .ports
                    .iter()
                    .any(|pp| port_matches(pp, protocol, port, names))
                {
                    match pr.rules.as_ref().map(|r| &r.http).filter(|h| !h.is_empty()) {
                        Some(http) => {
                            for h in http {
                                if !l7.contains(h) {
                                    l7.push(h.clone());
                                }
                            }
                        }
                        None => allow_all = true,
                    }
                }
            }
            if icmp_matches(icmps, protocol, port) {
                allow_all = true;
            }
        }
    }
    if allow_all {
        OracleVerdict::Allow
    } else if !l7.is_empty() {
        OracleVerdict::Redirect(l7)
    } else if enforced {
        OracleVerdict::Deny(133)
    } else {
        OracleVerdict::Allow
    }
}

/// Whether an HTTP request passes one of `rules` (full-match regexes;
/// required headers present; header matches equal).
pub fn http_allows(rules: &[HttpRule], req: &Request<'_>) -> bool {
    let full = |re: &Option<String>, v: &str| match re {
        None => true,
        Some(re) => regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(v)),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    rules.iter().any(|r| {
        full(&r.method, req.method)
            && full(&r.path, req.path)
            && full(&r.host, req.host)
            && r.headers.iter().all(|h| match h.split_once(':') {
                Some((n, v)) => header(n.trim()) == Some(v.trim()),
                None => header(h.trim()).is_some(),
            })
            && r.header_matches
                .iter()
                .all(|m| header(&m.name) == Some(m.value.as_deref().unwrap_or("")))
    })
}

/// The whole flow: egress at the source and ingress at the destination must
/// both pass; with a request, L7 rules on either side are applied. Each
/// side's named ports are its identity's in `ids`.
#[allow(clippy::too_many_arguments)]
pub fn verdict(
    policies: &[Policy],
    ids: &Identities,
    source: (NumericIdentity, &LabelSet),
    destination: (NumericIdentity, &LabelSet),
    protocol: u8,
    port: u16,
    request: Option<&Request<'_>>,
    mode: EnforcementMode,
) -> OracleVerdict {
    let egress = direction_verdict(
        policies,
        ids,
        source.1,
        ids.ports(source.0),
        Direction::Egress,
        destination.0,
        protocol,
        port,
        mode,
    );
    let ingress = direction_verdict(
        policies,
        ids,
        destination.1,
        ids.ports(destination.0),
        Direction::Ingress,
        source.0,
        protocol,
        port,
        mode,
    );
    for v in [&egress, &ingress] {
        if let OracleVerdict::Deny(r) = v {
            return OracleVerdict::Deny(*r);
        }
    }
    let mut rules = Vec::new();
    for v in [egress, ingress] {
        if let OracleVerdict::Redirect(r) = v {
            if let Some(req) = request {
                if !http_allows(&r, req) {
                    return OracleVerdict::Deny(133);
                }
            }
            rules.extend(r);
        }
    }
    if rules.is_empty() || request.is_some() {
        OracleVerdict::Allow
    } else {
        OracleVerdict::Redirect(rules)
    }
}
