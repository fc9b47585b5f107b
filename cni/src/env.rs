//! The CNI_* environment (CNI spec, "Parameters"): pure functions over a
//! map of the variables, so tests need no process environment.

use std::collections::HashMap;
use std::ffi::OsString;

use crate::error::CniError;

/// The CNI_* variables of the process (only those; other variables are
/// none of the plugin's business).
pub type EnvMap = HashMap<String, OsString>;

pub const CNI_COMMAND: &str = "CNI_COMMAND";
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
pub const CNI_NETNS: &str = "CNI_NETNS";
pub const CNI_IFNAME: &str = "CNI_IFNAME";
pub const CNI_ARGS: &str = "CNI_ARGS";

/// Keeps the CNI_* variables of `vars` (as `std::env::vars_os()` gives
/// them). Values stay `OsString`: a non-UTF-8 value is an error only if
/// the plugin uses that variable.
pub fn from_os(vars: impl IntoIterator<Item = (OsString, OsString)>) -> EnvMap {
    vars.into_iter()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with("CNI_").then_some((k, v))
        })
        .collect()
}

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Add,
    Del,
    Check,
    Version,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Add => "ADD",
            CommandKind::Del => "DEL",
            CommandKind::Check => "CHECK",
            CommandKind::Version => "VERSION",
        }
    }
}

/// A variable's value: `None` when unset or empty (the spec treats both
/// as missing), an error when it is not UTF-8.
pub fn get<'a>(env: &'a EnvMap, name: &str) -> Result<Option<&'a str>, CniError> {
    match env.get(name) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Some("") => Ok(None),
            Some(s) => Ok(Some(s)),
            None => Err(CniError::env(format!("{name} is not valid UTF-8"))),
        },
    }
}

/// A variable `cmd` needs: missing or empty is code 4 naming it.
pub fn required<'a>(env: &'a EnvMap, name: &str, cmd: CommandKind) -> Result<&'a str, CniError> {
    get(env, name)?
        .ok_or_else(|| CniError::env(format!("{name} is not set (required for {})", cmd.as_str())))
}

/// CNI_COMMAND: ADD, DEL, CHECK or VERSION (exactly; the spec's names are
/// upper case).
pub fn command(env: &EnvMap) -> Result<CommandKind, CniError> {
    match get(env, CNI_COMMAND)? {
        None => Err(CniError::env(format!(
            "{CNI_COMMAND} is not set (expected ADD, DEL, CHECK or VERSION)"
        ))),
        Some("ADD") => Ok(CommandKind::Add),
        Some("DEL") => Ok(CommandKind::Del),
        Some("CHECK") => Ok(CommandKind::Check),
        Some("VERSION") => Ok(CommandKind::Version),
        Some(other) => Err(CniError::env(format!(
            "unknown {CNI_COMMAND} {other:?} (expected ADD, DEL, CHECK or VERSION)"
        ))),
    }
}

pub use axoneme_api::names::is_spec_identifier;

/// CNI_CONTAINERID as the spec defines it.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    axoneme_api::names::check_container_id(id)
        .map_err(|why| CniError::env(format!("invalid {CNI_CONTAINERID} {id:?}: {why}")))
}

/// CNI_IFNAME as the spec (and Linux) allow it.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    axoneme_api::names::check_interface_name(name)
        .map_err(|why| CniError::env(format!("invalid {CNI_IFNAME} {name:?}: {why}")))
}

/// What the plugin takes from CNI_ARGS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// K8S_POD_NAMESPACE.
    pub namespace: Option<String>,
    /// K8S_POD_NAME.
    pub pod_name: Option<String>,
    /// K8S_POD_UID (the agent checks it against the Pod it finds).
    pub pod_uid: Option<String>,
}

/// Parses CNI_ARGS, `K1=V1;K2=V2`. Unknown keys are ignored (the
/// `IgnoreUnknown` convention: runtimes pass keys for other plugins), a
/// value may contain `=` (split at the first), empty segments (`A=1;`)
/// are skipped, a later duplicate wins; a pair without `=` or with an
/// empty key is code 4.
pub fn parse_cni_args(s: &str) -> Result<CniArgs, CniError> {
    let mut args = CniArgs::default();
    for pair in s.split(';') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => (k, v),
            _ => {
                return Err(CniError::env(format!(
                    "invalid {CNI_ARGS} pair {pair:?}: expected KEY=VALUE"
                )))
            }
        };
        let value = (!value.is_empty()).then(|| value.to_string());
        match key {
            "K8S_POD_NAMESPACE" => args.namespace = value,
            "K8S_POD_NAME" => args.pod_name = value,
            "K8S_POD_UID" => args.pod_uid = value,
            _ => {}
        }
    }
    Ok(args)
}

/// An environment from string pairs (tests).
#[cfg(test)]
pub fn env_of(pairs: &[(&str, &str)]) -> EnvMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        env_of(pairs)
    }

    #[test]
    fn from_os_keeps_only_cni_variables() {
        let m = from_os(vec![
            (OsString::from("PATH"), OsString::from("/bin")),
            (OsString::from("CNI_IFNAME"), OsString::from("eth0")),
        ]);
        assert_eq!(m.len(), 1);
        assert_eq!(get(&m, CNI_IFNAME).unwrap(), Some("eth0"));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_value_is_code_4_naming_the_variable() {
        use std::os::unix::ffi::OsStringExt;
        let mut m = EnvMap::new();
        m.insert(CNI_NETNS.into(), OsString::from_vec(vec![0x2f, 0xff]));
        let e = get(&m, CNI_NETNS).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"));
    }

    #[test]
    fn commands() {
        for (s, k) in [
            ("ADD", CommandKind::Add),
            ("DEL", CommandKind::Del),
            ("CHECK", CommandKind::Check),
            ("VERSION", CommandKind::Version),
        ] {
            assert_eq!(command(&env(&[(CNI_COMMAND, s)])).unwrap(), k);
        }
        let e = command(&env(&[])).unwrap_err();
        assert_eq!((e.code, e.msg.contains(CNI_COMMAND)), (4, true));
        let e = command(&env(&[(CNI_COMMAND, "")])).unwrap_err();
        assert_eq!(e.code, 4);
        let e = command(&env(&[(CNI_COMMAND, "add")])).unwrap_err();
        assert_eq!((e.code, e.msg.contains("\"add\"")), (4, true));
        let e = command(&env(&[(CNI_COMMAND, "GC")])).unwrap_err();
        assert_eq!(e.code, 4);
    }

    #[test]
    fn required_treats_empty_as_missing() {
        let m = env(&[(CNI_NETNS, "")]);
        let e = required(&m, CNI_NETNS, CommandKind::Add).unwrap_err();
        assert_eq!(e.code, 4);
        assert_eq!(e.msg, "CNI_NETNS is not set (required for ADD)");
    }

    #[test]
    fn container_ids() {
        for ok in ["a", "0", "abc123", "a_b.c-d", "9f86d081884c7d65"] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", ".a", "a/b", "a b", "a;b", "é", "a\n"] {
            let e = validate_container_id(bad).unwrap_err();
            assert_eq!(e.code, 4, "{bad:?}");
            assert!(e.msg.contains(CNI_CONTAINERID));
        }
    }

    #[test]
    fn ifnames() {
        for ok in ["eth0", "net1", "a", "123456789012345"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["1234567890123456", ".", "..", "a/b", "a:b", "a b", "a\tb"] {
            let e = validate_ifname(bad).unwrap_err();
            assert_eq!(e.code, 4, "{bad:?}");
            assert!(e.msg.contains(CNI_IFNAME));
        }
    }

    #[test]
    fn cni_args_kubernetes_keys() {
        let a = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234",
        )
        .unwrap();
        assert_eq!(a.namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.pod_uid.as_deref(), Some("1234"));
    }

    #[test]
    fn cni_args_edge_cases() {
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
        assert_eq!(parse_cni_args(";;").unwrap(), CniArgs::default());
        // Trailing separator, a value with '=', an empty value, a duplicate.
        let a = parse_cni_args("K8S_POD_NAME=a=b;K8S_POD_NAMESPACE=;").unwrap();
        assert_eq!(a.pod_name.as_deref(), Some("a=b"));
        assert_eq!(a.namespace, None);
        let a = parse_cni_args("K8S_POD_NAME=first;K8S_POD_NAME=second").unwrap();
        assert_eq!(a.pod_name.as_deref(), Some("second"));
        // Keys are case-sensitive: an unknown key is ignored.
        assert_eq!(
            parse_cni_args("k8s_pod_name=x").unwrap(),
            CniArgs::default()
        );
    }

    #[test]
    fn cni_args_malformed_pairs_are_code_4() {
        for bad in ["K8S_POD_NAME", "A=1;junk", "=value", "A=1;;B"] {
            let e = parse_cni_args(bad).unwrap_err();
            assert_eq!(e.code, 4, "{bad:?}");
            assert!(e.msg.contains(CNI_ARGS), "{}", e.msg);
        }
    }
}
