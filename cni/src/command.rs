//! The parse layer: the CNI_* environment and stdin become one typed
//! [`Command`] (or a [`CniError`]). Pure; nothing here talks to the agent.

use std::path::PathBuf;
use std::time::Duration;

use axoneme_api::{AddRequest, CheckRequest, DelRequest};

use crate::config::{self, NetConf};
use crate::env::{self, CommandKind, EnvMap, CNI_ARGS, CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS};
use crate::error::CniError;

/// How much longer than the agent's own deadline (`timeoutMs`) the plugin
/// waits for its answer, so the agent's error (with its reason) arrives
/// before the plugin gives up.
pub const CLIENT_TIMEOUT_MARGIN_MS: u64 = 5_000;

/// Where and how long to ask the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTarget {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl AgentTarget {
    fn from_conf(conf: &NetConf) -> Self {
        AgentTarget {
            socket: PathBuf::from(&conf.agent_socket),
            timeout: Duration::from_millis(
                conf.timeout_ms.saturating_add(CLIENT_TIMEOUT_MARGIN_MS),
            ),
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the version info; needs nothing else.
    Version,
    Add {
        /// The configuration's version: the result's.
        cni_version: String,
        agent: AgentTarget,
        request: AddRequest,
    },
    Del {
        agent: AgentTarget,
        request: DelRequest,
    },
    Check {
        agent: AgentTarget,
        request: CheckRequest,
    },
}

/// Parses an invocation. The order of checks: CNI_COMMAND, the
/// command's variables (code 4), then stdin (codes 6, 7, 1), then what
/// one command needs from the configuration (CHECK's prevResult, 7).
pub fn parse(env: &EnvMap, stdin: &[u8]) -> Result<Command, CniError> {
    let kind = env::command(env)?;
    match kind {
        // VERSION ignores stdin: its answer is the plugin's own.
        CommandKind::Version => Ok(Command::Version),
        CommandKind::Add => {
            let (container_id, netns, ifname) = container_env(env, kind)?;
            let args = env::parse_cni_args(env::get(env, CNI_ARGS)?.unwrap_or(""))?;
            let conf = config::parse(stdin)?;
            // In chained mode prevResult is the previous plugin's result;
            // this plugin makes the pod's interface itself and ignores it.
            Ok(Command::Add {
                cni_version: conf.cni_version.clone(),
                agent: AgentTarget::from_conf(&conf),
                request: AddRequest {
                    container_id,
                    netns,
                    ifname,
                    labels: conf.labels,
                    namespace: args.namespace,
                    pod_name: args.pod_name,
                    pod_uid: args.pod_uid,
                    timeout_ms: Some(conf.timeout_ms),
                },
            })
        }
        CommandKind::Check => {
            let (container_id, netns, ifname) = container_env(env, kind)?;
            // Nothing of CNI_ARGS is used, but malformed is malformed.
            env::parse_cni_args(env::get(env, CNI_ARGS)?.unwrap_or(""))?;
            let conf = config::parse(stdin)?;
            let addresses = config::prev_result_addresses(&conf)?;
            Ok(Command::Check {
                agent: AgentTarget::from_conf(&conf),
                request: CheckRequest {
                    container_id,
                    netns,
                    ifname,
                    addresses,
                },
            })
        }
        CommandKind::Del => {
            // DEL must be hard to fail (the runtime also calls it to clean
            // up after a failed ADD): CNI_NETNS may be empty (the netns
            // is gone), CNI_ARGS is not read and CNI_IFNAME is only
            // required, not checked; the container ID is, since it
            // names what to delete.
            let container_id = env::required(env, CNI_CONTAINERID, kind)?.to_string();
            env::validate_container_id(&container_id)?;
            let ifname = env::required(env, CNI_IFNAME, kind)?.to_string();
            let netns = env::get(env, CNI_NETNS)?.map(str::to_string);
            let conf = config::parse(stdin)?;
            Ok(Command::Del {
                agent: AgentTarget::from_conf(&conf),
                request: DelRequest {
                    container_id,
                    ifname,
                    netns,
                },
            })
        }
    }
}

/// CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME, all required and checked.
fn container_env(env: &EnvMap, kind: CommandKind) -> Result<(String, String, String), CniError> {
    let container_id = env::required(env, CNI_CONTAINERID, kind)?;
    env::validate_container_id(container_id)?;
    let netns = env::required(env, CNI_NETNS, kind)?;
    let ifname = env::required(env, CNI_IFNAME, kind)?;
    env::validate_ifname(ifname)?;
    Ok((container_id.into(), netns.into(), ifname.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        crate::env::env_of(pairs)
    }

    fn full_env(cmd: &str) -> EnvMap {
        env(&[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", "/var/run/netns/pod"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web",
            ),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"axoneme","type":"axoneme-cni",
        "agentSocket":"/tmp/a.sock","timeoutMs":3000,
        "args":{"cni":{"labels":[{"key":"k8s:app","value":"web"}]}}}"#;

    #[test]
    fn version_needs_nothing_else() {
        let e = env(&[("CNI_COMMAND", "VERSION")]);
        assert_eq!(parse(&e, b"").unwrap(), Command::Version);
        assert_eq!(parse(&e, b"garbage").unwrap(), Command::Version);
    }

    #[test]
    fn add_builds_the_request() {
        let Command::Add {
            cni_version,
            agent,
            request,
        } = parse(&full_env("ADD"), CONF.as_bytes()).unwrap()
        else {
            panic!("not an ADD");
        };
        assert_eq!(cni_version, "1.0.0");
        assert_eq!(agent.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(agent.timeout, Duration::from_millis(8000));
        assert_eq!(
            request,
            AddRequest {
                container_id: "c0ffee".into(),
                netns: "/var/run/netns/pod".into(),
                ifname: "eth0".into(),
                labels: vec!["k8s:app=web".into()],
                namespace: Some("ns1".into()),
                pod_name: Some("web".into()),
                pod_uid: None,
                timeout_ms: Some(3000),
            }
        );
    }

    #[test]
    fn huge_timeout_does_not_overflow() {
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "timeoutMs": u64::MAX});
        let Command::Add { agent, request, .. } =
            parse(&full_env("ADD"), conf.to_string().as_bytes()).unwrap()
        else {
            panic!("not an ADD");
        };
        assert_eq!(request.timeout_ms, Some(u64::MAX));
        assert_eq!(agent.timeout, Duration::from_millis(u64::MAX));
    }

    #[test]
    fn del_allows_empty_netns_and_ignores_cni_args() {
        let mut e = full_env("DEL");
        e.insert("CNI_NETNS".into(), OsString::new());
        e.insert("CNI_ARGS".into(), "garbage".into());
        let Command::Del { request, .. } = parse(&e, CONF.as_bytes()).unwrap() else {
            panic!("not a DEL");
        };
        assert_eq!(
            request,
            DelRequest {
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
                netns: None,
            }
        );
        e.remove("CNI_NETNS");
        assert!(parse(&e, CONF.as_bytes()).is_ok());
        let Command::Del { request, .. } = parse(&full_env("DEL"), CONF.as_bytes()).unwrap() else {
            panic!("not a DEL");
        };
        assert_eq!(request.netns.as_deref(), Some("/var/run/netns/pod"));
    }

    #[test]
    fn missing_variables_name_themselves() {
        for (cmd, var) in [
            ("ADD", "CNI_CONTAINERID"),
            ("ADD", "CNI_NETNS"),
            ("ADD", "CNI_IFNAME"),
            ("CHECK", "CNI_CONTAINERID"),
            ("CHECK", "CNI_NETNS"),
            ("CHECK", "CNI_IFNAME"),
            ("DEL", "CNI_CONTAINERID"),
            ("DEL", "CNI_IFNAME"),
        ] {
            for unset in [true, false] {
                let mut e = full_env(cmd);
                if unset {
                    e.remove(var);
                } else {
                    e.insert(var.into(), OsString::new());
                }
                let err = parse(&e, CONF.as_bytes()).unwrap_err();
                assert_eq!(err.code, 4, "{cmd} {var}");
                assert!(
                    err.msg.contains(var) && err.msg.contains(cmd),
                    "{}",
                    err.msg
                );
            }
        }
    }

    #[test]
    fn environment_is_checked_before_stdin() {
        let mut e = full_env("ADD");
        e.remove("CNI_NETNS");
        assert_eq!(parse(&e, b"not json").unwrap_err().code, 4);
        let e = full_env("ADD");
        assert_eq!(parse(&e, b"not json").unwrap_err().code, 6);
    }

    #[test]
    fn bad_cni_args_on_add_and_check() {
        for cmd in ["ADD", "CHECK"] {
            let mut e = full_env(cmd);
            e.insert("CNI_ARGS".into(), "K8S_POD_NAME".into());
            let err = parse(&e, CONF.as_bytes()).unwrap_err();
            assert_eq!(err.code, 4);
            assert!(err.msg.contains("CNI_ARGS"));
        }
    }

    #[test]
    fn check_takes_addresses_from_prev_result() {
        let conf = json!({
            "cniVersion": "0.4.0", "name": "n",
            "prevResult": {"ips": [{"version": "4", "address": "10.0.0.5/32", "interface": 1}]}
        });
        let Command::Check { request, .. } =
            parse(&full_env("CHECK"), conf.to_string().as_bytes()).unwrap()
        else {
            panic!("not a CHECK");
        };
        assert_eq!(
            request,
            CheckRequest {
                container_id: "c0ffee".into(),
                netns: "/var/run/netns/pod".into(),
                ifname: "eth0".into(),
                addresses: vec!["10.0.0.5/32".into()],
            }
        );
        let err = parse(&full_env("CHECK"), CONF.as_bytes()).unwrap_err();
        assert_eq!(err.code, 7);
        assert!(err.msg.contains("CHECK needs prevResult"));
    }

    #[test]
    fn unsupported_version_on_every_command() {
        let conf = br#"{"cniVersion":"9.9.9","name":"n"}"#;
        for cmd in ["ADD", "DEL", "CHECK"] {
            assert_eq!(parse(&full_env(cmd), conf).unwrap_err().code, 1, "{cmd}");
        }
    }
}
