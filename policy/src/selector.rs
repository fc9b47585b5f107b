//! Label selectors compiled for matching, and the identities they select.
//!
//! A selector key may carry a source (`k8s:app`); without one (or with
//! `any:`) it matches a label of that key from any source. A CNP's selectors
//! only match endpoints in the policy's namespace unless they name
//! `io.kubernetes.pod.namespace` themselves (Cilium's semantics).

use std::collections::{BTreeMap, BTreeSet};

use axoneme_identity::{LabelSet, NumericIdentity, ReservedIdentity, Source};

use crate::api::{EndpointSelector, SelectorOperator};
use crate::validate::selector_label;

pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Requirement {
    source: Source,
    key: String,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// A compiled selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

fn split_key(key: &str) -> (Source, String) {
    match selector_label(key, "") {
        Ok(l) => (l.source, l.key),
        // Validation already rejected bad keys; match nothing for safety.
        Err(_) => (Source::Any, format!("\u{0}invalid:{key}")),
    }
}

impl Selector {
    /// Compiles `sel`; `namespace` scopes it (CNP) unless it names the
    /// namespace label itself.
    pub fn new(sel: &EndpointSelector, namespace: Option<&str>) -> Self {
        let mut requirements = Vec::new();
        for (k, v) in &sel.match_labels {
            let (source, key) = split_key(k);
            requirements.push(Requirement {
                source,
                key,
                op: Op::In([v.clone()].into()),
            });
        }
        for r in &sel.match_expressions {
            let (source, key) = split_key(&r.key);
            let values: BTreeSet<String> = r.values.iter().cloned().collect();
            let op = match r.operator {
                SelectorOperator::In => Op::In(values),
                SelectorOperator::NotIn => Op::NotIn(values),
                SelectorOperator::Exists => Op::Exists,
                SelectorOperator::DoesNotExist => Op::DoesNotExist,
            };
            requirements.push(Requirement { source, key, op });
        }
        if let Some(ns) = namespace {
            if !requirements.iter().any(|r| r.key == NAMESPACE_LABEL) {
                requirements.push(Requirement {
                    source: Source::K8s,
                    key: NAMESPACE_LABEL.to_string(),
                    op: Op::In([ns.to_string()].into()),
                });
            }
        }
        requirements.sort();
        Selector { requirements }
    }

    /// Whether this selector selects everything (no requirements).
    pub fn is_wildcard(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels
                .get(&r.key)
                .filter(|l| r.source == Source::Any || l.source == r.source)
                .map(|l| l.value.as_str());
            match (&r.op, value) {
                (Op::In(vals), Some(v)) => vals.contains(v),
                (Op::In(_), None) => false,
                (Op::NotIn(vals), Some(v)) => !vals.contains(v),
                (Op::NotIn(_), None) => true,
                (Op::Exists, v) => v.is_some(),
                (Op::DoesNotExist, v) => v.is_none(),
            }
        })
    }
}

/// Every identity the policy engine knows, with its labels.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    by_id: BTreeMap<NumericIdentity, LabelSet>,
}

impl Identities {
    /// The reserved identities (with `reserved:<name>` labels) and nothing else.
    pub fn with_reserved() -> Self {
        let mut ids = Identities::default();
        for r in ReservedIdentity::ALL {
            if r == ReservedIdentity::Unknown {
                continue;
            }
            let labels = LabelSet::parse([format!("reserved:{}", r.name())], Source::Reserved)
                .expect("reserved names are valid");
            ids.by_id.insert(r.id(), labels);
        }
        ids
    }

    pub fn insert(&mut self, id: NumericIdentity, labels: LabelSet) {
        self.by_id.insert(id, labels);
    }

    pub fn remove(&mut self, id: NumericIdentity) -> Option<LabelSet> {
        self.by_id.remove(&id)
    }

    pub fn get(&self, id: NumericIdentity) -> Option<&LabelSet> {
        self.by_id.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (NumericIdentity, &LabelSet)> {
        self.by_id.iter().map(|(id, l)| (*id, l))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Identities of workloads (not reserved ones).
    pub fn endpoints(&self) -> impl Iterator<Item = (NumericIdentity, &LabelSet)> {
        self.iter()
            .filter(|(id, _)| !id.is_reserved() && !id.is_local_scope())
    }

    /// Endpoint identities `sel` selects. A selector never selects reserved
    /// identities unless it names a `reserved:` label (then only those).
    pub fn select(&self, sel: &Selector) -> BTreeSet<NumericIdentity> {
        let reserved = sel
            .requirements
            .iter()
            .any(|r| r.source == Source::Reserved);
        self.iter()
            .filter(|(id, _)| {
                if reserved {
                    id.is_reserved()
                } else {
                    !id.is_reserved() && !id.is_local_scope()
                }
            })
            .filter(|(_, l)| sel.matches(l))
            .map(|(id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(items: &[&str]) -> LabelSet {
        LabelSet::parse(items, Source::K8s).unwrap()
    }

    fn sel(yaml: &str, ns: Option<&str>) -> Selector {
        Selector::new(&serde_yaml::from_str(yaml).unwrap(), ns)
    }

    #[test]
    fn match_labels_and_expressions() {
        let web = labels(&["app=web", "env=prod", "io.kubernetes.pod.namespace=shop"]);
        assert!(sel("matchLabels: {app: web}", None).matches(&web));
        assert!(sel("matchLabels: {k8s:app: web}", None).matches(&web));
        assert!(sel("matchLabels: {any:app: web}", None).matches(&web));
        assert!(!sel("matchLabels: {container:app: web}", None).matches(&web));
        assert!(!sel("matchLabels: {app: db}", None).matches(&web));
        let e = |op: &str| sel(&format!("matchExpressions: [{op}]"), None).matches(&web);
        assert!(e("{key: env, operator: In, values: [prod, staging]}"));
        assert!(!e("{key: env, operator: NotIn, values: [prod]}"));
        assert!(
            e("{key: tier, operator: NotIn, values: [x]}"),
            "NotIn holds when absent"
        );
        assert!(e("{key: app, operator: Exists}"));
        assert!(!e("{key: tier, operator: Exists}"));
        assert!(e("{key: tier, operator: DoesNotExist}"));
        assert!(sel("{}", None).matches(&web));
    }

    #[test]
    fn namespace_scoping() {
        let web = labels(&["app=web", "io.kubernetes.pod.namespace=shop"]);
        assert!(sel("matchLabels: {app: web}", Some("shop")).matches(&web));
        assert!(!sel("matchLabels: {app: web}", Some("other")).matches(&web));
        assert!(!sel("{}", Some("other")).matches(&web));
        let cross = "matchLabels: {app: web, io.kubernetes.pod.namespace: shop}";
        assert!(
            sel(cross, Some("other")).matches(&web),
            "explicit namespace wins"
        );
    }

    #[test]
    fn select_keeps_reserved_apart() {
        let mut ids = Identities::with_reserved();
        ids.insert(NumericIdentity(300), labels(&["app=web"]));
        assert_eq!(ids.select(&sel("{}", None)), [NumericIdentity(300)].into());
        assert_eq!(
            ids.select(&sel("matchLabels: {reserved:host: ''}", None)),
            [NumericIdentity(1)].into()
        );
    }
}
