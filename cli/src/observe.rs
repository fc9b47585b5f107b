//! `axoneme observe` (flows from the agent's Hubble API, with Hubble's
//! filters) and `axoneme monitor` (a live stream of datapath and L7
//! events, like `cilium monitor`). Both talk gRPC to the agent's Hubble
//! socket; filters are checked here first, so bad input fails before any
//! connection.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axoneme_hubble::filter::Filters;
use axoneme_hubble::flow::{
    layer4, layer7, DropReason, Endpoint, EventTypeFilter, Flow, FlowFilter, FlowType,
    TraceObservationPoint, TrafficDirection, Verdict,
};
use axoneme_hubble::message_type;
use axoneme_hubble::observer::get_flows_response::ResponseTypes;
use axoneme_hubble::observer::{GetFlowsRequest, GetFlowsResponse};

use crate::args::{MonitorArgs, ObserveArgs};
use crate::error::CliError;
use crate::output::{OutputFormat, Table};

/// Where the Hubble socket is: the flag, or `hubble.sock` beside the
/// agent's API socket (where the agent puts it by default).
pub fn socket(flag: Option<&Path>, agent_socket: &Path) -> PathBuf {
    flag.map(Path::to_path_buf)
        .unwrap_or_else(|| axoneme_hubble::client::socket_beside(agent_socket))
}

fn invalid(what: &'static str, value: &str, reason: impl ToString) -> CliError {
    CliError::InvalidName {
        what,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// `[namespace/]name` with Hubble's CLI default namespace.
fn pod_ref(p: &str) -> String {
    if p.contains('/') {
        p.to_string()
    } else {
        format!("default/{p}")
    }
}

/// `5m` (that long ago) or an RFC 3339 time.
fn time_arg(flag: &'static str, v: &str) -> Result<axoneme_hubble::Timestamp, CliError> {
    let t = match humantime::parse_duration(v) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| invalid(flag, v, "too far back"))?,
        Err(_) => humantime::parse_rfc3339_weak(v)
            .map_err(|_| invalid(flag, v, "want a duration ago (5m) or an RFC 3339 time"))?,
    };
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Ok(axoneme_hubble::timestamp_ms(ms))
}

fn verdict_arg(v: &str) -> Result<i32, CliError> {
    Verdict::from_str_name(&v.to_ascii_uppercase())
        .filter(|v| *v != Verdict::Unknown)
        .map(|v| v as i32)
        .ok_or_else(|| {
            invalid(
                "verdict",
                v,
                "known: FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED",
            )
        })
}

fn event_types(types: &[String]) -> Result<Vec<EventTypeFilter>, CliError> {
    types
        .iter()
        .map(|t| {
            message_type::by_name(t)
                .map(|ty| EventTypeFilter {
                    r#type: ty,
                    match_sub_type: false,
                    sub_type: 0,
                })
                .ok_or_else(|| {
                    invalid(
                        "type",
                        t,
                        format!("known: {}", message_type::NAMES.join(", ")),
                    )
                })
        })
        .collect()
}

/// The request `observe`'s flags stand for. One-sided flags (`--from-*`,
/// `--to-*`) and the others go into one filter; a flag for either side
/// (`--pod`, `--label`, `--ip`, `--identity`, `--port`) makes two: the
/// flows where it matches the source, and those where it matches the
/// destination, as Hubble's CLI does.
pub fn request(a: &ObserveArgs) -> Result<GetFlowsRequest, CliError> {
    let mut common = FlowFilter {
        source_pod: a.from_pod.iter().map(|p| pod_ref(p)).collect(),
        destination_pod: a.to_pod.iter().map(|p| pod_ref(p)).collect(),
        source_label: a.from_label.clone(),
        destination_label: a.to_label.clone(),
        source_ip: a.from_ip.clone(),
        destination_ip: a.to_ip.clone(),
        source_identity: a.from_identity.clone(),
        destination_identity: a.to_identity.clone(),
        source_port: a.from_port.clone(),
        destination_port: a.to_port.clone(),
        protocol: a.protocol.clone(),
        http_method: a.http_method.clone(),
        http_path: a.http_path.clone(),
        http_status_code: a.http_status.clone(),
        node_name: a.node_name.clone(),
        event_type: event_types(&a.types)?,
        ..Default::default()
    };
    for v in &a.verdict {
        common.verdict.push(verdict_arg(v)?);
    }
    for d in &a.traffic_direction {
        let dir = TrafficDirection::from_str_name(&d.to_ascii_uppercase())
            .filter(|d| *d != TrafficDirection::Unknown)
            .ok_or_else(|| invalid("traffic direction", d, "known: ingress, egress"))?;
        common.traffic_direction.push(dir as i32);
    }
    let either = !(a.pod.is_empty()
        && a.label.is_empty()
        && a.ip.is_empty()
        && a.identity.is_empty()
        && a.port.is_empty());
    let whitelist = if either {
        let mut from = common.clone();
        from.source_pod.extend(a.pod.iter().map(|p| pod_ref(p)));
        from.source_label.extend(a.label.iter().cloned());
        from.source_ip.extend(a.ip.iter().cloned());
        from.source_identity.extend(a.identity.iter().copied());
        from.source_port.extend(a.port.iter().cloned());
        let mut to = common;
        to.destination_pod.extend(a.pod.iter().map(|p| pod_ref(p)));
        to.destination_label.extend(a.label.iter().cloned());
        to.destination_ip.extend(a.ip.iter().cloned());
        to.destination_identity.extend(a.identity.iter().copied());
        to.destination_port.extend(a.port.iter().cloned());
        vec![from, to]
    } else if common == FlowFilter::default() {
        Vec::new()
    } else {
        vec![common]
    };
    // Checked here so bad input fails before connecting, naming the field.
    Filters::new(&whitelist, &[])?;
    let since = a
        .since
        .as_deref()
        .map(|v| time_arg("--since", v))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|v| time_arg("--until", v))
        .transpose()?;
    let (number, first) = match (a.first, a.last) {
        (Some(n), _) => (n, true),
        (None, Some(n)) => (n, false),
        // Hubble's CLI default: the last 20, unless following or a window.
        (None, None) if !a.follow && since.is_none() && until.is_none() => (20, false),
        (None, None) => (0, false),
    };
    if first && a.follow {
        return Err(invalid(
            "flag",
            "--first",
            "cannot be combined with --follow",
        ));
    }
    Ok(GetFlowsRequest {
        number,
        first,
        follow: a.follow,
        blacklist: Vec::new(),
        whitelist,
        since,
        until,
    })
}

/// `monitor`'s request: following, of the chosen event types, related to
/// the chosen pods (as source or destination).
pub fn monitor_request(a: &MonitorArgs) -> Result<GetFlowsRequest, CliError> {
    let base = FlowFilter {
        event_type: event_types(&a.types)?,
        ..Default::default()
    };
    let whitelist = if a.related_to.is_empty() {
        if base == FlowFilter::default() {
            Vec::new()
        } else {
            vec![base]
        }
    } else {
        let pods: Vec<String> = a.related_to.iter().map(|p| pod_ref(p)).collect();
        vec![
            FlowFilter {
                source_pod: pods.clone(),
                ..base.clone()
            },
            FlowFilter {
                destination_pod: pods,
                ..base
            },
        ]
    };
    Filters::new(&whitelist, &[])?;
    Ok(GetFlowsRequest {
        follow: true,
        whitelist,
        ..Default::default()
    })
}

fn hubble_error(path: &Path, status: &tonic::Status) -> CliError {
    CliError::Hubble {
        path: path.display().to_string(),
        message: status.message().to_string(),
        invalid: status.code() == tonic::Code::InvalidArgument,
    }
}

/// Sends `req` and hands every response to `each`; returns when the
/// stream ends. The connection and the first answer are bounded by
/// `timeout`; a followed stream is not.
pub async fn stream(
    path: &Path,
    timeout: Duration,
    req: GetFlowsRequest,
    mut each: impl FnMut(GetFlowsResponse) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let unavailable = |message: String| CliError::Hubble {
        path: path.display().to_string(),
        message,
        invalid: false,
    };
    let follow = req.follow;
    let open = async {
        let mut client = axoneme_hubble::client::connect(path, timeout)
            .await
            .map_err(|e| unavailable(crate::error_line(&e)))?;
        client
            .get_flows(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| hubble_error(path, &s))
    };
    let mut responses = tokio::time::timeout(timeout, open).await.map_err(|_| {
        CliError::Deadline(timeout, format!("the Hubble API at {}", path.display()))
    })??;
    loop {
        let next = if follow {
            responses.message().await
        } else {
            tokio::time::timeout(timeout, responses.message())
                .await
                .map_err(|_| {
                    CliError::Deadline(timeout, format!("the Hubble API at {}", path.display()))
                })?
        };
        match next {
            Ok(Some(r)) => each(r)?,
            Ok(None) => return Ok(()),
            Err(s) => return Err(hubble_error(path, &s)),
        }
    }
}

/// Writes one line to stdout at once (followers read it live).
pub fn print_line(line: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // `| head` closed the pipe: stop quietly.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(CliError::Encode(format!("writing to stdout: {e}"))),
    }
}

fn json(r: &GetFlowsResponse) -> Result<String, CliError> {
    serde_json::to_string(r).map_err(|e| CliError::Encode(e.to_string()))
}

fn time_text(f: &Flow) -> String {
    f.time
        .as_ref()
        .map(|t| {
            let ms = axoneme_hubble::timestamp_to_ms(t);
            humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        })
        .unwrap_or_default()
}

fn ports(f: &Flow) -> (Option<u32>, Option<u32>) {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => (Some(t.source_port), Some(t.destination_port)),
        Some(layer4::Protocol::Udp(u)) => (Some(u.source_port), Some(u.destination_port)),
        Some(layer4::Protocol::Sctp(s)) => (Some(s.source_port), Some(s.destination_port)),
        _ => (None, None),
    }
}

/// `ns/pod:port (ID:n)`, or the address when the end is not a pod.
fn end(ep: Option<&Endpoint>, ip: &str, port: Option<u32>) -> String {
    let name = match ep {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        _ => ip.to_string(),
    };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let id = ep
        .map(|e| format!(" (ID:{})", e.identity))
        .unwrap_or_default();
    format!("{name}{port}{id}")
}

fn match_name(m: u32) -> &'static str {
    match m {
        1 => "L3-Only",
        2 => "L3-L4",
        3 => "L4-Only",
        4 => "all",
        _ => "none",
    }
}

/// Hubble's TYPE column: `drop`, `to-endpoint`, `policy-verdict:L3-L4
/// INGRESS`, `http-response`.
fn type_text(f: &Flow) -> String {
    if f.r#type == FlowType::L7 as i32 {
        return "http-response".into();
    }
    let dir = TrafficDirection::try_from(f.traffic_direction)
        .map(|d| d.as_str_name())
        .unwrap_or("");
    match f.event_type.as_ref().map(|e| e.r#type) {
        Some(message_type::DROP) => "drop".into(),
        Some(message_type::TRACE) => trace_point_name(f).into(),
        Some(message_type::POLICY_VERDICT) => {
            format!("policy-verdict:{} {dir}", match_name(f.policy_match_type))
        }
        Some(t) => format!("event-{t}"),
        None => String::new(),
    }
}

/// A trace's observation point as Cilium's monitor names it.
fn trace_point_name(f: &Flow) -> &'static str {
    match TraceObservationPoint::try_from(f.trace_observation_point) {
        Ok(TraceObservationPoint::ToEndpoint) => "to-endpoint",
        Ok(TraceObservationPoint::ToProxy) => "to-proxy",
        Ok(TraceObservationPoint::FromEndpoint) => "from-endpoint",
        Ok(TraceObservationPoint::ToStack) => "to-stack",
        _ => "trace",
    }
}

fn verdict_text(f: &Flow) -> &'static str {
    Verdict::try_from(f.verdict).map_or("", |v| v.as_str_name())
}

fn ips(f: &Flow) -> (&str, &str) {
    f.ip.as_ref()
        .map_or(("", ""), |ip| (ip.source.as_str(), ip.destination.as_str()))
}

/// One flow on one line (`-o compact`).
pub fn compact(f: &Flow) -> String {
    let (sip, dip) = ips(f);
    let (sp, dp) = ports(f);
    format!(
        "{} [{}]: {} -> {} {} {} ({})",
        time_text(f),
        f.node_name,
        end(f.source.as_ref(), sip, sp),
        end(f.destination.as_ref(), dip, dp),
        type_text(f),
        verdict_text(f),
        f.summary
    )
}

fn table_row(f: &Flow) -> Vec<String> {
    let (sip, dip) = ips(f);
    let (sp, dp) = ports(f);
    vec![
        time_text(f),
        f.node_name.clone(),
        end(f.source.as_ref(), sip, sp),
        end(f.destination.as_ref(), dip, dp),
        type_text(f),
        verdict_text(f).to_string(),
        f.summary.clone(),
    ]
}

const HEADER: [&str; 7] = [
    "TIMESTAMP",
    "NODE",
    "SOURCE",
    "DESTINATION",
    "TYPE",
    "VERDICT",
    "SUMMARY",
];

fn lost_text(r: &GetFlowsResponse) -> Option<String> {
    match &r.response_types {
        Some(ResponseTypes::LostEvents(l)) => Some(format!(
            "EVENTS LOST: {} {}",
            l.num_events_lost,
            axoneme_hubble::flow::LostEventSource::try_from(l.source)
                .map_or("", |s| s.as_str_name())
        )),
        _ => None,
    }
}

/// Runs `observe`. Streams (`--follow`) print as flows arrive; otherwise
/// the flows come back as the report's text (a table is aligned).
pub async fn observe(
    a: &ObserveArgs,
    output: OutputFormat,
    agent_socket: &Path,
    timeout: Duration,
) -> Result<String, CliError> {
    if output == OutputFormat::Yaml {
        return Err(invalid(
            "output",
            "yaml",
            "observe prints table, compact or json",
        ));
    }
    let req = request(a)?;
    let path = socket(a.hubble_socket.as_deref(), agent_socket);
    let follow = req.follow;
    let mut table = Table::new(&HEADER);
    let mut text = String::new();
    stream(&path, timeout, req, |r| {
        let line = match (output, &r.response_types) {
            (OutputFormat::Json, _) => Some(json(&r)?),
            (_, Some(ResponseTypes::Flow(f))) => match output {
                OutputFormat::Compact => Some(compact(f)),
                _ if follow => Some(table_row(f).join("   ")),
                _ => {
                    table.row(table_row(f));
                    None
                }
            },
            _ => lost_text(&r),
        };
        if let Some(line) = line {
            if follow {
                print_line(&line)?;
            } else {
                text.push_str(&line);
                text.push('\n');
            }
        }
        Ok(())
    })
    .await?;
    if output == OutputFormat::Table && !follow {
        text = table.to_string() + &text;
    }
    Ok(text)
}

/// One event as `cilium monitor` shows it.
pub fn monitor_line(f: &Flow) -> String {
    let (sip, dip) = ips(f);
    let (sp, dp) = ports(f);
    let port = |p: Option<u32>| p.map(|p| format!(":{p}")).unwrap_or_default();
    let id = |e: Option<&Endpoint>| e.map_or(0, |e| e.identity);
    let ids = format!(
        "identity {}->{}",
        id(f.source.as_ref()),
        id(f.destination.as_ref())
    );
    let addrs = format!("{sip}{} -> {dip}{}", port(sp), port(dp));
    if let Some(layer7::Record::Http(h)) = f.l7.as_ref().and_then(|l| l.record.as_ref()) {
        return format!(
            "-> http {} {ids}: {addrs} {} {} => {}",
            verdict_text(f),
            h.method,
            h.url,
            h.code
        );
    }
    let ifindex = f.interface.as_ref().map_or(0, |i| i.index);
    match f.event_type.as_ref().map(|e| e.r#type) {
        Some(message_type::DROP) => format!(
            "xx drop ({}) ifindex {ifindex} {ids}: {addrs}",
            DropReason::try_from(f.drop_reason_desc).map_or("unknown", |r| r.as_str_name())
        ),
        Some(message_type::TRACE) => format!(
            "{} ifindex {ifindex} {ids} state new: {addrs}",
            match trace_point_name(f) {
                "to-proxy" => "-> proxy",
                "from-endpoint" => "<- endpoint",
                _ => "-> endpoint",
            }
        ),
        _ => format!(
            "Policy verdict log: ifindex {ifindex} {}, action {}, match {}, {ids}: {addrs}",
            TrafficDirection::try_from(f.traffic_direction).map_or("", |d| d.as_str_name()),
            match Verdict::try_from(f.verdict) {
                Ok(Verdict::Forwarded) => "allow",
                Ok(Verdict::Redirected) => "redirect",
                _ => "deny",
            },
            match_name(f.policy_match_type)
        ),
    }
}

/// Runs `monitor` until the agent ends the stream.
pub async fn monitor(
    a: &MonitorArgs,
    output: OutputFormat,
    agent_socket: &Path,
    timeout: Duration,
) -> Result<(), CliError> {
    if !matches!(output, OutputFormat::Table | OutputFormat::Json) {
        return Err(invalid(
            "output",
            "yaml/compact",
            "monitor prints text (the default) or json",
        ));
    }
    let req = monitor_request(a)?;
    let path = socket(a.hubble_socket.as_deref(), agent_socket);
    stream(&path, timeout, req, |r| {
        let line = match (output, &r.response_types) {
            (OutputFormat::Json, _) => json(&r)?,
            (_, Some(ResponseTypes::Flow(f))) => monitor_line(f),
            _ => lost_text(&r).unwrap_or_default(),
        };
        print_line(&line)
    })
    .await
}

#[cfg(test)]
mod tests;
