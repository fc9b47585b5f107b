//! `axoneme policy explain`: the verdict on one flow and exactly what
//! decided it, from the reference evaluator (`axoneme_policy::oracle`),
//! which the differential tests hold equal to the compiled map entries and
//! to the datapath's own verdicts.
//!
//! Offline: the policies are files (as `policy validate` takes them); the
//! two ends are label sets (or addresses, judged as the CIDR identity or
//! `world` they fall in).

use std::net::IpAddr;
use std::path::PathBuf;

use axoneme_identity::{LabelSet, NumericIdentity, ReservedIdentity, Source};
use axoneme_policy::compile::{add_cidr_identities, cidr_identities, Direction, EnforcementMode};
use axoneme_policy::oracle::{self, Attribution, Explanation, OracleVerdict};
use axoneme_policy::selector::Identities;
use axoneme_policy::{parse_manifest, Document, Policy};
use serde::Serialize;

use crate::error::CliError;
use crate::output::Render;

/// The workload identities the two ends get offline (any number above the
/// reserved range does).
const SOURCE_ID: NumericIdentity = NumericIdentity(256);
const DESTINATION_ID: NumericIdentity = NumericIdentity(257);

#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// Policy files (multi-document YAML or JSON, `-` for standard input);
    /// every policy in them applies. Objects of other kinds are skipped.
    #[arg(short = 'f', long = "file", value_name = "FILE", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// The source's labels, `[source:]key=value` separated by commas
    /// (`app=checkout,team=shop`); `reserved:host`, `reserved:world`, ...
    /// for a reserved identity.
    #[arg(
        long,
        value_name = "LABELS",
        required_unless_present = "from_ip",
        conflicts_with = "from_ip"
    )]
    pub from: Option<String>,
    /// The source's namespace (its `io.kubernetes.pod.namespace` label).
    #[arg(long, default_value = "default")]
    pub from_namespace: String,
    /// The source as an address outside the cluster: the CIDR identity of
    /// the policies' longest prefix holding it, else `world`.
    #[arg(long, value_name = "IP")]
    pub from_ip: Option<IpAddr>,
    /// The destination's labels (as --from).
    #[arg(
        long,
        value_name = "LABELS",
        required_unless_present = "to_ip",
        conflicts_with = "to_ip"
    )]
    pub to: Option<String>,
    #[arg(long, default_value = "default")]
    pub to_namespace: String,
    #[arg(long, value_name = "IP")]
    pub to_ip: Option<IpAddr>,
    /// TCP, UDP, SCTP, ICMP or ICMPv6.
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    /// The destination port (ICMP: the message type, e.g. 8 for echo).
    #[arg(long)]
    pub port: u16,
    /// An HTTP request's method: judges the request against the HTTP rules.
    #[arg(long)]
    pub method: Option<String>,
    /// The request's path [default: /].
    #[arg(long, requires = "method")]
    pub path: Option<String>,
    /// The request's Host [default: empty].
    #[arg(long, requires = "method")]
    pub host: Option<String>,
    /// A request header `Name: value`; repeatable.
    #[arg(long = "header", value_name = "HEADER", requires = "method")]
    pub headers: Vec<String>,
    /// Policy enforcement mode: default, always or never.
    #[arg(long, default_value = "default")]
    pub enforcement: String,
}

/// One direction's part of the explanation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionReport {
    /// `allowed`, `denied` or `http` (allowed for requests its HTTP rules
    /// accept).
    pub verdict: &'static str,
    pub enforced: bool,
    /// What decided, in words.
    pub reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub selected_by: Vec<Attribution>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_by: Vec<Attribution>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_by: Vec<Attribution>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_rules: Vec<Attribution>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmet_requires: Vec<Attribution>,
}

/// The HTTP rules' word on the request, per direction that has them.
#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    pub direction: &'static str,
    /// The rule the request matched; none: it is denied (403).
    pub matched: Option<Attribution>,
}

/// `policy explain`'s answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainReport {
    /// `allowed`, `denied`, or `redirected` (to the L7 proxy: no request
    /// was given to judge).
    pub verdict: &'static str,
    /// Cilium's drop reason when denied at L3/L4 (133 no rule allows, 181
    /// a deny rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<u8>,
    /// 403 when the L7 proxy refuses the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    pub source: String,
    pub destination: String,
    pub flow: String,
    /// At the source, its egress policy.
    pub egress: DirectionReport,
    /// At the destination, its ingress policy.
    pub ingress: DirectionReport,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpReport>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::InvalidArgument(format!("{what}: {e}"))
}

/// An end given by labels: its label set and identity.
fn end_of_labels(
    labels: &str,
    namespace: &str,
    workload: NumericIdentity,
) -> Result<(NumericIdentity, LabelSet), CliError> {
    let items: Vec<&str> = labels
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut set = LabelSet::parse(&items, Source::K8s).map_err(|e| bad("labels", e))?;
    let reserved: Vec<_> = set
        .iter()
        .filter(|l| l.source == Source::Reserved)
        .map(|l| l.key.clone())
        .collect();
    if let Some(name) = reserved.first() {
        let r = ReservedIdentity::from_name(name)
            .ok_or_else(|| bad("labels", format!("reserved:{name} is no reserved identity")))?;
        if set.len() > 1 {
            return Err(bad(
                "labels",
                format!("reserved:{name} stands alone (a reserved identity has no other labels)"),
            ));
        }
        return Ok((r.id(), set));
    }
    axoneme_identity::labels::check_dns_label(namespace).map_err(|e| bad("namespace", e))?;
    set = LabelSet::parse(
        set.to_strings()
            .into_iter()
            .chain([format!("k8s:io.kubernetes.pod.namespace={namespace}")]),
        Source::K8s,
    )
    .map_err(|e| bad("labels", e))?;
    Ok((workload, set))
}

/// An end given by address: the CIDR identity of the longest prefix of
/// the policies that holds it, else `world`.
fn end_of_ip(
    ip: IpAddr,
    ids: &Identities,
    cidrs: &[(ipnet::IpNet, NumericIdentity)],
) -> (NumericIdentity, LabelSet) {
    let id = cidrs
        .iter()
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or(ReservedIdentity::World.id(), |(_, id)| *id);
    (id, ids.get(id).cloned().unwrap_or_default())
}

fn protocol_number(p: &str) -> Result<u8, CliError> {
    match p.to_ascii_uppercase().as_str() {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        "ICMP" => Ok(1),
        "ICMPV6" => Ok(58),
        other => Err(bad(
            "--protocol",
            format!("{other:?} is not one of TCP, UDP, SCTP, ICMP, ICMPv6"),
        )),
    }
}

fn enforcement(mode: &str) -> Result<EnforcementMode, CliError> {
    match mode {
        "default" => Ok(EnforcementMode::Default),
        "always" => Ok(EnforcementMode::Always),
        "never" => Ok(EnforcementMode::Never),
        other => Err(bad(
            "--enforcement",
            format!("{other:?} is not one of default, always, never"),
        )),
    }
}

/// Reads every policy of `files`; an invalid one fails the command, as
/// the cluster would refuse it.
fn read_policies(files: &[PathBuf]) -> Result<Vec<Policy>, CliError> {
    let mut out = Vec::new();
    for path in files {
        let text = crate::policy::read(path)?;
        for doc in parse_manifest(&text) {
            match doc {
                Document::Policy(p) => out.push(p),
                Document::Invalid(e) => {
                    return Err(bad(
                        &format!("{}: policy {}", path.display(), e.policy),
                        e.errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ))
                }
                Document::Skipped(_) => {}
            }
        }
    }
    Ok(out)
}

fn direction_report(e: &Explanation, dir: Direction, subject: &str) -> DirectionReport {
    let side = if dir == Direction::Ingress {
        "ingress"
    } else {
        "egress"
    };
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
        verdict,
        enforced: e.enforced,
        reason,
        selected_by: e.selected_by.clone(),
        denied_by: e.denied_by.clone(),
        allowed_by: e.allowed_by.clone(),
        http_rules: e.http.iter().map(|(_, a)| a.clone()).collect(),
        unmet_requires: e.unmet_requires.clone(),
    }
}

/// `policy explain` offline.
pub fn explain(args: &ExplainArgs) -> Result<ExplainReport, CliError> {
    let protocol = protocol_number(&args.protocol)?;
    let mode = enforcement(&args.enforcement)?;
    let headers: Vec<(&str, &str)> = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim(), v.trim()))
                .ok_or_else(|| bad("--header", format!("{h:?} is not `Name: value`")))
        })
        .collect::<Result<_, _>>()?;
    let policies = read_policies(&args.files)?;
    let mut ids = Identities::with_reserved();
    let cidrs = cidr_identities(&policies);
    add_cidr_identities(&mut ids, &cidrs);
    let cidrs: Vec<_> = cidrs.into_iter().collect();
    let end = |labels: &Option<String>, ns: &str, ip: Option<IpAddr>, id| match (labels, ip) {
        (Some(l), _) => end_of_labels(l, ns, id),
        (None, Some(ip)) => Ok(end_of_ip(ip, &ids, &cidrs)),
        (None, None) => Err(bad("flow", "each end needs labels or an address")),
    };
    let source = end(&args.from, &args.from_namespace, args.from_ip, SOURCE_ID)?;
    let mut destination = end(&args.to, &args.to_namespace, args.to_ip, DESTINATION_ID)?;
    // One label set is one identity.
    if destination.1 == source.1 {
        destination.0 = source.0;
    }
    for (id, labels) in [&source, &destination] {
        if ids.get(*id).is_none() {
            ids.insert(*id, labels.clone());
        }
    }
    let request = args.method.as_deref().map(|method| oracle::Request {
        method,
        path: args.path.as_deref().unwrap_or("/"),
        host: args.host.as_deref().unwrap_or(""),
        headers: &headers,
    });
    let e = oracle::explain(
        &policies,
        &ids,
        (source.0, &source.1),
        (destination.0, &destination.1),
        protocol,
        args.port,
        request.as_ref(),
        mode,
    );
    let describe = |(id, labels): &(NumericIdentity, LabelSet)| {
        format!("{} (identity {})", labels.to_strings().join(","), id.0)
    };
    let (verdict, drop_reason, http_status) = match &e.verdict {
        OracleVerdict::Allow => ("allowed", None, None),
        OracleVerdict::Redirect(_) => ("redirected", None, None),
        OracleVerdict::Deny(_) if !e.http.is_empty() => ("denied", None, Some(403)),
        OracleVerdict::Deny(r) => ("denied", Some(*r), None),
    };
    Ok(ExplainReport {
        verdict,
        drop_reason,
        http_status,
        source: describe(&source),
        destination: describe(&destination),
        flow: match &request {
            Some(r) => format!(
                "{} {} {} {}",
                args.protocol.to_ascii_uppercase(),
                args.port,
                r.method,
                r.path
            ),
            None => format!("{} {}", args.protocol.to_ascii_uppercase(), args.port),
        },
        egress: direction_report(&e.egress, Direction::Egress, "source"),
        ingress: direction_report(&e.ingress, Direction::Ingress, "destination"),
        http: e
            .http
            .iter()
            .map(|(dir, matched)| HttpReport {
                direction: if *dir == Direction::Ingress {
                    "ingress"
                } else {
                    "egress"
                },
                matched: matched.clone(),
            })
            .collect(),
    })
}

impl Render for ExplainReport {
    fn human(&self) -> String {
        let mut out = format!("{}: ", self.verdict.to_uppercase());
        out.push_str(&match (self.drop_reason, self.http_status) {
            (Some(133), _) => "dropped, reason 133 (policy denied)".to_string(),
            (Some(181), _) => "dropped, reason 181 (denied by a deny rule)".to_string(),
            (Some(r), _) => format!("dropped, reason {r}"),
            (None, Some(s)) => format!("the L7 proxy answers {s}"),
            (None, None) if self.verdict == "redirected" => {
                "to the L7 proxy (give --method to judge a request)".to_string()
            }
            (None, None) => "the flow passes".to_string(),
        });
        out.push('\n');
        out.push_str(&format!(
            "  flow: {} -> {} {}\n",
            self.source, self.destination, self.flow
        ));
        out.push_str(&format!(
            "  egress at the source: {}: {}\n",
            self.egress.verdict, self.egress.reason
        ));
        out.push_str(&format!(
            "  ingress at the destination: {}: {}\n",
            self.ingress.verdict, self.ingress.reason
        ));
        for h in &self.http {
            match &h.matched {
                Some(a) => out.push_str(&format!("  HTTP ({}): matched {a}\n", h.direction)),
                None => out.push_str(&format!(
                    "  HTTP ({}): no HTTP rule matched the request\n",
                    h.direction
                )),
            }
        }
        out
    }
}
