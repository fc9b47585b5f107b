//! Network namespaces for nodes and pods, made with iproute2 and removed on
//! drop, and a way to run code inside one (a thread that enters it).
//!
//! A node is a namespace with forwarding on; a pod is a namespace with one
//! veth (`eth0`) whose peer sits in the node's namespace, a /32 address,
//! and a default route via the link-local gateway 169.254.1.1, which every
//! host-side veth carries (so the node answers ARP for it). Traffic never
//! leaves the namespaces the test created.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Runs a command; fails with its stderr if it does not succeed.
pub fn run(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A network namespace, deleted on drop (unless `AXONEME_KEEP`).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        run(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Keeps the namespace after `self` is gone; returns its name.
    pub fn leak(self) -> String {
        let name = self.name.clone();
        std::mem::forget(self);
        name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// `ip netns exec <name> ARGS` (a command, for spawning).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ])?;
        Ok(())
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens live
    /// there) and returns its result.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                enter_netns(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
        })
    }

    /// Spawns a thread that lives inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = self.path();
        std::thread::spawn(move || -> Result<T> {
            enter_netns(&path)?;
            Ok(f())
        })
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns({})", path.display()))
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !crate::keep() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

/// A node: a namespace that routes between its pods.
pub struct Node {
    pub ns: Netns,
}

/// A pod on a node.
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// `fd00::<ip>`: the IPv4 address in the low bits of a ULA.
    pub ip6: Ipv6Addr,
    /// The host-side veth, in the node's namespace.
    pub host_if: String,
}

impl Node {
    pub fn create(name: &str) -> Result<Self> {
        let ns = Netns::create(name)?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(Node { ns })
    }

    /// A pod named `name` (also its namespace) with `ip` and `fd00::<ip>`;
    /// its host-side veth is `host_if` (at most 15 characters). IPv6 goes
    /// via the gateway fe80::1, which every host-side veth carries.
    pub fn add_pod(&self, name: &str, host_if: &str, ip: Ipv4Addr) -> Result<Pod> {
        let pod = Netns::create(name)?;
        self.ns.ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name,
        ])?;
        self.ns.ip(&["link", "set", host_if, "up"])?;
        self.ns
            .ip(&["addr", "add", "169.254.1.1/32", "dev", host_if])?;
        let addr = format!("{ip}/32");
        pod.ip(&["addr", "add", &addr, "dev", "eth0"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        pod.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        pod.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
        self.ns.ip(&["route", "add", &addr, "dev", host_if])?;
        let ip6 = Ipv6Addr::from((0xfd00u128 << 112) | u128::from(u32::from(ip)));
        let addr6 = format!("{ip6}/128");
        self.ns
            .ip(&["-6", "addr", "add", "fe80::1/64", "dev", host_if, "nodad"])?;
        pod.ip(&["-6", "addr", "add", &addr6, "dev", "eth0", "nodad"])?;
        pod.ip(&[
            "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ])?;
        self.ns
            .ip(&["-6", "route", "add", &addr6, "dev", host_if])?;
        Ok(Pod {
            ns: pod,
            ip,
            ip6,
            host_if: host_if.to_string(),
        })
    }
}
