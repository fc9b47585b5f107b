//! Label selectors in Kubernetes' string syntax over an endpoint's
//! `source:key=value` labels, as Hubble's `source_label` and
//! `destination_label` filters take them: `app=web`, `k8s:app=web`,
//! `app!=web`, `app in (a, b)`, `app notin (a)`, `app`, `!app`, joined by
//! commas (all must hold). A key without a source matches a label of any
//! source; `k8s:app` matches only `k8s` labels.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    source: Option<String>,
    key: String,
    op: Op,
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

/// One label split into source, key and value (`reserved:world` has an
/// empty value; a label without a source has none).
pub fn split_label(label: &str) -> (Option<&str>, &str, &str) {
    let (source, rest) = match label.split_once(':') {
        Some((s, r)) if !s.contains('=') => (Some(s), r),
        _ => (None, label),
    };
    let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
    (source, key, value)
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let err = |reason: &str| SelectorError {
            selector: text.to_string(),
            reason: reason.to_string(),
        };
        let mut reqs = Vec::new();
        for part in split_top_level(text).map_err(|r| err(&r))? {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty requirement"));
            }
            reqs.push(parse_requirement(part).map_err(|r| err(&r))?);
        }
        if reqs.is_empty() {
            return Err(err("empty selector"));
        }
        Ok(Selector(reqs))
    }

    /// Whether labels (`source:key=value` strings) satisfy every requirement.
    pub fn matches<S: AsRef<str>>(&self, labels: &[S]) -> bool {
        self.0.iter().all(|r| {
            let mut values = labels.iter().filter_map(|l| {
                let (source, key, value) = split_label(l.as_ref());
                let source_ok = match &r.source {
                    Some(want) => source == Some(want.as_str()),
                    None => true,
                };
                (source_ok && key == r.key).then_some(value)
            });
            match &r.op {
                Op::Exists => values.next().is_some(),
                Op::NotExists => values.next().is_none(),
                Op::In(set) => values.any(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => !values.any(|v| set.iter().any(|s| s == v)),
            }
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_key(key: &str) -> Result<(Option<String>, String), String> {
    let key = key.trim();
    let (source, name) = match key.split_once(':') {
        Some((s, k)) => (Some(s.to_string()), k),
        None => (None, key),
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    if !valid(name) || source.as_deref().is_some_and(|s| !valid(s)) {
        return Err(format!("invalid key {key:?}"));
    }
    Ok((source, name.to_string()))
}

fn parse_set(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("expected a set in parentheses, got {:?}", text.trim()))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let req = |key: &str, op| parse_key(key).map(|(source, key)| Requirement { source, key, op });
    if let Some(key) = part.strip_prefix('!') {
        return req(key, Op::NotExists);
    }
    if let Some((key, value)) = part.split_once("!=") {
        return req(key, Op::NotIn(vec![value.trim().to_string()]));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return req(key, Op::In(vec![value.trim().to_string()]));
    }
    if let Some((key, set)) = part.split_once(" notin ") {
        return req(key, Op::NotIn(parse_set(set)?));
    }
    if let Some((key, set)) = part.split_once(" in ") {
        return req(key, Op::In(parse_set(set)?));
    }
    req(part, Op::Exists)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &[&str] = &["k8s:app=web", "k8s:tier=front", "reserved:host"];

    #[test]
    fn selectors_match_as_kubernetes_does_with_sources() {
        let cases: &[(&str, bool)] = &[
            ("app=web", true),
            ("app==web", true),
            ("k8s:app=web", true),
            ("other:app=web", false),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (db, web)", true),
            ("app notin (db, web)", false),
            ("app notin (db)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("reserved:host", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
        ];
        for (sel, want) in cases {
            let s = Selector::parse(sel).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.matches(WEB), *want, "{sel}");
        }
    }

    #[test]
    fn bad_selectors_name_what_is_wrong() {
        for (sel, reason) in [
            ("", "empty requirement"),
            ("app=web,", "empty requirement"),
            ("app in (a", "unbalanced '('"),
            ("a b=c", "invalid key"),
            ("app in a", "expected a set"),
        ] {
            let e = Selector::parse(sel).unwrap_err();
            assert!(e.to_string().contains(reason), "{sel}: {e}");
        }
    }

    #[test]
    fn labels_split_into_source_key_and_value() {
        assert_eq!(split_label("k8s:app=web"), (Some("k8s"), "app", "web"));
        assert_eq!(
            split_label("reserved:world"),
            (Some("reserved"), "world", "")
        );
        assert_eq!(split_label("app=a:b"), (None, "app", "a:b"));
    }
}
