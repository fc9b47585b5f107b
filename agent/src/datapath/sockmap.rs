//! The L7 proxy's socket acceleration (`bpf/programs/src/sockmap.rs`):
//! the sockops program on the node's cgroup, pinned as a link like the
//! socket-LB programs (`links-sockmap/`), and the two `sk_msg` programs
//! attached to their sock hashes, whose pins keep them (and the sockets
//! in them) across an agent restart.

use std::path::{Path, PathBuf};

use axoneme_bpf_common::map_names::{SOCK_NODE, SOCK_PODS, SOCK_PROXY};
use axoneme_bpf_common::SockKey;
use aya::maps::{Array, MapData, SockHash};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, SkMsg, SockOps};

use super::lb::replace_pin;
use super::{loaded, map_error, program_error, Datapath, DatapathError};

const SOCKOPS: &str = "axoneme_sockops";
/// The `sk_msg` programs and the map each is attached to.
const MSG_PROGRAMS: [(&str, &str); 2] = [
    ("axoneme_msg_pod", SOCK_PODS),
    ("axoneme_msg_proxy", SOCK_PROXY),
];

fn link_pin(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links-sockmap").join(SOCKOPS)
}

impl Datapath {
    /// Accelerates the L7 proxy's connections whose client or server is a
    /// pod under `cgroup` (the node's cgroup2 directory, which must hold
    /// the agent too: the proxy's sockets are told by the node's network
    /// namespace, `node_netns` its cookie).
    pub fn attach_sockmap(&mut self, cgroup: &Path, node_netns: u64) -> Result<(), DatapathError> {
        let attach_err =
            |op: &'static str, e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
                interface: format!("cgroup {}", cgroup.display()),
                op,
                source: e,
            };
        for (name, map_name) in MSG_PROGRAMS {
            let map = self
                .ebpf
                .map(map_name)
                .ok_or(DatapathError::MapNotFound { name: map_name })?;
            let fd = SockHash::<&MapData, SockKey>::try_from(map)
                .map_err(|source| map_error(map_name, "open", source))?
                .fd()
                .try_clone()
                .map_err(|e| attach_err("map fd", e.into()))?;
            let program = loaded(&mut self.ebpf, name, SkMsg::load)?;
            let id = program
                .attach(&fd)
                .map_err(|source| program_error(name, "attach", source))?;
            // The attachment belongs to the pinned map (and replaced a
            // previous run's); aya's link would detach it when dropped, so
            // it is forgotten (its two descriptors stay open until exit).
            std::mem::forget(
                program
                    .take_link(id)
                    .map_err(|source| program_error(name, "take link", source))?,
            );
        }
        self.set_sockmap_node(node_netns)?;
        let program = loaded(&mut self.ebpf, SOCKOPS, SockOps::load)?;
        let fd = std::fs::File::open(cgroup).map_err(|e| attach_err("open", e.into()))?;
        let id = program
            .attach(&fd, CgroupAttachMode::Single)
            .map_err(|source| program_error(SOCKOPS, "attach", source))?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|source| program_error(SOCKOPS, "take link", source))?
            .try_into()
            .map_err(|e| attach_err("link", Box::new(e)))?;
        let pin = link_pin(&self.pin_dir);
        if let Some(dir) = pin.parent() {
            std::fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        replace_pin(link, &pin, &attach_err)
    }

    /// Writes the node's network namespace cookie the sockops program
    /// tells the proxy's sockets by; 0 stops it adding sockets.
    pub fn set_sockmap_node(&mut self, node_netns: u64) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(SOCK_NODE)
            .ok_or(DatapathError::MapNotFound { name: SOCK_NODE })?;
        let mut node: Array<&mut MapData, u64> =
            Array::try_from(map).map_err(|source| map_error(SOCK_NODE, "open", source))?;
        node.set(0, node_netns, 0)
            .map_err(|source| map_error(SOCK_NODE, "update", source))
    }
}

/// Removes a previous run's sockops link (acceleration turned off): no
/// new socket is added; those in the maps keep theirs until they close.
/// Whether it was there.
pub fn detach_sockmap(pin_dir: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(link_pin(pin_dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
