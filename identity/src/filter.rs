//! The identity-relevant label filter (Cilium's pkg/labelsfilter).
//!
//! Only identity-relevant labels make up an identity; the rest are
//! informational. Patterns are `[source:][!]regex`, the regex anchored at
//! the start of the label key; `!` excludes. When several patterns match a
//! key the longest (most specific) wins, so the default list can exclude
//! `io.kubernetes` yet include `io.kubernetes.pod.namespace`. A key no
//! pattern matches is kept unless the user gave inclusive patterns of their
//! own, in which case only what they include is kept. Reserved labels are
//! always kept.

use regex::Regex;

use crate::labels::{LabelRef, LabelSet, Source};

/// Cilium's default patterns (documentation "Limiting Identity-Relevant Labels").
pub const DEFAULT_PATTERNS: &[&str] = &[
    "reserved:.*",
    "io.kubernetes.pod.namespace",
    "io.cilium.k8s.namespace.labels",
    "app.kubernetes.io",
    "!io.kubernetes",
    "!kubernetes.io",
    "!.*beta.kubernetes.io",
    "!k8s.io",
    "!pod-template-generation",
    "!pod-template-hash",
    "!controller-revision-hash",
    "!annotation.*",
    "!etcd_node",
];

#[derive(Debug, Clone)]
struct Pattern {
    source: Option<Source>,
    regex: Regex,
    exclude: bool,
    /// Specificity: the pattern's length.
    weight: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("label filter pattern {pattern:?}: {reason}")]
pub struct FilterError {
    pub pattern: String,
    pub reason: String,
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub struct LabelFilter {
    patterns: Vec<Pattern>,
    user_includes: bool,
}

impl Default for LabelFilter {
    fn default() -> Self {
        Self::new::<&str>(&[]).expect("default patterns compile")
    }
}

fn parse_pattern(p: &str) -> Result<Pattern, FilterError> {
    let err = |reason: String| FilterError {
        pattern: p.to_string(),
        reason,
    };
    let (source, rest) = match p.split_once(':') {
        Some((s, rest)) => match s.parse::<Source>() {
            Ok(Source::Any) => (None, rest),
            Ok(src) => (Some(src), rest),
            Err(_) => (None, p),
        },
        None => (None, p),
    };
    let (exclude, expr) = match rest.strip_prefix('!') {
        Some(e) => (true, e),
        None => (false, rest),
    };
    if expr.is_empty() {
        return Err(err("empty pattern".into()));
    }
    let regex = Regex::new(&format!("^(?:{expr})")).map_err(|e| err(e.to_string()))?;
    Ok(Pattern {
        source,
        regex,
        exclude,
        weight: expr.len(),
    })
}

impl LabelFilter {
    /// The default patterns plus `extra` user patterns.
    pub fn new<S: AsRef<str>>(extra: &[S]) -> Result<Self, FilterError> {
        let mut patterns = DEFAULT_PATTERNS
            .iter()
            .map(|p| parse_pattern(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut user_includes = false;
        for p in extra {
            let pat = parse_pattern(p.as_ref())?;
            user_includes |= !pat.exclude;
            patterns.push(pat);
        }
        Ok(LabelFilter {
            patterns,
            user_includes,
        })
    }

    /// Whether `label` is identity-relevant.
    pub fn is_relevant(&self, label: LabelRef<'_>) -> bool {
        if label.source == Source::Reserved {
            return true;
        }
        let (mut include, mut exclude) = (None::<usize>, None::<usize>);
        for p in &self.patterns {
            if p.source.is_some_and(|s| s != label.source) || !p.regex.is_match(label.key) {
                continue;
            }
            let slot = if p.exclude {
                &mut exclude
            } else {
                &mut include
            };
            *slot = Some(slot.map_or(p.weight, |w| w.max(p.weight)));
        }
        match (include, exclude) {
            (Some(i), Some(e)) => i > e,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => !self.user_includes,
        }
    }

    /// The identity-relevant subset of `labels`.
    pub fn filter(&self, labels: &LabelSet) -> LabelSet {
        labels.subset(|l| self.is_relevant(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relevant(f: &LabelFilter, s: &str) -> bool {
        f.is_relevant(s.parse::<crate::Label>().unwrap().as_ref())
    }

    #[test]
    fn default_list_follows_cilium() {
        let f = LabelFilter::default();
        for keep in [
            "k8s:app=web",
            "k8s:io.kubernetes.pod.namespace=default",
            "k8s:io.cilium.k8s.namespace.labels.team=a",
            "k8s:io.cilium.k8s.policy.serviceaccount=sa",
            "k8s:app.kubernetes.io/name=web",
            "reserved:host",
        ] {
            assert!(relevant(&f, keep), "{keep} should be kept");
        }
        for drop in [
            "k8s:io.kubernetes.pod.name=web-1",
            "k8s:kubernetes.io/hostname=n1",
            "k8s:failure-domain.beta.kubernetes.io/zone=a",
            "k8s:k8s.io/x=y",
            "k8s:pod-template-hash=abc",
            "k8s:controller-revision-hash=abc",
            "k8s:pod-template-generation=1",
            "k8s:annotation.foo=bar",
        ] {
            assert!(!relevant(&f, drop), "{drop} should be filtered out");
        }
    }

    #[test]
    fn user_includes_narrow_and_excludes_drop() {
        let f = LabelFilter::new(&["k8s:app", "!k8s:team"]).unwrap();
        assert!(relevant(&f, "k8s:app=web"));
        assert!(!relevant(&f, "k8s:zone=a"), "not included by the user");
        assert!(!relevant(&f, "k8s:team=a"));
        assert!(
            relevant(&f, "k8s:io.kubernetes.pod.namespace=x"),
            "default include"
        );
        assert!(relevant(&f, "reserved:world"));
        let f = LabelFilter::new(&["!zone"]).unwrap();
        assert!(!relevant(&f, "k8s:zone=a"));
        assert!(relevant(&f, "k8s:app=a"), "excludes alone do not narrow");
        assert!(LabelFilter::new(&["k8s:("]).is_err());
    }

    #[test]
    fn filters_a_set() {
        let f = LabelFilter::default();
        let set = LabelSet::parse(
            [
                "k8s:app=web",
                "k8s:pod-template-hash=x",
                "k8s:io.kubernetes.pod.namespace=ns",
            ],
            Source::K8s,
        )
        .unwrap();
        assert_eq!(
            f.filter(&set).canonical(),
            "k8s:app=web;k8s:io.kubernetes.pod.namespace=ns;"
        );
    }
}
