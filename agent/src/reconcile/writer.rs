//! The seam between the sync units and the kernel: every read and write a
//! unit makes of a map, and every attachment, goes through [`MapWriter`].
//! [`Kernel`] is the real datapath; [`super::fake::FakeMaps`] holds maps
//! in memory and logs every operation, so ordering ("an endpoint's entries
//! before the endpoint"), adoption after a restart and error handling are
//! unit-tested without a kernel (Cilium ships `pkg/maps/*/fake` for the
//! same reason).

use std::path::PathBuf;

use axoneme_bpf_common::{EndpointInfo, IpcacheValue, PolicyKey, PolicyValue};
use aya::maps::lpm_trie::Key;
use ipnet::IpNet;

use axoneme_net::Netns;

use crate::datapath::{Datapath, DatapathError};

/// What the sync units need of the maps and the interfaces.
pub trait MapWriter {
    /// Every policy-trie entry: (prefix length, key, value).
    fn policy_entries(&self) -> Result<Vec<(u32, PolicyKey, PolicyValue)>, DatapathError>;
    /// One policy-trie entry, if there is one.
    fn policy(&self, key: &Key<PolicyKey>) -> Result<Option<PolicyValue>, DatapathError>;
    fn set_policy(&mut self, key: &Key<PolicyKey>, value: PolicyValue)
        -> Result<(), DatapathError>;
    fn remove_policy(&mut self, key: &Key<PolicyKey>) -> Result<(), DatapathError>;

    fn ipcache_entries(&self) -> Result<Vec<(IpNet, IpcacheValue)>, DatapathError>;
    fn set_ipcache(&mut self, net: &IpNet, value: IpcacheValue) -> Result<(), DatapathError>;
    fn remove_ipcache(&mut self, net: &IpNet) -> Result<(), DatapathError>;

    /// The endpoints map: host-interface ifindex → endpoint.
    fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, DatapathError>;
    /// Declares an endpoint (with its cache slot and its addresses for
    /// local delivery, in the order the datapath needs).
    fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DatapathError>;
    /// Writes an endpoint's address entries that are missing (pins from
    /// before local delivery have none).
    fn set_endpoint_addresses(
        &mut self,
        ifindex: u32,
        info: &EndpointInfo,
    ) -> Result<(), DatapathError>;
    fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError>;

    /// Attaches the programs to an interface (replacing a predecessor's);
    /// its ifindex. Nothing detaches them: an interface that stops being
    /// an endpoint's drops everything (no endpoints-map entry, 152) until
    /// it is deleted, which takes its programs with it.
    fn attach(&mut self, interface: &str) -> Result<u32, DatapathError>;

    /// Installs the node's plumbing that brings packets the datapath
    /// marks for the proxy to it (idempotent).
    fn install_redirect(&mut self) -> Result<(), DatapathError>;
}

/// The real datapath, attaching in the node's network namespace.
pub struct Kernel {
    pub dp: Datapath,
    /// The namespace holding the endpoints' interfaces; `None`: the agent's.
    pub netns: Option<PathBuf>,
    /// The node's namespace and the proxy's port, when the node runs one.
    pub proxy: Option<(Netns, u16)>,
}

impl MapWriter for Kernel {
    fn policy_entries(&self) -> Result<Vec<(u32, PolicyKey, PolicyValue)>, DatapathError> {
        self.dp.maps.policy_entries()
    }

    fn policy(&self, key: &Key<PolicyKey>) -> Result<Option<PolicyValue>, DatapathError> {
        self.dp.maps.policy(key)
    }

    fn set_policy(
        &mut self,
        key: &Key<PolicyKey>,
        value: PolicyValue,
    ) -> Result<(), DatapathError> {
        self.dp.maps.set_policy(key, value)
    }

    fn remove_policy(&mut self, key: &Key<PolicyKey>) -> Result<(), DatapathError> {
        self.dp.maps.remove_policy(key)
    }

    fn ipcache_entries(&self) -> Result<Vec<(IpNet, IpcacheValue)>, DatapathError> {
        self.dp.maps.ipcache_entries()
    }

    fn set_ipcache(&mut self, net: &IpNet, value: IpcacheValue) -> Result<(), DatapathError> {
        self.dp.maps.set_ipcache(net, value)
    }

    fn remove_ipcache(&mut self, net: &IpNet) -> Result<(), DatapathError> {
        self.dp.maps.remove_ipcache(net)
    }

    fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, DatapathError> {
        self.dp.maps.endpoints()
    }

    fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DatapathError> {
        self.dp.maps.set_endpoint(ifindex, info)
    }

    fn set_endpoint_addresses(
        &mut self,
        ifindex: u32,
        info: &EndpointInfo,
    ) -> Result<(), DatapathError> {
        self.dp.maps.set_endpoint_addresses(ifindex, info)
    }

    fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.dp.maps.remove_endpoint(ifindex)
    }

    fn attach(&mut self, interface: &str) -> Result<u32, DatapathError> {
        self.dp.attach(interface, self.netns.as_deref())
    }

    fn install_redirect(&mut self) -> Result<(), DatapathError> {
        let Some((ns, port)) = &self.proxy else {
            return Err(DatapathError::Redirect(
                "this agent runs no L7 proxy (--proxy-port 0)".into(),
            ));
        };
        // rtnetlink is async and this pass is not: a thread of its own
        // with a runtime for the few requests, once per agent.
        let installed = std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(crate::l7proxy::install_redirect(ns, *port))
                    .map_err(|e| crate::error_chain(&e))
            })
            .join()
        });
        match installed {
            Ok(r) => r.map_err(DatapathError::Redirect),
            Err(_) => Err(DatapathError::Redirect(
                "the installing thread panicked".into(),
            )),
        }
    }
}
