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

use axoneme_identity::{Label, LabelSet, NumericIdentity, ReservedIdentity, Source};
use axoneme_policy::compile::{add_cidr_identities, cidr_identities, EnforcementMode};
use axoneme_policy::explain::{self, ExplainReport};
use axoneme_policy::selector::Identities;
use axoneme_policy::{parse_manifest, Document, Policy};

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
    /// Without files, the flow is explained live by the node's agent (see
    /// --from-endpoint).
    #[arg(short = 'f', long = "file", value_name = "FILE", num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// The source's labels, `[source:]key=value` separated by commas
    /// (`app=checkout,team=shop`); `reserved:host`, `reserved:world`, ...
    /// for a reserved identity.
    #[arg(long, value_name = "LABELS", conflicts_with_all = ["from_ip", "from_endpoint"])]
    pub from: Option<String>,
    /// Live (no --file): the source endpoint, `NODE/NAME` or this node's
    /// `NAME`, judged by this node's agent with the identities and
    /// policies it enforces, and checked against its datapath's policy map
    /// for its own endpoints.
    #[arg(long, value_name = "ENDPOINT", conflicts_with = "from_ip")]
    pub from_endpoint: Option<String>,
    /// Live: the source Pod, `NAMESPACE/NAME` (`default` when no namespace
    /// is given), wherever it runs.
    #[arg(long, value_name = "POD", conflicts_with_all = ["from_ip", "from_endpoint", "from"])]
    pub from_pod: Option<String>,
    /// The source's namespace (its `io.kubernetes.pod.namespace` label).
    #[arg(long, default_value = "default")]
    pub from_namespace: String,
    /// The source as an address outside the cluster: the CIDR identity of
    /// the policies' longest prefix holding it, else `world`.
    #[arg(long, value_name = "IP")]
    pub from_ip: Option<IpAddr>,
    /// The destination's labels (as --from).
    #[arg(long, value_name = "LABELS", conflicts_with_all = ["to_ip", "to_endpoint"])]
    pub to: Option<String>,
    /// Live: the destination endpoint (as --from-endpoint).
    #[arg(long, value_name = "ENDPOINT", conflicts_with = "to_ip")]
    pub to_endpoint: Option<String>,
    /// Live: the destination Pod (as --from-pod).
    #[arg(long, value_name = "POD", conflicts_with_all = ["to_ip", "to_endpoint", "to"])]
    pub to_pod: Option<String>,
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
    /// Policy enforcement mode: default, always or never (offline; live
    /// mode uses the agent's).
    #[arg(long, default_value = "default")]
    pub enforcement: String,
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
    let reserved = set
        .iter()
        .find(|l| l.source == Source::Reserved)
        .map(|l| l.key.to_string());
    if let Some(name) = reserved {
        let r = ReservedIdentity::from_name(&name)
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
    let ns = Label::new(Source::K8s, "io.kubernetes.pod.namespace", namespace)
        .map_err(|e| bad("namespace", e))?;
    set.insert(ns);
    Ok((workload, set))
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

/// The request's headers (`Name: value`), checked.
fn headers(args: &ExplainArgs) -> Result<Vec<(String, String)>, CliError> {
    args.headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| bad("--header", format!("{h:?} is not `Name: value`")))
        })
        .collect()
}

/// `policy explain`: offline with policy files, else live by the agent.
pub async fn explain(
    args: &ExplainArgs,
    agent: &crate::agent::Agent,
) -> Result<ExplainReport, CliError> {
    // Checked before anything is read or asked.
    explain::protocol_number(&args.protocol).map_err(|e| bad("--protocol", e))?;
    let headers = headers(args)?;
    if args.files.is_empty() {
        return live(args, headers, agent).await;
    }
    let live_ends = [
        &args.from_endpoint,
        &args.to_endpoint,
        &args.from_pod,
        &args.to_pod,
    ];
    if live_ends.iter().any(|e| e.is_some()) {
        return Err(bad(
            "--from-endpoint/--to-endpoint/--from-pod/--to-pod",
            "endpoints and Pods are explained live: leave out --file (policy files take --from/--to labels)",
        ));
    }
    let mode = enforcement(&args.enforcement)?;
    let policies = read_policies(&args.files)?;
    let mut ids = Identities::with_reserved();
    let cidrs = cidr_identities(&policies);
    add_cidr_identities(&mut ids, &cidrs);
    let end = |labels: &Option<String>, ns: &str, ip: Option<IpAddr>, id, flag: &str| match (
        labels, ip,
    ) {
        (Some(l), _) => end_of_labels(l, ns, id),
        (None, Some(ip)) => {
            let id = explain::identity_of_ip(ip, &cidrs);
            Ok((id, ids.get(id).cloned().unwrap_or_default()))
        }
        (None, None) => Err(bad(
            flag,
            "each end needs labels (or an address with --from-ip/--to-ip)",
        )),
    };
    let source = end(
        &args.from,
        &args.from_namespace,
        args.from_ip,
        SOURCE_ID,
        "--from",
    )?;
    let mut destination = end(
        &args.to,
        &args.to_namespace,
        args.to_ip,
        DESTINATION_ID,
        "--to",
    )?;
    // One label set is one identity.
    if destination.1 == source.1 {
        destination.0 = source.0;
    }
    for (id, labels) in [&source, &destination] {
        if ids.get(*id).is_none() {
            ids.insert(*id, labels.clone());
        }
    }
    let request = args.method.as_ref().map(|method| explain::RequestSpec {
        method: method.clone(),
        path: args.path.clone(),
        host: args.host.clone(),
        headers,
    });
    explain::report(
        &policies,
        &ids,
        (source.0, &source.1),
        (destination.0, &destination.1),
        &args.protocol,
        args.port,
        request.as_ref(),
        mode,
    )
    .map_err(|e| bad("--protocol", e))
}

/// Live mode: the agent of this node explains with what it enforces.
async fn live(
    args: &ExplainArgs,
    headers: Vec<(String, String)>,
    agent: &crate::agent::Agent,
) -> Result<ExplainReport, CliError> {
    let end = |endpoint: &Option<String>,
               pod: &Option<String>,
               ip: Option<IpAddr>,
               labels: &Option<String>,
               flag: &str| {
        match (endpoint, pod, ip) {
            (Some(e), _, _) => Ok(e.clone()),
            (None, Some(p), _) => Ok(format!("pod:{p}")),
            (None, None, Some(ip)) => Ok(ip.to_string()),
            (None, None, None) if labels.is_some() => Err(bad(
                flag,
                "labels are explained offline: give the policy files with --file (live mode takes an endpoint, a Pod or an address)",
            )),
            (None, None, None) => Err(bad(flag, "each end needs an endpoint, a Pod or an address")),
        }
    };
    let request = axoneme_api::ExplainRequest {
        from: end(
            &args.from_endpoint,
            &args.from_pod,
            args.from_ip,
            &args.from,
            "--from-endpoint",
        )?,
        to: end(
            &args.to_endpoint,
            &args.to_pod,
            args.to_ip,
            &args.to,
            "--to-endpoint",
        )?,
        protocol: args.protocol.clone(),
        port: args.port,
        method: args.method.clone(),
        path: args.path.clone(),
        host: args.host.clone(),
        headers,
    };
    crate::agent::explain(agent, &request).await
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
        for d in &self.datapath {
            out.push_str(&format!(
                "  datapath ({} of {}): {}{}{}\n",
                d.direction,
                d.endpoint,
                d.verdict,
                if d.agrees {
                    ", as explained"
                } else {
                    " — DISAGREES with the explanation: a bug, please report it"
                },
                if d.audit && d.verdict == "denied" {
                    "; the endpoint is in policy audit mode: the flow is let through and reported as `audit`"
                } else {
                    ""
                }
            ));
        }
        out
    }
}
