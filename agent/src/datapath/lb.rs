//! The service load-balancing part of the datapath: the LB maps (written
//! by the services unit alone, through [`LbMaps`]) and the socket-LB
//! programs on the node's cgroup (or, with `--socket-lb=false`, the
//! per-packet LB in the pods' veth programs, switched on when they are
//! loaded: [`Datapath::load_with`]).
//!
//! The programs are attached with BPF links pinned under the pin
//! directory (`links/<program>`), so they outlive the agent as the TC
//! programs do: connects to services keep working across an agent restart.
//! A restarted agent attaches its own programs first, then replaces the
//! pins (dropping the old links detaches the old programs); for the moment
//! both run, the second finds the address translated already and does
//! nothing. `kube-proxy-replacement=false` and `socket-lb=false` remove the
//! pins.

use std::path::{Path, PathBuf};

use axoneme_bpf_common::lb::{AffinityMatchKey, LbBackend, LbKey, LbRevNat, LbService, NodeAddrs};
use axoneme_bpf_common::map_names::{
    LB_AFFINITY_MATCH, LB_BACKENDS, LB_MAGLEV, LB_NODE, LB_REVNAT, LB_SERVICES,
};
use aya::maps::{Array, HashMap, MapData};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::Ebpf;

use super::maps::typed;
use super::{loaded, map_error, program_error, Datapath, DatapathError, DeviceEgress};
use crate::services::sync::LbWriter;
use crate::services::table::Table;

/// The socket-LB programs, by the hook each is for.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "axoneme_sock4_connect",
    "axoneme_sock4_sendmsg",
    "axoneme_sock4_recvmsg",
    "axoneme_sock4_getpeername",
    "axoneme_sock6_connect",
    "axoneme_sock6_sendmsg",
    "axoneme_sock6_recvmsg",
    "axoneme_sock6_getpeername",
];

/// Handles on the LB maps.
pub struct LbMaps {
    services: HashMap<MapData, LbKey, LbService>,
    backends: HashMap<MapData, u32, LbBackend>,
    revnat: HashMap<MapData, u32, LbRevNat>,
    affinity: HashMap<MapData, AffinityMatchKey, u32>,
    maglev: Array<MapData, u32>,
    /// The device's egress program, when the LB alone needs it
    /// ([`LbWriter::device_egress`]).
    egress: Option<DeviceEgress>,
}

impl std::fmt::Debug for LbMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbMaps").finish_non_exhaustive()
    }
}

impl LbMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            services: typed(ebpf, LB_SERVICES)?,
            backends: typed(ebpf, LB_BACKENDS)?,
            revnat: typed(ebpf, LB_REVNAT)?,
            affinity: typed(ebpf, LB_AFFINITY_MATCH)?,
            maglev: typed(ebpf, LB_MAGLEV)?,
            egress: None,
        })
    }

    /// Hands the device's egress program to the LB (nothing else needs
    /// it), switched at once for what the maps hold (a previous run's
    /// entries, its filter perhaps still there) and then by each pass.
    pub fn own_device_egress(&mut self, mut egress: DeviceEgress) -> Result<(), DatapathError> {
        egress.set(self.read()?.external())?;
        self.egress = Some(egress);
        Ok(())
    }
}

fn collect<K: aya::Pod + Ord, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<std::collections::BTreeMap<K, V>, DatapathError> {
    map.iter()
        .collect::<Result<_, _>>()
        .map_err(|source| map_error(name, "iterate", source))
}

impl LbWriter for LbMaps {
    fn device_egress(&mut self, on: bool) -> Result<(), DatapathError> {
        match &mut self.egress {
            Some(egress) => egress.set(on),
            None => Ok(()),
        }
    }

    fn read(&self) -> Result<Table, DatapathError> {
        Ok(Table {
            services: collect(&self.services, LB_SERVICES)?,
            backends: collect(&self.backends, LB_BACKENDS)?,
            revnat: collect(&self.revnat, LB_REVNAT)?,
            affinity: collect(&self.affinity, LB_AFFINITY_MATCH)?
                .into_keys()
                .collect(),
            // Not read back: a new run rewrites the rows it names.
            maglev: Default::default(),
        })
    }

    fn set_service(&mut self, key: &LbKey, value: &LbService) -> Result<(), DatapathError> {
        self.services
            .insert(key, value, 0)
            .map_err(|s| map_error(LB_SERVICES, "update", s))
    }

    fn remove_service(&mut self, key: &LbKey) -> Result<(), DatapathError> {
        self.services
            .remove(key)
            .map_err(|s| map_error(LB_SERVICES, "delete", s))
    }

    fn set_backend(&mut self, id: u32, value: &LbBackend) -> Result<(), DatapathError> {
        self.backends
            .insert(id, value, 0)
            .map_err(|s| map_error(LB_BACKENDS, "update", s))
    }

    fn remove_backend(&mut self, id: u32) -> Result<(), DatapathError> {
        self.backends
            .remove(&id)
            .map_err(|s| map_error(LB_BACKENDS, "delete", s))
    }

    fn set_revnat(&mut self, id: u32, value: &LbRevNat) -> Result<(), DatapathError> {
        self.revnat
            .insert(id, value, 0)
            .map_err(|s| map_error(LB_REVNAT, "update", s))
    }

    fn remove_revnat(&mut self, id: u32) -> Result<(), DatapathError> {
        self.revnat
            .remove(&id)
            .map_err(|s| map_error(LB_REVNAT, "delete", s))
    }

    fn set_affinity(&mut self, key: &AffinityMatchKey) -> Result<(), DatapathError> {
        self.affinity
            .insert(key, 1, 0)
            .map_err(|s| map_error(LB_AFFINITY_MATCH, "update", s))
    }

    fn remove_affinity(&mut self, key: &AffinityMatchKey) -> Result<(), DatapathError> {
        self.affinity
            .remove(key)
            .map_err(|s| map_error(LB_AFFINITY_MATCH, "delete", s))
    }

    fn set_maglev(
        &mut self,
        row: u32,
        m: u32,
        i: u32,
        backend_id: u32,
    ) -> Result<(), DatapathError> {
        let index = row
            .checked_sub(1)
            .and_then(|r| r.checked_mul(m))
            .and_then(|r| r.checked_add(i))
            .ok_or(DatapathError::MapNotFound { name: LB_MAGLEV })?;
        self.maglev
            .set(index, backend_id, 0)
            .map_err(|s| map_error(LB_MAGLEV, "update", s))
    }
}

/// Where the socket-LB links are pinned.
fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

impl Datapath {
    /// Loads the socket-LB programs and attaches them to the cgroup at
    /// `cgroup` (a cgroup2 directory: the node's), replacing a previous
    /// run's links (see the module's documentation).
    pub fn attach_socket_lb(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let attach_err =
            |op: &'static str, e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
                interface: format!("cgroup {}", cgroup.display()),
                op,
                source: e,
            };
        let fd = std::fs::File::open(cgroup).map_err(|e| attach_err("open", e.into()))?;
        let dir = links_dir(&self.pin_dir);
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
            path: dir.display().to_string(),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let program = loaded(&mut self.ebpf, name, CgroupSockAddr::load)?;
            // Links always stack (the kernel refuses flags on a cgroup
            // link): `Single` is what asks for none.
            let id = program
                .attach(&fd, CgroupAttachMode::Single)
                .map_err(|source| program_error(name, "attach", source))?;
            let link: FdLink = program
                .take_link(id)
                .map_err(|source| program_error(name, "take link", source))?
                .try_into()
                .map_err(|e| attach_err("link", Box::new(e)))?;
            replace_pin(link, &dir.join(name), &attach_err)?;
            tracing::debug!(program = name, cgroup = %cgroup.display(), "socket LB attached");
        }
        Ok(())
    }

    /// Writes the node's first address of each family and the Maglev
    /// table size into `LB_NODE`.
    pub fn set_node_addrs(
        &mut self,
        node_ips: &[std::net::IpAddr],
        maglev_m: u32,
    ) -> Result<(), DatapathError> {
        let mut addrs = NodeAddrs {
            maglev_m,
            ..NodeAddrs::default()
        };
        for ip in node_ips {
            match ip {
                std::net::IpAddr::V4(a) if addrs.ipv4 == [0; 16] => {
                    addrs.ipv4[..4].copy_from_slice(&a.octets())
                }
                std::net::IpAddr::V6(a) if addrs.ipv6 == [0; 16] => addrs.ipv6 = a.octets(),
                _ => {}
            }
        }
        let map = self
            .ebpf
            .map_mut(LB_NODE)
            .ok_or(DatapathError::MapNotFound { name: LB_NODE })?;
        let mut node: Array<&mut MapData, NodeAddrs> =
            Array::try_from(map).map_err(|source| map_error(LB_NODE, "open", source))?;
        node.set(0, addrs, 0)
            .map_err(|source| map_error(LB_NODE, "update", source))
    }

    /// The LB maps' handles, for their one writer (once).
    pub fn take_lb_maps(&mut self) -> Result<LbMaps, DatapathError> {
        LbMaps::take(&mut self.ebpf)
    }
}

/// Pins `link` at `pin`, in place of the link pinned there before (which
/// goes with its pin: nothing else holds it).
pub(super) fn replace_pin(
    link: FdLink,
    pin: &Path,
    attach_err: super::AttachErr<'_>,
) -> Result<(), DatapathError> {
    match std::fs::remove_file(pin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(attach_err("remove old pin", e.into())),
    }
    link.pin(pin)
        .map(drop)
        .map_err(|e| attach_err("pin link", Box::new(e)))
}

/// Removes the socket-LB links of a previous run (kube-proxy replacement
/// turned off): their programs stop translating. Whether any were there.
pub fn detach_socket_lb(pin_dir: &Path) -> std::io::Result<bool> {
    match std::fs::remove_dir_all(links_dir(pin_dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Which of the pods' packets their veth programs translate for services
/// (per packet, as on the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodLb {
    /// None: no kube-proxy replacement, or socket LB without SCTP.
    Off,
    /// SCTP only: socket LB serves TCP and UDP, and the kernel runs no
    /// cgroup connect or sendmsg program for SCTP sockets
    /// (`--enable-sctp`).
    Sctp,
    /// TCP, UDP and SCTP: socket LB off.
    All,
}

impl PodLb {
    /// The mode for `--kube-proxy-replacement`, `--socket-lb` and
    /// `--enable-sctp`.
    pub fn new(kube_proxy_replacement: bool, socket_lb: bool, sctp: bool) -> PodLb {
        match (kube_proxy_replacement, socket_lb, sctp) {
            (false, _, _) => PodLb::Off,
            (true, false, _) => PodLb::All,
            (true, true, true) => PodLb::Sctp,
            (true, true, false) => PodLb::Off,
        }
    }

    /// The programs' `AXONEME_POD_LB` value.
    pub(super) fn value(self) -> u8 {
        use axoneme_bpf_common::lb::pod_lb;
        match self {
            PodLb::Off => pod_lb::OFF,
            PodLb::Sctp => pod_lb::SCTP,
            PodLb::All => pod_lb::ALL,
        }
    }
}
