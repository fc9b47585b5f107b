//! The node's device (the interface with its address): the ingress
//! program is always attached while anything needs it (per-packet service
//! LB, ESP's decrypt mark, the host firewall, host routing into the pods);
//! the egress program only while something needs it there — the host
//! firewall, or this node's backends of external frontends, whose replies
//! it gives their frontend back. Otherwise every packet leaving the node
//! (a pod's to another node, its ESP) would cross a program that only
//! passes it.
//!
//! The egress program is switched by whoever owns that decision through a
//! [`DeviceEgress`]: the services unit (through its LB writer), or the
//! agent's start when the host firewall keeps it attached. It holds its
//! own handle on the loaded program (pinned under the pin directory as
//! `programs/axoneme_nodeport_egress`), so it does not borrow the datapath.

use std::path::{Path, PathBuf};

use aya::programs::tc::{SchedClassifierLink, TcAttachType, TcError};
use aya::programs::{Link, ProgramError, SchedClassifier};

use super::{
    add_clsact, attach_filter, in_netns, program_error, Datapath, DatapathError, NODEPORT_EGRESS,
    NODEPORT_INGRESS, TC_HANDLE, TC_PRIORITY,
};

/// The device's egress program and where it goes.
pub struct DeviceEgress {
    interface: String,
    netns: Option<PathBuf>,
    program: SchedClassifier,
    /// What the last switch made it; `None` before the first (the previous
    /// run's filter may still be there).
    attached: Option<bool>,
}

impl std::fmt::Debug for DeviceEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEgress")
            .field("interface", &self.interface)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl DeviceEgress {
    /// Attaches (`on`) or removes the program; nothing if the last switch
    /// left it so.
    pub fn set(&mut self, on: bool) -> Result<(), DatapathError> {
        if self.attached == Some(on) {
            return Ok(());
        }
        let program = &mut self.program;
        in_netns(&self.interface, self.netns.as_deref(), |_| {
            if on {
                add_clsact(&self.interface);
                attach_filter(
                    program,
                    NODEPORT_EGRESS,
                    &self.interface,
                    TcAttachType::Egress,
                )
            } else {
                detach_filter(&self.interface, TcAttachType::Egress)
            }
        })?;
        tracing::info!(interface = %self.interface, attached = on, "device egress program");
        self.attached = Some(on);
        Ok(())
    }

    /// Whether the last switch attached it.
    pub fn attached(&self) -> Option<bool> {
        self.attached
    }
}

/// Removes Axoneme's filter at `attach_type` of `interface` (in the
/// calling thread's namespace); none there is fine.
fn detach_filter(interface: &str, attach_type: TcAttachType) -> Result<(), DatapathError> {
    let link = SchedClassifierLink::attached(interface, attach_type, TC_PRIORITY, TC_HANDLE, None)
        .map_err(|e| program_error(NODEPORT_EGRESS, "find the filter", TcError::from(e).into()))?;
    match link.detach() {
        Ok(()) => Ok(()),
        // No filter at that priority and handle (ENOENT), or no clsact
        // qdisc to hold one (EINVAL).
        Err(ProgramError::NetlinkError(e))
            if matches!(
                e.raw_os_error().map(nix::errno::Errno::from_raw),
                Some(nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL)
            ) =>
        {
            Ok(())
        }
        Err(source) => Err(program_error(NODEPORT_EGRESS, "detach", source)),
    }
}

impl Datapath {
    /// Attaches the device's ingress program to `device` (in `netns`, or
    /// the agent's namespace). Its ifindex.
    pub fn attach_device(
        &mut self,
        device: &str,
        netns: Option<&Path>,
    ) -> Result<u32, DatapathError> {
        self.attach_tc(device, netns, &[(NODEPORT_INGRESS, TcAttachType::Ingress)])
    }

    /// A handle on the device's egress program for `device`, to switch it
    /// (nothing attached or removed yet).
    pub fn device_egress(
        &mut self,
        device: &str,
        netns: Option<&Path>,
    ) -> Result<DeviceEgress, DatapathError> {
        let dir = self.pin_dir.join("programs");
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
            path: dir.display().to_string(),
            source,
        })?;
        let pin = dir.join(NODEPORT_EGRESS);
        let pin_err =
            |op, source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
                interface: device.to_string(),
                op,
                source,
            };
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_err("remove the old program pin", e.into())),
        }
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(NODEPORT_EGRESS)
            .ok_or(DatapathError::ProgramNotFound {
                name: NODEPORT_EGRESS,
            })?
            .try_into()
            .map_err(|source| program_error(NODEPORT_EGRESS, "type check", source))?;
        program
            .pin(&pin)
            .map_err(|e| pin_err("pin the egress program", e.into()))?;
        let program = SchedClassifier::from_pin(&pin)
            .map_err(|source| program_error(NODEPORT_EGRESS, "open the pin", source))?;
        Ok(DeviceEgress {
            interface: device.to_string(),
            netns: netns.map(Path::to_path_buf),
            program,
            attached: None,
        })
    }

    /// Removes both of the device's programs from `device` (none there is
    /// fine): nothing on the node needs them.
    pub fn detach_device(&mut self, device: &str, netns: Option<&Path>) {
        let result = in_netns(device, netns, |_| {
            detach_filter(device, TcAttachType::Ingress)?;
            detach_filter(device, TcAttachType::Egress)
        });
        if let Err(e) = result {
            tracing::warn!(%device, error = %e, "removing the device's programs");
        }
    }
}
