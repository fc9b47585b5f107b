//! The real kube-proxy (built from the same `k8s.io/kubernetes` module as
//! the control plane) running in a node's network namespace, as the
//! baseline Axoneme's socket LB is measured against; and Services with
//! their EndpointSlices written to the API server for it.

use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::kube::{kube_bin, KubeControlPlane};
use crate::netns::Netns;
use crate::Proc;

/// Starts kube-proxy in `mode` (`iptables` or `nftables`) in `ns` for
/// node `node` (which must exist in the API), leaving the host's global
/// conntrack settings alone; returns once its rules are in place.
pub fn start(
    kube: &KubeControlPlane,
    ns: &Netns,
    node: &str,
    mode: &str,
    log: &Path,
) -> Result<Proc> {
    let bin = kube_bin("kube-proxy")?;
    // The API server listens on the host's loopback, which the node's
    // namespace does not share: a relay brings it there.
    let server = kube.server().trim_end_matches('/');
    let target: SocketAddr = server
        .strip_prefix("https://")
        .context("the API server's URL")?
        .parse()
        .context("the API server's address")?;
    let port = relay(ns, target)?;
    let kubeconfig = log.with_extension("kubeconfig");
    let text = std::fs::read_to_string(kube.kubeconfig())?;
    std::fs::write(
        &kubeconfig,
        text.replace(server, &format!("https://127.0.0.1:{port}")),
    )?;
    let cmd = ns.command(&[
        &bin.to_string_lossy(),
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--hostname-override",
        node,
        "--proxy-mode",
        mode,
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--healthz-bind-address=127.0.0.1:10256",
        "--metrics-bind-address=127.0.0.1:10249",
        // Every change synced at once: its fastest setting.
        "--iptables-min-sync-period=0",
    ]);
    let mut p = Proc::spawn("kube-proxy", cmd, log)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(ns) {
        if !p.is_running() {
            bail!("kube-proxy exited:\n{}", p.log_text());
        }
        if Instant::now() > deadline {
            bail!("kube-proxy not healthy within 30 s:\n{}", p.log_text());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(p)
}

/// Serves `127.0.0.1:<port>` inside `ns` (the port is returned) by relaying
/// every connection to `target` in this process's own namespace. Its
/// threads live as long as the process.
pub fn relay(ns: &Netns, target: SocketAddr) -> Result<u16> {
    let listener = ns.enter(|| TcpListener::bind("127.0.0.1:0"))??;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for down in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(up) = TcpStream::connect(target) else {
                    return;
                };
                let (Ok(mut down2), Ok(mut up2)) = (down.try_clone(), up.try_clone()) else {
                    return;
                };
                let (mut down, mut up) = (down, up);
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut down2, &mut up2);
                    let _ = up2.shutdown(Shutdown::Write);
                });
                let _ = std::io::copy(&mut up, &mut down);
                let _ = down.shutdown(Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    Ok(port)
}

/// Whether kube-proxy's `/healthz` in `ns` answers 200 (it has synced).
fn healthy(ns: &Netns) -> bool {
    ns.command(&[
        "curl",
        "-sf",
        "--max-time",
        "1",
        "http://127.0.0.1:10256/healthz",
    ])
    .output()
    .is_ok_and(|o| o.status.success())
}

/// A Service of `cluster_ip:port` (TCP, to `target`) and its EndpointSlice
/// with `backends` ready on `node`, as JSON documents for `kubectl create`.
pub fn service_objects(
    name: &str,
    cluster_ip: IpAddr,
    port: u16,
    target: u16,
    backends: &[IpAddr],
    node: &str,
) -> [serde_json::Value; 2] {
    let family = if cluster_ip.is_ipv4() { "IPv4" } else { "IPv6" };
    [
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": cluster_ip.to_string(), "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": target}]},
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
            "addressType": family,
            "ports": [{"name": "http", "protocol": "TCP", "port": target}],
            "endpoints": backends.iter().map(|b| json!({"addresses": [b.to_string()], "conditions": {"ready": true}, "nodeName": node})).collect::<Vec<_>>(),
        }),
    ]
}

/// Creates `objects` with `kubectl create -f -` (Lists of at most 500),
/// three kubectl processes at a time.
pub fn create(kube: &KubeControlPlane, objects: &[serde_json::Value]) -> Result<()> {
    let chunks: Vec<&[serde_json::Value]> = objects.chunks(500).collect();
    for group in chunks.chunks(3) {
        std::thread::scope(|s| -> Result<()> {
            let runs: Vec<_> = group
                .iter()
                .map(|chunk| {
                    s.spawn(move || {
                        let list = json!({"apiVersion": "v1", "kind": "List", "items": chunk});
                        kube.kubectl_stdin(["create", "-f", "-", "-o", "name"], &list.to_string())
                            .map(|_| ())
                            .context("kubectl create")
                    })
                })
                .collect();
            for r in runs {
                r.join()
                    .map_err(|_| anyhow::anyhow!("kubectl thread panicked"))??;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// How many Services kube-proxy's rules in `ns` load-balance (iptables
/// mode: the `KUBE-SVC-` chains).
pub fn iptables_services(ns: &Netns) -> Result<usize> {
    let out: std::process::Output = ns
        .command(&["iptables-save", "-t", "nat"])
        .output()
        .context("iptables-save")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter(|l| l.starts_with(":KUBE-SVC-")).count())
}

/// The Service addresses of kube-proxy's `KUBE-SERVICES` chain in `ns`
/// (iptables mode), in the chain's order: a new connection to a Service
/// walks the rules before its own. kube-proxy writes the chain in the
/// order of a Go map, so the order changes from one sync to the next.
pub fn iptables_service_order(ns: &Netns) -> Result<Vec<IpAddr>> {
    let out: std::process::Output = ns
        .command(&["iptables-save", "-t", "nat"])
        .output()
        .context("iptables-save")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("-A KUBE-SERVICES "))
        .filter_map(|l| l.strip_prefix("-d "))
        .filter_map(|l| l.split_once('/')?.0.parse().ok())
        .collect())
}

/// How many Services kube-proxy's rules in `ns` load-balance (nftables
/// mode: the `service-` chains of its `ip kube-proxy` table).
pub fn nftables_services(ns: &Netns) -> Result<usize> {
    let out: std::process::Output = ns
        .command(&["nft", "list", "chains", "ip"])
        .output()
        .context("nft (the nftables package)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| l.trim_start().starts_with("chain service-"))
        .count())
}

/// Removes what kube-proxy left in `ns` (`kube-proxy --cleanup`).
pub fn cleanup(ns: &Netns) {
    if let Ok(bin) = kube_bin("kube-proxy") {
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin)
            .arg("--cleanup")
            .output();
    }
}
