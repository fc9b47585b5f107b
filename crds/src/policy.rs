//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy.
//!
//! Both carry one rule in `spec` and/or a list in `specs` at the root of the
//! object (not under a wrapping `spec`), hence `#[kube(no_spec)]`: the
//! derived `*Spec` struct is flattened onto the root, so on the Rust side the
//! rules are `cnp.spec.spec` and `cnp.spec.specs` ([`CiliumNetworkPolicy::rules`]
//! iterates both). The rule type is the policy model's
//! [`axoneme_policy::api::Rule`], with Cilium's field names.
//!
//! Status follows the Kubernetes API conventions: a `conditions` list keyed
//! by `type` (`x-kubernetes-list-type: map`, so each field manager owns its
//! own condition under server-side apply, CRD-NOTES.md §6). The operator
//! writes two: [`CONDITION_VALID`] (Cilium's) and [`CONDITION_ENFORCED`]
//! (Axoneme's: whether every node runs the policy's current revision).

use axoneme_policy::api::Rule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type telling whether the policy parsed and validated.
pub const CONDITION_VALID: &str = "Valid";
/// Reason of a `Valid=True` condition.
pub const REASON_VALID: &str = "Valid";
/// Reason of a `Valid=False` condition.
pub const REASON_INVALID: &str = "Invalid";
/// Condition type telling whether every live node enforces the policy's
/// current revision (aggregated by the operator from the agents' reports).
pub const CONDITION_ENFORCED: &str = "Enforced";

/// The fields of a CiliumNetworkPolicy besides metadata and status; they sit
/// at the root of the object (`#[kube(no_spec)]`).
#[allow(
    clippy::duplicated_attributes,
    reason = "two print columns of the same type: `type_ = \"string\"` repeats in separate printcolumn(..) lists"
)]
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNetworkPolicy",
    namespaced,
    no_spec,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "cnp",
    shortname = "ciliumnp",
    category = "cilium",
    category = "ciliumpolicy",
    doc = "A namespaced Cilium network policy: one rule in `spec` and/or several in `specs`.",
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(
        name = "Enforced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Enforced\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct CiliumNetworkPolicySpec {
    /// One rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    /// Several rules; combined with `spec` when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<Rule>>,
}

/// The fields of a CiliumClusterwideNetworkPolicy besides metadata and
/// status; as [`CiliumNetworkPolicySpec`], and rules may use `nodeSelector`
/// (host policy).
#[allow(
    clippy::duplicated_attributes,
    reason = "two print columns of the same type: `type_ = \"string\"` repeats in separate printcolumn(..) lists"
)]
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumClusterwideNetworkPolicy",
    no_spec,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "ccnp",
    category = "cilium",
    category = "ciliumpolicy",
    doc = "A cluster-wide Cilium network policy: one rule in `spec` and/or several in `specs`.",
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(
        name = "Enforced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Enforced\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct CiliumClusterwideNetworkPolicySpec {
    /// One rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    /// Several rules; combined with `spec` when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<Rule>>,
}

/// Status of a policy, written by the operator through the status
/// subresource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Observations of the policy's state, one per `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

fn rules<'a>(
    spec: &'a Option<Rule>,
    specs: &'a Option<Vec<Rule>>,
) -> impl Iterator<Item = &'a Rule> {
    spec.iter().chain(specs.iter().flatten())
}

impl CiliumNetworkPolicySpec {
    /// `spec` followed by `specs`.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        rules(&self.spec, &self.specs)
    }
}

impl CiliumClusterwideNetworkPolicySpec {
    /// `spec` followed by `specs`.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        rules(&self.spec, &self.specs)
    }
}

impl CiliumNetworkPolicy {
    /// The policy's rules: `spec` followed by `specs`.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.spec.rules()
    }
}

impl CiliumClusterwideNetworkPolicy {
    /// The policy's rules: `spec` followed by `specs`.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.spec.rules()
    }
}

impl PolicyStatus {
    /// The condition of type `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The `Valid` condition for a policy at `generation`: `True`/`Valid` or
/// `False`/`Invalid`, with `message` (e.g. the validation errors) and
/// `lastTransitionTime` = `now`. Use [`upsert_condition`] to keep the old
/// transition time when the status did not change.
pub fn valid_condition(
    valid: bool,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    condition(
        CONDITION_VALID,
        valid,
        if valid { REASON_VALID } else { REASON_INVALID },
        message,
        generation,
        now,
    )
}

/// A condition of `type_` at `generation`, `status` `True` or `False`,
/// `lastTransitionTime` = `now` (see [`upsert_condition`]).
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// Puts `new` into `conditions`, replacing the condition of the same type.
/// Per the API conventions `lastTransitionTime` changes only when `status`
/// does: if the old condition had the same status, its time is kept.
/// Returns whether anything changed.
pub fn upsert_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            if *old == new {
                return false;
            }
            *old = new;
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn valid_condition_follows_the_conventions() {
        let ok = valid_condition(true, "", Some(3), at(10));
        assert_eq!(
            (ok.type_.as_str(), ok.status.as_str(), ok.reason.as_str()),
            ("Valid", "True", "Valid")
        );
        assert_eq!(ok.observed_generation, Some(3));
        let bad = valid_condition(false, "spec.ingress[0]: bad", Some(4), at(20));
        assert_eq!(
            (bad.status.as_str(), bad.reason.as_str()),
            ("False", "Invalid")
        );
        assert_eq!(bad.message, "spec.ingress[0]: bad");
        let json = serde_json::to_value(&bad).unwrap();
        assert_eq!(json["lastTransitionTime"], "1970-01-01T00:00:20Z");
        assert_eq!(json["observedGeneration"], 4);
    }

    #[test]
    fn upsert_keeps_transition_time_while_status_holds() {
        let mut conds = Vec::new();
        assert!(upsert_condition(
            &mut conds,
            valid_condition(true, "", Some(1), at(10))
        ));
        // Same status, new generation: time kept, generation updated.
        assert!(upsert_condition(
            &mut conds,
            valid_condition(true, "", Some(2), at(20))
        ));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].observed_generation, Some(2));
        // Nothing new: no change.
        assert!(!upsert_condition(
            &mut conds,
            valid_condition(true, "", Some(2), at(30))
        ));
        // Status flips: new time.
        assert!(upsert_condition(
            &mut conds,
            valid_condition(false, "x", Some(3), at(40))
        ));
        assert_eq!(conds[0].last_transition_time, at(40));
        assert_eq!(
            PolicyStatus { conditions: conds }
                .condition("Valid")
                .unwrap()
                .reason,
            "Invalid"
        );
    }

    #[test]
    fn rules_are_spec_then_specs() {
        let rule = |d: &str| Rule {
            description: Some(d.into()),
            ..Rule::default()
        };
        let spec = CiliumNetworkPolicySpec {
            spec: Some(rule("a")),
            specs: Some(vec![rule("b"), rule("c")]),
        };
        let cnp = CiliumNetworkPolicy::new("p", spec);
        let names: Vec<_> = cnp
            .rules()
            .filter_map(|r| r.description.as_deref())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
