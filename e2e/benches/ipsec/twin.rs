//! The (b) in the same rounds as Axoneme's path: on the cluster's
//! own two nodes, a second pod pair beside Axoneme's, on interfaces of its
//! own (a veth from each node to the underlay's bridge, a veth to each
//! pod) that no program of Axoneme's is attached to, encrypted by
//! hand-made XFRM states and policies ([`Pair::twin`]). Measured right
//! after the axoneme path in every round, the two see the same host: the
//! ratio needs no reference carried across phases.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axoneme_e2e::netns::{run, Netns};
use axoneme_e2e::{Cluster, CniPod};

use super::measure::{rr_turns_with, side_by_side, throughput, Sample};
use super::programs;
use super::xfrm::Pair;
use super::RR_TURNS;

/// The twin's underlay addresses (a subnet of its own beside the cluster's
/// 192.168.77.0/24) and pod networks.
pub const IPS: (&str, &str) = ("192.168.76.1", "192.168.76.2");
pub const NETS: (&str, &str) = ("10.97.1.0/24", "10.97.2.0/24");
/// The pod on node 1, the measured server.
pub const SERVER: &str = "10.97.2.2";

/// The twin pods (on node 0, on node 1), plugged in as the hand-made
/// nodes' are, their traffic encrypted by hand-made states if `encrypted`;
/// removed with their namespaces (and the veths with them) when dropped.
pub fn add(c: &Cluster, prefix: &str, encrypted: bool) -> Result<[Netns; 2]> {
    let underlay = c
        .underlay()
        .ok_or_else(|| anyhow::anyhow!("cluster detached"))?;
    let mut pods = Vec::new();
    for (i, ul, gw, pod_ip) in [
        (0, "192.168.76.1/24", "10.97.1.1", "10.97.1.2/24"),
        (1, "192.168.76.2/24", "10.97.2.1", "10.97.2.2/24"),
    ] {
        let node = &c.nodes[i].ns;
        // Two interfaces of the node on one bridge: by default either
        // answers ARP for the other's address, and the axoneme path's ESP
        // would arrive on the twin's interface, past the program that
        // marks it for decryption. Each answers for its own alone.
        node.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
        node.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
        let pod = Netns::create(&format!("{prefix}t{i}"))?;
        super::wire_underlay(underlay, &format!("t{i}"), node, "ul1", ul)?;
        super::plug_pod(node, "twin", &pod, gw, pod_ip)?;
        pods.push(pod);
    }
    let (n0, n1) = (&c.nodes[0].ns, &c.nodes[1].ns);
    n0.ip(&["route", "add", NETS.1, "via", IPS.1, "dev", "ul1"])?;
    n1.ip(&["route", "add", NETS.0, "via", IPS.0, "dev", "ul1"])?;
    check_bare(c)?;
    if encrypted {
        pair(c).twin(true)?;
    }
    let [a, b]: [Netns; 2] = pods
        .try_into()
        .map_err(|_| anyhow::anyhow!("two twin pods"))?;
    Ok([a, b])
}

/// One round of the cluster's path from `client` to `server` against the
/// twin (`pods` as [`add`] returned them), side by side (which goes first
/// alternating with `round`): the path's sample, then the twin's.
pub fn against(
    c: &Cluster,
    (server, client): (&CniPod, &CniPod),
    pods: &[Netns; 2],
    secs: f64,
    round: usize,
) -> Result<[Sample; 2]> {
    let to_twin: IpAddr = SERVER.parse()?;
    side_by_side(
        (&server.ns, &client.ns, server.ip.into()),
        (&pods[1], &pods[0], to_twin),
        Duration::from_secs_f64(secs),
        RR_TURNS,
        round % 2 == 1,
    )
    .with_context(|| format!("the cluster's pods or their bare twin: {}", describe(c)))
}

/// The twin's interfaces where an encrypted packet between the nodes meets
/// one of Axoneme's programs on the cluster's path: the pod's veth as the
/// pod sends, and the node's device as ESP arrives and again as what it
/// decrypts to (three runs each way, as the cluster's path has).
const HOOKED: [&str; 2] = ["twin", "ul1"];

/// The tc hooks alone on the twin's path (`on`), or nothing (off): at the
/// ingress of each of [`HOOKED`] on both nodes, the least program tc runs,
/// classic BPF `ret #0` ("no verdict": the packet goes on as if no filter
/// were there), so what the twin pays is the hook and a program's entry
/// and exit, none of a program's work: the floor of any datapath on tc.
pub fn hooks(c: &Cluster, on: bool) -> Result<()> {
    for n in &c.nodes[..2] {
        for dev in HOOKED {
            if on {
                tc(&n.ns, &["qdisc", "add", "dev", dev, "clsact"])?;
                let pass = [
                    "filter",
                    "add",
                    "dev",
                    dev,
                    "ingress",
                    "bpf",
                    "bytecode",
                    "1,6 0 0 0",
                ];
                tc(&n.ns, &pass)?;
            } else {
                tc(&n.ns, &["qdisc", "del", "dev", dev, "clsact"])?;
            }
        }
    }
    Ok(())
}

/// `tc` in `ns`.
fn tc(ns: &Netns, args: &[&str]) -> Result<std::process::Output> {
    run(&[&["tc", "-n", ns.name.as_str()][..], args].concat())
}

/// One round of the twin with the tc hooks alone ([`hooks`]) against the
/// twin without them, on the same pods: throughput back to back (which
/// goes first alternating with `round`), request/response taking turns,
/// the hooks on for each of the first path's turns and off for each of
/// the second's. Finds them off and leaves them off.
pub fn hooks_against(
    c: &Cluster,
    pods: &[Netns; 2],
    secs: f64,
    round: usize,
) -> Result<[Sample; 2]> {
    let to: IpAddr = SERVER.parse()?;
    let dur = Duration::from_secs_f64(secs);
    let mut on = false;
    let mut set = |want: bool| -> Result<()> {
        if want != on {
            hooks(c, want)?;
            on = want;
        }
        Ok(())
    };
    let mut mbps = [0.0; 2];
    let first = round % 2;
    for i in [first, 1 - first] {
        set(i == 0)?;
        if i == 0 {
            // On where the packets go: the floor measured, not a path
            // whose filters went missing.
            // (Classic BPF has no program id: listed by its bytecode.)
            for n in &c.nodes[..2] {
                for dev in HOOKED {
                    let listed = tc(&n.ns, &["filter", "show", "dev", dev, "ingress"])?.stdout;
                    ensure!(
                        String::from_utf8_lossy(&listed).contains("bytecode"),
                        "no tc hook on {dev} of {}",
                        n.name
                    );
                }
            }
        }
        mbps[i] = throughput(&pods[1], &pods[0], to, dur)?;
    }
    let path = (&pods[1], &pods[0], to);
    let [mut hooked, mut bare] = rr_turns_with(path, path, dur, RR_TURNS, |i| set(i == 0))
        .with_context(|| format!("the twin with tc hooks or without: {}", describe(c)))?;
    set(false)?;
    (hooked.mbps, bare.mbps) = (mbps[0], mbps[1]);
    Ok([hooked, bare])
}

/// Checks that no program is attached to the twin's interfaces (the
/// agents would not put one there; this says so).
pub fn check_bare(c: &Cluster) -> Result<()> {
    let nodes = [("n0", &c.nodes[0].ns), ("n1", &c.nodes[1].ns)];
    let on_twin: Vec<String> = programs::attached(&nodes)?
        .into_values()
        .filter(|at| at.contains(" ul1 ") || at.contains(" twin "))
        .collect();
    ensure!(
        on_twin.is_empty(),
        "programs on the twin's interfaces: {on_twin:?}"
    );
    Ok(())
}

/// The nodes' routes and XFRM states and policies, for an error.
pub fn describe(c: &Cluster) -> String {
    let mut out = String::new();
    for n in &c.nodes[..2] {
        for args in [
            &["route"][..],
            &["-s", "xfrm", "state"],
            &["xfrm", "policy"],
        ] {
            let listing =
                n.ns.ip(args)
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_else(|e| format!("{e:#}"));
            out.push_str(&format!("\n{} ip {}:\n{listing}", n.name, args.join(" ")));
        }
    }
    out
}

/// The cluster's two nodes as the twin's [`Pair`].
pub fn pair(c: &Cluster) -> Pair<'_> {
    Pair {
        a: &c.nodes[0].ns,
        b: &c.nodes[1].ns,
        ips: IPS,
        nets: NETS,
    }
}
