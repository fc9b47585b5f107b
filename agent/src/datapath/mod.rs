//! The eBPF datapath: the object built from `bpf/programs` (`axoneme-bpf`:
//! its two programs and their maps, nothing else), embedded at compile
//! time, loaded into the kernel with aya, its maps pinned under one
//! directory per node (`/sys/fs/bpf/axoneme/<node>/`).
//!
//! Loading with an existing pin directory reuses the pinned maps (ipcache,
//! endpoints, policy, conntrack, fragments, events, counters): what a
//! restarted agent does, so established flows keep their CT entries.

mod device;
mod encrypt;
mod host;
mod lb;
mod maps;
mod reader;
mod ring;
mod slots;
mod sockmap;
mod test_run;

use std::path::{Path, PathBuf};

use axoneme_bpf_common::map_names;
use aya::maps::MapError;
use aya::programs::tc::{
    qdisc_add_clsact, qdisc_detach_program, NlOptions, SchedClassifierLink, TcAttachOptions,
    TcHandle,
};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader};

pub use device::DeviceEgress;
pub use encrypt::EncryptMaps;
pub use lb::{detach_socket_lb, LbMaps, PodLb, SOCK_PROGRAMS};
pub use maps::{direction_code, policy_entry, policy_key, Counters, Maps};
pub use reader::{EventReader, MapReader};
pub use ring::events_ring_bytes;
pub use sockmap::detach_sockmap;

/// The programs' load-time constant that switches the per-packet LB at
/// the pods' veths on (`bpf/programs/src/nodeport.rs`).
const POD_LB_GLOBAL: &str = "AXONEME_POD_LB";
/// The programs' load-time constant that switches packet counting and
/// events off (`bpf/programs/src/metrics.rs`).
const OBSERVE_GLOBAL: &str = "AXONEME_OBSERVE";
/// The programs' load-time constant that switches transparent IPsec's
/// marks on (`bpf/programs/src/encrypt.rs`).
const ENCRYPT_GLOBAL: &str = "AXONEME_ENCRYPT";
/// The programs' load-time constant that switches the host firewall on
/// (`bpf/programs/src/host.rs`).
const HOST_FIREWALL_GLOBAL: &str = "AXONEME_HOST_FIREWALL";
/// ... and the ifindex of the device its host endpoint is keyed by.
const HOST_IFINDEX_GLOBAL: &str = "AXONEME_HOST_IFINDEX";
/// The programs' constant: kube-proxy translates Services
/// ([`LoadOptions::kube_proxy`]).
const KUBE_PROXY_GLOBAL: &str = "AXONEME_KUBE_PROXY";

/// Switches of the programs, fixed when they are loaded: constants of the
/// programs (`.rodata`), so the verifier drops what is off; what stays is
/// the check, a load and a branch where the switch is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Which of the pods' packets their veth programs translate for
    /// services.
    pub pod_lb: PodLb,
    /// Packets are counted (`METRICS`) and events written. Off only in the
    /// datapath bench, as the baseline of what observability costs.
    pub observe: bool,
    /// Pod traffic to other nodes' pods is marked for encryption, and ESP
    /// from other nodes for decryption (`--enable-ipsec`).
    pub encrypt: bool,
    /// The device programs judge the node's own traffic by its host
    /// endpoint's policy (`--enable-host-firewall`).
    pub host_firewall: bool,
    /// The host endpoint's device (its key in `ENDPOINTS`), with
    /// `host_firewall`: pods' packets for the node's gateway address are
    /// judged by its policy.
    pub host_ifindex: u32,
    /// kube-proxy translates Services (`--kube-proxy-replacement=false`):
    /// the pods' connections are recorded as they leave them, so that a
    /// flow kube-proxy translated reaches the L7 proxy under the Service's
    /// address (`bpf/programs/src/kube_proxy.rs`).
    pub kube_proxy: bool,
    /// The event ring's size in bytes (a power of two, at least a page):
    /// see [`events_ring_bytes`].
    pub events_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            // The agent's default: kube-proxy replacement with socket LB,
            // without SCTP.
            pod_lb: PodLb::Off,
            observe: true,
            encrypt: false,
            host_firewall: false,
            host_ifindex: 0,
            kube_proxy: false,
            events_bytes: axoneme_bpf_common::EVENTS_BYTES,
        }
    }
}

/// The eBPF object built by `cargo xtask build-bpf` (located by `build.rs`).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AXONEME_BPF_OBJECT"));

/// TC ingress of a pod's host-side veth: what the pod sends (its egress).
pub const FROM_CONTAINER: &str = "axoneme_from_container";
/// TC egress of a pod's host-side veth: what the pod receives (its ingress).
pub const TO_CONTAINER: &str = "axoneme_to_container";

/// TC ingress of the node's device: per-packet service LB for traffic
/// from outside the node (kube-proxy replacement).
pub const NODEPORT_INGRESS: &str = "axoneme_nodeport_ingress";
/// TC egress of the node's device: local backends' replies.
pub const NODEPORT_EGRESS: &str = "axoneme_nodeport_egress";

/// The object's TC programs: all of them are loaded.
const PROGRAMS: [&str; 4] = [
    FROM_CONTAINER,
    TO_CONTAINER,
    NODEPORT_INGRESS,
    NODEPORT_EGRESS,
];

/// Sizes of the datapath's largest maps (the agent's `--bpf-*-max` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub ipcache: u32,
    pub policy: u32,
    /// Each of the two conntrack tables (IPv4, IPv6).
    pub ct: u32,
    /// Local endpoints (their addresses' map holds two per endpoint).
    pub endpoints: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            ipcache: axoneme_bpf_common::IPCACHE_MAX,
            policy: axoneme_bpf_common::POLICY_MAX,
            ct: axoneme_bpf_common::CT_MAX,
            endpoints: axoneme_bpf_common::ENDPOINTS_MAX,
        }
    }
}

impl MapSizes {
    /// (map, entries, the flag that sets it).
    fn by_map(&self) -> [(&'static str, u32, &'static str); 6] {
        [
            (map_names::IPCACHE, self.ipcache, "bpf-ipcache-max"),
            (map_names::POLICY, self.policy, "bpf-policy-max"),
            (map_names::CT4, self.ct, "bpf-ct-max"),
            (map_names::CT, self.ct, "bpf-ct-max"),
            (map_names::ENDPOINTS, self.endpoints, "bpf-endpoints-max"),
            (
                map_names::ENDPOINT_ADDRS,
                self.endpoints.saturating_mul(2),
                "bpf-endpoints-max",
            ),
        ]
    }

    /// The flag that sizes map `name`, if one does.
    pub fn flag_of(name: &str) -> Option<&'static str> {
        Self::default()
            .by_map()
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, flag)| flag)
    }
}

/// Where every node's pins live.
pub const PIN_ROOT: &str = "/sys/fs/bpf/axoneme";

/// Errors from loading or driving the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The embedded object could not be parsed, or its maps could not be
    /// created (no BPF syscall access, not root, no bpffs at the pin path).
    #[error("failed to load the embedded eBPF object ({path}) with pins in {pins}")]
    Object {
        /// Path the object was embedded from.
        path: &'static str,
        /// The pin directory.
        pins: String,
        /// The aya error (boxed: it is large).
        #[source]
        source: Box<EbpfError>,
    },
    /// The pin directory could not be created.
    #[error("cannot create the pin directory {path}")]
    PinDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The object does not contain the named program.
    #[error("eBPF program `{name}` not found in the object")]
    ProgramNotFound {
        /// Program (function) name.
        name: &'static str,
    },
    /// The object does not contain the named map.
    #[error("eBPF map `{name}` not found in the object")]
    MapNotFound {
        /// Map (static) name.
        name: &'static str,
    },
    /// A program operation failed: wrong type, verifier rejection, test run.
    #[error("eBPF program `{name}`: {op} failed")]
    Program {
        /// Program (function) name.
        name: &'static str,
        /// What was being done.
        op: &'static str,
        /// The aya error (its message carries the verifier log on rejection).
        #[source]
        source: ProgramError,
    },
    /// Attaching to an interface failed.
    #[error("attaching to interface `{interface}`: {op} failed")]
    Attach {
        interface: String,
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A pinned map has another size than the configuration asks for.
    #[error(
        "eBPF map `{name}` pinned in {pins} has {have} entries, not the {want} of --{flag}: \
         keep the old size, or remove the pins to resize (conntrack is then lost)"
    )]
    PinnedSize {
        name: &'static str,
        have: u32,
        want: u32,
        flag: &'static str,
        pins: String,
    },
    /// A map has no room for a new entry (the kernel's E2BIG for a hash,
    /// ENOSPC for a trie).
    #[error("eBPF map `{name}` is full: {op} failed (its size is --{flag})")]
    Full {
        name: &'static str,
        op: &'static str,
        flag: &'static str,
        #[source]
        source: Box<MapError>,
    },
    /// The node's redirect to the L7 proxy (fwmark rules, local table,
    /// TPROXY table) could not be installed.
    #[error("installing the redirect to the L7 proxy: {0}")]
    Redirect(String),
    /// A map operation failed.
    #[error("eBPF map `{name}`: {op} failed")]
    Map {
        /// Map (static) name.
        name: &'static str,
        /// What was being done.
        op: &'static str,
        /// The aya error.
        #[source]
        source: MapError,
    },
}

/// The loaded datapath: maps created or adopted from their pins, programs
/// verified and loaded (not attached).
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Typed handles on the datapath's maps.
    pub maps: Maps,
}

/// Removes the pin of map `name` if its size is not `want`, so that loading
/// creates one of the size wanted (for maps whose contents a resize may
/// lose; the others' pins of another size are an error).
fn replace_pin_of_other_size(
    pin_dir: &Path,
    name: &'static str,
    want: u32,
) -> Result<(), DatapathError> {
    let pin = pin_dir.join(name);
    if !pin.exists() {
        return Ok(());
    }
    let have = aya::maps::MapInfo::from_pin(&pin)
        .map_err(|source| map_error(name, "info", source))?
        .max_entries();
    if have != want {
        std::fs::remove_file(&pin).map_err(|source| DatapathError::PinDir {
            path: pin.display().to_string(),
            source,
        })?;
        tracing::info!(map = name, have, want, "pinned map resized");
    }
    Ok(())
}

impl Datapath {
    /// Parses the embedded object, creates its maps (or reuses the ones
    /// pinned in `pin_dir`, which is created if missing) and loads its
    /// programs into the kernel. Needs `CAP_BPF` (in practice: root) and a
    /// bpffs at `pin_dir`.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_with(pin_dir, &MapSizes::default(), LoadOptions::default())
    }

    /// [`Self::load`] with the largest maps at `sizes`. Pinned maps keep
    /// the size they were created with: a pinned map of another size is
    /// an error that says so (resizing means removing the pins, which
    /// forgets conntrack). `options`: see [`LoadOptions`].
    pub fn load_with(
        pin_dir: &Path,
        sizes: &MapSizes,
        options: LoadOptions,
    ) -> Result<Self, DatapathError> {
        std::fs::create_dir_all(pin_dir).map_err(|source| DatapathError::PinDir {
            path: pin_dir.display().to_string(),
            source,
        })?;
        let sized = sizes.by_map();
        let pod_lb = options.pod_lb.value();
        let observe = u8::from(options.observe);
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        loader.override_global(POD_LB_GLOBAL, &pod_lb, true);
        loader.override_global(OBSERVE_GLOBAL, &observe, true);
        let encrypt = u8::from(options.encrypt);
        loader.override_global(ENCRYPT_GLOBAL, &encrypt, true);
        let host_firewall = u8::from(options.host_firewall);
        loader.override_global(HOST_FIREWALL_GLOBAL, &host_firewall, true);
        loader.override_global(HOST_IFINDEX_GLOBAL, &options.host_ifindex, true);
        let kube_proxy = u8::from(options.kube_proxy);
        loader.override_global(KUBE_PROXY_GLOBAL, &kube_proxy, true);
        for (name, size, _) in sized {
            loader.map_max_entries(name, size);
        }
        loader.map_max_entries(map_names::EVENTS, options.events_bytes);
        let kube_proxy_sent = if options.kube_proxy { sizes.ct } else { 1 };
        loader.map_max_entries(map_names::KUBE_PROXY_SENT, kube_proxy_sent);
        // Neither holds anything worth an error when its size changes (at
        // worst the events the previous run did not read; the records of
        // a mode just switched on or off).
        replace_pin_of_other_size(pin_dir, map_names::EVENTS, options.events_bytes)?;
        replace_pin_of_other_size(pin_dir, map_names::KUBE_PROXY_SENT, kube_proxy_sent)?;
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .map_err(|source| DatapathError::Object {
                path: env!("AXONEME_BPF_OBJECT"),
                pins: pin_dir.display().to_string(),
                source: Box::new(source),
            })?;
        for name in PROGRAMS {
            loaded(&mut ebpf, name, SchedClassifier::load)?;
            tracing::debug!(program = name, "eBPF program loaded");
        }
        for (name, want, flag) in sized {
            let have = aya::maps::MapInfo::from_pin(pin_dir.join(name))
                .map_err(|source| map_error(name, "info", source))?
                .max_entries();
            if have != want {
                return Err(DatapathError::PinnedSize {
                    name,
                    have,
                    want,
                    flag,
                    pins: pin_dir.display().to_string(),
                });
            }
        }
        let maps = Maps::take(&mut ebpf)?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            maps,
        })
    }

    /// The directory holding this datapath's pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The embedded eBPF object (ELF), as built by `cargo xtask build-bpf`.
    pub fn object() -> &'static [u8] {
        BPF_OBJECT
    }

    /// A loaded SCHED_CLS program by name.
    pub fn program(&self, name: &'static str) -> Result<&SchedClassifier, DatapathError> {
        self.ebpf
            .program(name)
            .ok_or(DatapathError::ProgramNotFound { name })?
            .try_into()
            .map_err(|source| program_error(name, "type check", source))
    }

    /// Attaches the programs to `interface` (in the network namespace at
    /// `netns`, or the agent's own): `from_container` at TC ingress,
    /// `to_container` at TC egress, as clsact filters at a fixed priority
    /// and handle. The filters outlive the agent (nothing detaches them on
    /// exit); a later run replaces its predecessor's programs at the same
    /// priority and handle in one netlink request, so there is no moment
    /// without a program. Returns the interface's ifindex.
    ///
    /// (TCX links would need pins to outlive the agent, and bpffs refuses
    /// to pin links made in another network namespace, as the local
    /// cluster's nodes are.)
    pub fn attach(&mut self, interface: &str, netns: Option<&Path>) -> Result<u32, DatapathError> {
        self.attach_tc(
            interface,
            netns,
            &[
                (FROM_CONTAINER, TcAttachType::Ingress),
                (TO_CONTAINER, TcAttachType::Egress),
            ],
        )
    }

    /// Attaches `programs` (name, hook) to `interface` as [`Self::attach`]
    /// does.
    fn attach_tc(
        &mut self,
        interface: &str,
        netns: Option<&Path>,
        programs: &[(&'static str, TcAttachType)],
    ) -> Result<u32, DatapathError> {
        let ebpf = &mut self.ebpf;
        in_netns(interface, netns, |err| {
            let ifindex = nix::net::if_::if_nametoindex(interface)
                .map_err(|e| err("finding the interface", e.into()))?;
            add_clsact(interface);
            for &(name, attach_type) in programs {
                let program: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .ok_or(DatapathError::ProgramNotFound { name })?
                    .try_into()
                    .map_err(|source| program_error(name, "type check", source))?;
                attach_filter(program, name, interface, attach_type)?;
            }
            Ok(ifindex)
        })
    }

    /// Removes the programs from `interface` (gone already is fine: a
    /// deleted veth takes its filters with it).
    pub fn detach(&mut self, interface: &str, netns: Option<&Path>) {
        let result = in_netns(interface, netns, |_| {
            for (name, attach_type) in [
                (FROM_CONTAINER, TcAttachType::Ingress),
                (TO_CONTAINER, TcAttachType::Egress),
            ] {
                let _ = qdisc_detach_program(interface, attach_type, name);
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::debug!(%interface, error = %e, "detach");
        }
    }

    /// Removes this datapath's pin directory (maps stay alive while
    /// loaded; the kernel frees them when the last reference goes).
    pub fn unpin(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.pin_dir)
    }
}

/// Adds the `clsact` qdisc to `interface` (in the calling thread's
/// namespace) unless it has one.
fn add_clsact(interface: &str) {
    if let Err(e) = qdisc_add_clsact(interface) {
        // Present already (an earlier run, or another user of tc).
        tracing::debug!(%interface, error = %e, "clsact qdisc not added");
    }
}

/// Attaches `program` at `attach_type` of `interface` (in the calling
/// thread's namespace) at Axoneme's priority and handle: in place of what
/// is there, in one netlink request, or as a new filter.
fn attach_filter(
    program: &mut SchedClassifier,
    name: &'static str,
    interface: &str,
    attach_type: TcAttachType,
) -> Result<(), DatapathError> {
    let replaced =
        SchedClassifierLink::attached(interface, attach_type, TC_PRIORITY, TC_HANDLE, None)
            .map_err(ProgramError::from)
            .and_then(|existing| program.attach_to_link(existing));
    let id = match replaced {
        Ok(id) => id,
        Err(_) => program
            .attach_with_options(
                interface,
                attach_type,
                TcAttachOptions::Netlink(NlOptions {
                    priority: TC_PRIORITY,
                    handle: TC_HANDLE,
                    classid: None,
                }),
            )
            .map_err(|source| program_error(name, "attach", source))?,
    };
    let link = program
        .take_link(id)
        .map_err(|source| program_error(name, "take link", source))?;
    // Dropping the link would detach the filter: the datapath must keep
    // enforcing after the agent exits.
    std::mem::forget(link);
    Ok(())
}

/// Priority and handle of Axoneme's clsact filters.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 0xa0);

type AttachErr<'a> =
    &'a dyn Fn(&'static str, Box<dyn std::error::Error + Send + Sync>) -> DatapathError;

/// Runs `f` on a thread inside the network namespace at `netns` (netlink
/// and interface names are per namespace).
fn in_netns<T: Send>(
    interface: &str,
    netns: Option<&Path>,
    f: impl FnOnce(AttachErr<'_>) -> Result<T, DatapathError> + Send,
) -> Result<T, DatapathError> {
    let err =
        |op: &'static str, e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
            interface: interface.to_string(),
            op,
            source: e,
        };
    axoneme_identity::check_interface_name(interface).map_err(|e| err("name check", e.into()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(path) = netns {
                    let ns = std::fs::File::open(path)
                        .map_err(|e| err("opening the netns", e.into()))?;
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| err("entering the netns", e.into()))?;
                }
                f(&err)
            })
            .join()
            .unwrap_or_else(|_| Err(err("netns thread", "panicked".into())))
    })
}

/// Program `name` of `ebpf` as a `T`, loaded by `load` (where the
/// verifier runs; each program type has its own).
fn loaded<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    load: impl FnOnce(&mut T) -> Result<(), ProgramError>,
) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program: &'a mut T = ebpf
        .program_mut(name)
        .ok_or(DatapathError::ProgramNotFound { name })?
        .try_into()
        .map_err(|source| program_error(name, "type check", source))?;
    load(program).map_err(|source| program_error(name, "load (verifier)", source))?;
    Ok(program)
}

fn program_error(name: &'static str, op: &'static str, source: ProgramError) -> DatapathError {
    DatapathError::Program { name, op, source }
}

fn map_error(name: &'static str, op: &'static str, source: MapError) -> DatapathError {
    let no_room = match &source {
        MapError::SyscallError(e) => matches!(
            e.io_error.raw_os_error(),
            Some(nix::libc::E2BIG | nix::libc::ENOSPC)
        ),
        _ => false,
    };
    match MapSizes::flag_of(name) {
        Some(flag) if no_room => DatapathError::Full {
            name,
            op,
            flag,
            source: Box::new(source),
        },
        _ => DatapathError::Map { name, op, source },
    }
}

impl DatapathError {
    /// Whether a map had no room (see [`DatapathError::Full`]).
    pub fn is_full(&self) -> bool {
        matches!(self, DatapathError::Full { .. })
    }
}

#[cfg(test)]
mod tests {
    use axoneme_bpf_common::map_names;
    use object::{Object, ObjectSection, ObjectSymbol};

    /// The smoke-test object, which only tests and benches embed.
    static SMOKE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AXONEME_BPF_SMOKE_OBJECT"));

    /// The names of an object's maps: the symbols of its `maps` section,
    /// where aya-ebpf's `#[map]` puts each map static under its name.
    /// (Data sections such as `.rodata` become maps too, named after the
    /// section; nothing opens them by name.)
    fn maps(object: &[u8]) -> Vec<String> {
        let file = object::File::parse(object).unwrap();
        let maps = file.section_by_name("maps").unwrap().index();
        let mut names: Vec<String> = file
            .symbols()
            .filter(|s| s.section_index() == Some(maps))
            .map(|s| s.name().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    /// The programs' map statics and the agent's names are one list: each
    /// object has exactly the maps `bpf/common` names for it.
    #[test]
    fn objects_have_exactly_the_maps_named_in_bpf_common() {
        assert_eq!(maps(super::BPF_OBJECT), sorted(&map_names::DATAPATH));
        assert_eq!(maps(SMOKE_OBJECT), sorted(&map_names::SMOKE));
    }

    /// The datapath object holds the two TC programs, the socket-LB ones,
    /// and no other.
    #[test]
    fn the_datapath_object_has_only_the_production_programs() {
        let file = object::File::parse(super::BPF_OBJECT).unwrap();
        let mut programs: Vec<&str> = file
            .symbols()
            .filter(|s| s.is_global() && s.kind() == object::SymbolKind::Text)
            .filter(|s| {
                s.section_index()
                    .and_then(|i| file.section_by_index(i).ok())
                    .is_some_and(|sec| {
                        sec.name() == Ok("classifier")
                            || sec.name().is_ok_and(|n| n.starts_with("cgroup/"))
                    })
            })
            .map(|s| s.name().unwrap())
            .collect();
        programs.sort();
        let mut want = super::PROGRAMS.to_vec();
        want.extend(super::SOCK_PROGRAMS);
        want.sort();
        assert_eq!(programs, want);
    }
}
