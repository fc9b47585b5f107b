//! What `axoneme policy explain` answers: a flow's verdict and the rules
//! that decided it, built from the oracle's [`FlowExplanation`], in words
//! and fields. Offline (the CLI, policy files) and live (the agent, its
//! caches and its datapath's policy map) give the same report.

use std::net::IpAddr;

use axoneme_identity::{NumericIdentity, ReservedIdentity};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::compile::Direction;
use crate::oracle::{Attribution, Explanation, FlowExplanation, OracleVerdict};

/// One direction's part of the explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionReport {
    /// `allowed`, `denied` or `http` (allowed for requests its HTTP rules
    /// accept).
    pub verdict: String,
    pub enforced: bool,
    /// What decided, in words.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selected_by: Vec<Attribution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_by: Vec<Attribution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_by: Vec<Attribution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_rules: Vec<Attribution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmet_requires: Vec<Attribution>,
}

/// The HTTP rules' word on the request, per direction that has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpReport {
    pub direction: String,
    /// The rule the request matched; none: it is denied (403).
    pub matched: Option<Attribution>,
}

/// `policy explain`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainReport {
    /// `allowed`, `denied`, or `redirected` (to the L7 proxy: no request
    /// was given to judge).
    pub verdict: String,
    /// Cilium's drop reason when denied at L3/L4 (133 no rule allows, 181
    /// a deny rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<u8>,
    /// 403 when the L7 proxy refuses the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    pub source: String,
    pub destination: String,
    pub flow: String,
    /// At the source, its egress policy.
    pub egress: DirectionReport,
    /// At the destination, its ingress policy.
    pub ingress: DirectionReport,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpReport>,
    /// Live mode: the datapath's policy map, for the ends on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datapath: Vec<DatapathCheck>,
}

/// The datapath's own word on one direction, when the end is this node's
/// endpoint (live mode): its policy map looked up as the programs do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathCheck {
    pub direction: String,
    pub endpoint: String,
    /// `allowed`, `denied` or `http`, as in [`DirectionReport::verdict`].
    pub verdict: String,
    /// Whether it says what the explanation says (false is a bug: report
    /// it).
    pub agrees: bool,
    /// The endpoint is in policy audit mode: a flow its policy denies is
    /// let through and reported as `audit`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

/// The identity of an address: the longest prefix holding it among
/// `prefixes` (endpoint addresses, the policies' CIDRs), else `world`.
pub fn identity_of_ip<'a>(
    ip: IpAddr,
    prefixes: impl IntoIterator<Item = (&'a IpNet, &'a NumericIdentity)>,
) -> NumericIdentity {
    prefixes
        .into_iter()
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or(ReservedIdentity::World.id(), |(_, id)| *id)
}

fn direction_name(dir: Direction) -> &'static str {
    if dir == Direction::Ingress {
        "ingress"
    } else {
        "egress"
    }
}

fn direction_report(e: &Explanation, dir: Direction, subject: &str) -> DirectionReport {
    let side = direction_name(dir);
    let names = |v: &[Attribution]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let selectors = || {
        if e.selected_by.is_empty() {
            "enforcement mode `always`".to_string()
        } else {
            format!("{} selects it", names(&e.selected_by))
        }
    };
    let (verdict, reason) = match &e.verdict {
        OracleVerdict::Deny(181) => ("denied", format!("deny rule: {}", names(&e.denied_by))),
        OracleVerdict::Deny(_) if !e.unmet_requires.is_empty() => (
            "denied",
            format!(
                "default deny: {side} is enforced on the {subject} because {}, and the peer does not meet {}",
                selectors(),
                names(&e.unmet_requires)
            ),
        ),
        OracleVerdict::Deny(_) => (
            "denied",
            format!(
                "default deny: {side} is enforced on the {subject} because {}, and no rule allows this peer and port",
                selectors()
            ),
        ),
        OracleVerdict::Redirect(_) => (
            "http",
            format!(
                "allowed for HTTP requests its rules accept (through the L7 proxy): {}",
                names(&e.http.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>())
            ),
        ),
        OracleVerdict::Allow if !e.enforced => (
            "allowed",
            format!("not enforced: no policy selects the {subject} for {side}"),
        ),
        OracleVerdict::Allow => ("allowed", format!("allowed by {}", names(&e.allowed_by))),
    };
    DirectionReport {
        verdict: verdict.into(),
        enforced: e.enforced,
        reason,
        selected_by: e.selected_by.clone(),
        denied_by: e.denied_by.clone(),
        allowed_by: e.allowed_by.clone(),
        http_rules: e.http.iter().map(|(_, a)| a.clone()).collect(),
        unmet_requires: e.unmet_requires.clone(),
    }
}

impl ExplainReport {
    /// The report of `e`, a flow from `source` to `destination` (their
    /// descriptions) described as `flow`.
    pub fn new(e: &FlowExplanation, source: String, destination: String, flow: String) -> Self {
        let (verdict, drop_reason, http_status) = match &e.verdict {
            OracleVerdict::Allow => ("allowed", None, None),
            OracleVerdict::Redirect(_) => ("redirected", None, None),
            OracleVerdict::Deny(_) if !e.http.is_empty() => ("denied", None, Some(403)),
            OracleVerdict::Deny(r) => ("denied", Some(*r), None),
        };
        ExplainReport {
            verdict: verdict.into(),
            drop_reason,
            http_status,
            source,
            destination,
            flow,
            egress: direction_report(&e.egress, Direction::Egress, "source"),
            ingress: direction_report(&e.ingress, Direction::Ingress, "destination"),
            http: e
                .http
                .iter()
                .map(|(dir, matched)| HttpReport {
                    direction: direction_name(*dir).into(),
                    matched: matched.clone(),
                })
                .collect(),
            datapath: Vec::new(),
        }
    }
}

/// A protocol name as `explain` takes it: its IP protocol number.
pub fn protocol_number(p: &str) -> Result<u8, String> {
    match p.to_ascii_uppercase().as_str() {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        "ICMP" => Ok(1),
        "ICMPV6" => Ok(58),
        _ => Err(format!("{p:?} is not one of TCP, UDP, SCTP, ICMP, ICMPv6")),
    }
}

/// An end of the flow: its labels and identity.
pub fn describe_end(id: NumericIdentity, labels: &axoneme_identity::LabelSet) -> String {
    format!("{} (identity {})", labels.to_strings().join(","), id.0)
}

/// The flow: protocol, port, and the request if any.
pub fn describe_flow(
    protocol: &str,
    port: u16,
    request: Option<&crate::oracle::Request<'_>>,
) -> String {
    let protocol = protocol.to_ascii_uppercase();
    match request {
        Some(r) => format!("{protocol} {port} {} {}", r.method, r.path),
        None => format!("{protocol} {port}"),
    }
}

/// An HTTP request as `explain` is given it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestSpec {
    pub method: String,
    /// `/` when none.
    pub path: Option<String>,
    /// Empty when none.
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// The report on a flow of `protocol` (a name, as [`protocol_number`]
/// takes it) to `port` from `source` to `destination`, whose identities
/// `ids` holds with the policies' CIDR identities, judged by `policies`.
#[allow(clippy::too_many_arguments)]
pub fn report(
    policies: &[crate::Policy],
    ids: &crate::selector::Identities,
    source: (NumericIdentity, &axoneme_identity::LabelSet),
    destination: (NumericIdentity, &axoneme_identity::LabelSet),
    protocol: &str,
    port: u16,
    request: Option<&RequestSpec>,
    mode: crate::EnforcementMode,
) -> Result<ExplainReport, String> {
    let number = protocol_number(protocol)?;
    let headers: Vec<(&str, &str)> = request
        .map(|r| {
            r.headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let request = request.map(|r| crate::oracle::Request {
        method: &r.method,
        path: r.path.as_deref().unwrap_or("/"),
        host: r.host.as_deref().unwrap_or(""),
        headers: &headers,
    });
    let e = crate::oracle::explain(
        policies,
        ids,
        source,
        destination,
        number,
        port,
        request.as_ref(),
        mode,
    );
    Ok(ExplainReport::new(
        &e,
        describe_end(source.0, source.1),
        describe_end(destination.0, destination.1),
        describe_flow(protocol, port, request.as_ref()),
    ))
}
