//! `axoneme status`: etcd members, operator leadership, identity count.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axoneme_identity::LeaderRecord;
use axoneme_kvstore::{KeyValue, KvError, MemberHealth};
use serde::Serialize;

use crate::error::error_line;
use crate::output::{or_dash, Render, Table};
use crate::Ctx;

/// The whole status; `ok` only if every component is.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub ok: bool,
    pub kvstore: KvStoreStatus,
    pub operator: OperatorStatus,
    pub identities: IdentitiesStatus,
    /// This host's agent, when it has one (its socket exists).
    pub agent: AgentPart,
    /// Whether the human form lists every member.
    #[serde(skip)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct KvStoreStatus {
    pub ok: bool,
    pub message: String,
    pub healthy: usize,
    pub total: usize,
    /// Endpoint of the member that leads raft, if it is a configured one.
    pub leader: Option<String>,
    pub members: Vec<MemberHealth>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorStatus {
    pub ok: bool,
    pub message: String,
    /// The leading replica.
    pub leader: Option<String>,
    /// Unix milliseconds when it took leadership.
    pub since_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentitiesStatus {
    pub ok: bool,
    pub message: String,
    pub allocated: Option<i64>,
}

/// The agent's part of the status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPart {
    pub ok: bool,
    pub message: String,
    /// The agent's own report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<axoneme_api::Status>,
}

/// Asks the agent at `socket`. No socket: no agent on this host, which is
/// no failure (a control-plane host); a socket that does not answer is.
pub async fn agent_part(agent: &crate::agent::Agent) -> AgentPart {
    let socket = &agent.socket;
    if !socket.exists() {
        return AgentPart {
            ok: true,
            message: format!("no agent on this host (no socket at {})", socket.display()),
            status: None,
        };
    }
    match crate::agent::status(agent).await {
        Ok(st) => {
            let failing: Vec<String> = st
                .components
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.message))
                .collect();
            AgentPart {
                ok: st.ok,
                message: if failing.is_empty() {
                    format!(
                        "node {}: {} endpoints, {} identities, {} policies (revision {}), programs on {} interfaces",
                        st.node,
                        st.endpoints,
                        st.identities,
                        st.policies,
                        st.policy_revision,
                        st.programs_attached
                    )
                } else {
                    format!("node {}: {}", st.node, failing.join("; "))
                },
                status: Some(st),
            }
        }
        Err(e) => AgentPart {
            ok: false,
            message: e.to_string(),
            status: None,
        },
    }
}

/// `status --brief`: the agent alone, within `deadline`. Unlike the full
/// status, a host without an agent socket is a failure here.
pub async fn brief(agent: &crate::agent::Agent, deadline: Duration) -> AgentPart {
    match tokio::time::timeout(deadline, agent_part(agent)).await {
        Ok(part) if part.status.is_some() || !part.ok => part,
        Ok(part) => AgentPart { ok: false, ..part },
        Err(_) => AgentPart {
            ok: false,
            message: format!("no answer within {deadline:?} (the agent's API)"),
            status: None,
        },
    }
}

impl Render for AgentPart {
    fn human(&self) -> String {
        if self.ok {
            "OK".into()
        } else {
            self.message.clone()
        }
    }
}

const NOT_CHECKED: &str = "not checked: no etcd member is reachable";

/// Judges the members' health: OK while a majority of the configured
/// members is healthy (has a raft leader).
pub fn kvstore_status(members: Vec<MemberHealth>) -> KvStoreStatus {
    let total = members.len();
    let healthy = members.iter().filter(|m| m.healthy).count();
    let leader = members
        .iter()
        .find(|m| m.is_leader)
        .map(|m| m.endpoint.clone());
    let ok = total > 0 && healthy * 2 > total;
    let mut message = format!("{healthy}/{total} members healthy");
    match (&leader, healthy) {
        (Some(l), _) => message.push_str(&format!(", raft leader {l}")),
        (None, 0) => {}
        (None, _) => message.push_str(", raft leader is not a configured member"),
    }
    for m in members.iter().filter(|m| !m.healthy) {
        let error = m.error.as_deref().unwrap_or("unhealthy");
        message.push_str(&format!("; {}: {error}", m.endpoint));
    }
    KvStoreStatus {
        ok,
        message,
        healthy,
        total,
        leader,
        members,
    }
}

/// Judges the operator leader key.
pub fn operator_status(leader: Result<Option<KeyValue>, KvError>, now_ms: u64) -> OperatorStatus {
    let fail = |message: String| OperatorStatus {
        ok: false,
        message,
        leader: None,
        since_ms: None,
    };
    match leader {
        Ok(None) => fail("no leader".into()),
        Ok(Some(kv)) => match serde_json::from_slice::<LeaderRecord>(&kv.value) {
            Ok(rec) => OperatorStatus {
                ok: true,
                message: format!(
                    "leader {} (for {})",
                    rec.holder,
                    format_age(now_ms.saturating_sub(rec.since_ms))
                ),
                leader: Some(rec.holder),
                since_ms: Some(rec.since_ms),
            },
            Err(e) => fail(format!("leader key is unreadable: {e}")),
        },
        Err(e) => fail(format!("reading the leader key: {}", error_line(&e))),
    }
}

pub fn identities_status(count: Result<i64, KvError>) -> IdentitiesStatus {
    match count {
        Ok(n) => IdentitiesStatus {
            ok: true,
            message: format!("{n} allocated"),
            allocated: Some(n),
        },
        Err(e) => IdentitiesStatus {
            ok: false,
            message: format!("counting identities: {}", error_line(&e)),
            allocated: None,
        },
    }
}

/// `90061000` ms -> `1d1h`; two units at most.
pub fn format_age(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// How long `status` waits for any one component: it answers with what it
/// knows within this, and marks what did not answer.
pub const STATUS_DEADLINE: Duration = Duration::from_secs(1);

/// Checks every component, all at once, each within `deadline`; never
/// fails as a whole.
pub async fn check(
    ctx: &Ctx,
    agent: &crate::agent::Agent,
    verbose: bool,
    deadline: Duration,
) -> StatusReport {
    let late = |what: &str| format!("no answer within {deadline:?} ({what})");
    let until = tokio::time::Instant::now() + deadline;
    // etcd's part: the members first (quick when they answer); the leader
    // key and the count only when a member is healthy, in what is left.
    let kv_part = async {
        let members = tokio::time::timeout_at(until, ctx.kv.member_health())
            .await
            .unwrap_or_else(|_| {
                ctx.kv
                    .endpoints()
                    .into_iter()
                    .map(|e| MemberHealth::failed(e, late("etcd status")))
                    .collect()
            });
        let kvstore = kvstore_status(members);
        if kvstore.healthy == 0 {
            return (
                kvstore,
                operator_status(Ok(None), 0).with_message(NOT_CHECKED),
                identities_status(Ok(0)).with_message(NOT_CHECKED),
            );
        }
        let (leader_key, ids_prefix) = (
            ctx.layout.operator_leader(),
            ctx.layout.identity_ids_prefix(),
        );
        let (leader, count) = tokio::join!(
            tokio::time::timeout_at(until, ctx.kv.get(&leader_key)),
            tokio::time::timeout_at(until, ctx.kv.count_prefix(&ids_prefix)),
        );
        let operator = match leader {
            Ok(leader) => operator_status(leader, now_ms()),
            Err(_) => operator_status(Ok(None), 0).with_message(&late("the leader key")),
        };
        let identities = match count {
            Ok(count) => identities_status(count),
            Err(_) => identities_status(Ok(0)).with_message(&late("counting identities")),
        };
        (kvstore, operator, identities)
    };
    let (agent, (kvstore, operator, identities)) =
        tokio::join!(tokio::time::timeout_at(until, agent_part(agent)), kv_part);
    let agent = agent.unwrap_or_else(|_| AgentPart {
        ok: false,
        message: late("the agent's API"),
        status: None,
    });
    StatusReport {
        ok: kvstore.ok && operator.ok && identities.ok && agent.ok,
        kvstore,
        operator,
        identities,
        agent,
        verbose,
    }
}

impl OperatorStatus {
    fn with_message(self, message: &str) -> Self {
        OperatorStatus {
            ok: false,
            message: message.into(),
            ..self
        }
    }
}

impl IdentitiesStatus {
    fn with_message(self, message: &str) -> Self {
        IdentitiesStatus {
            ok: false,
            message: message.into(),
            allocated: None,
        }
    }
}

/// Fill at which a map is worth a warning: a full map refuses new entries.
const MAP_WARNING_PERCENT: u64 = 90;

/// A line for each BPF map at least [`MAP_WARNING_PERCENT`] full: what
/// happens when it is full, and the flag that sizes it.
pub fn map_warnings(maps: &[axoneme_api::MapStatus]) -> Vec<String> {
    maps.iter()
        .filter(|m| {
            m.max_entries > 0 && m.entries * 100 >= MAP_WARNING_PERCENT * u64::from(m.max_entries)
        })
        .map(|m| {
            let (when_full, flag) = match m.name.as_str() {
                "policy" => (
                    "new policy entries are refused, their flows denied",
                    Some("--bpf-policy-max"),
                ),
                "ipcache" => (
                    "new addresses are refused (seen as world)",
                    Some("--bpf-ipcache-max"),
                ),
                "ct4" | "ct6" => (
                    "the oldest flows are evicted and judged again",
                    Some("--bpf-ct-max"),
                ),
                "endpoints" | "endpoint-addresses" => (
                    "new pods are refused (their CNI ADD fails)",
                    Some("--bpf-endpoints-max"),
                ),
                _ => ("new entries are refused", None),
            };
            format!(
                "BPF map {} is {}% full ({} of {}): when full, {when_full}{}",
                m.name,
                m.entries * 100 / u64::from(m.max_entries),
                m.entries,
                m.max_entries,
                flag.map(|f| format!("; raise {f}")).unwrap_or_default()
            )
        })
        .collect()
}

fn ok_cell(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "FAIL"
    }
}

impl Render for StatusReport {
    fn human(&self) -> String {
        let mut t = Table::headerless();
        t.row(["KVStore:", ok_cell(self.kvstore.ok), &self.kvstore.message]);
        t.row([
            "Operator:",
            ok_cell(self.operator.ok),
            &self.operator.message,
        ]);
        t.row([
            "Identities:",
            ok_cell(self.identities.ok),
            &self.identities.message,
        ]);
        t.row(["Agent:", ok_cell(self.agent.ok), &self.agent.message]);
        if let Some(st) = &self.agent.status {
            for w in map_warnings(&st.maps) {
                t.row(["Warning:", "", &w]);
            }
        }
        let mut out = t.to_string();
        if let (true, Some(st)) = (self.verbose, &self.agent.status) {
            let mut comps = Table::new(&["COMPONENT", "STATUS", "MESSAGE"]).indent(2);
            for c in &st.components {
                comps.row([c.name.clone(), ok_cell(c.ok).into(), c.message.clone()]);
            }
            out.push_str("\nagent components:\n");
            out.push_str(&comps.to_string());
            let mut maps = Table::new(&["MAP", "ENTRIES", "MAX", "PRESSURE"]).indent(2);
            for m in &st.maps {
                maps.row([
                    m.name.clone(),
                    m.entries.to_string(),
                    m.max_entries.to_string(),
                    format!(
                        "{:.2}%",
                        m.entries as f64 * 100.0 / f64::from(m.max_entries.max(1))
                    ),
                ]);
            }
            out.push_str("\nBPF maps:\n");
            out.push_str(&maps.to_string());
            if !st.sync_units.is_empty() {
                let mut units = Table::new(&[
                    "SYNC UNIT",
                    "STATUS",
                    "FAILURES (NOW/ALL)",
                    "CHANGES",
                    "LAST ERROR",
                ])
                .indent(2);
                for u in &st.sync_units {
                    units.row([
                        u.name.clone(),
                        ok_cell(u.ok).into(),
                        format!("{}/{}", u.consecutive_failures, u.failures_total),
                        u.changes_total.to_string(),
                        u.last_error.clone().unwrap_or_default(),
                    ]);
                }
                out.push_str("\ndatapath sync units:\n");
                out.push_str(&units.to_string());
            }
        }
        if self.verbose {
            let mut members = Table::new(&[
                "ENDPOINT",
                "HEALTHY",
                "LEADER",
                "MEMBER ID",
                "RAFT TERM",
                "ERROR",
            ])
            .indent(2);
            for m in &self.kvstore.members {
                members.row([
                    m.endpoint.clone(),
                    if m.healthy { "yes" } else { "no" }.into(),
                    if m.is_leader { "yes" } else { "no" }.into(),
                    or_dash(m.member_id.as_ref()),
                    or_dash(m.raft_term),
                    or_dash(m.error.as_ref()),
                ]);
            }
            out.push_str("\netcd members:\n");
            out.push_str(&members.to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(endpoint: &str, healthy: bool, leader: bool) -> MemberHealth {
        MemberHealth {
            endpoint: endpoint.into(),
            healthy,
            member_id: healthy.then(|| "abc".into()),
            is_leader: leader,
            raft_term: healthy.then_some(2),
            error: (!healthy).then(|| "connection refused".into()),
        }
    }

    #[test]
    fn kvstore_needs_a_majority() {
        let s = kvstore_status(vec![
            member("http://a", true, false),
            member("http://b", true, true),
            member("http://c", false, false),
        ]);
        assert!(s.ok);
        assert_eq!(
            s.message,
            "2/3 members healthy, raft leader http://b; http://c: connection refused"
        );
        assert_eq!(s.leader.as_deref(), Some("http://b"));
        let s = kvstore_status(vec![
            member("http://a", true, false),
            member("http://c", false, false),
        ]);
        assert!(!s.ok, "1/2 is no majority");
        assert!(s.message.contains("raft leader is not a configured member"));
        let s = kvstore_status(vec![member("http://a", false, false)]);
        assert!(!s.ok);
        assert_eq!(
            s.message,
            "0/1 members healthy; http://a: connection refused"
        );
        assert!(!kvstore_status(vec![]).ok);
    }

    #[test]
    fn operator_leader() {
        let kv = |value: &[u8]| KeyValue {
            key: "k".into(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 7,
        };
        let rec = serde_json::to_vec(&LeaderRecord {
            holder: "op0".into(),
            since_ms: 1_000,
        })
        .unwrap();
        let s = operator_status(Ok(Some(kv(&rec))), 66_000);
        assert!(s.ok);
        assert_eq!(s.message, "leader op0 (for 1m5s)");
        let s = operator_status(Ok(None), 0);
        assert_eq!((s.ok, s.message.as_str()), (false, "no leader"));
        assert!(!operator_status(Ok(Some(kv(b"?"))), 0).ok);
        let s = operator_status(Err(KvError::NoEndpoints), 0);
        assert!(!s.ok && s.message.contains("no etcd endpoints"));
    }

    #[test]
    fn ages() {
        assert_eq!(format_age(999), "0s");
        assert_eq!(format_age(61_000), "1m1s");
        assert_eq!(format_age(3_720_000), "1h2m");
        assert_eq!(format_age(90_061_000), "1d1h");
    }

    #[test]
    fn human_form() {
        let report = StatusReport {
            ok: false,
            kvstore: kvstore_status(vec![member("http://a", true, true)]),
            operator: operator_status(Ok(None), 0),
            identities: identities_status(Ok(3)),
            agent: AgentPart {
                ok: true,
                message: "no agent on this host".into(),
                status: None,
            },
            verbose: true,
        };
        let text = report.human();
        assert!(text.starts_with(
            "KVStore:      OK     1/1 members healthy, raft leader http://a\n\
             Operator:     FAIL   no leader\n\
             Identities:   OK     3 allocated\n"
        ));
        assert!(text.contains("etcd members:\n  ENDPOINT"), "{text}");
        assert!(
            text.contains("  http://a   yes       yes      abc"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["operator"]["ok"], false);
        assert!(!text.contains("Warning:"), "{text}");
        assert_eq!(json["identities"]["allocated"], 3);
        assert_eq!(json["kvstore"]["members"][0]["is_leader"], true);
    }

    #[test]
    fn a_map_nine_tenths_full_is_a_warning_naming_its_flag() {
        let map = |name: &str, entries: u64, max_entries: u32| axoneme_api::MapStatus {
            name: name.into(),
            max_entries,
            entries,
        };
        let w = map_warnings(&[
            map("policy", 3687, 4096),
            map("ipcache", 3686, 4096),
            map("ct4", 10, 10),
            map("endpoints", 0, 0),
        ]);
        assert_eq!(
            w,
            vec![
                "BPF map policy is 90% full (3687 of 4096): when full, new policy entries are refused, their flows denied; raise --bpf-policy-max",
                "BPF map ct4 is 100% full (10 of 10): when full, the oldest flows are evicted and judged again; raise --bpf-ct-max",
            ]
        );
    }
}
