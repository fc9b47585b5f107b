//! The node's plumbing that brings redirected flows to the proxy, in the
//! node's namespace, all behind [`install_redirect`] and all through the
//! `net` crate (no process): sysctls written to `/proc/sys`, the fwmark
//! rules and the local table over rtnetlink, and the TPROXY rules as one
//! nftables table (`inet axoneme_proxy`) replaced in one transaction.

use std::net::{Ipv4Addr, Ipv6Addr};

use axoneme_bpf_common::{MARK_MASK, MARK_TO_PROXY};
use axoneme_net::{nft, sysctl, FwmarkRule, Netns, Route};
use ipnet::IpNet;

/// The routing table marked packets are delivered locally by.
pub const PROXY_TABLE: u32 = 100;

/// The node's redirect plumbing for the proxy on `port` (idempotent):
/// packets the datapath marked [`MARK_TO_PROXY`](axoneme_bpf_common::MARK_TO_PROXY)
/// go to the proxy's transparent socket (TPROXY in the nftables table
/// `inet axoneme_proxy`, chain `prerouting` just after the stack's DNAT),
/// answers to its upstream connections to it too (`socket transparent`),
/// and what either marks is routed locally (`fwmark 0x1/0x1 → table 100:
/// local default via lo`); early demux is off in the node's namespace.
pub async fn install_redirect(ns: &Netns, port: u16) -> Result<(), axoneme_net::Error> {
    // Early demux would attach the proxy's half-open socket to the flow's
    // later packets before routing, and a packet with a socket is never
    // forwarded (ip_forward drops it): they must reach the pod's veth,
    // where the datapath hands them to the proxy.
    sysctl::write(
        ns,
        &[
            ("net.ipv4.ip_early_demux", "0"),
            ("net.ipv4.tcp_early_demux", "0"),
        ],
    )?;
    let rtnl = ns.rtnl()?;
    let lo = rtnl.need_link("lo").await?;
    for v6 in [false, true] {
        // One copy of the rule, whatever an earlier run left.
        rtnl.ensure_rule(&FwmarkRule {
            v6,
            mark: 1,
            mask: 1,
            table: PROXY_TABLE,
        })
        .await?;
        let any = if v6 {
            IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0)
        } else {
            IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0)
        }
        .expect("a zero prefix is valid");
        rtnl.replace_route(&Route::to(any).dev(lo.index).table(PROXY_TABLE).local())
            .await?;
    }
    // Last, so nothing is redirected to the proxy before its packets can
    // be delivered locally.
    nft::TproxyRedirect {
        mark: MARK_TO_PROXY,
        mark_mask: MARK_MASK,
        port,
        set_mark: 1,
        set_mask: 1,
    }
    .apply(ns)?;
    Ok(())
}
