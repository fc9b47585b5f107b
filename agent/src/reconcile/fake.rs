//! [`FakeMaps`]: the maps and attachments in memory, with a log of every
//! write in order and failures on demand, for the sync units' tests.

use std::collections::{BTreeMap, HashMap};

use axoneme_bpf_common::{policy_flags, EndpointInfo, IpcacheValue, PolicyKey, PolicyValue};
use aya::maps::lpm_trie::Key;
use aya::maps::MapError;
use ipnet::IpNet;

use super::writer::MapWriter;
use crate::datapath::DatapathError;

/// One write, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A policy entry of endpoint number `endpoint` (prefix length, key),
    /// written or removed; `deny`: a deny entry.
    SetPolicy {
        endpoint: u32,
        prefix: u32,
        deny: bool,
    },
    RemovePolicy {
        endpoint: u32,
        prefix: u32,
        deny: bool,
    },
    SetIpcache(IpNet),
    RemoveIpcache(IpNet),
    /// An endpoint declared at an interface, with its flags.
    SetEndpoint {
        ifindex: u32,
        endpoint: u32,
        flags: u8,
    },
    SetEndpointAddresses(u32),
    RemoveEndpoint(u32),
    Attach(String),
    InstallRedirect,
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::SetPolicy { .. } => "set_policy",
            Op::RemovePolicy { .. } => "remove_policy",
            Op::SetIpcache(_) => "set_ipcache",
            Op::RemoveIpcache(_) => "remove_ipcache",
            Op::SetEndpoint { .. } => "set_endpoint",
            Op::SetEndpointAddresses(_) => "set_endpoint_addresses",
            Op::RemoveEndpoint(_) => "remove_endpoint",
            Op::Attach(_) => "attach",
            Op::InstallRedirect => "install_redirect",
        }
    }
}

/// The datapath's maps as plain collections.
#[derive(Debug, Default)]
pub struct FakeMaps {
    pub policy: HashMap<(u32, PolicyKey), PolicyValue>,
    pub ipcache: BTreeMap<IpNet, IpcacheValue>,
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// Interfaces that exist, by name → ifindex.
    pub interfaces: BTreeMap<String, u32>,
    /// Interfaces with the programs attached.
    pub attached: BTreeMap<String, u32>,
    /// Every write, in order.
    pub log: Vec<Op>,
    /// Writes of these kinds (`Op` names such as `"set_policy"`) fail
    /// while they are in the set.
    pub failing: Vec<&'static str>,
    /// The policy trie's size: a new entry past it fails, as the kernel's
    /// does (`--bpf-policy-max`).
    pub policy_max: Option<usize>,
    /// The ipcache trie's size (`--bpf-ipcache-max`), likewise.
    pub ipcache_max: Option<usize>,
    /// The endpoints map's size (`--bpf-endpoints-max`), likewise (with
    /// its addresses' map).
    pub endpoints_max: Option<usize>,
}

/// The error of a write past a map's size, as the kernel's reads.
fn full(name: &'static str, flag: &'static str) -> DatapathError {
    DatapathError::Full {
        name,
        op: "insert",
        flag,
        source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(nix::libc::E2BIG),
        })),
    }
}

impl FakeMaps {
    /// An interface the datapath can attach to.
    pub fn add_interface(&mut self, name: &str, ifindex: u32) {
        self.interfaces.insert(name.to_string(), ifindex);
    }

    /// The log since the last call.
    pub fn take_log(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.log)
    }

    fn write(&mut self, op: Op) -> Result<(), DatapathError> {
        if self.failing.contains(&op.kind()) {
            return Err(DatapathError::Map {
                name: "FAKE",
                op: op.kind(),
                source: MapError::KeyNotFound,
            });
        }
        self.log.push(op);
        Ok(())
    }
}

impl MapWriter for FakeMaps {
    fn policy_entries(&self) -> Result<Vec<(u32, PolicyKey, PolicyValue)>, DatapathError> {
        Ok(self.policy.iter().map(|((p, k), v)| (*p, *k, *v)).collect())
    }

    fn policy(&self, key: &Key<PolicyKey>) -> Result<Option<PolicyValue>, DatapathError> {
        Ok(self.policy.get(&(key.prefix_len(), key.data())).copied())
    }

    fn set_policy(
        &mut self,
        key: &Key<PolicyKey>,
        value: PolicyValue,
    ) -> Result<(), DatapathError> {
        let id = (key.prefix_len(), key.data());
        let no_room = self
            .policy_max
            .is_some_and(|max| self.policy.len() >= max && !self.policy.contains_key(&id));
        if no_room {
            return Err(full("POLICY", "bpf-policy-max"));
        }
        self.write(Op::SetPolicy {
            endpoint: id.1.endpoint_id,
            prefix: id.0,
            deny: value.flags & policy_flags::DENY != 0,
        })?;
        self.policy.insert(id, value);
        Ok(())
    }

    fn remove_policy(&mut self, key: &Key<PolicyKey>) -> Result<(), DatapathError> {
        let id = (key.prefix_len(), key.data());
        let deny = self
            .policy
            .get(&id)
            .is_some_and(|v| v.flags & policy_flags::DENY != 0);
        self.write(Op::RemovePolicy {
            endpoint: id.1.endpoint_id,
            prefix: id.0,
            deny,
        })?;
        self.policy.remove(&id);
        Ok(())
    }

    fn ipcache_entries(&self) -> Result<Vec<(IpNet, IpcacheValue)>, DatapathError> {
        Ok(self.ipcache.iter().map(|(n, v)| (*n, *v)).collect())
    }

    fn set_ipcache(&mut self, net: &IpNet, value: IpcacheValue) -> Result<(), DatapathError> {
        let no_room = self
            .ipcache_max
            .is_some_and(|max| self.ipcache.len() >= max && !self.ipcache.contains_key(net));
        if no_room {
            return Err(full("IPCACHE", "bpf-ipcache-max"));
        }
        self.write(Op::SetIpcache(*net))?;
        self.ipcache.insert(*net, value);
        Ok(())
    }

    fn remove_ipcache(&mut self, net: &IpNet) -> Result<(), DatapathError> {
        self.write(Op::RemoveIpcache(*net))?;
        self.ipcache.remove(net);
        Ok(())
    }

    fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, DatapathError> {
        Ok(self.endpoints.iter().map(|(i, e)| (*i, *e)).collect())
    }

    fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DatapathError> {
        // The hash holds `max` endpoints, their addresses' map twice as
        // many addresses; rewriting an entry needs room only for addresses.
        let addrs =
            |e: &EndpointInfo| usize::from(e.ipv4 != [0; 4]) + usize::from(e.ipv6 != [0; 16]);
        let no_room = self.endpoints_max.is_some_and(|max| {
            let others: usize = self
                .endpoints
                .iter()
                .filter(|(i, _)| **i != ifindex)
                .map(|(_, e)| addrs(e))
                .sum();
            (self.endpoints.len() >= max && !self.endpoints.contains_key(&ifindex))
                || others + addrs(&info) > 2 * max
        });
        if no_room {
            return Err(full("ENDPOINTS", "bpf-endpoints-max"));
        }
        self.write(Op::SetEndpoint {
            ifindex,
            endpoint: info.endpoint_id,
            flags: info.flags,
        })?;
        self.endpoints.insert(ifindex, info);
        Ok(())
    }

    fn set_endpoint_addresses(
        &mut self,
        ifindex: u32,
        _info: &EndpointInfo,
    ) -> Result<(), DatapathError> {
        self.write(Op::SetEndpointAddresses(ifindex))
    }

    fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.write(Op::RemoveEndpoint(ifindex))?;
        self.endpoints.remove(&ifindex);
        Ok(())
    }

    fn attach(&mut self, interface: &str) -> Result<u32, DatapathError> {
        let Some(ifindex) = self.interfaces.get(interface).copied() else {
            return Err(DatapathError::Attach {
                interface: interface.to_string(),
                op: "finding the interface",
                source: "no such interface".into(),
            });
        };
        self.write(Op::Attach(interface.to_string()))?;
        self.attached.insert(interface.to_string(), ifindex);
        Ok(ifindex)
    }

    fn install_redirect(&mut self) -> Result<(), DatapathError> {
        self.write(Op::InstallRedirect)
    }
}
