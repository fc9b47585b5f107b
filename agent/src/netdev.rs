//! Pod interfaces, made over rtnetlink (the `net` crate; no process per
//! CNI ADD): a veth pair created in the pod's namespace with its peer in
//! the node's, /32 and /128 addresses, and routes via the link-local
//! gateways every host-side veth carries (169.254.1.1 and fe80::1,
//! answered by the node itself), as Cilium's veth mode does.
//!
//! Node routes to other nodes' pod CIDRs live here too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use axoneme_net::{Netns, Route, Rtnl};
use ipnet::IpNet;

pub use axoneme_net::Error as NetdevError;
/// A network namespace by handle (the node's, or a pod's).
pub use axoneme_net::Netns as Ns;

pub const GATEWAY_V4: &str = "169.254.1.1";
pub const GATEWAY_V6: &str = "fe80::1";
const GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

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

fn net(addr: IpAddr, len: u8) -> IpNet {
    IpNet::new(addr, len).expect("a host prefix length is valid")
}

/// Creates the veth pair (`ifname` in `pod`, `host_if` in `node`; with
/// `mtu`, both ends take it, else the kernel's default), and sets
/// addresses and routes on both ends. On failure, whatever was created is
/// removed.
pub async fn plumb(
    node: &Netns,
    pod: &Path,
    host_if: &str,
    ifname: &str,
    addrs: &[IpAddr],
    mtu: Option<u32>,
) -> Result<Plumbed, NetdevError> {
    let pod_ns = Netns::open(pod)?;
    let (n, p) = (node.rtnl()?, pod_ns.rtnl()?);
    let result = plumb_with(node, &n, &p, host_if, ifname, addrs, mtu).await;
    if result.is_err() {
        let _ = n.del_link(host_if).await;
    }
    result
}

async fn plumb_with(
    node: &Netns,
    n: &Rtnl,
    p: &Rtnl,
    host_if: &str,
    ifname: &str,
    addrs: &[IpAddr],
    mtu: Option<u32>,
) -> Result<Plumbed, NetdevError> {
    let v6 = addrs.iter().any(IpAddr::is_ipv6);
    // The pod's end: addresses, up, then the routes via the gateways (the
    // default routes need the link up first).
    p.add_veth(ifname, host_if, node, mtu).await?;
    let pod_link = p.need_link(ifname).await?;
    for a in addrs {
        match a {
            IpAddr::V4(_) => p.add_address(pod_link.index, net(*a, 32), false).await?,
            IpAddr::V6(_) => p.add_address(pod_link.index, net(*a, 128), true).await?,
        }
    }
    p.set_up(pod_link.index).await?;
    p.add_route(
        &Route::to(net(GW4.into(), 32))
            .dev(pod_link.index)
            .scope_link(),
    )
    .await?;
    p.add_route(
        &Route::to(net(Ipv4Addr::UNSPECIFIED.into(), 0))
            .via(GW4.into())
            .dev(pod_link.index),
    )
    .await?;
    if v6 {
        p.add_route(
            &Route::to(net(Ipv6Addr::UNSPECIFIED.into(), 0))
                .via(GW6.into())
                .dev(pod_link.index),
        )
        .await?;
    }
    // The node's end: up, the gateways, a route to each address.
    let host_link = n.need_link(host_if).await?;
    n.set_up(host_link.index).await?;
    n.add_address(host_link.index, net(GW4.into(), 32), false)
        .await?;
    if v6 {
        n.add_address(host_link.index, net(GW6.into(), 64), true)
            .await?;
    }
    for a in addrs {
        let len = if a.is_ipv4() { 32 } else { 128 };
        n.add_route(&Route::to(net(*a, len)).dev(host_link.index))
            .await?;
    }
    Ok(Plumbed {
        host_mac: host_link.mac,
        mac: pod_link.mac,
    })
}

/// Removes the host-side veth (its peer goes with it). Missing is fine.
pub async fn unplumb(node: &Netns, host_if: &str) {
    let result = match node.rtnl() {
        Ok(n) => n.del_link(host_if).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(interface = host_if, error = %e, "cannot remove the host interface");
    }
}

/// Whether `dev` exists in `ns`.
pub async fn link_exists(ns: &Netns, dev: &str) -> Result<bool, NetdevError> {
    Ok(ns.rtnl()?.link(dev).await?.is_some())
}

/// The global addresses on `dev` in the namespace at `path`.
pub async fn addresses(path: &Path, dev: &str) -> Result<Vec<IpNet>, NetdevError> {
    let r = Netns::open(path)?.rtnl()?;
    let link = r.need_link(dev).await?;
    Ok(r.addresses(link.index)
        .await?
        .into_iter()
        .filter(|a| a.global)
        .map(|a| a.net)
        .collect())
}

/// Node routes towards other nodes' pod CIDRs (direct routing over the
/// underlay): deletes `gone`, replaces `want`. Every route is tried (one
/// that fails, such as a node not reachable yet, must not keep the others
/// out); the failures are returned.
pub async fn sync_routes(
    node: &Netns,
    gone: &[(IpNet, IpAddr)],
    want: &[(IpNet, IpAddr)],
) -> Result<Vec<NetdevError>, NetdevError> {
    let n = node.rtnl()?;
    let mut failed = Vec::new();
    for (dst, via) in gone {
        if let Err(e) = n.del_route(&Route::to(*dst).via(*via)).await {
            failed.push(e);
        }
    }
    for (dst, via) in want {
        if let Err(e) = n.replace_route(&Route::to(*dst).via(*via)).await {
            failed.push(e);
        }
    }
    Ok(failed)
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
    fn gateways_parse() {
        assert_eq!(GATEWAY_V4.parse::<Ipv4Addr>().unwrap(), GW4);
        assert_eq!(GATEWAY_V6.parse::<Ipv6Addr>().unwrap(), GW6);
    }
}
