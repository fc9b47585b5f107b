//! The agent's wiring: load the datapath, serve the starting API
//! (`api/starting.rs`) while etcd is asked for the node lease and the
//! caches are read (retried while etcd is unavailable: the pinned maps
//! keep enforcing meanwhile), then one supervised task per concern (see
//! docs/architecture.md, "The agent's tasks"):
//!
//! | task | owns | publishes |
//! |---|---|---|
//! | `lease` | the node lease's renewal | — |
//! | `reconcile` | every BPF map (the one writer) and the policy engine | `DatapathView`, enforced endpoints, the proxy's policy view |
//! | `events` | the event ring (the one reader) | the recent-events ring, log lines |
//! | `node-record` | the node record (pod CIDRs) | IPAM's CIDRs |
//! | `routes` | the routes to other nodes' pod CIDRs | — |
//! | `encrypt` (IPsec) | the XFRM states and policies, the encryption maps (the one writer; `encrypt/`) | `EncryptStatus`, this node's part of its record |
//! | `kvstore-probe` | — | `KvHealth` |
//! | `orphans` | the deletion of endpoint records etcd could not delete at once | — |
//! | `proxy` | the L7 proxy (`l7proxy/`: its own thread and runtime) | L7 events |
//! | `services` (kube-proxy replacement) | the LB maps (the one writer; `services/`) | `ServicesView` |
//! | `node-status` | this node's `NodeStatusRecord` | — |
//! | `pods`, `relabel` (Kubernetes mode) | the watch of this node's Pods; endpoints' labels | — |
//! | `api` | the UNIX socket | — (reads the others' publications) |
//! | `metrics` | the `/metrics` listener | — (reads maps and publications at scrape time) |
//! | `latencies` | — | the policy and identity-ready histograms |
//! | `observer` (flows) | the flow ring (the one writer; `observe/`) | flows to followers |
//! | `hubble`, `hubble-tcp` (flows) | Hubble's gRPC socket; its TCP listener (TLS) | — (reads the flow ring) |

mod join;
use join::join_etcd;

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::announce::Announcer;
use crate::api::starting::{Progress, Starting};
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::datapath::{Datapath, EventReader, LoadOptions, MapReader};
use crate::endpoints::Endpoints;
use crate::host::HostEndpoint;
use crate::k8s::{LabelSource, PodLabels, Pods};
use crate::l7proxy::{self, ProxyView, SocketFactory};
use crate::metrics::{self, Metrics};
use crate::netdev::Ns;
use crate::node::{validate_node_name, NodeState};
use crate::reconcile::{self, Driver, Kernel, Outputs};
use crate::supervisor::Supervisor;
use crate::views::EventRing;
use axoneme_identity::{Layout, NodeRecord, WatchCache};
use axoneme_kvstore::KvStore;

/// The Maglev hash seed: the cluster's name, hashed the same on every
/// node (so every node computes the same tables).
fn maglev_seed(cluster: &str) -> u64 {
    axoneme_service::maglev::siphash24(0, 0, cluster.as_bytes())
}

/// The interface carrying the node's first `--node-ip` that one has (in
/// the node's namespace): where traffic from outside the node arrives.
async fn node_device(cfg: &Config) -> anyhow::Result<Option<axoneme_net::Link>> {
    let ns = Ns::open_or_own(cfg.datapath.netns.as_deref()).context("--netns")?;
    let rtnl = ns.rtnl().context("netlink in the node's namespace")?;
    for ip in &cfg.node_ips {
        if let Some(link) = rtnl.link_with_address(*ip).await? {
            return Ok(Some(link));
        }
    }
    Ok(None)
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    validate_node_name(&cfg.node)?;
    cfg.encryption.check().map_err(anyhow::Error::msg)?;
    // Handlers first, so that a signal during start-up is not lost.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    tokio::pin!(shutdown);

    let mut kv_config = cfg.kv.to_config().context("etcd settings")?;
    // Kubernetes mode: the API server first (a bad config fails at once),
    // and the managed etcd's members found through it, not cluster DNS.
    let kube = if cfg.kubernetes.kubernetes {
        let (client, members, name) = axoneme_crds::client::connect_and_find_etcd(
            cfg.kubernetes.kubeconfig.as_deref(),
            &kv_config.endpoints,
            kv_config.server_name(),
        )
        .await?;
        kv_config.set_members(members, name);
        Some(client)
    } else {
        None
    };
    let api_server = match &kube {
        Some(_) => {
            Some(axoneme_crds::client::api_server_url(cfg.kubernetes.kubeconfig.as_deref()).await?)
        }
        None => None,
    };
    let kv = KvStore::connect(kv_config)
        .await
        .context("connecting to etcd")?;
    let layout = Layout::new(&cfg.kvstore_prefix);
    info!(node = %cfg.node, endpoints = ?kv.endpoints(), prefix = %layout.root(), "agent starting");

    let pin_dir = cfg.pin_dir();
    if let Some(ns) = &cfg.datapath.netns {
        std::fs::metadata(ns).with_context(|| format!("--netns {}", ns.display()))?;
    }
    // A key file that does not parse stops the start (naming its line and
    // field); later changes that do not parse are refused by the task.
    let ipsec_keys = match (&cfg.encryption.ipsec_key_file, cfg.encryption.enable_ipsec) {
        (Some(path), true) => Some(crate::encrypt::read_keys(path).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    let device = node_device(&cfg).await?;
    let pod_mtu = crate::encrypt::pod_mtu(ipsec_keys.is_some(), device.as_ref().map(|l| l.mtu));
    if let Some(mtu) = pod_mtu {
        info!(
            mtu,
            device_mtu = device.as_ref().map(|l| l.mtu),
            "pods' interfaces leave room for ESP"
        );
    }
    let device = device.map(|l| (l.name, l.index));
    let options = LoadOptions {
        pod_lb: crate::datapath::PodLb::new(
            cfg.services.kube_proxy_replacement,
            cfg.services.socket_lb,
            cfg.services.enable_sctp,
        ),
        encrypt: ipsec_keys.is_some(),
        host_firewall: cfg.datapath.enable_host_firewall,
        host_ifindex: device.as_ref().map_or(0, |(_, ifindex)| *ifindex),
        kube_proxy: !cfg.services.kube_proxy_replacement,
        events_bytes: crate::datapath::events_ring_bytes(
            aya::util::nr_cpus()
                .ok()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            cfg.datapath.event_rate,
            cfg.datapath.event_burst,
            cfg.datapath.event_poll,
        ),
        ..LoadOptions::default()
    };
    let mut dp = Datapath::load_with(&pin_dir, &cfg.datapath.sizes.into(), options)
        .context("loading the eBPF datapath")?;
    dp.maps
        .set_event_rate(cfg.datapath.event_rate, cfg.datapath.event_burst)
        .context("setting the event rate")?;
    let events = EventReader::open(&pin_dir).context("opening the event ring")?;
    let reader = Arc::new(MapReader::open(&pin_dir).context("opening the maps for reading")?);
    info!(pins = %pin_dir.display(), "datapath loaded");
    let mut host = match (&device, cfg.datapath.enable_host_firewall) {
        (Some((device, ifindex)), true) => Some(HostEndpoint {
            device: device.clone(),
            ifindex: *ifindex,
            addresses: cfg.node_ips.clone(),
            lifelines: Vec::new(),
        }),
        (None, true) => anyhow::bail!(
            "--enable-host-firewall: no interface has a --node-ip (the host firewall is enforced on that device)"
        ),
        (_, false) => None,
    };
    // Written whether the host firewall is on or not: a previous run's go.
    let mut lifelines = Vec::new();
    if let Some(host) = &mut host {
        for url in kv.endpoints().iter().chain(api_server.iter()) {
            lifelines.extend(crate::host::url_addrs(url).await);
        }
        info!(
            ?lifelines,
            "host firewall: the kvstore's and API server's traffic is always allowed"
        );
        host.lifelines = lifelines.clone();
    }
    dp.set_lifelines(&crate::host::lifeline_keys(&lifelines))
        .context("writing the host firewall's lifelines")?;
    let lb_maps = if cfg.services.kube_proxy_replacement {
        let cgroup = &cfg.services.cgroup_root;
        if !cfg.services.socket_lb {
            if crate::datapath::detach_socket_lb(&pin_dir)
                .context("removing the socket-LB links")?
            {
                info!("socket LB off: the previous run's socket LB removed");
            }
            info!("per-packet LB at the pods' veths (socket LB off)");
        } else if !cgroup.join("cgroup.controllers").exists() {
            anyhow::bail!(
                "--cgroup-root {}: not a cgroup2 directory (mount -t cgroup2 none DIR, or set \
                 --socket-lb=false or --kube-proxy-replacement=false)",
                cgroup.display()
            );
        } else {
            dp.attach_socket_lb(cgroup).with_context(|| {
                format!("attaching socket LB to --cgroup-root {}", cgroup.display())
            })?;
            info!(cgroup = %cgroup.display(), "socket LB attached (kube-proxy replacement)");
        }
        dp.set_node_addrs(&cfg.node_ips, cfg.services.maglev_table_size)
            .context("writing the node's addresses for the LB")?;
        let mut lb = dp.take_lb_maps()?;
        match &device {
            Some((device, _)) => {
                let netns = cfg.datapath.netns.as_deref();
                dp.attach_device(device, netns)
                    .with_context(|| format!("attaching the per-packet LB to {device}"))?;
                let mut egress = dp.device_egress(device, netns)?;
                if cfg.datapath.enable_host_firewall {
                    // It judges what the node sends: always there.
                    egress.set(true).with_context(|| {
                        format!("attaching the host firewall's egress program to {device}")
                    })?;
                } else {
                    // Only while the node has backends of an external
                    // frontend (their replies).
                    lb.own_device_egress(egress)
                        .with_context(|| format!("switching the egress program of {device}"))?;
                }
                info!(%device, "per-packet LB attached (NodePort, ExternalIP, LoadBalancer from outside)");
            }
            None => warn!(
                "no interface has a --node-ip: services are not served to clients outside the node"
            ),
        }
        Some(lb)
    } else {
        if crate::datapath::detach_socket_lb(&pin_dir).context("removing the socket-LB links")? {
            info!("kube-proxy replacement off: the previous run's socket LB removed");
        }
        if let Some((device, _)) = &device {
            let netns = cfg.datapath.netns.as_deref();
            let host_firewall = cfg.datapath.enable_host_firewall;
            if ipsec_keys.is_some() || host_firewall {
                // ESP's decrypt mark is at ingress; the host firewall is at
                // both.
                dp.attach_device(device, netns)
                    .with_context(|| format!("attaching the device program to {device}"))?;
                dp.device_egress(device, netns)?
                    .set(host_firewall)
                    .with_context(|| format!("switching the egress program of {device}"))?;
            } else {
                dp.detach_device(device, netns);
            }
        }
        None
    };
    proxy_sockmap(&mut dp, &cfg, &pin_dir)?;
    let mut encrypt_maps = dp.take_encrypt_maps()?;
    if ipsec_keys.is_none() {
        // Encryption off: what a previous run installed goes (its pods'
        // traffic is no longer marked: the programs are loaded without it).
        let ns = Ns::open_or_own(cfg.datapath.netns.as_deref()).context("--netns")?;
        match crate::encrypt::remove_all(&ns, &mut encrypt_maps) {
            Ok(0) => {}
            Ok(n) => info!(
                removed = n,
                "encryption off: the previous run's XFRM states and policies removed"
            ),
            Err(e) => {
                warn!(error = %e, "encryption off: cannot remove the previous run's XFRM states and policies")
            }
        }
    }
    let encrypt_maps = ipsec_keys.is_some().then_some(encrypt_maps);

    let state_dir = cfg.state_dir();
    let node_ns = Ns::open_or_own(cfg.datapath.netns.as_deref()).context("--netns")?;
    let mut sup = Supervisor::new();
    let cancel = sup.cancel();

    // etcd from here on. Until it answers, the API says why the agent
    // waits, and the pinned maps keep enforcing the previous run's state.
    let (kv_tx, kv_rx) = watch::channel(None);
    sup.spawn(
        "kvstore-probe",
        crate::kvhealth::run(
            kv.clone(),
            cfg.reconcile.kvstore_probe_interval,
            kv_tx,
            cancel.clone(),
        ),
    );
    let (progress, progress_rx) = watch::channel(Progress::new("granting the node lease"));
    let starting = Starting::serve(
        api::listen(&cfg.api_socket)?,
        api::starting::Ctx {
            node: cfg.node.clone(),
            maps: reader.clone(),
            kvstore: kv_rx.clone(),
            progress: progress_rx,
        },
    );
    let mut record = NodeRecord {
        name: cfg.node.clone(),
        addresses: cfg.node_ips.clone(),
        pod_cidrs: Vec::new(),
        encryption: None,
    };
    let joined = async {
        let (leased, restored) =
            join_etcd(&kv, &cfg, &layout, &mut record, &node_ns, &progress).await?;
        progress.send_modify(|p| p.step = "reading identities, endpoints and policies from etcd");
        let mut state = NodeState::start(kv.clone(), layout.clone(), &cfg.node)
            .await
            .with_flag_labels(cfg.encryption.node_labels.clone());
        if let Some(host) = host {
            state = state.with_host(host);
        }
        progress.send_modify(|p| p.step = "starting the agent's tasks");
        anyhow::Ok((leased, restored, state))
    };
    let (leased, restored, state) = tokio::select! {
        joined = joined => match joined {
            Ok(joined) => joined,
            Err(e) => {
                starting.stop().await;
                return Err(e);
            }
        },
        signal = &mut shutdown => {
            info!(signal, "shutting down before etcd answered");
            starting.stop().await;
            return Ok(());
        }
    };
    info!(
        identities = state.identities().len(),
        endpoints = state.endpoints().len(),
        "node state ready"
    );
    let ep_dir = state_dir.join("endpoints");
    sup.spawn("lease", {
        let (leased, cancel) = (leased.clone(), cancel.clone());
        async move {
            leased.keep_alive(cancel).await;
            Ok(())
        }
    });
    let nodes: WatchCache<NodeRecord> = state.nodes().clone();
    let cidrs = WatchCache::start(kv.clone(), layout.node_cidrs_prefix());

    // Kubernetes mode: endpoints' labels from their Pods.
    let source = if let Some(client) = kube {
        let (pods, task) = Pods::start(client, &cfg.node, cancel.clone());
        sup.spawn("pods", task);
        LabelSource::Kubernetes(Arc::new(PodLabels {
            pods,
            namespaces: WatchCache::start(kv.clone(), layout.namespaces_prefix()),
            layout: layout.clone(),
            cluster: cfg.kubernetes.cluster_name.clone(),
        }))
    } else {
        LabelSource::Cni
    };
    let (programmed_tx, programmed_rx) = watch::channel(Default::default());
    let (view_tx, view_rx) = watch::channel(Arc::default());
    let eps = Arc::new(
        Endpoints::new(
            state.clone(),
            node_ns.clone(),
            ep_dir,
            leased.clone(),
            &restored,
            programmed_rx,
            cfg.endpoints.endpoint_timeout,
            source.clone(),
        )
        .with_pod_mtu(pod_mtu),
    );
    let pods = match &source {
        LabelSource::Kubernetes(labels) => {
            sup.spawn(
                "relabel",
                crate::k8s::relabel(eps.clone(), labels.clone(), cancel.clone()),
            );
            Some(labels.pods.clone())
        }
        LabelSource::Cni => None,
    };
    // Metrics: the listener first, so a taken port fails the start.
    let (encrypt_tx, encrypt_rx) = watch::channel(crate::encrypt::Status::default());
    let mut sources = metrics::Sources::new(reader.clone(), state.clone(), view_rx.clone());
    if ipsec_keys.is_some() {
        sources = sources.with_encrypt(encrypt_rx.clone());
    }
    let metrics = Metrics::new(&cfg.node, sources);
    // From here on (the start's own calls are not in it).
    kv.observe_with(Arc::new(metrics.kvstore.clone()));
    if let Some(addr) = cfg.prometheus_serve_addr.0 {
        let listener = metrics::server::listen(&node_ns, addr)
            .with_context(|| format!("--prometheus-serve-addr {addr}: cannot listen"))?;
        sup.spawn(
            "metrics",
            metrics::server::serve(listener, metrics.clone(), cancel.clone()),
        );
    }
    sup.spawn(
        "latencies",
        metrics::slo::run(
            state.clone(),
            view_rx.clone(),
            metrics.latencies.clone(),
            cancel.clone(),
        ),
    );

    // Flows: the observer task enriches what the event ring records, and
    // Hubble's API serves them (the socket first, so a bad path fails the
    // start).
    let recent = if cfg.hubble.enable_hubble {
        let (observer, sink, queue) = crate::observe::Observer::new(&cfg.node, cfg.hubble.sizes());
        let path = cfg.hubble.socket(&cfg.api_socket);
        let listener = crate::observe::server::listen(&path)
            .with_context(|| format!("--hubble-socket-path {}", path.display()))?;
        info!(socket = %path.display(), "Hubble API listening");
        sup.spawn(
            "observer",
            crate::observe::run(
                observer.clone(),
                queue,
                state.clone(),
                metrics.flows.clone(),
                cancel.clone(),
            ),
        );
        if let Some(addr) = cfg.hubble.hubble_listen_address.0 {
            let tls = cfg
                .hubble
                .tcp_tls()
                .map_err(anyhow::Error::msg)?
                .map(|files| crate::observe::server::tls_config(&files))
                .transpose()?;
            let tcp = metrics::server::listen(&node_ns, addr)
                .with_context(|| format!("--hubble-listen-address {addr}: cannot listen"))?;
            info!(%addr, tls = tls.is_some(), "Hubble API listening on TCP");
            sup.spawn(
                "hubble-tcp",
                crate::observe::server::serve_tcp(
                    tcp,
                    tls,
                    observer.clone(),
                    metrics.flows.clone(),
                    cancel.clone(),
                ),
            );
        } else {
            cfg.hubble.tcp_tls().map_err(anyhow::Error::msg)?;
        }
        sup.spawn(
            "hubble",
            crate::observe::server::serve(
                listener,
                observer,
                metrics.flows.clone(),
                cancel.clone(),
            ),
        );
        EventRing::with_flows(sink)
    } else {
        EventRing::default()
    };

    // The L7 proxy: a transparent listener in the node's namespace, the
    // redirect plumbing, and a policy snapshot after every pass.
    let proxy_port = cfg.proxy.proxy_port;
    let proxy_view = if proxy_port != 0 {
        let (tx, rx) = watch::channel(Arc::new(ProxyView::default()));
        let sockets = SocketFactory::new(cfg.datapath.netns.clone());
        let proxy_config = cfg.proxy.config();
        let listener = sockets
            .listener_with_backlog(proxy_port, proxy_config.listen_backlog)
            .with_context(|| format!("--proxy-port {proxy_port}: cannot listen"))?;
        // The redirect to it is installed by the reconcile driver when a
        // policy first has L7 rules (its `redirect` unit).
        info!(port = proxy_port, "L7 proxy listening");
        let events = l7proxy::L7Sink {
            ring: recent.clone(),
            metrics: metrics.l7.clone(),
        };
        let cancel = cancel.clone();
        // One thread of its own: a connection, its upstream and its
        // requests run without cross-thread wake-ups (see docs/benchmarks.md).
        sup.spawn_blocking("proxy", move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(l7proxy::serve(
                    listener,
                    sockets,
                    rx,
                    proxy_config,
                    events,
                    cancel,
                ))?;
            Ok(())
        });
        Some(tx)
    } else {
        None
    };

    let driver = Driver::new(
        Kernel {
            dp,
            netns: cfg.datapath.netns.clone(),
            proxy: (proxy_port != 0).then(|| (node_ns.clone(), proxy_port)),
        },
        cfg.datapath.enforcement,
        proxy_port,
    )
    .with_audit_mode(cfg.datapath.policy_audit_mode);
    sup.spawn(
        "reconcile",
        reconcile::run(
            driver,
            state.clone(),
            cfg.reconcile.clone(),
            Outputs {
                view: view_tx,
                programmed: programmed_tx,
                proxy: proxy_view,
                regenerations: Some(Arc::new(metrics.regenerations.clone())),
            },
            cancel.clone(),
        ),
    );
    sup.spawn(
        "events",
        crate::events::run(
            events,
            recent.clone(),
            cfg.datapath.event_poll,
            cancel.clone(),
        ),
    );
    let (cidrs_tx, cidrs_rx) = watch::channel(Vec::new());
    let (announce_tx, announce_rx) = watch::channel(None);
    if let (Some(maps), Some(keys)) = (encrypt_maps, ipsec_keys) {
        sup.spawn(
            "encrypt",
            crate::encrypt::run(
                maps,
                crate::encrypt::Inputs {
                    node: cfg.node.clone(),
                    addresses: cfg.node_ips.clone(),
                    config: cfg.encryption.clone(),
                    keys,
                    boot_id: crate::encrypt::boot_id(),
                    nodes: nodes.clone(),
                    node_labels: state.node_labels().clone(),
                    node_labels_key: layout.node_labels(&cfg.node),
                    pod_cidrs: cidrs_rx,
                    ns: node_ns.clone(),
                },
                crate::encrypt::Outputs {
                    status: encrypt_tx,
                    announce: announce_tx,
                },
                cancel.clone(),
            ),
        );
    }
    sup.spawn(
        "node-record",
        Announcer {
            layout: layout.clone(),
            cidrs,
            leased: leased.clone(),
            record,
            endpoints: eps.clone(),
            cidrs_out: cidrs_tx,
            encryption: announce_rx,
        }
        .run(cancel.clone()),
    );
    sup.spawn(
        "routes",
        crate::routes::run(
            node_ns.clone(),
            cfg.node.clone(),
            nodes,
            cfg.reconcile.resync_interval,
            cancel.clone(),
        ),
    );
    sup.spawn(
        "heap",
        crate::heap::run((cfg.heap_trim_mib as usize) << 20, cancel.clone()),
    );
    sup.spawn("orphans", {
        let (eps, cancel) = (eps.clone(), cancel.clone());
        async move { eps.collect_orphans_until(cancel).await }
    });
    sup.spawn(
        "node-status",
        crate::node_status::run(
            cfg.node.clone(),
            layout.node_status(&cfg.node),
            leased.clone(),
            view_rx.clone(),
            cancel.clone(),
        ),
    );
    let (services_tx, services_rx) = watch::channel(Arc::default());
    if let Some(lb) = lb_maps {
        sup.spawn(
            "services",
            crate::services::run(
                lb,
                crate::services::Inputs {
                    node: cfg.node.clone(),
                    node_ips: cfg.node_ips.clone(),
                    records: WatchCache::start(kv.clone(), layout.services_prefix()),
                    maglev: crate::services::table::Maglev {
                        m: cfg.services.maglev_table_size,
                        seed: maglev_seed(&cfg.kubernetes.cluster_name),
                    },
                    socket_lb: cfg.services.socket_lb,
                },
                services_tx,
                cancel.clone(),
            ),
        );
    }
    // The API takes the socket over from the starting one.
    let listener = api::listen(&cfg.api_socket)?;
    starting.stop().await;
    info!(socket = %cfg.api_socket.display(), "API listening");
    sup.spawn(
        "api",
        api::serve(
            listener,
            ApiState {
                endpoints: eps,
                state,
                datapath: view_rx,
                kvstore: kv_rx,
                maps: reader,
                events: recent,
                pods,
                services: services_rx,
                enforcement: cfg.datapath.enforcement,
                encrypt: encrypt_rx,
            },
            cancel.clone(),
        ),
    );
    sup.run(shutdown).await
}

/// The L7 proxy's socket acceleration (`--proxy-sockmap`): attached when
/// the proxy is on and `--cgroup-root` is a cgroup2 directory; otherwise a
/// previous run's sockops program is removed and no socket is added.
fn proxy_sockmap(dp: &mut Datapath, cfg: &Config, pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let cgroup = &cfg.services.cgroup_root;
    let usable = cgroup.join("cgroup.controllers").exists();
    if cfg.proxy.proxy_port != 0 && cfg.proxy.proxy_sockmap && usable {
        let cookie = SocketFactory::new(cfg.datapath.netns.clone())
            .netns_cookie()
            .context("reading the node's network namespace cookie")?;
        dp.attach_sockmap(cgroup, cookie).with_context(|| {
            format!(
                "attaching the proxy's sockops program to --cgroup-root {}",
                cgroup.display()
            )
        })?;
        info!(cgroup = %cgroup.display(), "L7 proxy's local connections accelerated (sockmap)");
        return Ok(());
    }
    if cfg.proxy.proxy_port != 0 && cfg.proxy.proxy_sockmap {
        warn!(
            cgroup = %cgroup.display(),
            "--proxy-sockmap: --cgroup-root is not a cgroup2 directory; the proxy's connections go through the TCP stack"
        );
    }
    dp.set_sockmap_node(0)
        .context("switching the proxy's sockmap off")?;
    if crate::datapath::detach_sockmap(pin_dir).context("removing the sockops link")? {
        info!("proxy sockmap off: the previous run's sockops program removed");
    }
    Ok(())
}
