//! Labels as Cilium models them: `source:key=value`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Where a label came from. Selectors use `any` to match every source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    K8s,
    Container,
    Cni,
    Reserved,
    Cidr,
    Node,
    Fqdn,
    Unspec,
    Any,
}

impl Source {
    pub const ALL: [Source; 9] = [
        Source::K8s,
        Source::Container,
        Source::Cni,
        Source::Reserved,
        Source::Cidr,
        Source::Node,
        Source::Fqdn,
        Source::Unspec,
        Source::Any,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::K8s => "k8s",
            Source::Container => "container",
            Source::Cni => "cni",
            Source::Reserved => "reserved",
            Source::Cidr => "cidr",
            Source::Node => "node",
            Source::Fqdn => "fqdn",
            Source::Unspec => "unspec",
            Source::Any => "any",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, LabelError> {
        Source::ALL
            .into_iter()
            .find(|src| src.as_str() == s)
            .ok_or_else(|| LabelError::UnknownSource(s.to_string()))
    }
}

/// Why a label or label set was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("unknown label source {0:?} (want one of k8s, container, cni, reserved, cidr, node, fqdn, unspec, any)")]
    UnknownSource(String),
    #[error("label {label:?}: key {key:?} is invalid: {reason}")]
    InvalidKey {
        label: String,
        key: String,
        reason: String,
    },
    #[error("label {label:?}: value {value:?} is invalid: {reason}")]
    InvalidValue {
        label: String,
        value: String,
        reason: String,
    },
    #[error("label set has {count} labels; at most {max} are allowed")]
    TooMany { count: usize, max: usize },
    #[error("label set is {len} bytes long in canonical form; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("label key {key:?} appears twice (as {first:?} and {second:?})")]
    Duplicate {
        key: String,
        first: String,
        second: String,
    },
}

/// Largest label set accepted for an identity (count and canonical bytes).
/// Kubernetes allows many labels per object, but an identity key is stored in
/// etcd and compared on every lookup; 64 labels / 4 KiB is far above real use.
pub const MAX_LABELS: usize = 64;
pub const MAX_CANONICAL_LEN: usize = 4096;

/// One label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub source: Source,
    pub key: String,
    pub value: String,
}

/// Checks one segment of a Kubernetes qualified name or a label value:
/// up to 63 characters `[A-Za-z0-9._-]`, beginning and ending alphanumeric.
fn check_name_segment(s: &str, allow_empty: bool) -> Result<(), String> {
    if s.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err("must not be empty".into())
        };
    }
    if s.len() > 63 {
        return Err(format!("{} characters; at most 63 are allowed", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "character {c:?} is not allowed (A-Z a-z 0-9 - _ .)"
        ));
    }
    let first = s.chars().next().expect("non-empty");
    let last = s.chars().last().expect("non-empty");
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err("must begin and end with a letter or digit".into());
    }
    Ok(())
}

/// A DNS subdomain (RFC 1123) of at most 253 characters: the optional prefix
/// of a Kubernetes label key, and the form of object names. The message
/// completes a sentence that begins with the checked string.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("must be 1-253 characters, not {}", s.len()));
    }
    for part in s.split('.') {
        check_dns_label(part).map_err(|_| {
            "is not a DNS subdomain (lower-case letters, digits, '-' and '.')".to_string()
        })?;
    }
    Ok(())
}

/// A DNS label (RFC 1123): 1-63 lower-case letters, digits and '-', starting
/// and ending alphanumeric (namespace names).
pub fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 63
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || s.starts_with('-')
        || s.ends_with('-')
    {
        return Err(
            "is not a DNS label (1-63 lower-case letters, digits and '-', alphanumeric at both ends)"
                .to_string(),
        );
    }
    Ok(())
}

impl Label {
    /// Builds and validates a label.
    pub fn new(source: Source, key: &str, value: &str) -> Result<Self, LabelError> {
        let label = Label {
            source,
            key: key.to_string(),
            value: value.to_string(),
        };
        label.validate()?;
        Ok(label)
    }

    /// Validates key and value. Reserved, CIDR and FQDN labels have their own
    /// key syntax (`reserved:host`, `cidr:10.0.0.0/8`); all others follow the
    /// Kubernetes label syntax.
    pub fn validate(&self) -> Result<(), LabelError> {
        let key_err = |reason: String| LabelError::InvalidKey {
            label: self.to_string(),
            key: self.key.clone(),
            reason,
        };
        match self.source {
            Source::Reserved => {
                if crate::numeric::ReservedIdentity::from_name(&self.key).is_none() {
                    return Err(key_err("not a reserved identity name".into()));
                }
                if !self.value.is_empty() {
                    return Err(LabelError::InvalidValue {
                        label: self.to_string(),
                        value: self.value.clone(),
                        reason: "reserved labels have no value".into(),
                    });
                }
                return Ok(());
            }
            Source::Cidr => {
                return crate::cidr::parse_cidr_label_key(&self.key)
                    .map(|_| ())
                    .map_err(key_err);
            }
            Source::Fqdn => {
                if self.key.is_empty() || self.key.len() > 255 || self.key.contains(['=', ';', ' '])
                {
                    return Err(key_err("not a valid FQDN selector".into()));
                }
                return Ok(());
            }
            _ => {}
        }
        let (prefix, name) = match self.key.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, self.key.as_str()),
        };
        if let Some(p) = prefix {
            check_dns_subdomain(p).map_err(|r| key_err(format!("prefix {p:?} {r}")))?;
        }
        check_name_segment(name, false).map_err(|r| key_err(format!("name part: {r}")))?;
        check_name_segment(&self.value, true).map_err(|reason| LabelError::InvalidValue {
            label: self.to_string(),
            value: self.value.clone(),
            reason,
        })
    }

    /// Parses `source:key=value`, `source:key`, or `key=value` (source
    /// `default_source`). The first `:` separates the source only if what
    /// precedes it is a known source name, as in Cilium.
    pub fn parse_with_source(s: &str, default_source: Source) -> Result<Self, LabelError> {
        let (source, rest) = match s.split_once(':') {
            Some((src, rest)) => match src.parse::<Source>() {
                Ok(source) => (source, rest),
                Err(_) => (default_source, s),
            },
            None => (default_source, s),
        };
        let (key, value) = match source {
            // A CIDR key contains ':' (IPv6) and never '='.
            Source::Cidr => (rest, ""),
            _ => rest.split_once('=').unwrap_or((rest, "")),
        };
        Label::new(source, key, value)
    }

    /// The form used in canonical keys and selectors' `source:key`.
    pub fn source_key(&self) -> String {
        self.as_ref().source_key()
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

impl FromStr for Label {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, LabelError> {
        Label::parse_with_source(s, Source::Unspec)
    }
}

impl Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One label of a [`LabelSet`], borrowed from the set's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelRef<'a> {
    pub source: Source,
    pub key: &'a str,
    pub value: &'a str,
}

impl LabelRef<'_> {
    pub fn to_label(&self) -> Label {
        Label {
            source: self.source,
            key: self.key.to_string(),
            value: self.value.to_string(),
        }
    }

    /// The form used in canonical keys and selectors' `source:key`.
    pub fn source_key(&self) -> String {
        format!("{}:{}", self.source, self.key)
    }
}

impl Label {
    pub fn as_ref(&self) -> LabelRef<'_> {
        LabelRef {
            source: self.source,
            key: &self.key,
            value: &self.value,
        }
    }
}

impl fmt::Display for LabelRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

impl PartialEq<Label> for LabelRef<'_> {
    fn eq(&self, other: &Label) -> bool {
        *self == other.as_ref()
    }
}

impl PartialEq<LabelRef<'_>> for Label {
    fn eq(&self, other: &LabelRef<'_>) -> bool {
        self.as_ref() == *other
    }
}

/// A set of labels, one per key (as Cilium's `Labels` map), ordered by key.
///
/// Immutable and shared: a clone is a reference count. An identity's labels
/// are held by the identity cache, the reconcile driver and the policy
/// engine's selectors at once; with tens of thousands of identities, a copy
/// each was most of an agent's memory. The set is kept as its canonical
/// text (`source:key=value;` per label, sorted by key) in one allocation,
/// and labels are read from it as [`LabelRef`]s: a label's key and value
/// as strings of their own cost two allocations each, three times the
/// text they hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelSet {
    /// The canonical text; empty for no labels.
    text: Arc<str>,
}

impl Default for LabelSet {
    fn default() -> Self {
        LabelSet { text: "".into() }
    }
}

/// Ordered as a map from key to label (key first, then the label).
impl Ord for LabelSet {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.text, &other.text) {
            return std::cmp::Ordering::Equal;
        }
        let pairs = other.iter().map(|l| (l.key, l));
        self.iter().map(|l| (l.key, l)).cmp(pairs)
    }
}

impl PartialOrd for LabelSet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Reads one `source:key=value` item of a set's canonical text, which the
/// set wrote from validated labels (so it always parses).
fn label_ref(item: &str) -> LabelRef<'_> {
    let (source, rest) = item.split_once(':').unwrap_or(("unspec", item));
    let source = Source::ALL
        .into_iter()
        .find(|s| s.as_str() == source)
        .unwrap_or(Source::Unspec);
    let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
    LabelRef { source, key, value }
}

impl LabelSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from labels, rejecting duplicate keys and oversized sets.
    pub fn from_labels(labels: impl IntoIterator<Item = Label>) -> Result<Self, LabelError> {
        let mut by_key: BTreeMap<String, Label> = BTreeMap::new();
        for l in labels {
            l.validate()?;
            if let Some(prev) = by_key.get(&l.key) {
                if prev != &l {
                    return Err(LabelError::Duplicate {
                        key: l.key.clone(),
                        first: prev.to_string(),
                        second: l.to_string(),
                    });
                }
            }
            by_key.insert(l.key.clone(), l);
        }
        let set = Self::from_sorted(by_key.values().map(Label::as_ref));
        set.check_size()?;
        Ok(set)
    }

    /// The set of `labels`, valid and sorted by key with no key twice.
    fn from_sorted<'a>(labels: impl Iterator<Item = LabelRef<'a>> + Clone) -> Self {
        let len = labels
            .clone()
            .map(|l| l.source.as_str().len() + l.key.len() + l.value.len() + 3)
            .sum();
        let mut out = String::with_capacity(len);
        for l in labels {
            out.push_str(l.source.as_str());
            out.push(':');
            out.push_str(l.key);
            out.push('=');
            out.push_str(l.value);
            out.push(';');
        }
        LabelSet { text: out.into() }
    }

    /// Parses each `source:key=value` string (default source `default_source`).
    pub fn parse<S: AsRef<str>>(
        items: impl IntoIterator<Item = S>,
        default_source: Source,
    ) -> Result<Self, LabelError> {
        let labels = items
            .into_iter()
            .map(|s| Label::parse_with_source(s.as_ref(), default_source))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_labels(labels)
    }

    pub fn check_size(&self) -> Result<(), LabelError> {
        let count = self.len();
        if count > MAX_LABELS {
            return Err(LabelError::TooMany {
                count,
                max: MAX_LABELS,
            });
        }
        let len = self.text.len();
        if len > MAX_CANONICAL_LEN {
            return Err(LabelError::TooLong {
                len,
                max: MAX_CANONICAL_LEN,
            });
        }
        Ok(())
    }

    /// Adds `label`, replacing the one with its key (copies the set).
    pub fn insert(&mut self, label: Label) {
        let mut labels: Vec<LabelRef<'_>> = self.iter().filter(|l| l.key != label.key).collect();
        let at = labels.partition_point(|l| l.key < label.key.as_str());
        labels.insert(at, label.as_ref());
        *self = Self::from_sorted(labels.into_iter());
    }

    /// The labels `keep` keeps.
    pub fn subset(&self, keep: impl Fn(LabelRef<'_>) -> bool) -> LabelSet {
        Self::from_sorted(self.iter().filter(|l| keep(*l)))
    }

    pub fn get(&self, key: &str) -> Option<LabelRef<'_>> {
        self.iter().find(|l| l.key == key)
    }

    /// The labels, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = LabelRef<'_>> + Clone {
        self.text.split_terminator(';').map(label_ref)
    }

    pub fn len(&self) -> usize {
        self.text.bytes().filter(|b| *b == b';').count()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The canonical key: every label as `source:key=value;`, sorted by key.
    /// Two equal sets always give the same key; it names the identity in etcd.
    pub fn canonical(&self) -> String {
        self.text.to_string()
    }

    /// Parses a canonical key back into a set.
    pub fn from_canonical(key: &str) -> Result<Self, LabelError> {
        let items = key.split(';').filter(|s| !s.is_empty()).map(|item| {
            // Reserved and CIDR labels are written with `=` and no value.
            item.strip_suffix('=').unwrap_or(item)
        });
        Self::parse(items, Source::Unspec)
    }

    /// Labels as strings, sorted by key (for JSON records).
    pub fn to_strings(&self) -> Vec<String> {
        self.iter().map(|l| l.to_string()).collect()
    }
}

impl Serialize for LabelSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(|l| l.to_string()))
    }
}

impl<'de> Deserialize<'de> for LabelSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let labels = Vec::<Label>::deserialize(d)?;
        LabelSet::from_labels(labels).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources_and_defaults() {
        let l: Label = "k8s:app=payments".parse().unwrap();
        assert_eq!(
            (l.source, l.key.as_str(), l.value.as_str()),
            (Source::K8s, "app", "payments")
        );
        let l: Label = "app=web".parse().unwrap();
        assert_eq!(l.source, Source::Unspec);
        let l = Label::parse_with_source("app.kubernetes.io/name=x", Source::K8s).unwrap();
        assert_eq!(
            (l.source, l.key.as_str()),
            (Source::K8s, "app.kubernetes.io/name")
        );
        let l: Label = "reserved:host".parse().unwrap();
        assert_eq!(
            (l.source, l.key.as_str(), l.value.as_str()),
            (Source::Reserved, "host", "")
        );
        let l: Label = "cidr:fd00::/64".parse().unwrap();
        assert_eq!((l.source, l.key.as_str()), (Source::Cidr, "fd00::/64"));
    }

    #[test]
    fn rejects_invalid_kubernetes_labels() {
        for bad in [
            "k8s:-app=x",
            "k8s:app-=x",
            "k8s:ap p=x",
            "k8s:app=bad value",
            "k8s:app=-x",
            "k8s:Example.COM/app=x",
            "k8s:/app=x",
            "k8s:=x",
            "reserved:nonsense",
            "reserved:host=1",
            "cidr:10.0.0.0/33",
        ] {
            assert!(bad.parse::<Label>().is_err(), "{bad} should be rejected");
        }
        let long = format!("k8s:app={}", "a".repeat(64));
        let err = long.parse::<Label>().unwrap_err().to_string();
        assert!(err.contains("at most 63"), "{err}");
        assert!(
            "k8s:a.b-c_d/e=f".parse::<Label>().is_err(),
            "underscore in prefix"
        );
        assert!("k8s:example.com/app_1.x=v-1.2_3".parse::<Label>().is_ok());
        assert!(
            "k8s:app=".parse::<Label>().is_ok(),
            "empty value is allowed"
        );
    }

    #[test]
    fn canonical_key_is_sorted_and_round_trips() {
        let a = LabelSet::parse(
            ["k8s:zone=b", "k8s:app=web", "container:x=1"],
            Source::Unspec,
        )
        .unwrap();
        let b = LabelSet::parse(
            ["container:x=1", "k8s:app=web", "k8s:zone=b"],
            Source::Unspec,
        )
        .unwrap();
        assert_eq!(a.canonical(), "k8s:app=web;container:x=1;k8s:zone=b;");
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(LabelSet::from_canonical(&a.canonical()).unwrap(), a);
        let r = LabelSet::parse(["reserved:host"], Source::Unspec).unwrap();
        assert_eq!(LabelSet::from_canonical(&r.canonical()).unwrap(), r);
    }

    #[test]
    fn rejects_duplicates_and_oversized_sets() {
        let err = LabelSet::parse(["k8s:app=a", "container:app=b"], Source::Unspec).unwrap_err();
        assert!(matches!(err, LabelError::Duplicate { .. }), "{err}");
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k8s:l{i}=v")).collect();
        assert!(matches!(
            LabelSet::parse(&many, Source::Unspec),
            Err(LabelError::TooMany { .. })
        ));
        let long: Vec<String> = (0..40)
            .map(|i| format!("k8s:{}{i}={}", "k".repeat(60), "v".repeat(60)))
            .collect();
        assert!(matches!(
            LabelSet::parse(&long, Source::Unspec),
            Err(LabelError::TooLong { .. })
        ));
    }

    #[test]
    fn a_set_is_shared_looked_up_by_key_and_ordered_as_a_map() {
        let parse = |items: &[&str]| LabelSet::parse(items, Source::Unspec).unwrap();
        let a = parse(&["k8s:zone=b", "k8s:app=web", "container:x=1"]);
        assert_eq!(a.get("app").map(|l| l.value), Some("web"));
        assert_eq!(a.get("x").map(|l| l.source), Some(Source::Container));
        assert!(a.get("ap").is_none() && a.get("zzz").is_none());
        let keys: Vec<&str> = a.iter().map(|l| l.key).collect();
        assert_eq!(keys, ["app", "x", "zone"]);
        // A clone shares the labels; inserting copies them.
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.text, &b.text));
        b.insert(Label::new(Source::K8s, "tier", "front").unwrap());
        b.insert(Label::new(Source::K8s, "app", "api").unwrap());
        assert_eq!(a.len(), 3);
        assert_eq!(
            b.to_strings(),
            [
                "k8s:app=api",
                "k8s:tier=front",
                "container:x=1",
                "k8s:zone=b"
            ]
        );
        // Ordered by key first, as a map from key to label would be: a
        // source that sorts first does not put a later key first.
        let k8s_b = parse(&["k8s:b=1"]);
        let container_a = parse(&["container:a=1"]);
        assert!(container_a < k8s_b);
        assert!(parse(&["k8s:a=1"]) < parse(&["k8s:a=1", "k8s:b=1"]));
        assert_eq!(a.cmp(&a.clone()), std::cmp::Ordering::Equal);
        // Labels read back from the set's text as they went in: a CIDR
        // key holds ':', reserved labels have no value.
        let odd = parse(&["cidr:fd00::/64", "reserved:world", "fqdn:*.example.com"]);
        let read: Vec<(Source, &str, &str)> =
            odd.iter().map(|l| (l.source, l.key, l.value)).collect();
        assert_eq!(
            read,
            [
                (Source::Fqdn, "*.example.com", ""),
                (Source::Cidr, "fd00::/64", ""),
                (Source::Reserved, "world", "")
            ]
        );
        assert_eq!(odd.len(), 3);
        assert_eq!(
            odd.subset(|l| l.source == Source::Cidr).to_strings(),
            ["cidr:fd00::/64"]
        );
        assert!(LabelSet::new().is_empty() && LabelSet::new().iter().next().is_none());
    }

    proptest::proptest! {
        #[test]
        fn canonical_is_order_independent(mut items in proptest::collection::vec("[a-z][a-z0-9]{0,8}=[a-z0-9]{0,6}", 0..12)) {
            items.sort();
            items.dedup_by(|a, b| a.split('=').next() == b.split('=').next());
            let set = LabelSet::parse(items.iter().map(|s| format!("k8s:{s}")), Source::Unspec).unwrap();
            let mut rev = items.clone();
            rev.reverse();
            let set2 = LabelSet::parse(rev.iter().map(|s| format!("k8s:{s}")), Source::Unspec).unwrap();
            proptest::prop_assert_eq!(set.canonical(), set2.canonical());
            proptest::prop_assert_eq!(LabelSet::from_canonical(&set.canonical()).unwrap(), set);
        }
    }
}
