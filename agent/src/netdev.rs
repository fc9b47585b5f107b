//! Pod interfaces, made with iproute2 (`ip -batch`, one process per
//! namespace) entered with `nsenter`: a veth pair whose pod end is moved
//! into the pod's namespace, /32 and /128 addresses, and routes via the
//! link-local gateways every host-side veth carries (169.254.1.1 and
//! fe80::1, answered by the node itself), as Cilium's veth mode does.
//!
//! Node routes to other nodes' pod CIDRs live here too.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::IpNet;

pub const GATEWAY_V4: &str = "169.254.1.1";
pub const GATEWAY_V6: &str = "fe80::1";

#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{0}")]
    Unexpected(String),
}

/// A network namespace by path; `None` is the agent's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ns(pub Option<PathBuf>);

impl Ns {
    /// The path another namespace can name this one by.
    pub fn path(&self) -> PathBuf {
        self.0
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/proc/{}/ns/net", std::process::id())))
    }

    fn command(&self, args: &[&str]) -> Command {
        match &self.0 {
            Some(p) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", p.display())).arg("--").args(args);
                c
            }
            None => {
                let mut c = Command::new(args[0]);
                c.args(&args[1..]);
                c
            }
        }
    }

    /// Runs `ip -batch -` with these lines; with `force`, errors of single
    /// lines do not stop the rest (for cleanup).
    pub fn ip_batch(&self, lines: &[String], force: bool) -> Result<(), NetdevError> {
        let mut args = vec!["ip"];
        if force {
            args.push("-force");
        }
        args.extend(["-batch", "-"]);
        let mut cmd = self.command(&args);
        let what = format!("ip -batch in {}", self.path().display());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetdevError::Spawn {
                command: what.clone(),
                source,
            })?;
        let input = lines.join("\n") + "\n";
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|source| NetdevError::Spawn {
                    command: what.clone(),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| NetdevError::Spawn {
                command: what.clone(),
                source,
            })?;
        if !out.status.success() && !force {
            return Err(NetdevError::Failed {
                command: format!("{what}: {}", lines.join("; ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Runs a command in the namespace; its stdout, or an error with its
    /// stderr.
    fn output(&self, args: &[&str]) -> Result<Vec<u8>, NetdevError> {
        let command = args.join(" ");
        let out = self
            .command(args)
            .output()
            .map_err(|source| NetdevError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(NetdevError::Failed {
                command,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    /// Runs a command in the namespace; fails with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<(), NetdevError> {
        self.output(args).map(drop)
    }

    /// `ip -j ARGS`, parsed.
    fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value, NetdevError> {
        let mut all = vec!["ip", "-j"];
        all.extend_from_slice(args);
        let out = self.output(&all)?;
        serde_json::from_slice(&out)
            .map_err(|e| NetdevError::Unexpected(format!("{}: {e}", all.join(" "))))
    }

    /// The MAC address of `dev`.
    pub fn mac(&self, dev: &str) -> Result<String, NetdevError> {
        let v = self.ip_json(&["link", "show", "dev", dev])?;
        v.get(0)
            .and_then(|l| l.get("address"))
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .ok_or_else(|| NetdevError::Unexpected(format!("no MAC address on {dev}")))
    }

    /// The global addresses on `dev` (CIDR notation).
    pub fn addresses(&self, dev: &str) -> Result<Vec<IpNet>, NetdevError> {
        let v = self.ip_json(&["addr", "show", "dev", dev])?;
        let mut out = Vec::new();
        for info in v
            .get(0)
            .and_then(|l| l.get("addr_info"))
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            if info.get("scope").and_then(|s| s.as_str()) != Some("global") {
                continue;
            }
            let (Some(local), Some(len)) = (
                info.get("local").and_then(|s| s.as_str()),
                info.get("prefixlen").and_then(|s| s.as_u64()),
            ) else {
                continue;
            };
            if let Ok(n) = format!("{local}/{len}").parse() {
                out.push(n);
            }
        }
        Ok(out)
    }

    pub fn link_exists(&self, dev: &str) -> bool {
        self.ip_json(&["link", "show", "dev", dev]).is_ok()
    }
}

/// The host-side name of a container's veth: `axo` and 11 hex digits of a
/// hash of the container ID and interface (Cilium: `lxc` + hash).
pub fn host_interface(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across runs and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("axo{:011x}", h & 0xfff_ffff_ffff)
}

/// What an endpoint's interface setup produced.
#[derive(Debug, Clone)]
pub struct Plumbed {
    pub host_mac: String,
    pub mac: String,
}

/// Creates the veth pair, moves `ifname` into `pod`, and sets addresses
/// and routes on both ends. On failure, whatever was created is removed.
pub fn plumb(
    node: &Ns,
    pod: &Path,
    host_if: &str,
    ifname: &str,
    addrs: &[IpAddr],
) -> Result<Plumbed, NetdevError> {
    let pod_ns = Ns(Some(pod.to_path_buf()));
    let mut in_pod = vec![format!(
        "link add {ifname} type veth peer name {host_if} netns {}",
        node.path().display()
    )];
    let mut in_node = vec![
        format!("link set {host_if} up"),
        format!("addr add {GATEWAY_V4}/32 dev {host_if}"),
    ];
    let mut pod_tail = vec![
        format!("link set {ifname} up"),
        format!("route add {GATEWAY_V4} dev {ifname} scope link"),
        format!("route add default via {GATEWAY_V4} dev {ifname}"),
    ];
    for a in addrs {
        match a {
            IpAddr::V4(_) => {
                in_pod.push(format!("addr add {a}/32 dev {ifname}"));
                in_node.push(format!("route add {a}/32 dev {host_if}"));
            }
            IpAddr::V6(_) => {
                in_pod.push(format!("addr add {a}/128 dev {ifname} nodad"));
                in_node.push(format!("addr add {GATEWAY_V6}/64 dev {host_if} nodad"));
                in_node.push(format!("route add {a}/128 dev {host_if}"));
                pod_tail.push(format!("route add default via {GATEWAY_V6} dev {ifname}"));
            }
        }
    }
    // The pod's default route needs the link up first.
    in_pod.extend(pod_tail);
    let result = pod_ns
        .ip_batch(&in_pod, false)
        .and_then(|()| node.ip_batch(&in_node, false))
        .and_then(|()| {
            Ok(Plumbed {
                host_mac: node.mac(host_if)?,
                mac: pod_ns.mac(ifname)?,
            })
        });
    if result.is_err() {
        unplumb(node, host_if);
    }
    result
}

/// Removes the host-side veth (its peer goes with it). Missing is fine.
pub fn unplumb(node: &Ns, host_if: &str) {
    let _ = node.ip_batch(&[format!("link del {host_if}")], true);
}

/// Routes this node installs towards other nodes' pod CIDRs (direct
/// routing over the underlay).
pub fn route_lines(routes: &[(IpNet, IpAddr)], add: bool) -> Vec<String> {
    routes
        .iter()
        .map(|(net, via)| {
            // `ip -batch` takes no per-line `-6`: the family follows the
            // addresses.
            if add {
                format!("route replace {net} via {via}")
            } else {
                format!("route del {net} via {via}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_are_stable_and_short() {
        let a = host_interface("abc", "eth0");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("axo"));
        assert_eq!(a, host_interface("abc", "eth0"));
        assert_ne!(a, host_interface("abc", "eth1"));
        assert_ne!(a, host_interface("abd", "eth0"));
        axoneme_identity::check_interface_name(&a).unwrap();
    }

    #[test]
    fn route_lines_per_family() {
        let r = [
            (
                "10.200.2.0/24".parse().unwrap(),
                "192.168.77.2".parse().unwrap(),
            ),
            (
                "fd00:a0::200/120".parse().unwrap(),
                "fd77::2".parse().unwrap(),
            ),
        ];
        assert_eq!(
            route_lines(&r, true),
            vec![
                "route replace 10.200.2.0/24 via 192.168.77.2",
                "route replace fd00:a0::200/120 via fd77::2"
            ]
        );
        assert_eq!(
            route_lines(&r[..1], false),
            vec!["route del 10.200.2.0/24 via 192.168.77.2"]
        );
    }
}
