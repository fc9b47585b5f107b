//! CiliumNode: per-node addressing, health endpoint, encryption key and IPAM,
//! written by the agent (spec) and the operator (IPAM status).
//!
//! A subset of Cilium's fields: the cloud-provider IPAM sections (`eni`,
//! `azure`, `alibaba-cloud`) and `ingress` addressing are left out, so a
//! server prunes them. Beyond Cilium: `status.conditions`, where the
//! operator reports the node's agent ([`CONDITION_AGENT_ANNOUNCED`],
//! [`CONDITION_POLICY_CURRENT`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the node's agent has announced the node in the kvstore
/// (its node record, on the agent's lease, is present).
pub const CONDITION_AGENT_ANNOUNCED: &str = "AgentAnnounced";
/// Condition type: the node's agent reports enforcing every policy of the
/// store at its current revision.
pub const CONDITION_POLICY_CURRENT: &str = "PolicyCurrent";

/// Desired state of a node.
#[allow(
    clippy::duplicated_attributes,
    reason = "two print columns of the same type: `type_ = \"string\"` repeats in separate printcolumn(..) lists"
)]
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNode",
    status = "NodeStatus",
    derive = "PartialEq",
    shortname = "cn",
    shortname = "ciliumn",
    category = "cilium",
    doc = "A node managed by Axoneme: addresses, health endpoint, encryption key and IPAM.",
    printcolumn(
        name = "CiliumInternalIP",
        type_ = "string",
        json_path = ".spec.addresses[?(@.type==\"CiliumInternalIP\")].ip"
    ),
    printcolumn(
        name = "InternalIP",
        type_ = "string",
        json_path = ".spec.addresses[?(@.type==\"InternalIP\")].ip"
    ),
    printcolumn(
        name = "Agent",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"AgentAnnounced\")].status"
    ),
    printcolumn(
        name = "PolicyCurrent",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"PolicyCurrent\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct NodeSpec {
    /// All addresses of the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// Addresses of the node's health endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthAddressing>,
    /// The node's encryption key index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    /// Address management for the node's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamSpec>,
    /// Identifier of the node (e.g. the cloud provider's), distinct from its name.
    #[serde(
        rename = "instance-id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub instance_id: Option<String>,
    /// Numeric identity allocated for the node, if any.
    #[serde(
        rename = "nodeidentity",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_identity: Option<i64>,
    /// Boot id of the node, to tell reboots apart.
    #[serde(rename = "bootid", default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// One node address: `{type, ip}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeAddress {
    /// Kind of address: `InternalIP`, `ExternalIP`, `CiliumInternalIP`, ...
    #[serde(rename = "type")]
    pub address_type: String,
    /// The address.
    pub ip: String,
}

/// Addresses of a node's health endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthAddressing {
    /// IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

/// Encryption settings (`{key}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EncryptionSpec {
    /// Index of the IPsec key to use (the SPI), 0 if encryption is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 255))]
    pub key: Option<i32>,
}

/// IPAM specification of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpamSpec {
    /// CIDRs the node allocates pod addresses from.
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// Individual addresses available to the node, keyed by address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pool: BTreeMap<String, AllocationIp>,
    /// Addresses to allocate when the node starts.
    #[serde(
        rename = "min-allocate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0))]
    pub min_allocate: Option<i32>,
    /// Most addresses the node may hold.
    #[serde(
        rename = "max-allocate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0))]
    pub max_allocate: Option<i32>,
    /// Addresses to keep available ahead of use.
    #[serde(
        rename = "pre-allocate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0))]
    pub pre_allocate: Option<i32>,
    /// Addresses to allocate beyond the pre-allocation watermark.
    #[serde(
        rename = "max-above-watermark",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0))]
    pub max_above_watermark: Option<i32>,
    /// Free addresses below which the node asks for another pod CIDR.
    #[serde(
        rename = "pod-cidr-allocation-threshold",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0))]
    pub pod_cidr_allocation_threshold: Option<i32>,
    /// Free addresses above which the node releases unused pod CIDRs.
    #[serde(
        rename = "pod-cidr-release-threshold",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0))]
    pub pod_cidr_release_threshold: Option<i32>,
}

/// An address available for, or in, use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AllocationIp {
    /// What uses the address (e.g. `namespace/pod`); empty while free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The resource the address belongs to (e.g. an interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// Observed state of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeStatus {
    /// IPAM status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamStatus>,
    /// The node's agent as the operator sees it, one condition per `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

/// IPAM status of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpamStatus {
    /// Addresses from the pool in use, keyed by address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used: BTreeMap<String, AllocationIp>,
    /// State of each pod CIDR, keyed by CIDR.
    #[serde(
        rename = "pod-cidrs",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub pod_cidrs: BTreeMap<String, PodCidrMapEntry>,
    /// What the operator has to say about the node's IPAM.
    #[serde(
        rename = "operator-status",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub operator_status: Option<IpamOperatorStatus>,
}

/// State of one pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PodCidrMapEntry {
    /// `released`, `depleted` or `in-use`.
    pub status: PodCidrStatus,
}

/// State of a pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PodCidrStatus {
    Released,
    Depleted,
    InUse,
}

/// The operator's IPAM status for a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpamOperatorStatus {
    /// Last error of the operator for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
