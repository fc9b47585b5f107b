//! The reference oracle: a plainly written evaluator of what policies say
//! about one flow. It shares nothing with `compile` but the parsed API
//! types and the entity names: it walks every rule for every flow, the slow
//! and obvious way, so that the compiled map entries can be checked against
//! it (the differential tests, down to the datapath's own verdicts). Walking
//! the rules, it also says which ones decided ([`Explanation`]): that is
//! `axoneme policy explain`.

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
        None | Some(Source::Any) => Some(l.value),
        Some(s) if s == l.source => Some(l.value),
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

/// Node-local identities: CIDRs' below `1<<24 | 1<<23`, other nodes'
/// above (`axoneme_identity::numeric::NODE_SCOPE`).
fn is_cidr_identity(id: NumericIdentity) -> bool {
    id.0 & (1 << 24) != 0 && id.0 & (1 << 23) == 0
}

fn is_node_identity(id: NumericIdentity) -> bool {
    id.0 & (1 << 24) != 0 && id.0 & (1 << 23) != 0
}

fn peer_prefix(labels: &LabelSet) -> Option<ipnet::IpNet> {
    labels
        .iter()
        .find(|l| l.source == Source::Cidr)
        .and_then(|l| crate::validate::parse_cidr(l.key).ok())
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
        Entity::RemoteNode => n == 6 || (known && is_node_identity(peer)),
        Entity::KubeApiserver => n == 7,
        Entity::Ingress => n == 8,
        Entity::Init => n == 5,
        Entity::Health => n == 4,
        Entity::Unmanaged => n == 3,
        Entity::None => false,
    }
}

/// Which part of a section's peers a flow's peer matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerHit {
    /// The section names no peer: every peer.
    Any,
    Endpoints(usize),
    Nodes(usize),
    Entities(usize),
    Cidr(usize),
    CidrSet(usize),
}

impl PeerHit {
    /// The field path of the hit inside its section (`fromEndpoints[0]`;
    /// none for [`PeerHit::Any`]).
    fn path(self, section: &str, dir: Direction) -> Option<String> {
        let side = if dir == Direction::Ingress {
            "from"
        } else {
            "to"
        };
        let field = match self {
            PeerHit::Any => return None,
            PeerHit::Endpoints(i) => format!("Endpoints[{i}]"),
            PeerHit::Nodes(i) => format!("Nodes[{i}]"),
            PeerHit::Entities(i) => format!("Entities[{i}]"),
            PeerHit::Cidr(i) => format!("CIDR[{i}]"),
            PeerHit::CidrSet(i) => format!("CIDRSet[{i}]"),
        };
        Some(format!("{section}.{side}{field}"))
    }
}

fn peer_match(
    f: &PeerSection<'_>,
    ns: Option<&str>,
    peer: NumericIdentity,
    ids: &Identities,
) -> Option<PeerHit> {
    let labels = ids.get(peer);
    if f.has_no_peers() {
        return Some(PeerHit::Any);
    }
    if let Some(labels) = labels {
        let reserved = peer.0 < 256;
        let local = is_cidr_identity(peer) || is_node_identity(peer);
        for (i, sel) in f.endpoints.iter().enumerate() {
            let kind_ok = if names_reserved(sel) {
                reserved || local
            } else {
                !reserved && !local
            };
            if kind_ok && selector_matches(sel, ns, labels) {
                return Some(PeerHit::Endpoints(i));
            }
        }
        // Node selectors: the other nodes, and this one (`host`).
        if is_node_identity(peer) || peer.0 == 1 {
            if let Some(i) = f
                .nodes
                .iter()
                .position(|sel| selector_matches(sel, None, labels))
            {
                return Some(PeerHit::Nodes(i));
            }
        }
    }
    if let Some(i) = f
        .entities
        .iter()
        .position(|e| entity_has(e, peer, labels.is_some()))
    {
        return Some(PeerHit::Entities(i));
    }
    // A /0 covers the world identities of its family.
    let zero_covers = |c: &str| {
        crate::validate::parse_cidr(c).is_ok_and(|n| {
            let family = if n.addr().is_ipv4() { 9 } else { 10 };
            n.prefix_len() == 0 && (peer.0 == 2 || peer.0 == family)
        })
    };
    if let Some(i) = f.cidrs.iter().position(|c| zero_covers(c)) {
        return Some(PeerHit::Cidr(i));
    }
    if let Some(i) = f
        .cidr_sets
        .iter()
        .position(|s| s.cidr.as_deref().is_some_and(zero_covers))
    {
        return Some(PeerHit::CidrSet(i));
    }
    let p = labels
        .filter(|_| is_cidr_identity(peer))
        .and_then(peer_prefix)?;
    if let Some(i) = f
        .cidrs
        .iter()
        .position(|c| crate::validate::parse_cidr(c).is_ok_and(|n| n.contains(&p)))
    {
        return Some(PeerHit::Cidr(i));
    }
    f.cidr_sets
        .iter()
        .position(|s| {
            let Some(n) = s
                .cidr
                .as_deref()
                .and_then(|c| crate::validate::parse_cidr(c).ok())
            else {
                return false;
            };
            let excepted = s
                .except
                .iter()
                .filter_map(|e| crate::validate::parse_cidr(e).ok())
                .any(|e| e.contains(&p));
            n.contains(&p) && !excepted
        })
        .map(PeerHit::CidrSet)
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

/// The path (`icmps[0].fields[1]`) of the first ICMP field the flow matches.
fn icmp_match(icmps: &[IcmpRule], protocol: u8, port: u16) -> Option<String> {
    icmps.iter().enumerate().find_map(|(i, r)| {
        r.fields.iter().enumerate().find_map(|(j, f)| {
            match crate::validate::icmp_type(f.family.as_deref(), &f.icmp_type.0) {
                Ok((v6, t)) if protocol == if v6 { 58 } else { 1 } && port == u16::from(t) => {
                    Some(format!(".icmps[{i}].fields[{j}]"))
                }
                _ => None,
            }
        })
    })
}

/// Where in the policies a decision came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Attribution {
    /// `Kind namespace/name` (`Kind name` when cluster-wide).
    pub policy: String,
    /// The field path of the deciding part, e.g.
    /// `spec.ingress[0].toPorts[0].ports[0]`.
    pub path: String,
    /// The field path of the peer selector that matched, e.g.
    /// `spec.ingress[0].fromEndpoints[0]` (none: the section names no
    /// peer, so it means every peer; or a rule, not a section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

impl std::fmt::Display for Attribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.policy, self.path)?;
        match &self.peer {
            Some(peer) => write!(f, " (peer {peer})"),
            None => Ok(()),
        }
    }
}

/// A policy's name as `explain` gives it.
pub fn policy_name(p: &Policy) -> String {
    match &p.namespace {
        Some(ns) if p.kind != crate::PolicyKind::CiliumClusterwideNetworkPolicy => {
            format!("{} {ns}/{}", p.kind.as_str(), p.name)
        }
        _ => format!("{} {}", p.kind.as_str(), p.name),
    }
}

/// What one direction's policy says about a flow, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: OracleVerdict,
    /// The direction is enforced (default deny) ...
    pub enforced: bool,
    /// ... because these rules select the subject and have rules in it
    /// (empty with enforcement mode `always`).
    pub selected_by: Vec<Attribution>,
    /// Deny rules that match the flow (any one denies).
    pub denied_by: Vec<Attribution>,
    /// Rules that allow it outright (L3/L4).
    pub allowed_by: Vec<Attribution>,
    /// Rules that allow it only for requests matching their HTTP rules,
    /// each rule with where it comes from.
    pub http: Vec<(HttpRule, Attribution)>,
    /// Requirements (`fromRequires`/`toRequires`) the peer does not meet:
    /// no allow rule of the direction applies.
    pub unmet_requires: Vec<Attribution>,
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
    direction_explain(
        policies,
        ids,
        subject,
        subject_ports,
        dir,
        peer,
        protocol,
        port,
        mode,
    )
    .verdict
}

/// [`direction_verdict`] with the rules that decided.
#[allow(clippy::too_many_arguments)]
pub fn direction_explain(
    policies: &[Policy],
    ids: &Identities,
    subject: &LabelSet,
    subject_ports: &PortNames,
    dir: Direction,
    peer: NumericIdentity,
    protocol: u8,
    port: u16,
    mode: EnforcementMode,
) -> Explanation {
    let mut out = Explanation {
        verdict: OracleVerdict::Allow,
        enforced: mode == EnforcementMode::Always,
        selected_by: Vec::new(),
        denied_by: Vec::new(),
        allowed_by: Vec::new(),
        http: Vec::new(),
        unmet_requires: Vec::new(),
    };
    if mode == EnforcementMode::Never {
        out.enforced = false;
        return out;
    }
    let egress = dir == Direction::Egress;
    let (allow_field, deny_field, ports_field) = if egress {
        ("egress", "egressDeny", "toPorts")
    } else {
        ("ingress", "ingressDeny", "toPorts")
    };
    let mut requires: Vec<(&EndpointSelector, Option<&str>, Attribution)> = Vec::new();
    let mut allow_checks = Vec::new();
    // Whose named ports the rules name: the destination's.
    let names = match dir {
        Direction::Ingress => subject_ports,
        Direction::Egress => ids.ports(peer),
    };
    for p in policies {
        let ns = p.namespace.as_deref();
        let name = policy_name(p);
        let at = |path: String| Attribution {
            policy: name.clone(),
            path,
            peer: None,
        };
        for (rule_path, rule) in &p.rules {
            // A host policy (nodeSelector) selects host endpoints only,
            // an endpointSelector never does; nodes have no namespace.
            let host = label_value(subject, "reserved:host").is_some();
            let selected = match (&rule.endpoint_selector, &rule.node_selector) {
                (Some(sel), _) => !host && selector_matches(sel, ns, subject),
                (None, Some(sel)) => host && selector_matches(sel, None, subject),
                (None, None) => false,
            };
            if !selected {
                continue;
            }
            let dd = rule.enable_default_deny.as_ref().and_then(|d| match dir {
                Direction::Ingress => d.ingress,
                Direction::Egress => d.egress,
            });
            let (allows, denies) = (rule.allow_sections(egress), rule.deny_sections(egress));
            if (!allows.is_empty() || !denies.is_empty()) && dd != Some(false) {
                out.enforced = true;
                out.selected_by.push(at(rule_path.clone()));
            }
            for (i, d) in denies.iter().enumerate() {
                let section = format!("{rule_path}.{deny_field}[{i}]");
                let Some(hit) = peer_match(d, ns, peer, ids) else {
                    continue;
                };
                let port_hit = d.deny_ports.iter().enumerate().find_map(|(j, t)| {
                    t.ports
                        .iter()
                        .position(|pp| port_matches(pp, protocol, port, names))
                        .map(|k| format!(".{ports_field}[{j}].ports[{k}]"))
                });
                let no_ports = d.deny_ports.iter().all(|t| t.ports.is_empty());
                let l4 = if no_ports && d.icmps.is_empty() && !d.has_no_peers() {
                    Some(String::new())
                } else {
                    port_hit.or_else(|| icmp_match(d.icmps, protocol, port))
                };
                if let Some(l4) = l4 {
                    out.denied_by.push(Attribution {
                        peer: hit.path(&section, dir),
                        ..at(format!("{section}{l4}"))
                    });
                }
            }
            for (i, a) in allows.into_iter().enumerate() {
                let section = format!("{rule_path}.{allow_field}[{i}]");
                let side = if egress { "toRequires" } else { "fromRequires" };
                requires.extend(
                    a.requires
                        .iter()
                        .enumerate()
                        .map(|(j, r)| (r, ns, at(format!("{section}.{side}[{j}]")))),
                );
                allow_checks.push((a, ns, at(section)));
            }
        }
    }
    if !out.denied_by.is_empty() {
        out.verdict = OracleVerdict::Deny(181);
        return out;
    }
    let peer_labels = ids.get(peer);
    out.unmet_requires = requires
        .into_iter()
        .filter(|(r, ns, _)| !peer_labels.is_some_and(|l| selector_matches(r, *ns, l)))
        .map(|(_, _, at)| at)
        .collect();
    if out.unmet_requires.is_empty() {
        for (a, ns, section) in allow_checks {
            let Some(hit) = peer_match(&a, ns, peer, ids) else {
                continue;
            };
            let here = |rest: String| Attribution {
                policy: section.policy.clone(),
                path: format!("{}{rest}", section.path),
                peer: hit.path(&section.path, dir),
            };
            // `ingress: [{}]`: no peers and no ports allows nothing.
            if a.to_ports.is_empty() && a.icmps.is_empty() && !a.has_no_peers() {
                out.allowed_by.push(here(String::new()));
            }
            for (j, pr) in a.to_ports.iter().enumerate() {
                let Some(k) = pr
                    .ports
                    .iter()
                    .position(|pp| port_matches(pp, protocol, port, names))
                else {
                    continue;
                };
                let ports = format!(".{ports_field}[{j}].ports[{k}]");
                match pr.rules.as_ref().map(|r| &r.http).filter(|h| !h.is_empty()) {
                    Some(http) => {
                        for (h_i, h) in http.iter().enumerate() {
                            let at = here(format!(".{ports_field}[{j}].rules.http[{h_i}]"));
                            if !out.http.iter().any(|(r, _)| r == h) {
                                out.http.push((h.clone(), at));
                            }
                        }
                    }
                    None => out.allowed_by.push(here(ports)),
                }
            }
            if let Some(icmp) = icmp_match(a.icmps, protocol, port) {
                out.allowed_by.push(here(icmp));
            }
        }
    }
    out.verdict = if !out.allowed_by.is_empty() {
        OracleVerdict::Allow
    } else if !out.http.is_empty() {
        OracleVerdict::Redirect(out.http.iter().map(|(r, _)| r.clone()).collect())
    } else if out.enforced {
        OracleVerdict::Deny(133)
    } else {
        OracleVerdict::Allow
    };
    out
}

/// Whether an HTTP request passes `r` (full-match regexes; required
/// headers present; header matches equal).
fn http_rule_matches(r: &HttpRule, req: &Request<'_>) -> bool {
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
}

/// Whether an HTTP request passes one of `rules`.
pub fn http_allows(rules: &[HttpRule], req: &Request<'_>) -> bool {
    rules.iter().any(|r| http_rule_matches(r, req))
}

/// A whole flow's verdict and why: the source's egress and the
/// destination's ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowExplanation {
    pub verdict: OracleVerdict,
    pub egress: Explanation,
    pub ingress: Explanation,
    /// With a request, for each direction that has HTTP rules for the
    /// flow: the rule the request matched, or `None` (then it is denied).
    pub http: Vec<(Direction, Option<Attribution>)>,
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
    explain(
        policies,
        ids,
        source,
        destination,
        protocol,
        port,
        request,
        mode,
    )
    .verdict
}

/// [`verdict`] with the rules that decided.
#[allow(clippy::too_many_arguments)]
pub fn explain(
    policies: &[Policy],
    ids: &Identities,
    source: (NumericIdentity, &LabelSet),
    destination: (NumericIdentity, &LabelSet),
    protocol: u8,
    port: u16,
    request: Option<&Request<'_>>,
    mode: EnforcementMode,
) -> FlowExplanation {
    let egress = direction_explain(
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
    let ingress = direction_explain(
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
    let mut out = FlowExplanation {
        verdict: OracleVerdict::Allow,
        egress,
        ingress,
        http: Vec::new(),
    };
    let denial = [&out.egress, &out.ingress]
        .into_iter()
        .find_map(|e| match e.verdict {
            OracleVerdict::Deny(r) => Some(r),
            _ => None,
        });
    if let Some(r) = denial {
        out.verdict = OracleVerdict::Deny(r);
        return out;
    }
    let mut rules = Vec::new();
    let mut denied = false;
    for (dir, e) in [
        (Direction::Egress, &out.egress),
        (Direction::Ingress, &out.ingress),
    ] {
        let OracleVerdict::Redirect(r) = &e.verdict else {
            continue;
        };
        if let Some(req) = request {
            let hit = e
                .http
                .iter()
                .find(|(rule, _)| http_rule_matches(rule, req))
                .map(|(_, at)| at.clone());
            denied |= hit.is_none();
            out.http.push((dir, hit));
        }
        rules.extend(r.iter().cloned());
    }
    out.verdict = if denied {
        OracleVerdict::Deny(133)
    } else if rules.is_empty() || request.is_some() {
        OracleVerdict::Allow
    } else {
        OracleVerdict::Redirect(rules)
    };
    out
}
