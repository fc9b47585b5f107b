//! The policy of each configuration size, as iptables rules and as
//! Axoneme's maps: the real client and `n - 1` filler peers allowed.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;

use anyhow::{ensure, Context, Result};
use axoneme_agent::datapath::{policy_entry, Datapath};
use axoneme_bpf_common::IpcacheValue;
use axoneme_e2e::netns::{run, Node, Pod};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::{Direction, Key, Verdict, PROTO_TCP, PROTO_UDP};

use crate::{CLIENT_ID, IPERF_PORT, RR_PORT, SERVER_ID, UDP_PORT};

pub(crate) fn filler_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        90,
        u8::try_from(i / 256).unwrap_or(255),
        u8::try_from(i % 256).unwrap_or(0),
    )
}

/// The same policy as iptables rules: established flows first, then one
/// chain per protocol with one rule per allowed peer (the real client's
/// last, the worst position), then DROP.
pub(crate) fn iptables(node: &Node, client: &Pod, server: &Pod, n: u32) -> Result<()> {
    let mut rules =
        String::from("*filter\n:FORWARD ACCEPT [0:0]\n:AXB-TCP - [0:0]\n:AXB-UDP - [0:0]\n");
    rules.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    rules.push_str("-A FORWARD -p tcp -j AXB-TCP\n-A FORWARD -p udp -j AXB-UDP\n");
    rules.push_str(&format!("-A FORWARD -d {}/32 -j DROP\n", server.ip));
    let peers = (0..n.saturating_sub(1)).map(filler_ip).chain([client.ip]);
    for peer in peers {
        rules.push_str(&format!(
            "-A AXB-TCP -s {peer}/32 -d {}/32 -p tcp -m multiport --dports {RR_PORT},{IPERF_PORT} -j ACCEPT\n",
            server.ip
        ));
        rules.push_str(&format!(
            "-A AXB-UDP -s {peer}/32 -d {}/32 -p udp --dport {UDP_PORT} -j ACCEPT\n",
            server.ip
        ));
    }
    rules.push_str("COMMIT\n");
    let mut child = node
        .ns
        .command(&["iptables-restore"])
        .stdin(Stdio::piped())
        .spawn()
        .context("iptables-restore (cargo xtask setup installs iptables)")?;
    child.stdin.take().unwrap().write_all(rules.as_bytes())?;
    ensure!(child.wait()?.success(), "iptables-restore failed");
    // Unanswered UDP entries (the new-flow test's) expire before the next
    // round reuses their ports, so each datagram is a new flow there too.
    node.ns
        .sysctl("net.netfilter.nf_conntrack_udp_timeout", "5")?;
    Ok(())
}

pub(crate) fn iptables_flush(node: &Node) -> Result<()> {
    let ns = node.ns.name.clone();
    for op in ["-F", "-X"] {
        run(&["ip", "netns", "exec", &ns, "iptables", op])?;
    }
    Ok(())
}

pub(crate) fn program(dp: &mut Datapath, client: &Pod, server: &Pod, n: u32) -> Result<()> {
    dp.maps
        .set_ipcache(&format!("{}/32", client.ip).parse()?, id(CLIENT_ID))?;
    dp.maps
        .set_ipcache(&format!("{}/32", server.ip).parse()?, id(SERVER_ID))?;
    for i in 0..n.saturating_sub(1) {
        dp.maps
            .set_ipcache(&format!("{}/32", filler_ip(i)).parse()?, id(3000 + i))?;
    }
    for peer in (0..n.saturating_sub(1))
        .map(|i| 3000 + i)
        .chain([CLIENT_ID])
    {
        for (protocol, port) in [
            (PROTO_TCP, RR_PORT),
            (PROTO_TCP, IPERF_PORT),
            (PROTO_UDP, UDP_PORT),
        ] {
            allow(dp, SERVER_ID, Direction::Ingress, peer, protocol, port)?;
        }
    }
    Ok(())
}

/// An ipcache value for `identity`.
pub(crate) fn id(identity: u32) -> IpcacheValue {
    IpcacheValue {
        identity,
        ..IpcacheValue::default()
    }
}

/// Lets `peer` reach endpoint `endpoint` in `dir` on one protocol and port.
pub(crate) fn allow(
    dp: &mut Datapath,
    endpoint: u32,
    dir: Direction,
    peer: u32,
    protocol: u8,
    port: u16,
) -> Result<()> {
    let key = Key {
        identity: NumericIdentity(peer),
        protocol,
        port,
        prefix: 16,
    };
    let (k, v) = policy_entry(endpoint, dir, &key, &Verdict::Allow, 0);
    dp.maps.set_policy(&k, v)?;
    Ok(())
}
