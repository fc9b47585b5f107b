//! The node's plumbing that brings redirected flows to the proxy: today
//! iptables TPROXY, `ip rule` and sysctls run in the node's namespace,
//! all behind [`install_redirect`] (its inputs are all a replacement over
//! nftables/netlink needs).

/// The node's redirect plumbing for the proxy on `port` (idempotent):
/// packets the datapath marked [`MARK_TO_PROXY`](axoneme_bpf_common::MARK_TO_PROXY)
/// go to the proxy's transparent socket (iptables/ip6tables TPROXY in
/// `mangle PREROUTING`, chain `AXONEME_PROXY`), answers to its upstream
/// connections to it too ([`SOCKET_RULE`]), and what either marks is
/// routed locally (`fwmark 0x1/0x1 → table 100: local default via lo`);
/// early demux is off in the node's namespace.
pub fn install_redirect(
    ns: &crate::netdev::Ns,
    port: u16,
) -> Result<(), crate::netdev::NetdevError> {
    use axoneme_bpf_common::{MARK_MASK, MARK_TO_PROXY};
    let mark = format!("{MARK_TO_PROXY:#x}/{MARK_MASK:#x}");
    // Early demux would attach the proxy's half-open socket to the flow's
    // later packets before routing, and a packet with a socket is never
    // forwarded (ip_forward drops it): they must reach the pod's veth,
    // where the datapath hands them to the proxy.
    ns.run(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_early_demux=0",
        "net.ipv4.tcp_early_demux=0",
    ])?;
    for (ip_family, tool, any) in [("-4", "iptables", "0.0.0.0/0"), ("-6", "ip6tables", "::/0")] {
        // Replace the rule of an earlier run rather than stacking them.
        let rule = [
            "ip", ip_family, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100",
        ];
        let mut del = rule;
        del[3] = "del";
        let _ = ns.run(&del);
        ns.run(&rule)?;
        ns.run(&[
            "ip", ip_family, "route", "replace", "local", any, "dev", "lo", "table", "100",
        ])?;
        // Create the chain and hook it once; then make its one rule current.
        let mangle = |args: &[&str]| {
            let mut all = vec![tool, "-w", "-t", "mangle"];
            all.extend_from_slice(args);
            ns.run(&all)
        };
        let _ = mangle(&["-N", "AXONEME_PROXY"]);
        if mangle(&["-C", "PREROUTING", "-j", "AXONEME_PROXY"]).is_err() {
            mangle(&["-A", "PREROUTING", "-j", "AXONEME_PROXY"])?;
        }
        mangle(&["-F", "AXONEME_PROXY"])?;
        mangle(&[
            "-A",
            "AXONEME_PROXY",
            "-p",
            "tcp",
            "-m",
            "mark",
            "--mark",
            &mark,
            "-j",
            "TPROXY",
            "--on-port",
            &port.to_string(),
            "--tproxy-mark",
            "0x1/0x1",
        ])?;
        mangle(&SOCKET_RULE)?;
    }
    Ok(())
}

/// The rule (in `mangle PREROUTING`) that delivers the answers of the
/// proxy's upstream connections, sent from the client's address, to the
/// proxy's socket rather than forwarding them to the client.
pub const SOCKET_RULE: [&str; 11] = [
    "-A",
    "AXONEME_PROXY",
    "-p",
    "tcp",
    "-m",
    "socket",
    "--transparent",
    "-j",
    "MARK",
    "--set-mark",
    "0x1/0x1",
];
