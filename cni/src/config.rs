//! The network configuration the runtime gives on stdin (CNI spec,
//! "Section 1: Network configuration format" and the `args.cni.labels`
//! convention). Pure: bytes in, a typed [`NetConf`] or a [`CniError`] out.

use axoneme_api::cni_code;
use serde::Deserialize;
use serde_json::Value;

use crate::env::is_spec_identifier;
use crate::error::CniError;

/// The CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["0.4.0", "1.0.0"];
/// The version of results that have no configuration to take one from.
pub const DEFAULT_VERSION: &str = "1.0.0";
pub const DEFAULT_AGENT_SOCKET: &str = "/run/axoneme/agent.sock";
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The configuration, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// One of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    pub name: String,
    pub agent_socket: String,
    /// For the agent (identity and policy in place); not 0.
    pub timeout_ms: u64,
    /// From `args.cni.labels`, as `key=value` (the key may carry a source
    /// prefix such as `k8s:`).
    pub labels: Vec<String>,
    /// The previous plugin's result, as given (CHECK reads it).
    pub prev_result: Option<Value>,
}

/// The fields the plugin reads; all others are ignored (runtimes and
/// other tools add their own, e.g. `runtimeConfig`, `type`, `ipam`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    agent_socket: Option<String>,
    timeout_ms: Option<u64>,
    args: Option<RawArgs>,
    prev_result: Option<Value>,
}

#[derive(Deserialize)]
struct RawArgs {
    cni: Option<RawCniArgs>,
}

#[derive(Deserialize)]
struct RawCniArgs {
    labels: Option<Vec<RawLabel>>,
}

#[derive(Deserialize)]
struct RawLabel {
    key: String,
    value: String,
}

/// The configuration's `cniVersion` if stdin is a configuration with a
/// supported one, else [`DEFAULT_VERSION`]: the version of error results
/// (an error about the version itself cannot be written in that version).
pub fn result_version(stdin: &[u8]) -> &'static str {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            let v = v.get("cniVersion")?.as_str()?.to_string();
            SUPPORTED_VERSIONS.into_iter().find(|s| *s == v)
        })
        .unwrap_or(DEFAULT_VERSION)
}

/// Parses and checks stdin. Not JSON (or not an object) is code 6;
/// `cniVersion` or `name` missing, a field of the wrong type or an
/// invalid value is code 7; an unsupported `cniVersion` is code 1.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            cni_code::DECODE,
            "failed to decode content: the network configuration on stdin is not valid JSON",
            e.to_string(),
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(CniError::new(
            cni_code::DECODE,
            "failed to decode content: the network configuration on stdin is not a JSON object",
            "",
        ));
    };

    // The version first: a configuration of another version may differ
    // in any other field.
    let cni_version = match obj.get("cniVersion") {
        None | Some(Value::Null) => {
            return Err(CniError::config(
                "invalid network configuration: cniVersion is missing",
                "",
            ))
        }
        Some(Value::String(s)) if s.is_empty() => {
            return Err(CniError::config(
                "invalid network configuration: cniVersion is empty",
                "",
            ))
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(CniError::config(
                "invalid network configuration: cniVersion must be a string",
                format!("got {other}"),
            ))
        }
    };
    check_version(&cni_version)?;

    let raw: RawConf = serde_path_to_error::deserialize(&value).map_err(|e| field_error("", e))?;

    let name = match raw.name {
        None => {
            return Err(CniError::config(
                "invalid network configuration: name is missing",
                "",
            ))
        }
        Some(n) if !is_spec_identifier(&n) => {
            return Err(CniError::config(
                format!(
                    "invalid network configuration: name {n:?} must start with a letter or \
                     digit and contain only letters, digits, '_', '.' and '-'"
                ),
                "",
            ))
        }
        Some(n) => n,
    };

    let agent_socket = match raw.agent_socket {
        None => DEFAULT_AGENT_SOCKET.to_string(),
        Some(s) if s.is_empty() => {
            return Err(CniError::config(
                "invalid network configuration: agentSocket is empty",
                "",
            ))
        }
        Some(s) => s,
    };

    let timeout_ms = match raw.timeout_ms {
        None => DEFAULT_TIMEOUT_MS,
        Some(0) => {
            return Err(CniError::config(
                "invalid network configuration: timeoutMs must be more than 0",
                "",
            ))
        }
        Some(t) => t,
    };

    let raw_labels = raw
        .args
        .and_then(|a| a.cni)
        .and_then(|c| c.labels)
        .unwrap_or_default();
    let mut labels = Vec::with_capacity(raw_labels.len());
    for (i, l) in raw_labels.into_iter().enumerate() {
        if l.key.is_empty() || l.key.contains('=') {
            return Err(CniError::config(
                format!(
                    "invalid network configuration: args.cni.labels[{i}].key {:?} \
                     must be non-empty and contain no '='",
                    l.key
                ),
                "",
            ));
        }
        labels.push(format!("{}={}", l.key, l.value));
    }

    Ok(NetConf {
        cni_version,
        name,
        agent_socket,
        timeout_ms,
        labels,
        prev_result: raw.prev_result,
    })
}

/// Code 7 naming the field (`args.cni.labels[0].value`) that does not
/// deserialize; `prefix` is where the deserialized value sits.
fn field_error(prefix: &str, e: serde_path_to_error::Error<serde_json::Error>) -> CniError {
    let path = e.path().to_string();
    let field = match (prefix, path.as_str()) {
        ("", p) => p.to_string(),
        (pre, ".") => pre.to_string(),
        (pre, p) => format!("{pre}.{p}"),
    };
    CniError::config(
        format!("invalid network configuration: field {field}"),
        e.into_inner().to_string(),
    )
}

/// Code 1 unless `v` is one of [`SUPPORTED_VERSIONS`].
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            cni_code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI version {v:?}: this plugin supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
            "",
        ))
    }
}

#[derive(Deserialize)]
struct PrevResult {
    #[serde(default)]
    ips: Vec<PrevIp>,
}

#[derive(Deserialize)]
struct PrevIp {
    address: String,
}

/// The addresses (`prevResult.ips[].address`) CHECK asks the agent
/// about. No `prevResult` is code 7; a malformed one too.
pub fn prev_result_addresses(conf: &NetConf) -> Result<Vec<String>, CniError> {
    let prev = match &conf.prev_result {
        None | Some(Value::Null) => {
            return Err(CniError::config(
                "invalid network configuration: CHECK needs prevResult",
                "",
            ))
        }
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(CniError::config(
                "invalid network configuration: field prevResult must be an object",
                format!("got {other}"),
            ))
        }
    };
    let prev: PrevResult =
        serde_path_to_error::deserialize(prev).map_err(|e| field_error("prevResult", e))?;
    Ok(prev.ips.into_iter().map(|ip| ip.address).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> Result<NetConf, CniError> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_json(json!({"cniVersion": "1.0.0", "name": "axoneme"})).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "axoneme");
        assert_eq!(c.agent_socket, DEFAULT_AGENT_SOCKET);
        assert_eq!(c.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(c.labels.is_empty());
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn full_config_and_unknown_fields() {
        let c = parse_json(json!({
            "cniVersion": "0.4.0",
            "name": "axoneme",
            "type": "axoneme-cni",
            "agentSocket": "/run/axoneme/node-1/agent.sock",
            "timeoutMs": 2500,
            "runtimeConfig": {"portMappings": []},
            "somethingElse": [1, 2, 3],
            "args": {"cni": {"labels": [
                {"key": "app", "value": "web"},
                {"key": "k8s:tier", "value": "front"},
                {"key": "empty", "value": ""}
            ], "ips": ["10.0.0.1"]}, "other": true},
            "prevResult": {"cniVersion": "0.4.0", "ips": []}
        }))
        .unwrap();
        assert_eq!(c.cni_version, "0.4.0");
        assert_eq!(c.agent_socket, "/run/axoneme/node-1/agent.sock");
        assert_eq!(c.timeout_ms, 2500);
        assert_eq!(c.labels, ["app=web", "k8s:tier=front", "empty="]);
        assert!(c.prev_result.is_some());
    }

    #[test]
    fn labels_absent_at_any_level() {
        for v in [
            json!({"cniVersion": "1.0.0", "name": "n", "args": {}}),
            json!({"cniVersion": "1.0.0", "name": "n", "args": {"cni": {}}}),
            json!({"cniVersion": "1.0.0", "name": "n", "args": {"cni": {"labels": null}}}),
            json!({"cniVersion": "1.0.0", "name": "n", "args": null}),
        ] {
            assert!(parse_json(v).unwrap().labels.is_empty());
        }
    }

    #[test]
    fn malformed_labels_are_code_7_naming_the_field() {
        for (v, field) in [
            (json!({"labels": {"app": "web"}}), "args.cni.labels"),
            (json!({"labels": ["app=web"]}), "args.cni.labels[0]"),
            (json!({"labels": [{"key": "app"}]}), "args.cni.labels[0]"),
            (
                json!({"labels": [{"key": "a", "value": "b"}, {"key": "x", "value": 1}]}),
                "args.cni.labels[1].value",
            ),
            (
                json!({"labels": [{"key": "", "value": "b"}]}),
                "args.cni.labels[0].key",
            ),
            (
                json!({"labels": [{"key": "a=b", "value": "c"}]}),
                "args.cni.labels[0].key",
            ),
        ] {
            let conf = json!({"cniVersion": "1.0.0", "name": "n", "args": {"cni": v}});
            let e = parse_json(conf).unwrap_err();
            assert_eq!(e.code, 7, "{e:?}");
            assert!(e.msg.contains(field), "{} does not name {field}", e.msg);
        }
    }

    #[test]
    fn not_json_is_code_6() {
        for bad in [
            &b""[..],
            b"{",
            b"not json",
            b"{\"cniVersion\": }",
            b"\xff\xfe",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, 6, "{bad:?}");
            assert!(e.msg.starts_with("failed to decode content"));
            assert!(!e.details.is_empty());
        }
        for bad in ["[]", "\"1.0.0\"", "null", "42"] {
            assert_eq!(parse(bad.as_bytes()).unwrap_err().code, 6, "{bad}");
        }
    }

    #[test]
    fn missing_or_bad_required_fields_are_code_7() {
        for (v, needle) in [
            (json!({"name": "n"}), "cniVersion"),
            (json!({"cniVersion": null, "name": "n"}), "cniVersion"),
            (json!({"cniVersion": "", "name": "n"}), "cniVersion"),
            (json!({"cniVersion": 1, "name": "n"}), "cniVersion"),
            (json!({"cniVersion": "1.0.0"}), "name"),
            (json!({"cniVersion": "1.0.0", "name": ""}), "name"),
            (json!({"cniVersion": "1.0.0", "name": "-bad"}), "name"),
            (json!({"cniVersion": "1.0.0", "name": 3}), "name"),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "agentSocket": ""}),
                "agentSocket",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "agentSocket": 1}),
                "agentSocket",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "timeoutMs": 0}),
                "timeoutMs",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "timeoutMs": -1}),
                "timeoutMs",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "timeoutMs": "5"}),
                "timeoutMs",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "args": []}),
                "args",
            ),
        ] {
            let e = parse_json(v.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{v}: {e:?}");
            assert!(e.msg.contains(needle), "{v}: {}", e.msg);
        }
    }

    #[test]
    fn unsupported_version_is_code_1_before_other_checks() {
        for v in ["9.9.9", "0.3.1", "1.1.0", "1.0"] {
            // No name: the version is reported first.
            let e = parse_json(json!({"cniVersion": v})).unwrap_err();
            assert_eq!(e.code, 1);
            assert!(
                e.msg.contains(v) && e.msg.contains("0.4.0, 1.0.0"),
                "{}",
                e.msg
            );
        }
    }

    #[test]
    fn result_version_falls_back_to_1_0_0() {
        assert_eq!(result_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(result_version(br#"{"cniVersion":"1.0.0"}"#), "1.0.0");
        assert_eq!(result_version(br#"{"cniVersion":"9.9.9"}"#), "1.0.0");
        assert_eq!(result_version(br#"{"cniVersion":4}"#), "1.0.0");
        assert_eq!(result_version(b"garbage"), "1.0.0");
        assert_eq!(result_version(b""), "1.0.0");
        assert_eq!(result_version(b"[]"), "1.0.0");
    }

    #[test]
    fn prev_result_addresses_from_ips() {
        let c = parse_json(json!({
            "cniVersion": "1.0.0", "name": "n",
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "lxc1"}, {"name": "eth0", "sandbox": "/ns"}],
                "ips": [
                    {"address": "10.200.1.7/32", "gateway": "10.200.1.1", "interface": 1},
                    {"address": "fd00::ac8:107/128", "gateway": "fe80::1", "interface": 1}
                ]
            }
        }))
        .unwrap();
        assert_eq!(
            prev_result_addresses(&c).unwrap(),
            ["10.200.1.7/32", "fd00::ac8:107/128"]
        );
        // No ips: nothing to compare, the agent decides.
        let c = parse_json(json!({"cniVersion": "1.0.0", "name": "n", "prevResult": {}})).unwrap();
        assert!(prev_result_addresses(&c).unwrap().is_empty());
    }

    #[test]
    fn prev_result_missing_or_malformed_is_code_7() {
        for prev in [None, Some(Value::Null)] {
            let mut c = parse_json(json!({"cniVersion": "1.0.0", "name": "n"})).unwrap();
            c.prev_result = prev;
            let e = prev_result_addresses(&c).unwrap_err();
            assert_eq!(e.code, 7);
            assert!(e.msg.contains("CHECK needs prevResult"));
        }
        for (prev, field) in [
            (json!([]), "prevResult"),
            (json!({"ips": {}}), "prevResult.ips"),
            (json!({"ips": [{"gateway": "x"}]}), "prevResult.ips[0]"),
            (
                json!({"ips": [{"address": 7}]}),
                "prevResult.ips[0].address",
            ),
        ] {
            let c = parse_json(json!({"cniVersion": "1.0.0", "name": "n", "prevResult": prev}))
                .unwrap();
            let e = prev_result_addresses(&c).unwrap_err();
            assert_eq!(e.code, 7);
            assert!(e.msg.contains(field), "{} does not name {field}", e.msg);
        }
    }
}
