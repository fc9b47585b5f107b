//! L7 HTTP rules compiled once for the proxy: a request passes when any
//! rule matches it; a rule matches when its method, path and host regexes
//! (Cilium's extended POSIX regexes, taken as full matches; absent = any)
//! match, every `headers` entry is present (`Name`, or `Name: value`
//! exactly), and every `headerMatches` header has its value. Header names
//! are case-insensitive. The reference is `oracle::http_allows`; the
//! verdict corpus checks that both agree.

use regex::Regex;

use crate::api::HttpRule;

/// An HTTP request as the rules see it.
#[derive(Debug, Clone)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

#[derive(Debug, Clone)]
struct Compiled {
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    /// Lower-case name, and the exact value when one is required.
    headers: Vec<(String, Option<String>)>,
}

/// The rules of one redirect, compiled.
#[derive(Debug, Clone)]
pub struct HttpMatcher {
    rules: Vec<Compiled>,
}

/// A rule whose regex does not compile (validation rejects these first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} regex {pattern:?}: {message}")]
pub struct MatcherError {
    pub field: &'static str,
    pub pattern: String,
    pub message: String,
}

fn full(field: &'static str, re: &Option<String>) -> Result<Option<Regex>, MatcherError> {
    re.as_ref()
        .map(|p| {
            Regex::new(&format!("^(?:{p})$")).map_err(|e| MatcherError {
                field,
                pattern: p.clone(),
                message: e.to_string(),
            })
        })
        .transpose()
}

impl HttpMatcher {
    pub fn new(rules: &[HttpRule]) -> Result<Self, MatcherError> {
        let rules = rules
            .iter()
            .map(|r| {
                let mut headers: Vec<(String, Option<String>)> = r
                    .headers
                    .iter()
                    .map(|h| match h.split_once(':') {
                        Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(v.trim().to_string())),
                        None => (h.trim().to_ascii_lowercase(), None),
                    })
                    .collect();
                headers.extend(r.header_matches.iter().map(|m| {
                    (
                        m.name.to_ascii_lowercase(),
                        Some(m.value.clone().unwrap_or_default()),
                    )
                }));
                Ok(Compiled {
                    method: full("method", &r.method)?,
                    path: full("path", &r.path)?,
                    host: full("host", &r.host)?,
                    headers,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(HttpMatcher { rules })
    }

    pub fn allows(&self, req: &HttpRequest<'_>) -> bool {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let matches = |re: &Option<Regex>, v: &str| re.as_ref().is_none_or(|r| r.is_match(v));
        self.rules.iter().any(|r| {
            matches(&r.method, req.method)
                && matches(&r.path, req.path)
                && matches(&r.host, req.host)
                && r.headers.iter().all(|(n, want)| match (header(n), want) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(v), Some(w)) => v == w,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HeaderMatch;

    fn req<'a>(
        method: &'a str,
        path: &'a str,
        headers: &'a [(&'a str, &'a str)],
    ) -> HttpRequest<'a> {
        HttpRequest {
            method,
            path,
            host: "payments:8080",
            headers,
        }
    }

    #[test]
    fn the_seed_rule() {
        let m = HttpMatcher::new(&[HttpRule {
            method: Some("POST".into()),
            path: Some("/v1/charge".into()),
            ..HttpRule::default()
        }])
        .unwrap();
        assert!(m.allows(&req("POST", "/v1/charge", &[])));
        assert!(!m.allows(&req("GET", "/v1/charge", &[])));
        assert!(!m.allows(&req("POST", "/v1/refund", &[])));
        // Full matches: no prefix or suffix tricks.
        assert!(!m.allows(&req("POST", "/v1/charge/../refund", &[])));
        assert!(!m.allows(&req("XPOST", "/v1/charge", &[])));
    }

    #[test]
    fn regexes_hosts_and_headers() {
        let m = HttpMatcher::new(&[HttpRule {
            method: Some("GET|HEAD".into()),
            path: Some("/public/.*".into()),
            host: Some("api\\.example\\.com".into()),
            headers: vec!["X-Team: blue".into(), "X-Trace".into()],
            header_matches: vec![HeaderMatch {
                name: "Authorization".into(),
                value: Some("Bearer t".into()),
                ..HeaderMatch::default()
            }],
        }])
        .unwrap();
        let ok = [
            ("x-team", "blue"),
            ("X-TRACE", "1"),
            ("authorization", "Bearer t"),
        ];
        let r = |headers| HttpRequest {
            method: "HEAD",
            path: "/public/a",
            host: "api.example.com",
            headers,
        };
        let wrong = [("x-team", "red"), ok[1], ok[2]];
        assert!(m.allows(&r(&ok)));
        assert!(!m.allows(&r(&ok[..2])), "missing headerMatch");
        assert!(!m.allows(&r(&wrong)), "wrong value");
        let mut other_host = r(&ok);
        other_host.host = "api.example.com.evil";
        assert!(!m.allows(&other_host));
        assert!(HttpMatcher::new(&[HttpRule {
            path: Some("(".into()),
            ..HttpRule::default()
        }])
        .unwrap_err()
        .to_string()
        .contains("path regex"));
        // No rules: nothing passes; an empty rule: everything.
        assert!(!HttpMatcher::new(&[]).unwrap().allows(&r(&ok)));
        assert!(HttpMatcher::new(&[HttpRule::default()])
            .unwrap()
            .allows(&r(&[])));
    }
}
