//! `policy import`'s lifeline check: a host policy (`nodeSelector`) that
//! would deny a node's traffic with the kvstore gets a warning naming the
//! flow. The agents allow that traffic anyway (their lifelines: a policy
//! must never cut an agent off from what it needs to undo the policy), but
//! the user should know the policy says otherwise.
//!
//! Judged with the reference evaluator over every stored policy, for each
//! node a host policy selects (by its stored labels), towards each of the
//! kvstore's members this command uses (literal addresses; names are not
//! looked up): the node's egress to the member, and, for a member on a
//! node's own address, that node's ingress from each other node.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use axoneme_identity::numeric::NODE_SCOPE;
use axoneme_identity::{NodeLabels, NodeRecord, NumericIdentity, ReservedIdentity};
use axoneme_policy::compile::{add_cidr_identities, cidr_identities, Direction, EnforcementMode};
use axoneme_policy::oracle::{direction_verdict, OracleVerdict};
use axoneme_policy::selector::{node_identity_labels, Identities, Subject};
use axoneme_policy::{Policy, PortNames};
use ipnet::IpNet;

use crate::error::CliError;
use crate::Ctx;

/// One node as host policies see it.
struct Node {
    name: String,
    addresses: Vec<IpAddr>,
    labels: BTreeMap<String, String>,
}

/// The address and port of a kvstore endpoint URL with a literal address.
fn member(url: &str) -> Option<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next()?.parse().ok()
}

/// Warnings for the stored host policies' lifeline flows (empty when no
/// stored policy has a `nodeSelector`).
pub async fn warnings(ctx: &Ctx) -> Result<Vec<String>, CliError> {
    let kv_err = |what: &'static str| {
        move |source| CliError::Kv {
            what: what.to_string(),
            source,
        }
    };
    let (stored, _) = ctx
        .kv
        .get_prefix(&ctx.layout.policies_prefix())
        .await
        .map_err(kv_err("listing policies"))?;
    // Most clusters have no host policy: then nothing is parsed.
    let needle = b"nodeSelector";
    if !stored
        .iter()
        .any(|kv| kv.value.windows(needle.len()).any(|w| w == needle))
    {
        return Ok(Vec::new());
    }
    let policies: Vec<Policy> = stored
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .filter_map(|v: serde_json::Value| {
            axoneme_policy::document::parse_object(&v, "stored").ok()
        })
        .collect();
    let host_rules: Vec<Subject> = policies
        .iter()
        .flat_map(|p| p.rules.iter().map(move |(_, r)| (p, r)))
        .filter_map(|(p, r)| Subject::of(r, p.namespace.as_deref()))
        .filter(Subject::is_host)
        .collect();
    if host_rules.is_empty() {
        return Ok(Vec::new());
    }
    let (records, _) = ctx
        .kv
        .get_prefix(&ctx.layout.nodes_prefix())
        .await
        .map_err(kv_err("listing nodes"))?;
    let (stored_labels, _) = ctx
        .kv
        .get_prefix(&ctx.layout.node_labels_prefix())
        .await
        .map_err(kv_err("listing node labels"))?;
    let mut by_name: BTreeMap<String, BTreeMap<String, String>> = stored_labels
        .iter()
        .filter_map(|kv| serde_json::from_slice::<NodeLabels>(&kv.value).ok())
        .map(|l| (l.name, l.labels))
        .collect();
    let nodes: Vec<Node> = records
        .iter()
        .filter_map(|kv| serde_json::from_slice::<NodeRecord>(&kv.value).ok())
        .map(|r| Node {
            labels: by_name.remove(&r.name).unwrap_or_default(),
            name: r.name,
            addresses: r.addresses,
        })
        .collect();
    let members: Vec<SocketAddr> = ctx
        .kv
        .endpoints()
        .iter()
        .filter_map(|u| member(u))
        .collect();
    Ok(judge(&policies, &nodes, &members))
}

/// The warnings for `members` between `nodes`, by `policies`.
fn judge(policies: &[Policy], nodes: &[Node], members: &[SocketAddr]) -> Vec<String> {
    let host = axoneme_identity::ReservedIdentity::Host.id();
    let cidrs = cidr_identities(policies);
    let mut out = Vec::new();
    for (i, me) in nodes.iter().enumerate() {
        let mine = node_identity_labels(ReservedIdentity::Host, &me.labels);
        // The identities as node `me`'s agent numbers them.
        let mut ids = Identities::with_reserved();
        add_cidr_identities(&mut ids, &cidrs);
        ids.insert(host, mine.clone());
        let mut prefixes: BTreeMap<IpNet, NumericIdentity> = cidrs.clone();
        let mut node_ids = Vec::new();
        for (j, other) in nodes.iter().enumerate() {
            let id = if j == i {
                host
            } else {
                let id = NumericIdentity(NODE_SCOPE | u32::try_from(j).unwrap_or(0));
                ids.insert(
                    id,
                    node_identity_labels(ReservedIdentity::RemoteNode, &other.labels),
                );
                node_ids.push(id);
                id
            };
            prefixes.extend(other.addresses.iter().map(|a| (IpNet::from(*a), id)));
        }
        let selected = policies.iter().any(|p| {
            p.rules
                .iter()
                .any(|(_, r)| Subject::of(r, None).is_some_and(|s| s.is_host() && s.matches(&mine)))
        });
        if !selected {
            continue;
        }
        let denied = |dir, peer, port| {
            matches!(
                direction_verdict(
                    policies,
                    &ids,
                    &mine,
                    &PortNames::default(),
                    dir,
                    peer,
                    6,
                    port,
                    EnforcementMode::Default,
                ),
                OracleVerdict::Deny(_)
            )
        };
        for m in members {
            let peer = axoneme_policy::explain::identity_of_ip(m.ip(), &prefixes);
            if peer != host && denied(Direction::Egress, peer, m.port()) {
                out.push(format!(
                    "node {}: egress to the kvstore member {m}/TCP would be denied by the host policies (the agent allows it anyway: a lifeline)",
                    me.name
                ));
            }
            if me.addresses.contains(&m.ip()) {
                for peer in &node_ids {
                    if denied(Direction::Ingress, *peer, m.port()) {
                        out.push(format!(
                            "node {}: ingress to the kvstore member {m}/TCP from other nodes would be denied by the host policies (the agent allows it anyway: a lifeline)",
                            me.name
                        ));
                        break;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        axoneme_policy::parse_documents(yaml).remove(0).unwrap()
    }

    #[test]
    fn a_host_policy_denying_the_kvstore_is_named_per_node_and_flow() {
        let node = |name: &str, ip: &str, env: &str| Node {
            name: name.into(),
            addresses: vec![ip.parse().unwrap()],
            labels: [("env".to_string(), env.to_string())].into(),
        };
        let nodes = [
            node("n0", "192.168.77.1", "dev"),
            node("n1", "192.168.77.2", "prod"),
        ];
        // The kvstore on node 1's address and on another host.
        let members: Vec<SocketAddr> = ["192.168.77.2:2379", "10.9.9.9:2379"]
            .iter()
            .map(|m| m.parse().unwrap())
            .collect();
        let egress_to_nodes = policy(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: e}\n\
             spec:\n  nodeSelector: {matchLabels: {env: dev}}\n  egress: [{toEntities: [remote-node]}]\n",
        );
        let w = judge(std::slice::from_ref(&egress_to_nodes), &nodes, &members);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("node n0: egress to the kvstore member 10.9.9.9:2379/TCP"),
            "{w:?}"
        );
        // Ingress on the node with a member: from the other nodes.
        let prod_ingress = policy(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: i}\n\
             spec:\n  nodeSelector: {matchLabels: {env: prod}}\n  ingress: [{fromEntities: [world]}]\n",
        );
        let w = judge(&[prod_ingress], &nodes, &members);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("node n1: ingress to the kvstore member 192.168.77.2:2379/TCP"),
            "{w:?}"
        );
        // Egress open: nothing to say.
        let open = policy(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: o}\n\
             spec:\n  nodeSelector: {}\n  egress: [{toEntities: [all]}]\n",
        );
        assert!(judge(&[open, egress_to_nodes], &nodes, &members).is_empty());
    }

    #[test]
    fn members_are_literal_addresses() {
        assert_eq!(
            member("http://127.0.0.1:2379"),
            "127.0.0.1:2379".parse().ok()
        );
        assert_eq!(
            member("https://[fd00::1]:2379/"),
            "[fd00::1]:2379".parse().ok()
        );
        assert_eq!(member("http://etcd-0.etcd:2379"), None);
    }
}
