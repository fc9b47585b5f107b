//! Read-only handles on a loaded datapath's pinned maps, for the API's
//! views and the metrics, and the reader of its event ring: opened beside
//! the maps' one writer ([`super::Maps`] in the reconcile task), never
//! writing.

use std::path::Path;

use axoneme_bpf_common::map_names::{CT, CT4, ENDPOINTS, ENDPOINT_ADDRS, EVENTS, IPCACHE, POLICY};
use axoneme_bpf_common::{
    CtKey, CtValue, EndpointInfo, Event, IpcacheValue, MetricsKey, MetricsValue, PolicyKey,
    PolicyValue, VerdictKey,
};
use aya::maps::{MapData, RingBuf};
use ipnet::IpNet;

use super::maps::{drain, pinned, Counters, Maps};
use super::{map_error, DatapathError};

/// The maps whose fill `status` and `bpf_map_pressure` report.
pub const SIZED_MAPS: [&str; 6] = [IPCACHE, ENDPOINTS, ENDPOINT_ADDRS, POLICY, CT4, CT];

/// Read-only handles on a datapath's pinned maps, for the API's views:
/// what the kernel holds (counters and conntrack included), read without
/// going through the maps' one writer.
pub struct MapReader {
    maps: Maps,
    /// Each of [`SIZED_MAPS`]' capacity, read from its pin (the
    /// `--bpf-*-max` flags size some; fixed while the pins live).
    capacity: Vec<(&'static str, u32)>,
}

impl MapReader {
    /// Opens the maps a loaded datapath pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let maps = Maps::open_pinned(pin_dir)?;
        let capacity = SIZED_MAPS
            .iter()
            .map(|name| {
                aya::maps::MapInfo::from_pin(pin_dir.join(name))
                    .map(|i| (*name, i.max_entries()))
                    .map_err(|source| map_error(name, "reading its size", source))
            })
            .collect::<Result<_, _>>()?;
        Ok(MapReader { maps, capacity })
    }

    /// Each sized map's capacity, by name.
    pub fn capacities(&self) -> &[(&'static str, u32)] {
        &self.capacity
    }

    /// Map `name`'s capacity (0 for a map not in [`SIZED_MAPS`]).
    pub fn capacity(&self, name: &str) -> u32 {
        self.capacity
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, c)| *c)
    }

    pub fn ipcache_entries(&self) -> Result<Vec<(IpNet, IpcacheValue)>, DatapathError> {
        self.maps.ipcache_entries()
    }

    pub fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, DatapathError> {
        self.maps.endpoints()
    }

    pub fn endpoint_addresses(&self) -> Result<usize, DatapathError> {
        self.maps.endpoint_addresses()
    }

    pub fn policy_entries(&self) -> Result<Vec<(u32, PolicyKey, PolicyValue)>, DatapathError> {
        self.maps.policy_entries()
    }

    pub fn ct_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        self.maps.ct_entries()
    }

    /// See [`Maps::policy_lookup`].
    pub fn policy_lookup(
        &self,
        endpoint_id: u32,
        peer: u32,
        dir: u8,
        protocol: u8,
        port: u16,
    ) -> Result<Option<PolicyValue>, DatapathError> {
        self.maps
            .policy_lookup(endpoint_id, peer, dir, protocol, port)
    }

    /// How many flows each conntrack table holds: (IPv4, IPv6).
    pub fn ct_counts(&self) -> Result<(usize, usize), DatapathError> {
        self.maps.ct_counts()
    }

    pub fn counters(&self) -> Result<Counters, DatapathError> {
        self.maps.counters()
    }

    /// See [`Maps::traffic`].
    pub fn traffic(&self) -> Result<Vec<(MetricsKey, MetricsValue)>, DatapathError> {
        self.maps.traffic()
    }

    /// See [`Maps::verdicts`].
    pub fn verdicts(&self) -> Result<Vec<(VerdictKey, MetricsValue)>, DatapathError> {
        self.maps.verdicts()
    }
}

/// The datapath's event ring, read by the one task that drains it.
pub struct EventReader(RingBuf<MapData>);

impl EventReader {
    /// Opens the ring a loaded datapath pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        pinned(pin_dir, EVENTS).map(EventReader)
    }

    /// The events waiting in the ring.
    pub fn drain(&mut self) -> Vec<Event> {
        drain(&mut self.0)
    }
}
