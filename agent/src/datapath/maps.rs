//! Typed handles on the datapath's maps and the translation from the policy
//! engine's entries to policy-trie entries.

use std::net::IpAddr;
use std::path::Path;

use axoneme_bpf_common::map_names::{
    COUNTERS, CT, CT4, ENDPOINTS, ENDPOINT_ADDRS, ENDPOINT_ADDR_SLOTS, ENDPOINT_CACHE, EVENTS,
    EVENT_CONFIG, IPCACHE, METRICS, POLICY, SOCK_STATS, VERDICTS,
};
use axoneme_bpf_common::{
    counter, direction, family, match_type, policy_flags, sock_stat, AddrSlot, CtKey, CtKey4,
    CtValue, EndpointInfo, EndpointSlot, Event, EventConfig, IpcacheKey, IpcacheValue, MetricsKey,
    MetricsValue, PolicyKey, PolicyValue, VerdictKey, METRICS_ENTRIES, VERDICTS_ENTRIES,
};
use axoneme_policy::compile::{Direction, Key as EntryKey, Verdict, ANY_IDENTITY, PROTO_ANY};
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf};
use aya::Ebpf;
use ipnet::IpNet;

use super::slots::{write_seqlocked, AddrIndex};
use super::{map_error, DatapathError};

/// The datapath's maps.
pub struct Maps {
    ipcache: LpmTrie<MapData, IpcacheKey, IpcacheValue>,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    /// A copy of `endpoints` the programs read without hashing.
    endpoint_cache: Array<MapData, EndpointSlot>,
    /// Each endpoint's addresses → its ifindex (where local delivery puts
    /// a packet for it).
    endpoint_addrs: AddrIndex,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    /// IPv6 flows.
    ct: HashMap<MapData, CtKey, CtValue>,
    /// IPv4 flows.
    ct4: HashMap<MapData, CtKey4, CtValue>,
    /// The event ring, mapped into this process only when drained here
    /// (tests): the agent drains it through `EventReader`, and each
    /// mapping counts the ring's pages again in the agent's resident
    /// memory.
    events: Events,
    event_config: Array<MapData, EventConfig>,
    counters: PerCpuArray<MapData, u64>,
    /// The proxy's socket acceleration's message counts.
    sock_stats: PerCpuArray<MapData, u64>,
    /// Packets and bytes forwarded and dropped (read at scrape time).
    metrics: PerCpuArray<MapData, MetricsValue>,
    verdicts: PerCpuArray<MapData, MetricsValue>,
}

enum Events {
    Unmapped(Map),
    Mapped(RingBuf<MapData>),
    /// Read-only handles never drain the ring.
    None,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

/// Every slot of a per-CPU counter array with something counted, summed
/// over CPUs.
fn summed(
    map: &PerCpuArray<MapData, MetricsValue>,
    name: &'static str,
    entries: u32,
) -> Result<Vec<(u32, MetricsValue)>, DatapathError> {
    let mut out = Vec::new();
    for index in 0..entries {
        let per_cpu = map
            .get(&index, 0)
            .map_err(|source| map_error(name, "lookup", source))?;
        let total = per_cpu
            .iter()
            .fold(MetricsValue::default(), |t, v| MetricsValue {
                packets: t.packets.wrapping_add(v.packets),
                bytes: t.bytes.wrapping_add(v.bytes),
            });
        if total.packets != 0 {
            out.push((index, total));
        }
    }
    Ok(out)
}

/// The datapath's event counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub events_sent: u64,
    pub events_rate_limited: u64,
    pub events_ringbuf_full: u64,
    /// Messages of proxied connections handed straight to the other
    /// socket (`--proxy-sockmap`), and sent through the TCP stack instead.
    pub sockmap_redirected: u64,
    pub sockmap_passed: u64,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name)
        .ok_or(DatapathError::MapNotFound { name })
}

pub(super) fn typed<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DatapathError> {
    T::try_from(take(ebpf, name)?).map_err(|source| map_error(name, "open", source))
}

/// A map opened from its pin under `dir`.
pub(super) fn pinned<T: TryFrom<Map, Error = MapError>>(
    dir: &Path,
    name: &'static str,
) -> Result<T, DatapathError> {
    MapData::from_pin(dir.join(name))
        .and_then(Map::from_map_data)
        .and_then(T::try_from)
        .map_err(|source| map_error(name, "open pin", source))
}

/// The ipcache key of a prefix.
pub fn ipcache_key(net: &IpNet) -> Key<IpcacheKey> {
    Key::new(
        IpcacheKey::prefix_len(net.prefix_len()),
        address_key(net.network()),
    )
}

/// An address as the maps key it (the ipcache key's data).
pub(super) fn address_key(ip: IpAddr) -> IpcacheKey {
    let mut addr = [0u8; 16];
    let fam = match ip {
        IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            family::IPV4
        }
        IpAddr::V6(a) => {
            addr.copy_from_slice(&a.octets());
            family::IPV6
        }
    };
    IpcacheKey {
        pad: [0; 3],
        family: fam,
        addr,
    }
}

/// The keys of an endpoint's addresses in `ENDPOINT_ADDRS`.
fn endpoint_addr_keys(info: &EndpointInfo) -> impl Iterator<Item = IpcacheKey> {
    let v4 = (info.ipv4 != [0; 4]).then(|| address_key(IpAddr::from(info.ipv4)));
    let v6 = (info.ipv6 != [0; 16]).then(|| address_key(IpAddr::from(info.ipv6)));
    v4.into_iter().chain(v6)
}

/// The prefix an ipcache key stands for (the inverse of `ipcache_key`).
pub(super) fn ipcache_net(key: &Key<IpcacheKey>) -> Option<IpNet> {
    let bits = u8::try_from(key.prefix_len().checked_sub(IpcacheKey::HEADER_BITS)?).ok()?;
    let data = key.data();
    let ip = match data.family {
        family::IPV4 => IpAddr::from([data.addr[0], data.addr[1], data.addr[2], data.addr[3]]),
        family::IPV6 => IpAddr::from(data.addr),
        _ => return None,
    };
    IpNet::new(ip, bits).ok()
}

/// The trie key of one of the engine's entries for the endpoints numbered
/// `endpoint_id`.
pub fn policy_key(endpoint_id: u32, dir: Direction, key: &EntryKey) -> Key<PolicyKey> {
    let data = PolicyKey::new(
        endpoint_id,
        key.identity.0,
        direction_code(dir),
        key.protocol,
        if key.protocol == PROTO_ANY {
            0
        } else {
            key.port
        },
    );
    Key::new(PolicyKey::prefix_len(key.protocol, key.prefix), data)
}

/// The trie key and value of one of the engine's entries for the endpoints
/// numbered `endpoint_id`. Redirects carry `proxy_port` (host order).
pub fn policy_entry(
    endpoint_id: u32,
    dir: Direction,
    key: &EntryKey,
    verdict: &Verdict,
    proxy_port: u16,
) -> (Key<PolicyKey>, PolicyValue) {
    let mut value = match verdict {
        Verdict::Allow => PolicyValue::ALLOW,
        Verdict::Deny => PolicyValue::DENY,
        Verdict::Redirect(_) => PolicyValue::redirect(proxy_port),
    };
    value.match_type = match (key.identity == ANY_IDENTITY, key.protocol == PROTO_ANY) {
        (false, true) => match_type::L3_ONLY,
        (false, false) => match_type::L3_L4,
        (true, false) => match_type::L4_ONLY,
        (true, true) => match_type::ALL,
    };
    debug_assert!(value.flags & !policy_flags::DENY == 0);
    (policy_key(endpoint_id, dir, key), value)
}

/// The datapath's code for a direction.
pub fn direction_code(dir: Direction) -> u8 {
    match dir {
        Direction::Ingress => direction::INGRESS,
        Direction::Egress => direction::EGRESS,
    }
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            ipcache: typed(ebpf, IPCACHE)?,
            endpoints: typed(ebpf, ENDPOINTS)?,
            endpoint_cache: typed(ebpf, ENDPOINT_CACHE)?,
            endpoint_addrs: AddrIndex::take(ebpf, ENDPOINT_ADDRS, ENDPOINT_ADDR_SLOTS)?,
            policy: typed(ebpf, POLICY)?,
            ct: typed(ebpf, CT)?,
            ct4: typed(ebpf, CT4)?,
            events: Events::Unmapped(take(ebpf, EVENTS)?),
            event_config: typed(ebpf, EVENT_CONFIG)?,
            counters: typed(ebpf, COUNTERS)?,
            sock_stats: typed(ebpf, SOCK_STATS)?,
            metrics: typed(ebpf, METRICS)?,
            verdicts: typed(ebpf, VERDICTS)?,
        })
    }

    /// The maps pinned under `dir` by a loaded datapath.
    pub(super) fn open_pinned(dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            ipcache: pinned(dir, IPCACHE)?,
            endpoints: pinned(dir, ENDPOINTS)?,
            endpoint_cache: pinned(dir, ENDPOINT_CACHE)?,
            endpoint_addrs: AddrIndex::open_pinned(dir, ENDPOINT_ADDRS, ENDPOINT_ADDR_SLOTS)?,
            policy: pinned(dir, POLICY)?,
            ct: pinned(dir, CT)?,
            ct4: pinned(dir, CT4)?,
            events: Events::None,
            event_config: pinned(dir, EVENT_CONFIG)?,
            counters: pinned(dir, COUNTERS)?,
            sock_stats: pinned(dir, SOCK_STATS)?,
            metrics: pinned(dir, METRICS)?,
            verdicts: pinned(dir, VERDICTS)?,
        })
    }

    /// Sets what the ipcache says about `net`.
    pub fn set_ipcache(&mut self, net: &IpNet, value: IpcacheValue) -> Result<(), DatapathError> {
        self.ipcache
            .insert(&ipcache_key(net), value, 0)
            .map_err(|source| map_error(IPCACHE, "insert", source))
    }

    /// Forgets `net` (absent is fine).
    pub fn remove_ipcache(&mut self, net: &IpNet) -> Result<(), DatapathError> {
        ignore_missing(self.ipcache.remove(&ipcache_key(net)), IPCACHE)
    }

    /// Every ipcache entry (entries whose key is not a valid prefix are
    /// left out: nothing this agent wrote).
    pub fn ipcache_entries(&self) -> Result<Vec<(IpNet, IpcacheValue)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(|source| map_error(IPCACHE, "iterate", source))?;
            out.extend(ipcache_net(&k).map(|net| (net, v)));
        }
        Ok(out)
    }

    /// Declares the endpoint behind the host-side veth `ifindex`: in the
    /// `ENDPOINTS` hash, then in its cache slot unless another endpoint
    /// holds that slot (it then stays hash-only). In this order, a crash
    /// between the two leaves a slot that is the previous truth or marked
    /// as being written (odd sequence: the programs use the hash). Then its
    /// addresses, for local delivery (addresses it no longer has are
    /// forgotten; the programs deliver only to an endpoint that owns the
    /// address, so a stale entry only sends packets the long way).
    pub fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DatapathError> {
        let before = self.endpoints.get(&ifindex, 0).ok();
        self.endpoints
            .insert(ifindex, info, 0)
            .map_err(|source| map_error(ENDPOINTS, "insert", source))?;
        let slot = self.endpoint_slot(ifindex)?;
        if slot.ifindex == ifindex || slot.ifindex == 0 {
            self.write_endpoint_slot(ifindex, slot, ifindex, info)?;
        }
        self.set_endpoint_addresses(ifindex, &info)?;
        if let Some(before) = before {
            let kept: Vec<IpcacheKey> = endpoint_addr_keys(&info).collect();
            for key in endpoint_addr_keys(&before).filter(|k| !kept.contains(k)) {
                self.forget_address(&key, ifindex)?;
            }
        }
        Ok(())
    }

    /// Points the endpoint's addresses at `ifindex` for local delivery
    /// (part of [`Maps::set_endpoint`]; alone, for pins adopted from a
    /// version that had no such entries).
    pub fn set_endpoint_addresses(
        &mut self,
        ifindex: u32,
        info: &EndpointInfo,
    ) -> Result<(), DatapathError> {
        for key in endpoint_addr_keys(info) {
            self.endpoint_addrs.insert(key, ifindex)?;
        }
        Ok(())
    }

    /// Forgets an endpoint (absent is fine): its addresses and its cache
    /// slot first, so the programs never find either for a hash entry that
    /// is gone.
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        if let Ok(info) = self.endpoints.get(&ifindex, 0) {
            for key in endpoint_addr_keys(&info) {
                self.forget_address(&key, ifindex)?;
            }
        }
        let slot = self.endpoint_slot(ifindex)?;
        if slot.ifindex == ifindex {
            self.write_endpoint_slot(ifindex, slot, 0, EndpointInfo::default())?;
        }
        ignore_missing(self.endpoints.remove(&ifindex), ENDPOINTS)
    }

    /// Removes an address's delivery entry if it still leads to `ifindex`
    /// (another endpoint may have the address now).
    fn forget_address(&mut self, key: &IpcacheKey, ifindex: u32) -> Result<(), DatapathError> {
        if self.endpoint_addrs.get(key)? == Some(ifindex) {
            self.endpoint_addrs.remove(key)?;
        }
        Ok(())
    }

    /// How many addresses local delivery knows.
    pub fn endpoint_addresses(&self) -> Result<usize, DatapathError> {
        Ok(self.endpoint_addrs.entries()?.len())
    }

    /// Where local delivery puts a packet for `ip`: the ifindex of the
    /// endpoint's host-side veth.
    pub fn endpoint_address(&self, ip: IpAddr) -> Result<Option<u32>, DatapathError> {
        self.endpoint_addrs.get(&address_key(ip))
    }

    /// The slot the programs read `ip`'s delivery entry through, as it is
    /// now (see [`AddrIndex`]).
    pub fn endpoint_address_slot(&self, ip: IpAddr) -> Result<AddrSlot, DatapathError> {
        self.endpoint_addrs.slot_of_key(&address_key(ip))
    }

    /// The cache slot of `ifindex` as it is now.
    pub fn endpoint_slot(&self, ifindex: u32) -> Result<EndpointSlot, DatapathError> {
        self.endpoint_cache
            .get(&EndpointSlot::index(ifindex), 0)
            .map_err(|source| map_error(ENDPOINT_CACHE, "read", source))
    }

    /// Rewrites the slot of `owner` (`slot`, as read) to hold `info` for
    /// `ifindex` (0: empty) by the seqlock protocol of [`EndpointSlot`].
    fn write_endpoint_slot(
        &mut self,
        owner: u32,
        slot: EndpointSlot,
        ifindex: u32,
        info: EndpointInfo,
    ) -> Result<(), DatapathError> {
        let want = EndpointSlot {
            ifindex,
            info,
            ..slot
        };
        write_seqlocked(
            &mut self.endpoint_cache,
            ENDPOINT_CACHE,
            EndpointSlot::index(owner),
            slot,
            want,
            |s| &mut s.seq,
        )
    }

    pub fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, DatapathError> {
        self.endpoints
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| map_error(ENDPOINTS, "iterate", source))
    }

    /// Sets one policy entry (its counters start at zero).
    pub fn set_policy(
        &mut self,
        key: &Key<PolicyKey>,
        value: PolicyValue,
    ) -> Result<(), DatapathError> {
        self.policy
            .insert(key, value, 0)
            .map_err(|source| map_error(POLICY, "insert", source))
    }

    pub fn remove_policy(&mut self, key: &Key<PolicyKey>) -> Result<(), DatapathError> {
        ignore_missing(self.policy.remove(key), POLICY)
    }

    /// One policy entry, with its counters.
    pub fn policy(&self, key: &Key<PolicyKey>) -> Result<Option<PolicyValue>, DatapathError> {
        found(self.policy.get(key, 0), POLICY)
    }

    /// Every policy entry: prefix length, key, value.
    pub fn policy_entries(&self) -> Result<Vec<(u32, PolicyKey, PolicyValue)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.policy.iter() {
            let (k, v) = item.map_err(|source| map_error(POLICY, "iterate", source))?;
            out.push((k.prefix_len(), k.data(), v));
        }
        Ok(out)
    }

    /// Every conntrack entry, IPv4 and IPv6.
    pub fn ct_entries(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        let mut all: Vec<(CtKey, CtValue)> = self
            .ct4
            .iter()
            .map(|e| e.map(|(k, v)| (k.to_key(), v)))
            .collect::<Result<_, _>>()
            .map_err(|source| map_error(CT4, "iterate", source))?;
        for e in self.ct.iter() {
            all.push(e.map_err(|source| map_error(CT, "iterate", source))?);
        }
        Ok(all)
    }

    /// How many flows each conntrack table holds: (IPv4, IPv6).
    pub fn ct_counts(&self) -> Result<(usize, usize), DatapathError> {
        let v4 = self
            .ct4
            .keys()
            .try_fold(0, |n, k| k.map(|_| n + 1))
            .map_err(|source| map_error(CT4, "iterate", source))?;
        let v6 = self
            .ct
            .keys()
            .try_fold(0, |n, k| k.map(|_| n + 1))
            .map_err(|source| map_error(CT, "iterate", source))?;
        Ok((v4, v6))
    }

    /// Writes one conntrack entry (tests and tools: to age an entry).
    pub fn set_ct(&mut self, key: &CtKey, value: CtValue) -> Result<(), DatapathError> {
        match CtKey4::from_key(key) {
            Some(k) => self
                .ct4
                .insert(k, value, 0)
                .map_err(|source| map_error(CT4, "insert", source)),
            None => self
                .ct
                .insert(key, value, 0)
                .map_err(|source| map_error(CT, "insert", source)),
        }
    }

    /// Empties both conntrack tables.
    pub fn clear_ct(&mut self) -> Result<(), DatapathError> {
        clear(&mut self.ct4, CT4)?;
        clear(&mut self.ct, CT)
    }

    /// Events per second (and burst) per CPU; 0 turns events off.
    pub fn set_event_rate(&mut self, rate: u32, burst: u32) -> Result<(), DatapathError> {
        self.event_config
            .set(0, EventConfig { rate, burst }, 0)
            .map_err(|source| map_error(EVENT_CONFIG, "set", source))
    }

    /// The events waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Vec<Event> {
        if matches!(self.events, Events::Unmapped(_)) {
            if let Events::Unmapped(map) = std::mem::replace(&mut self.events, Events::None) {
                match RingBuf::try_from(map) {
                    Ok(ring) => self.events = Events::Mapped(ring),
                    Err(e) => tracing::warn!(error = %e, "mapping the event ring"),
                }
            }
        }
        match &mut self.events {
            Events::Mapped(ring) => drain(ring),
            _ => Vec::new(),
        }
    }

    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let sum = |map: &PerCpuArray<MapData, u64>, name: &'static str, i: u32| {
            map.get(&i, 0)
                .map(|v| v.iter().sum())
                .map_err(|source| map_error(name, "lookup", source))
        };
        let (c, s) = (&self.counters, &self.sock_stats);
        Ok(Counters {
            events_sent: sum(c, COUNTERS, counter::EVENTS_SENT)?,
            events_rate_limited: sum(c, COUNTERS, counter::EVENTS_RATE_LIMITED)?,
            events_ringbuf_full: sum(c, COUNTERS, counter::EVENTS_RINGBUF_FULL)?,
            sockmap_redirected: sum(s, SOCK_STATS, sock_stat::REDIRECTED)?,
            sockmap_passed: sum(s, SOCK_STATS, sock_stat::PASSED)?,
        })
    }

    /// Packets and bytes by kind, reason and direction, summed over CPUs;
    /// keys nothing was counted for are left out.
    pub fn traffic(&self) -> Result<Vec<(MetricsKey, MetricsValue)>, DatapathError> {
        Ok(summed(&self.metrics, METRICS, METRICS_ENTRIES)?
            .into_iter()
            .map(|(i, v)| (MetricsKey::from_index(i), v))
            .collect())
    }

    /// New flows' policy verdicts by direction, verdict and match type,
    /// summed over CPUs; keys nothing was counted for are left out.
    pub fn verdicts(&self) -> Result<Vec<(VerdictKey, MetricsValue)>, DatapathError> {
        Ok(summed(&self.verdicts, VERDICTS, VERDICTS_ENTRIES)?
            .into_iter()
            .map(|(i, v)| (VerdictKey::from_index(i), v))
            .collect())
    }

    /// The entry the programs' policy lookup finds for a new flow of
    /// endpoint `endpoint_id` with `peer`: the longest match among the
    /// peer's entries, else among any peer's (the kernel's LPM lookup, as
    /// the programs do it).
    pub fn policy_lookup(
        &self,
        endpoint_id: u32,
        peer: u32,
        dir: u8,
        protocol: u8,
        port: u16,
    ) -> Result<Option<PolicyValue>, DatapathError> {
        let full = PolicyKey::prefix_len(1, 16);
        for id in [peer, 0] {
            let key = Key::new(full, PolicyKey::new(endpoint_id, id, dir, protocol, port));
            if let Some(v) = found(self.policy.get(&key, 0), POLICY)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

pub(super) fn ignore_missing(
    r: Result<(), MapError>,
    name: &'static str,
) -> Result<(), DatapathError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        // aya's hash maps report an absent key as the syscall's ENOENT.
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) => {
            Ok(())
        }
        Err(source) => Err(map_error(name, "remove", source)),
    }
}

/// A lookup's value, `None` if the key is absent.
fn found<V>(r: Result<V, MapError>, name: &'static str) -> Result<Option<V>, DatapathError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(map_error(name, "lookup", source)),
    }
}

/// Removes every entry of a hash map (gone meanwhile is fine).
fn clear<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let keys: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(|source| map_error(name, "iterate", source))?;
    for k in keys {
        ignore_missing(map.remove(&k), name)?;
    }
    Ok(())
}

pub(super) fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.extend(Event::from_bytes(&item));
    }
    out
}
