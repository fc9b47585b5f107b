//! The cilium.io/v2 policy API, field for field (Cilium's pkg/policy/api).
//!
//! Field names follow Cilium exactly, including `fromCIDR`, `fromCIDRSet`,
//! `toCIDR`, `toCIDRSet` and `toFQDNs`, which `rename_all = "camelCase"`
//! would misspell (CRD-NOTES.md §2). Unknown fields are rejected, so a typo
//! is an error rather than a silently ignored rule. Fields of features not
//! built yet are accepted by the parser and rejected by validation with a
//! "not supported" message, never dropped.
//!
//! Every `Option` skips serialization when empty and every `Vec` defaults to
//! empty and is skipped when empty (CRD-NOTES.md §4-§5), so objects round-trip
//! unchanged and the generated CRD schema has no `nullable`/`default` noise.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Free-form JSON for fields whose feature is not supported yet.
pub type Unsupported = serde_json::Value;

fn preserve_unknown(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn preserve_unknown_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
    })
}

/// One policy rule: the `spec` of a CiliumNetworkPolicy, or one of `specs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Endpoints this rule applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<EndpointSelector>,
    /// Nodes this rule applies to (host policy; clusterwide policies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<IngressDenyRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<EgressDenyRule>,
    /// Labels identifying the rule (informational).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<RuleLabel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether selecting an endpoint makes the direction default-deny
    /// (default true for each direction the rule has rules in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// A label attached to a rule (`labels: [{key, value, source}]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleLabel {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A selector's `matchLabels`: a map from key to value, held as a sorted
/// list. A policy names a label or two per selector, and a one-entry
/// `BTreeMap` allocates a node for eleven (about 540 bytes); a thousand
/// rules' selectors were half a megabyte of empty slots in every agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MatchLabels(Vec<(String, String)>);

impl MatchLabels {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Sets `key` to `value`, replacing its value if it has one.
    pub fn insert(&mut self, key: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl<'a> IntoIterator for &'a MatchLabels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Extend<(String, String)> for MatchLabels {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, pairs: I) {
        for (k, v) in pairs {
            self.insert(k, v);
        }
    }
}

impl FromIterator<(String, String)> for MatchLabels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut m = MatchLabels::default();
        m.extend(pairs);
        m
    }
}

impl From<BTreeMap<String, String>> for MatchLabels {
    fn from(map: BTreeMap<String, String>) -> Self {
        MatchLabels(map.into_iter().collect())
    }
}

impl Serialize for MatchLabels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// As a map: a key given twice keeps its last value, as a `BTreeMap` did.
impl<'de> Deserialize<'de> for MatchLabels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(MatchLabels::from)
    }
}

/// A Kubernetes label selector over endpoint labels. Keys may carry a
/// source prefix (`k8s:app`, `any:app`); without one they match `any`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSelector {
    #[serde(default, skip_serializing_if = "MatchLabels::is_empty")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub match_labels: MatchLabels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_endpoints: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_requires: Vec<EndpointSelector>,
    #[serde(rename = "fromCIDR", default, skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<String>,
    #[serde(rename = "fromCIDRSet", default, skip_serializing_if = "Vec::is_empty")]
    pub from_cidr_set: Vec<CidrRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_entities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub from_groups: Option<Unsupported>,
    /// Nodes (their own addresses) by their labels: a node selector, as
    /// `nodeSelector`; this node is `host`, the others `remote-node`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_nodes: Vec<EndpointSelector>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub authentication: Option<Unsupported>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressDenyRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_endpoints: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_requires: Vec<EndpointSelector>,
    #[serde(rename = "fromCIDR", default, skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<String>,
    #[serde(rename = "fromCIDRSet", default, skip_serializing_if = "Vec::is_empty")]
    pub from_cidr_set: Vec<CidrRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_entities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortDenyRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub from_groups: Option<Unsupported>,
    /// Nodes (their own addresses) by their labels: a node selector, as
    /// `nodeSelector`; this node is `host`, the others `remote-node`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_nodes: Vec<EndpointSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_requires: Vec<EndpointSelector>,
    #[serde(rename = "toCIDR", default, skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<String>,
    #[serde(rename = "toCIDRSet", default, skip_serializing_if = "Vec::is_empty")]
    pub to_cidr_set: Vec<CidrRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_entities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub to_services: Option<Unsupported>,
    /// Not supported yet.
    #[serde(rename = "toFQDNs", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub to_fqdns: Option<Unsupported>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub to_groups: Option<Unsupported>,
    /// Nodes (their own addresses) by their labels: a node selector, as
    /// `nodeSelector`; this node is `host`, the others `remote-node`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_nodes: Vec<EndpointSelector>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub authentication: Option<Unsupported>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressDenyRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_requires: Vec<EndpointSelector>,
    #[serde(rename = "toCIDR", default, skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<String>,
    #[serde(rename = "toCIDRSet", default, skip_serializing_if = "Vec::is_empty")]
    pub to_cidr_set: Vec<CidrRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_entities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortDenyRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub to_services: Option<Unsupported>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub to_groups: Option<Unsupported>,
    /// Nodes (their own addresses) by their labels: a node selector, as
    /// `nodeSelector`; this node is `host`, the others `remote-node`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_nodes: Vec<EndpointSelector>,
}

/// `{cidr, except}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_ref: Option<String>,
}

/// Ports with optional L7 rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    /// Not supported yet.
    #[serde(
        rename = "terminatingTLS",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "preserve_unknown")]
    pub terminating_tls: Option<Unsupported>,
    /// Not supported yet.
    #[serde(
        rename = "originatingTLS",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "preserve_unknown")]
    pub originating_tls: Option<Unsupported>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_names: Option<Vec<String>>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub listener: Option<Unsupported>,
}

/// Ports of a deny rule (no L7).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortDenyRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// A number 0-65535 (0 or none = every port) or, for named ports, a
    /// name; Cilium writes it as a string, numbers are accepted too.
    #[serde(default, skip_serializing_if = "PortValue::is_empty")]
    pub port: PortValue,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub end_port: Option<i32>,
    /// TCP, UDP, SCTP or ANY (default ANY). The schema admits all of
    /// Cilium's protocols; validation rejects the unsupported ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["TCP", "UDP", "SCTP", "ICMP", "ICMPV6", "VRRP", "IGMP", "ANY"]))]
    pub protocol: Option<String>,
}

/// A port as given: `"8080"`, `8080` or a name. Validation decides what is
/// acceptable; the raw text is kept so errors can quote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PortValue(pub String);

impl PortValue {
    /// No port given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PortValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PortValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortValue, E> {
                Ok(PortValue(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortValue, E> {
                Ok(PortValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for PortValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortValue".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

/// L7 rules; one kind per port rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Rules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub kafka: Option<Unsupported>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub dns: Option<Unsupported>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7proto: Option<String>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub l7: Option<Unsupported>,
}

/// An HTTP rule: every given field must match. `method`, `path` and `host`
/// are extended regular expressions matched against the whole value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers that must be present: `Name` or `Name: value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What to do when the header does not match: LOG, ADD, DELETE,
    /// REPLACE (only the default, deny, is supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["LOG", "ADD", "DELETE", "REPLACE"]))]
    pub mismatch: Option<String>,
    /// Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub secret: Option<Unsupported>,
}

/// `icmps: [{fields: [{family, type}]}]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<IcmpField>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpField {
    /// IPv4 (default) or IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["IPv4", "IPv6"]))]
    pub family: Option<String>,
    /// A type number or name (e.g. 8 or EchoRequest).
    #[serde(rename = "type")]
    pub icmp_type: PortValue,
}

/// A direction-neutral view of one allow or deny section of a rule:
/// `from*` fields for ingress, `to*` fields for egress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerSection<'a> {
    pub endpoints: &'a [EndpointSelector],
    /// Node selectors (`fromNodes`, `toNodes`).
    pub nodes: &'a [EndpointSelector],
    /// Requirements (allow sections only).
    pub requires: &'a [EndpointSelector],
    pub cidrs: &'a [String],
    pub cidr_sets: &'a [CidrRule],
    /// Entity names ([`crate::Entity`]; strings, so that validation
    /// reports each unknown one with its field path).
    pub entities: &'a [String],
    /// Ports with L7 rules (allow sections only).
    pub to_ports: &'a [PortRule],
    /// Ports (deny sections only).
    pub deny_ports: &'a [PortDenyRule],
    pub icmps: &'a [IcmpRule],
}

impl<'a> PeerSection<'a> {
    /// Whether the section names no peer at all (then it means every peer).
    pub fn has_no_peers(&self) -> bool {
        self.endpoints.is_empty()
            && self.nodes.is_empty()
            && self.cidrs.is_empty()
            && self.cidr_sets.is_empty()
            && self.entities.is_empty()
    }

    /// Every CIDR the section names, exceptions included.
    pub fn cidr_names(&self) -> impl Iterator<Item = &'a str> + 'a {
        let sets = self.cidr_sets;
        self.cidrs.iter().map(String::as_str).chain(
            sets.iter()
                .flat_map(|s| s.cidr.iter().chain(s.except.iter()).map(String::as_str)),
        )
    }
}

impl Rule {
    /// The rule's subject: its endpoint selector, or its node selector
    /// with `true` (a host policy, which selects nodes' host endpoints
    /// and nothing else).
    pub fn subject(&self) -> Option<(&EndpointSelector, bool)> {
        match (&self.endpoint_selector, &self.node_selector) {
            (Some(s), _) => Some((s, false)),
            (None, Some(s)) => Some((s, true)),
            (None, None) => None,
        }
    }

    /// The allow sections of one direction.
    pub fn allow_sections(&self, egress: bool) -> Vec<PeerSection<'_>> {
        if egress {
            self.egress
                .iter()
                .map(|e| PeerSection {
                    endpoints: &e.to_endpoints,
                    nodes: &e.to_nodes,
                    requires: &e.to_requires,
                    cidrs: &e.to_cidr,
                    cidr_sets: &e.to_cidr_set,
                    entities: &e.to_entities,
                    to_ports: &e.to_ports,
                    deny_ports: &[],
                    icmps: &e.icmps,
                })
                .collect()
        } else {
            self.ingress
                .iter()
                .map(|i| PeerSection {
                    endpoints: &i.from_endpoints,
                    nodes: &i.from_nodes,
                    requires: &i.from_requires,
                    cidrs: &i.from_cidr,
                    cidr_sets: &i.from_cidr_set,
                    entities: &i.from_entities,
                    to_ports: &i.to_ports,
                    deny_ports: &[],
                    icmps: &i.icmps,
                })
                .collect()
        }
    }

    /// The deny sections of one direction.
    pub fn deny_sections(&self, egress: bool) -> Vec<PeerSection<'_>> {
        if egress {
            self.egress_deny
                .iter()
                .map(|e| PeerSection {
                    endpoints: &e.to_endpoints,
                    nodes: &e.to_nodes,
                    requires: &[],
                    cidrs: &e.to_cidr,
                    cidr_sets: &e.to_cidr_set,
                    entities: &e.to_entities,
                    to_ports: &[],
                    deny_ports: &e.to_ports,
                    icmps: &e.icmps,
                })
                .collect()
        } else {
            self.ingress_deny
                .iter()
                .map(|i| PeerSection {
                    endpoints: &i.from_endpoints,
                    nodes: &i.from_nodes,
                    requires: &[],
                    cidrs: &i.from_cidr,
                    cidr_sets: &i.from_cidr_set,
                    entities: &i.from_entities,
                    to_ports: &[],
                    deny_ports: &i.to_ports,
                    icmps: &i.icmps,
                })
                .collect()
        }
    }

    /// Every allow and deny section, of both directions.
    pub fn all_sections(&self) -> impl Iterator<Item = PeerSection<'_>> {
        [false, true].into_iter().flat_map(move |egress| {
            self.allow_sections(egress)
                .into_iter()
                .chain(self.deny_sections(egress))
        })
    }

    /// Whether selecting an endpoint makes this direction default-deny: the
    /// rule has sections in it, and `enableDefaultDeny` does not say false.
    pub fn enables_default_deny(&self, egress: bool) -> bool {
        let (has, flag) = if egress {
            (
                !self.egress.is_empty() || !self.egress_deny.is_empty(),
                self.enable_default_deny.as_ref().and_then(|d| d.egress),
            )
        } else {
            (
                !self.ingress.is_empty() || !self.ingress_deny.is_empty(),
                self.enable_default_deny.as_ref().and_then(|d| d.ingress),
            )
        };
        has && flag != Some(false)
    }
}
