//! Label selectors compiled for matching, and the identities they select.
//!
//! A selector key may carry a source (`k8s:app`); without one (or with
//! `any:`) it matches a label of that key from any source. A CNP's selectors
//! only match endpoints in the policy's namespace unless they name
//! `io.kubernetes.pod.namespace` themselves (Cilium's semantics).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axoneme_identity::{LabelSet, NumericIdentity, ReservedIdentity, Source};

use crate::api::{EndpointSelector, SelectorOperator};
use crate::ports::{PortNames, NO_PORTS};
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
    In(Values),
    NotIn(Values),
    Exists,
    DoesNotExist,
}

/// A requirement's values, sorted and unique: a slice rather than a
/// `BTreeSet`, whose one-value node is ten times the value's size (agents
/// keep every rule's selectors, most of them of one value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Values(Box<[String]>);

impl Values {
    fn contains(&self, v: &str) -> bool {
        self.0.binary_search_by(|x| x.as_str().cmp(v)).is_ok()
    }

    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
}

impl<I: IntoIterator<Item = String>> From<I> for Values {
    fn from(values: I) -> Self {
        let set: BTreeSet<String> = values.into_iter().collect();
        Values(set.into_iter().collect())
    }
}

/// The identities that have one label value: most values (a pod's name,
/// its template's hash) belong to one identity, kept without a node.
#[derive(Debug, Clone, Default)]
enum IdSet {
    #[default]
    Empty,
    One(NumericIdentity),
    /// Boxed: most values name one identity, and the index holds an
    /// `IdSet` per value (ten thousand pods' names, pod-template hashes):
    /// the box keeps every `IdSet` at 16 bytes instead of the set's 32.
    #[allow(clippy::box_collection)]
    Many(Box<BTreeSet<NumericIdentity>>),
}

impl IdSet {
    fn insert(&mut self, id: NumericIdentity) {
        match self {
            IdSet::Empty => *self = IdSet::One(id),
            IdSet::One(x) if *x == id => {}
            IdSet::One(x) => *self = IdSet::Many(Box::new([*x, id].into())),
            IdSet::Many(set) => {
                set.insert(id);
            }
        }
    }

    fn remove(&mut self, id: NumericIdentity) {
        match self {
            IdSet::One(x) if *x == id => *self = IdSet::Empty,
            IdSet::Many(set) => {
                set.remove(&id);
                if set.is_empty() {
                    *self = IdSet::Empty;
                }
            }
            _ => {}
        }
    }

    fn len(&self) -> usize {
        match self {
            IdSet::Empty => 0,
            IdSet::One(_) => 1,
            IdSet::Many(set) => set.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = &NumericIdentity> {
        let (one, many) = match self {
            IdSet::Empty => (None, None),
            IdSet::One(x) => (Some(x), None),
            IdSet::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
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
                op: Op::In(Values::from([v.clone()])),
            });
        }
        for r in &sel.match_expressions {
            let (source, key) = split_key(&r.key);
            let values = Values::from(r.values.iter().cloned());
            let op = match r.operator {
                SelectorOperator::In => Op::In(values),
                SelectorOperator::NotIn => Op::NotIn(values),
                SelectorOperator::Exists => Op::Exists,
                SelectorOperator::DoesNotExist => Op::DoesNotExist,
            };
            requirements.push(Requirement { source, key, op });
        }
        // As in Cilium, a selector of reserved labels is never scoped to
        // the policy's namespace (reserved identities have none).
        let reserved = requirements.iter().any(|r| r.source == Source::Reserved);
        if let (Some(ns), false) = (namespace, reserved) {
            if !requirements.iter().any(|r| r.key == NAMESPACE_LABEL) {
                requirements.push(Requirement {
                    source: Source::K8s,
                    key: NAMESPACE_LABEL.to_string(),
                    op: Op::In(Values::from([ns.to_string()])),
                });
            }
        }
        requirements.sort();
        Selector { requirements }
    }

    /// Selects every endpoint identity.
    pub fn all() -> Self {
        Selector {
            requirements: Vec::new(),
        }
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
                .map(|l| l.value);
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

/// Whether `labels` are a host endpoint's (`reserved:host`, with the
/// node's labels beside it).
pub fn is_host(labels: &LabelSet) -> bool {
    labels
        .get(ReservedIdentity::Host.name())
        .is_some_and(|l| l.source == Source::Reserved)
}

/// Whether `labels` are another node's (`reserved:remote-node`, with the
/// node's labels beside it): the identity of its addresses here.
pub fn is_node(labels: &LabelSet) -> bool {
    labels
        .get(ReservedIdentity::RemoteNode.name())
        .is_some_and(|l| l.source == Source::Reserved)
}

/// A node's identity labels: `reserved:host` (seen from itself) or
/// `reserved:remote-node` (from the others), and the node's labels
/// (source `k8s`, as a Node's are). A node label that is not a valid
/// label, or that has the reserved label's key, is left out (it could not
/// be selected either).
pub fn node_identity_labels(
    reserved: ReservedIdentity,
    labels: &BTreeMap<String, String>,
) -> LabelSet {
    let mut set = LabelSet::new();
    set.insert(
        axoneme_identity::Label::new(Source::Reserved, reserved.name(), "")
            .expect("reserved names are valid labels"),
    );
    for (k, v) in labels {
        if k == reserved.name() {
            continue;
        }
        if let Ok(l) = axoneme_identity::Label::new(Source::K8s, k, v) {
            set.insert(l);
        }
    }
    set
}

/// What a rule applies to: the endpoints its `endpointSelector` selects,
/// or, for a host policy (`nodeSelector`), the host endpoints of the nodes
/// it selects. Neither kind ever selects the other's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    selector: Selector,
    host: bool,
}

impl Subject {
    /// The subject of `rule` in a policy of namespace `ns` (none without
    /// a selector, which validation refuses).
    pub fn of(rule: &crate::api::Rule, ns: Option<&str>) -> Option<Subject> {
        let (sel, host) = rule.subject()?;
        // Nodes have no namespace.
        let ns = if host { None } else { ns };
        Some(Subject {
            selector: Selector::new(sel, ns),
            host,
        })
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        is_host(labels) == self.host && self.selector.matches(labels)
    }

    /// Whether this is a host policy's subject.
    pub fn is_host(&self) -> bool {
        self.host
    }

    pub fn selector(&self) -> &Selector {
        &self.selector
    }
}

/// Every identity the policy engine knows, with its labels, and the
/// selector cache: each distinct selector's selection is computed once and
/// then kept current as identities come and go, so computing an endpoint's
/// policy never scans all identities per rule.
#[derive(Debug, Default)]
pub struct Identities {
    by_id: BTreeMap<NumericIdentity, LabelSet>,
    selections: Mutex<HashMap<Selector, Arc<BTreeSet<NumericIdentity>>>>,
    /// Label key → value → identities, so a new selector with an `In`
    /// requirement looks at its candidates only, not at every identity.
    index: HashMap<Box<str>, HashMap<Box<str>, IdSet>>,
    /// Each identity's named ports (the union over its endpoints), which
    /// egress rules' named ports resolve against. Kept apart from the
    /// labels: endpoints report them, not the identity allocator.
    ports: BTreeMap<NumericIdentity, PortNames>,
}

impl Clone for Identities {
    fn clone(&self) -> Self {
        Identities {
            by_id: self.by_id.clone(),
            selections: Mutex::new(self.selections.lock().expect("poisoned").clone()),
            index: self.index.clone(),
            ports: self.ports.clone(),
        }
    }
}

impl Selector {
    fn names_reserved(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.source == Source::Reserved)
    }

    /// Whether `sel` selects identity `id` with `labels`. A selector never
    /// selects reserved or CIDR identities unless it names a `reserved:`
    /// label (then only those: CIDR identities carry `reserved:world`).
    fn selects(&self, id: NumericIdentity, labels: &LabelSet) -> bool {
        let kind_ok = if self.names_reserved() {
            id.is_reserved() || id.is_local_scope()
        } else {
            !id.is_reserved() && !id.is_local_scope()
        };
        kind_ok && self.matches(labels)
    }
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
            ids.insert(r.id(), labels);
        }
        ids
    }

    pub fn insert(&mut self, id: NumericIdentity, labels: LabelSet) {
        for (sel, set) in self.selections.get_mut().expect("poisoned").iter_mut() {
            let has = set.contains(&id);
            if sel.selects(id, &labels) != has {
                let set = Arc::make_mut(set);
                if has {
                    set.remove(&id);
                } else {
                    set.insert(id);
                }
            }
        }
        if let Some(old) = self.by_id.insert(id, labels.clone()) {
            self.unindex(id, &old);
        }
        for l in labels.iter() {
            // Looked up before inserting: an entry takes an owned key.
            let values = match self.index.get_mut(l.key) {
                Some(values) => values,
                None => self.index.entry(l.key.into()).or_default(),
            };
            match values.get_mut(l.value) {
                Some(ids) => ids.insert(id),
                None => values.entry(l.value.into()).or_default().insert(id),
            }
        }
    }

    fn unindex(&mut self, id: NumericIdentity, labels: &LabelSet) {
        for l in labels.iter() {
            if let Some(values) = self.index.get_mut(l.key) {
                if let Some(ids) = values.get_mut(l.value) {
                    ids.remove(id);
                    // Values of identities gone (a pod template's hash)
                    // must not pile up.
                    if ids.is_empty() {
                        values.remove(l.value);
                    }
                }
                if values.is_empty() {
                    self.index.remove(l.key);
                }
            }
        }
    }

    pub fn remove(&mut self, id: NumericIdentity) -> Option<LabelSet> {
        for set in self.selections.get_mut().expect("poisoned").values_mut() {
            if set.contains(&id) {
                Arc::make_mut(set).remove(&id);
            }
        }
        let labels = self.by_id.remove(&id)?;
        self.unindex(id, &labels);
        Some(labels)
    }

    /// Sets identity `id`'s named ports (empty: none).
    pub fn set_ports(&mut self, id: NumericIdentity, ports: PortNames) {
        if ports.is_empty() {
            self.ports.remove(&id);
        } else {
            self.ports.insert(id, ports);
        }
    }

    /// Identity `id`'s named ports.
    pub fn ports(&self, id: NumericIdentity) -> &PortNames {
        self.ports.get(&id).unwrap_or(&NO_PORTS)
    }

    /// Every identity with named ports.
    pub fn with_ports(&self) -> impl Iterator<Item = (NumericIdentity, &PortNames)> {
        self.ports.iter().map(|(id, p)| (*id, p))
    }

    /// Selectors the cache holds (for tests and statistics).
    pub fn cached_selectors(&self) -> usize {
        self.selections.lock().expect("poisoned").len()
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

    /// The node-local (CIDR) identities, without scanning the others: they
    /// are numbered from `LOCAL_SCOPE` up.
    pub fn local_scope(&self) -> impl Iterator<Item = (NumericIdentity, &LabelSet)> {
        self.by_id
            .range(NumericIdentity(axoneme_identity::numeric::LOCAL_SCOPE)..)
            .filter(|(id, _)| id.is_local_scope())
            .map(|(id, l)| (*id, l))
    }

    /// The node-local CIDR identities (`reserved:world`, a `cidr:` label).
    pub fn cidrs(&self) -> impl Iterator<Item = (NumericIdentity, &LabelSet)> {
        self.local_scope().filter(|(_, l)| !is_node(l))
    }

    /// Identities of nodes: the other nodes' (node-local,
    /// `reserved:remote-node` with their labels) and this node's, `host`
    /// (with its labels), as node selectors (`fromNodes`) see them.
    pub fn nodes(&self) -> impl Iterator<Item = (NumericIdentity, &LabelSet)> {
        let host = ReservedIdentity::Host.id();
        self.local_scope()
            .filter(|(_, l)| is_node(l))
            .chain(self.get(host).map(|l| (host, l)))
    }

    /// Identities of workloads (not reserved ones).
    pub fn endpoints(&self) -> impl Iterator<Item = (NumericIdentity, &LabelSet)> {
        self.iter()
            .filter(|(id, _)| !id.is_reserved() && !id.is_local_scope())
    }

    /// Identities `sel` selects (see `Selector::selects`), from the cache.
    pub fn select(&self, sel: &Selector) -> Arc<BTreeSet<NumericIdentity>> {
        let mut cache = self.selections.lock().expect("poisoned");
        if let Some(set) = cache.get(sel) {
            return set.clone();
        }
        // Candidates: the identities of the `In` requirement with the fewest,
        // else all.
        let candidates = sel
            .requirements
            .iter()
            .filter_map(|r| match &r.op {
                Op::In(values) => {
                    let by_value = self.index.get(r.key.as_str());
                    let sets: Vec<&IdSet> = values
                        .iter()
                        .filter_map(|v| by_value.and_then(|m| m.get(v.as_str())))
                        .collect();
                    Some((sets.iter().map(|s| s.len()).sum::<usize>(), sets))
                }
                _ => None,
            })
            .min_by_key(|(n, _)| *n);
        let matches =
            |id: &NumericIdentity| self.by_id.get(id).is_some_and(|l| sel.selects(*id, l));
        let set: Arc<BTreeSet<NumericIdentity>> = Arc::new(match candidates {
            Some((_, sets)) => sets
                .into_iter()
                .flat_map(IdSet::iter)
                .filter(|id| matches(id))
                .copied()
                .collect(),
            None => self
                .by_id
                .keys()
                .filter(|id| matches(id))
                .copied()
                .collect(),
        });
        cache.insert(sel.clone(), set.clone());
        set
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
        assert_eq!(*ids.select(&sel("{}", None)), [NumericIdentity(300)].into());
        assert_eq!(
            *ids.select(&sel("matchLabels: {reserved:host: ''}", None)),
            [NumericIdentity(1)].into()
        );
        // The cache follows identities as they come and go.
        let web = sel("matchLabels: {app: web}", None);
        assert_eq!(*ids.select(&web), [NumericIdentity(300)].into());
        ids.insert(NumericIdentity(301), labels(&["app=web", "env=x"]));
        ids.insert(NumericIdentity(300), labels(&["app=db"]));
        assert_eq!(*ids.select(&web), [NumericIdentity(301)].into());
        ids.remove(NumericIdentity(301));
        assert!(ids.select(&web).is_empty());
        assert_eq!(ids.cached_selectors(), 3);
    }

    #[test]
    fn the_label_index_follows_identities_and_forgets_values_no_one_has() {
        let mut ids = Identities::default();
        let by_pod = |p: &str| sel(&format!("matchLabels: {{pod: {p}}}"), None);
        let web = sel(
            "matchExpressions: [{key: app, operator: In, values: [web, api]}]",
            None,
        );
        ids.insert(NumericIdentity(300), labels(&["app=web", "pod=a"]));
        ids.insert(NumericIdentity(301), labels(&["app=web", "pod=b"]));
        ids.insert(NumericIdentity(302), labels(&["app=api", "pod=c"]));
        assert_eq!(
            *ids.select(&web),
            [300, 301, 302].map(NumericIdentity).into()
        );
        assert_eq!(*ids.select(&by_pod("b")), [NumericIdentity(301)].into());
        // A value's last identity gone: the value leaves the index.
        ids.remove(NumericIdentity(301));
        ids.insert(NumericIdentity(300), labels(&["app=api", "pod=a"]));
        assert!(!ids.index["pod"].contains_key("b"));
        assert!(!ids.index["app"].contains_key("web"));
        ids.remove(NumericIdentity(300));
        ids.remove(NumericIdentity(302));
        assert!(ids.index.is_empty());
        // Selections made afterwards see the same.
        ids.insert(NumericIdentity(303), labels(&["app=web", "pod=b"]));
        assert_eq!(*ids.select(&by_pod("b")), [NumericIdentity(303)].into());
        assert_eq!(*ids.select(&web), [NumericIdentity(303)].into());
    }
}
