//! Commands answered by the node's agent over its API socket (`bpf ...`,
//! the agent part of `status`) and `node list` (from etcd).

use std::path::PathBuf;
use std::time::Duration;

use axoneme_api::{Client, CtEntry, EventView, IpcacheEntry, PolicyEntry, ServicesView, Status};
use axoneme_identity::{NodeCidrs, NodeRecord};
use serde::Serialize;

use crate::error::CliError;
use crate::output::{or_dash, Render, Table};
use crate::Ctx;

/// The node agent's API socket, and how long a request to it may take.
#[derive(Debug, Clone)]
pub struct Agent {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Agent {
    fn client(&self) -> Client {
        Client::new(&self.socket, self.timeout)
    }
}

fn agent_error(e: axoneme_api::ClientError) -> CliError {
    CliError::Agent(e)
}

/// `endpoint config`: what the datapath now enforces for the endpoint.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConfigured {
    pub endpoint: String,
    pub policy_audit_mode: bool,
}

impl Render for EndpointConfigured {
    fn human(&self) -> String {
        format!(
            "endpoint {}: policy audit mode {} in the datapath\n",
            self.endpoint,
            if self.policy_audit_mode { "on" } else { "off" }
        )
    }
}

/// How often `endpoint config` looks whether the datapath has the change.
const CONFIG_POLL: Duration = Duration::from_millis(20);

/// Sends the endpoint's new options to the agent, then waits (within the
/// command's deadline) until the agent's datapath view shows them.
pub async fn configure_endpoint(
    agent: &Agent,
    args: &crate::args::EndpointConfigArgs,
) -> Result<EndpointConfigured, CliError> {
    let client = agent.client();
    let cfg = axoneme_api::EndpointConfig {
        policy_audit_mode: args.policy_audit_mode,
    };
    let path = format!("/v1/endpoints/{}/config", args.endpoint);
    let _: serde_json::Value = client.post(&path, &cfg).await.map_err(agent_error)?;
    let want = args.policy_audit_mode.unwrap_or_default();
    loop {
        let views: Vec<axoneme_api::EndpointView> =
            client.get("/v1/endpoints").await.map_err(agent_error)?;
        let done = views
            .iter()
            .find(|v| v.name == args.endpoint)
            .is_some_and(|v| v.enforced && v.policy_audit_mode == want);
        if done {
            return Ok(EndpointConfigured {
                endpoint: args.endpoint.clone(),
                policy_audit_mode: want,
            });
        }
        tokio::time::sleep(CONFIG_POLL).await;
    }
}

/// `policy explain` live: the agent's answer.
pub async fn explain(
    agent: &Agent,
    request: &axoneme_api::ExplainRequest,
) -> Result<axoneme_policy::explain::ExplainReport, CliError> {
    agent
        .client()
        .post("/v1/policy/explain", request)
        .await
        .map_err(agent_error)
}

pub async fn status(agent: &Agent) -> Result<Status, CliError> {
    agent.client().get("/v1/status").await.map_err(agent_error)
}

/// `bpf ipcache list`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Ipcache(pub Vec<IpcacheEntry>);

impl Render for Ipcache {
    fn human(&self) -> String {
        let mut t = Table::new(&["PREFIX", "IDENTITY"]);
        for e in &self.0 {
            t.row([e.prefix.clone(), e.identity.to_string()]);
        }
        t.to_string()
    }
}

pub async fn ipcache(agent: &Agent) -> Result<Ipcache, CliError> {
    Ok(Ipcache(
        agent
            .client()
            .get("/v1/bpf/ipcache")
            .await
            .map_err(agent_error)?,
    ))
}

/// `bpf lb list`: the frontends this node's datapath load-balances, and
/// the backends each chooses from.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Lb(pub ServicesView);

impl Render for Lb {
    fn human(&self) -> String {
        let v = &self.0;
        if !v.enabled {
            return "kube-proxy replacement is off on this node: Services are left to kube-proxy\n"
                .into();
        }
        let mut t = Table::new(&["FRONTEND", "SERVICE", "KIND", "BACKEND", "STATE", "SLOT"]);
        for f in &v.frontends {
            if f.backends.is_empty() {
                t.row([
                    f.frontend.clone(),
                    f.service.clone(),
                    f.kind.clone(),
                    "(none: connects refused)".into(),
                    String::new(),
                    String::new(),
                ]);
            }
            for b in &f.backends {
                t.row([
                    f.frontend.clone(),
                    f.service.clone(),
                    f.kind.clone(),
                    b.address.clone(),
                    b.state.clone(),
                    if b.selected { "yes" } else { "no" }.to_string(),
                ]);
            }
        }
        let mut out = t.to_string();
        for m in &v.maps {
            out.push_str(&format!(
                "{}: {}/{} entries\n",
                m.name, m.entries, m.max_entries
            ));
        }
        if let Some(e) = &v.error {
            out.push_str(&format!("last pass failed: {e}\n"));
        }
        for (key, e) in &v.invalid {
            out.push_str(&format!(
                "{key}: does not parse (its last good version stays): {e}\n"
            ));
        }
        for (key, e) in &v.conflicts {
            out.push_str(&format!("{key}: {e}\n"));
        }
        out
    }
}

/// What the node's services unit programmed.
pub async fn services(agent: &Agent) -> Result<ServicesView, CliError> {
    agent
        .client()
        .get("/v1/services")
        .await
        .map_err(agent_error)
}

pub async fn lb(agent: &Agent) -> Result<Lb, CliError> {
    Ok(Lb(services(agent).await?))
}

/// `encrypt status`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Encrypt(pub axoneme_api::EncryptStatus);

/// Whether encryption works as configured: no failing step, the key file
/// taken, a key in common with every node that encrypts.
pub fn encrypt_ok(st: &axoneme_api::EncryptStatus) -> bool {
    st.errors.is_empty() && st.key_error.is_none() && st.peers.values().all(Option::is_some)
}

impl Render for Encrypt {
    fn human(&self) -> String {
        let st = &self.0;
        let spi = |s: Option<u8>| s.map_or("-".to_string(), |s| s.to_string());
        let mode = if !st.enabled {
            "disabled"
        } else if !st.node_encrypts {
            "IPsec, but not on this node (--encryption-node-selector)"
        } else if st.strict {
            "IPsec (strict)"
        } else {
            "IPsec"
        };
        let mut kv = Table::headerless();
        kv.row(["Encryption:", mode]);
        if !st.enabled {
            return kv.to_string();
        }
        let keys: Vec<String> = st.keys.iter().map(u8::to_string).collect();
        kv.row(["Key in use:".to_string(), format!("SPI {}", spi(st.spi))]);
        kv.row([
            "Keys:".to_string(),
            or_dash((!keys.is_empty()).then(|| keys.join(", "))),
        ]);
        kv.row([
            "Key file:".to_string(),
            st.key_file
                .as_ref()
                .map_or("-".to_string(), |p| p.display().to_string()),
        ]);
        kv.row([
            "XFRM:".to_string(),
            format!(
                "{} states in, {} out, {} policies",
                st.states_in, st.states_out, st.policies
            ),
        ]);
        if let Some(e) = &st.key_error {
            kv.row(["Key file error:", e.as_str()]);
        }
        for e in &st.errors {
            kv.row(["Failing:", e.as_str()]);
        }
        let errors: Vec<String> = st
            .xfrm_errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        kv.row([
            "XFRM errors:".to_string(),
            if errors.is_empty() {
                "none".to_string()
            } else {
                errors.join(", ")
            },
        ]);
        let mut nodes = Table::new(&["NODE", "SENT WITH SPI"]);
        for (node, s) in &st.peers {
            nodes.row([
                node.clone(),
                s.map_or("none in common (not sent)".into(), |s| s.to_string()),
            ]);
        }
        format!("{kv}\n{nodes}")
    }
}

pub async fn encrypt(agent: &Agent) -> Result<Encrypt, CliError> {
    Ok(Encrypt(
        agent
            .client()
            .get("/v1/encrypt")
            .await
            .map_err(agent_error)?,
    ))
}

/// `bpf policy get ENDPOINT`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct PolicyMap(pub Vec<PolicyEntry>);

impl Render for PolicyMap {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "DIRECTION",
            "IDENTITY",
            "PROTO",
            "PORTS",
            "VERDICT",
            "PROXY",
            "PACKETS",
            "BYTES",
        ]);
        for e in &self.0 {
            t.row([
                e.direction.clone(),
                if e.identity == 0 {
                    "ANY".to_string()
                } else {
                    e.identity.to_string()
                },
                e.protocol.clone(),
                e.ports.clone(),
                e.verdict.clone(),
                if e.proxy_port == 0 {
                    "-".into()
                } else {
                    e.proxy_port.to_string()
                },
                e.packets.to_string(),
                e.bytes.to_string(),
            ]);
        }
        t.to_string()
    }
}

pub async fn policy(agent: &Agent, endpoint: &str) -> Result<PolicyMap, CliError> {
    if endpoint.is_empty() || endpoint.contains('/') || endpoint.contains(char::is_whitespace) {
        return Err(CliError::InvalidName {
            what: "endpoint",
            value: endpoint.to_string(),
            reason: "give an endpoint name or number (no '/' or spaces)".into(),
        });
    }
    Ok(PolicyMap(
        agent
            .client()
            .get(&format!("/v1/bpf/policy/{endpoint}"))
            .await
            .map_err(agent_error)?,
    ))
}

/// `bpf ct list`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Conntrack(pub Vec<CtEntry>);

impl Render for Conntrack {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "STATE",
            "VIA",
            "EXPIRES",
            "PACKETS",
            "BYTES",
        ]);
        for e in &self.0 {
            t.row([
                e.protocol.clone(),
                e.src.clone(),
                e.dst.clone(),
                e.state.clone(),
                e.via.clone(),
                format!("{}s", e.expires_in_s),
                e.packets.to_string(),
                e.bytes.to_string(),
            ]);
        }
        t.to_string()
    }
}

pub async fn ct(agent: &Agent) -> Result<Conntrack, CliError> {
    Ok(Conntrack(
        agent
            .client()
            .get("/v1/bpf/ct")
            .await
            .map_err(agent_error)?,
    ))
}

/// One node as `node list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    pub addresses: Vec<String>,
    pub pod_cidrs: Vec<String>,
    /// The agent's lease holds its record: false once it has expired.
    pub alive: bool,
    /// Its stored labels (`node label`, or the Node's).
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Nodes(pub Vec<NodeView>);

impl Render for Nodes {
    fn human(&self) -> String {
        let mut t = Table::new(&["NAME", "ADDRESSES", "POD CIDRS", "AGENT", "LABELS"]);
        for n in &self.0 {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            t.row([
                n.name.clone(),
                n.addresses.join(","),
                n.pod_cidrs.join(","),
                if n.alive { "alive" } else { "gone" }.to_string(),
                labels.join(","),
            ]);
        }
        t.to_string()
    }
}

/// Every node that is announced or still holds pod CIDRs.
pub async fn nodes(ctx: &Ctx) -> Result<Nodes, CliError> {
    let kv_err = |what: &str| {
        let what = what.to_string();
        move |source| CliError::Kv { what, source }
    };
    let (records, _) = ctx
        .kv
        .get_prefix(&ctx.layout.nodes_prefix())
        .await
        .map_err(kv_err("listing nodes"))?;
    let (cidrs, _) = ctx
        .kv
        .get_prefix(&ctx.layout.node_cidrs_prefix())
        .await
        .map_err(kv_err("listing node CIDRs"))?;
    let mut out = std::collections::BTreeMap::new();
    for kv in cidrs {
        let Some(name) = kv.key.strip_prefix(&ctx.layout.node_cidrs_prefix()) else {
            continue;
        };
        let c: Option<NodeCidrs> = serde_json::from_slice(&kv.value).ok();
        out.insert(
            name.to_string(),
            NodeView {
                name: name.to_string(),
                addresses: Vec::new(),
                pod_cidrs: c
                    .map(|c| c.pod_cidrs.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                alive: false,
                labels: Default::default(),
            },
        );
    }
    for kv in records {
        let Ok(r) = serde_json::from_slice::<NodeRecord>(&kv.value) else {
            continue;
        };
        let view = out.entry(r.name.clone()).or_insert_with(|| NodeView {
            name: r.name.clone(),
            addresses: Vec::new(),
            pod_cidrs: Vec::new(),
            alive: true,
            labels: Default::default(),
        });
        view.alive = true;
        view.addresses = r.addresses.iter().map(ToString::to_string).collect();
    }
    let (labels, _) = ctx
        .kv
        .get_prefix(&ctx.layout.node_labels_prefix())
        .await
        .map_err(kv_err("listing node labels"))?;
    for kv in labels {
        let Ok(l) = serde_json::from_slice::<axoneme_identity::NodeLabels>(&kv.value) else {
            continue;
        };
        if let Some(view) = out.get_mut(&l.name) {
            view.labels = l.labels;
        }
    }
    Ok(Nodes(out.into_values().collect()))
}

/// What `node delete` did.
#[derive(Debug, Clone, Serialize)]
pub struct NodeDeleted {
    pub name: String,
    /// The node lease revoked (none: the node was not announced).
    pub lease: Option<i64>,
}

impl Render for NodeDeleted {
    fn human(&self) -> String {
        match self.lease {
            Some(lease) => format!(
                "node {} deleted: lease {lease:x} revoked with its node and endpoint records\n",
                self.name
            ),
            None => format!("node {} is not announced; nothing to delete\n", self.name),
        }
    }
}

/// Revokes the node lease that holds a node's record and its endpoints.
pub async fn delete_node(ctx: &Ctx, name: &str) -> Result<NodeDeleted, CliError> {
    let kv_err = |what: String| move |source| CliError::Kv { what, source };
    let record = ctx
        .kv
        .get(&ctx.layout.node(name))
        .await
        .map_err(kv_err(format!("reading node {name}")))?;
    let lease = record.map(|r| r.lease).filter(|l| *l != 0);
    if let Some(lease) = lease {
        ctx.kv
            .lease_revoke(lease)
            .await
            .map_err(kv_err(format!("revoking node {name}'s lease")))?;
    }
    Ok(NodeDeleted {
        name: name.to_string(),
        lease,
    })
}

/// `events`: the agent's most recent datapath events.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Events(pub Vec<EventView>);

impl Render for Events {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "TIME",
            "KIND",
            "REASON / REQUEST",
            "VERDICT",
            "DIR",
            "SOURCE",
            "DESTINATION",
            "PROTO",
            "MATCH",
        ]);
        for e in &self.0 {
            let secs = e.time_ms / 1000;
            let time = format!(
                "{:02}:{:02}:{:02}.{:03}",
                (secs / 3600) % 24,
                (secs / 60) % 60,
                secs % 60,
                e.time_ms % 1000
            );
            let reason = match (&e.http, e.kind.as_str()) {
                (Some(h), _) => format!("{} {} {} -> {}", h.method, h.host, h.path, h.status),
                (None, "drop") => format!("{} ({})", e.reason, e.reason_text),
                _ => "-".into(),
            };
            t.row([
                time,
                e.kind.clone(),
                reason,
                if e.verdict.is_empty() {
                    "-".into()
                } else {
                    e.verdict.clone()
                },
                e.direction.clone(),
                format!("{}:{} (id {})", e.src, e.sport, e.src_identity),
                format!("{}:{} (id {})", e.dst, e.dport, e.dst_identity),
                e.protocol.clone(),
                e.match_type.clone(),
            ]);
        }
        t.to_string()
    }
}

/// The agent's recent events, optionally only of `kind`, at most `last`.
pub async fn events(agent: &Agent, kind: Option<&str>, last: usize) -> Result<Events, CliError> {
    let all: Vec<EventView> = agent
        .client()
        .get("/v1/events")
        .await
        .map_err(agent_error)?;
    let mut picked: Vec<EventView> = all
        .into_iter()
        .filter(|e| kind.is_none_or(|k| e.kind == k))
        .collect();
    let skip = picked.len().saturating_sub(last);
    picked.drain(..skip);
    Ok(Events(picked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> axoneme_api::EncryptStatus {
        axoneme_api::EncryptStatus {
            enabled: true,
            node_encrypts: true,
            strict: true,
            spi: Some(4),
            keys: vec![3, 4],
            key_file: Some("/etc/axoneme/ipsec/keys".into()),
            peers: [("n1".to_string(), Some(4)), ("n2".to_string(), None)].into(),
            states_in: 4,
            states_out: 2,
            policies: 8,
            xfrm_errors: [("XfrmInStateProtoError".to_string(), 2)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn encrypt_status_names_the_key_each_peer_and_the_kernels_errors() {
        let text = Encrypt(status()).human();
        for want in [
            "Encryption:    IPsec (strict)",
            "Key in use:    SPI 4",
            "Keys:          3, 4",
            "XFRM:          4 states in, 2 out, 8 policies",
            "XFRM errors:   XfrmInStateProtoError 2",
            "n1     4",
            "n2     none in common (not sent)",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        // A peer without a key in common fails the command (exit 1).
        assert!(!encrypt_ok(&status()));
        let mut fine = status();
        fine.peers.remove("n2");
        assert!(encrypt_ok(&fine));
        let off = Encrypt(axoneme_api::EncryptStatus::default()).human();
        assert_eq!(off.trim(), "Encryption:   disabled");
    }
}
