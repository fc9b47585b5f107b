//! rtnetlink inside one namespace: links, addresses, routes and rules,
//! each call one request and its acknowledgement (no iproute2, no
//! process). Made by [`Netns::rtnl`](crate::Netns::rtnl).
//!
//! Requests carry the values iproute2 would put in them, so what the
//! kernel holds is what `ip` made before: routes are `proto boot`, a
//! route without a gateway is `scope link` (`scope host` when local), rule
//! priorities are the kernel's choice.

use std::net::IpAddr;
use std::path::PathBuf;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressScope};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{Error, Netns};

/// An rtnetlink connection in one namespace.
#[derive(Clone)]
pub struct Rtnl {
    handle: Handle,
    ns: PathBuf,
}

/// What a link is, as far as the agent asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`, as `ip` prints it; empty when the link has none.
    pub mac: String,
    pub up: bool,
    pub mtu: u32,
}

/// An address on a link with its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub net: IpNet,
    /// `global` in `ip addr` (`RT_SCOPE_UNIVERSE`).
    pub global: bool,
}

/// A route to add, replace or delete (`ip route ...`), main table by
/// default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    pub dev: Option<u32>,
    pub table: u32,
    /// `local` rather than unicast (delivered to this host).
    pub local: bool,
    /// `scope link` whatever the other fields say.
    pub scope_link: bool,
}

impl Route {
    /// A unicast route to `dst` in the main table.
    pub fn to(dst: IpNet) -> Self {
        Route {
            dst,
            via: None,
            dev: None,
            table: u32::from(RouteHeader::RT_TABLE_MAIN),
            local: false,
            scope_link: false,
        }
    }

    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.via = Some(gateway);
        self
    }

    pub fn dev(mut self, index: u32) -> Self {
        self.dev = Some(index);
        self
    }

    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }

    pub fn scope_link(mut self) -> Self {
        self.scope_link = true;
        self
    }

    /// The message `ip route add` sends for the same arguments.
    pub fn message(&self) -> Result<RouteMessage, Error> {
        let invalid =
            |e: &dyn std::fmt::Display| Error::Invalid(format!("route {}: {e}", self.describe()));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.addr(), self.dst.prefix_len())
            .map_err(|e| invalid(&e))?;
        if let Some(via) = self.via {
            if via.is_ipv4() != self.dst.addr().is_ipv4() {
                return Err(Error::Invalid(format!(
                    "route {}: gateway of another family",
                    self.describe()
                )));
            }
            b = b.gateway(via).map_err(|e| invalid(&e))?;
        }
        if let Some(dev) = self.dev {
            b = b.output_interface(dev);
        }
        let scope = if self.local {
            RouteScope::Host
        } else if self.scope_link || self.via.is_none() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        let mut b = b
            .table_id(self.table)
            .protocol(RouteProtocol::Boot)
            .scope(scope);
        if self.local {
            b = b.kind(RouteType::Local);
        }
        Ok(b.build())
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if self.local {
            s.push_str("local ");
        }
        s.push_str(&self.dst.to_string());
        if let Some(via) = self.via {
            s.push_str(&format!(" via {via}"));
        }
        if let Some(dev) = self.dev {
            s.push_str(&format!(" dev #{dev}"));
        }
        if self.table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            s.push_str(&format!(" table {}", self.table));
        }
        s
    }
}

/// A policy routing rule `fwmark MARK/MASK lookup TABLE` of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwmarkRule {
    pub v6: bool,
    pub mark: u32,
    pub mask: u32,
    pub table: u32,
}

impl FwmarkRule {
    fn matches(&self, m: &RuleMessage) -> bool {
        let family = if self.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        if m.header.family != family || m.header.action != RuleAction::ToTable {
            return false;
        }
        let (mut mark, mut mask, mut table) = (None, None, u32::from(m.header.table));
        for a in &m.attributes {
            match a {
                RuleAttribute::FwMark(v) => mark = Some(*v),
                RuleAttribute::FwMask(v) => mask = Some(*v),
                RuleAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        mark == Some(self.mark) && mask == Some(self.mask) && table == self.table
    }

    fn describe(&self) -> String {
        format!(
            "-{} rule fwmark {:#x}/{:#x} lookup {}",
            if self.v6 { 6 } else { 4 },
            self.mark,
            self.mask,
            self.table
        )
    }
}

/// The errno of a netlink error answer (positive), if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// `aa:bb:...` of a hardware address.
fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: String::new(),
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: 0,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(mac) => link.mac = mac_string(mac),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            _ => {}
        }
    }
    link
}

impl Rtnl {
    pub(crate) fn new(handle: Handle, ns: PathBuf) -> Self {
        Rtnl { handle, ns }
    }

    fn fail(&self, op: impl std::fmt::Display, source: rtnetlink::Error) -> Error {
        Error::Netlink {
            op: format!("{op} in {}", self.ns.display()),
            source,
        }
    }

    // ---- links ----

    /// The link named `name`, or `None` when there is none.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, Error> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(m) => Ok(m.as_ref().map(link_of)),
            Err(e) if errno(&e) == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(self.fail(format_args!("looking up link {name}"), e)),
        }
    }

    /// The link named `name`; missing is an error.
    pub async fn need_link(&self, name: &str) -> Result<Link, Error> {
        self.link(name).await?.ok_or_else(|| Error::NoLink {
            name: name.to_string(),
            ns: self.ns.clone(),
        })
    }

    /// The link that has address `ip`, if any (`ip -o addr show to IP`).
    pub async fn link_with_address(&self, ip: IpAddr) -> Result<Option<Link>, Error> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.fail("listing addresses", e))?;
        let owner = msgs.iter().find(|m| {
            m.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(a) | AddressAttribute::Address(a) if *a == ip)
            })
        });
        let Some(index) = owner.map(|m| m.header.index) else {
            return Ok(None);
        };
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(m) => Ok(m.as_ref().map(link_of)),
            Err(e) if errno(&e) == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(self.fail(format_args!("looking up link #{index}"), e)),
        }
    }

    /// Creates a veth pair here: `name` in this namespace, `peer` in
    /// `peer_ns` (`ip link add NAME type veth peer name PEER netns NS`).
    pub async fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &Netns,
        mtu: Option<u32>,
    ) -> Result<(), Error> {
        let mut peer_msg = LinkUnspec::new_with_name(peer).setns_by_fd(peer_ns.raw_fd());
        let mut veth = LinkVeth::new(name, peer);
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
            veth = veth.mtu(mtu);
        }
        let msg = veth
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            self.fail(
                format_args!(
                    "adding veth {name} (peer {peer} in {})",
                    peer_ns.path().display()
                ),
                e,
            )
        })
    }

    /// Sets the link up.
    pub async fn set_up(&self, index: u32) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| self.fail(format_args!("setting link #{index} up"), e))
    }

    /// Renames the link (it must be down).
    pub async fn rename(&self, index: u32, name: &str) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).name(name).build())
            .execute()
            .await
            .map_err(|e| self.fail(format_args!("renaming link #{index} to {name}"), e))
    }

    /// Moves the link into `ns`.
    pub async fn move_to(&self, index: u32, ns: &Netns) -> Result<(), Error> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(ns.raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| {
                self.fail(
                    format_args!("moving link #{index} to {}", ns.path().display()),
                    e,
                )
            })
    }

    /// Deletes the link named `name` (a veth takes its peer with it);
    /// `false` when there was none.
    pub async fn del_link(&self, name: &str) -> Result<bool, Error> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(nix::libc::ENODEV) => Ok(false),
            Err(e) => Err(self.fail(format_args!("deleting link {name}"), e)),
        }
    }

    // ---- addresses ----

    /// Adds `net` to the link (`ip addr add NET dev LINK [nodad]`).
    pub async fn add_address(&self, index: u32, net: IpNet, nodad: bool) -> Result<(), Error> {
        let mut req = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len());
        if nodad {
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        req.execute()
            .await
            .map_err(|e| self.fail(format_args!("adding address {net} to link #{index}"), e))
    }

    /// The addresses on the link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Address>, Error> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.fail(format_args!("listing the addresses of link #{index}"), e))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.index != index {
                continue;
            }
            let (mut local, mut address) = (None, None);
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            // `ip` shows IFA_LOCAL where there is one (IPv4), else IFA_ADDRESS.
            if let Some(ip) = local.or(address) {
                if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                    out.push(Address {
                        net,
                        global: m.header.scope == AddressScope::Universe,
                    });
                }
            }
        }
        Ok(out)
    }

    // ---- routes ----

    /// `ip route add`: fails if the route exists.
    pub async fn add_route(&self, route: &Route) -> Result<(), Error> {
        self.handle
            .route()
            .add(route.message()?)
            .execute()
            .await
            .map_err(|e| self.fail(format_args!("adding route {}", route.describe()), e))
    }

    /// `ip route replace`.
    pub async fn replace_route(&self, route: &Route) -> Result<(), Error> {
        self.handle
            .route()
            .add(route.message()?)
            .replace()
            .execute()
            .await
            .map_err(|e| self.fail(format_args!("replacing route {}", route.describe()), e))
    }

    /// `ip route del`; `false` when there was no such route.
    pub async fn del_route(&self, route: &Route) -> Result<bool, Error> {
        let mut m = route.message()?;
        // As `ip route del`: match any protocol and scope.
        m.header.protocol = RouteProtocol::Unspec;
        m.header.scope = RouteScope::NoWhere;
        match self.handle.route().del(m).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(nix::libc::ESRCH) => Ok(false),
            Err(e) => Err(self.fail(format_args!("deleting route {}", route.describe()), e)),
        }
    }

    /// The routes of `table` of one family.
    pub async fn routes(&self, v6: bool, table: u32) -> Result<Vec<RouteMessage>, Error> {
        let mut q = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        q.header.table = RouteHeader::RT_TABLE_UNSPEC;
        let all: Vec<RouteMessage> = self
            .handle
            .route()
            .get(q)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.fail("listing routes", e))?;
        Ok(all
            .into_iter()
            .filter(|m| route_table(m) == table)
            .collect())
    }

    /// Deletes every route of `table` of one family.
    pub async fn flush_table(&self, v6: bool, table: u32) -> Result<(), Error> {
        for m in self.routes(v6, table).await? {
            match self.handle.route().del(m).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(nix::libc::ESRCH) => {}
                Err(e) => return Err(self.fail(format_args!("flushing table {table}"), e)),
            }
        }
        Ok(())
    }

    // ---- rules ----

    async fn rules(&self, v6: bool) -> Result<Vec<RuleMessage>, Error> {
        let version = if v6 {
            rtnetlink::IpVersion::V6
        } else {
            rtnetlink::IpVersion::V4
        };
        self.handle
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.fail("listing rules", e))
    }

    /// Adds the rule unless it is there already (the kernel would add a
    /// second copy); one copy is left when there were several.
    pub async fn ensure_rule(&self, rule: &FwmarkRule) -> Result<(), Error> {
        let existing: Vec<RuleMessage> = self
            .rules(rule.v6)
            .await?
            .into_iter()
            .filter(|m| rule.matches(m))
            .collect();
        if let Some((_, extra)) = existing.split_first() {
            for m in extra {
                let _ = self.handle.rule().del(m.clone()).execute().await;
            }
            return Ok(());
        }
        let req = self
            .handle
            .rule()
            .add()
            .fw_mark(rule.mark)
            .table_id(rule.table)
            .action(RuleAction::ToTable);
        let result = if rule.v6 {
            let mut r = req.v6();
            r.message_mut()
                .attributes
                .push(RuleAttribute::FwMask(rule.mask));
            r.execute().await
        } else {
            let mut r = req.v4();
            r.message_mut()
                .attributes
                .push(RuleAttribute::FwMask(rule.mask));
            r.execute().await
        };
        result.map_err(|e| self.fail(format_args!("adding {}", rule.describe()), e))
    }

    /// Deletes every copy of the rule; `false` when there was none.
    pub async fn del_rule(&self, rule: &FwmarkRule) -> Result<bool, Error> {
        let mut any = false;
        for m in self.rules(rule.v6).await? {
            if rule.matches(&m) {
                match self.handle.rule().del(m).execute().await {
                    Ok(()) => any = true,
                    Err(e) if errno(&e) == Some(nix::libc::ENOENT) => {}
                    Err(e) => {
                        return Err(self.fail(format_args!("deleting {}", rule.describe()), e))
                    }
                }
            }
        }
        Ok(any)
    }

    /// Whether the rule is there.
    pub async fn has_rule(&self, rule: &FwmarkRule) -> Result<bool, Error> {
        Ok(self.rules(rule.v6).await?.iter().any(|m| rule.matches(m)))
    }
}

/// A route's table (RTA_TABLE where the header's byte cannot hold it).
pub fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// A route's destination, if it has one.
pub fn route_destination(m: &RouteMessage) -> Option<IpNet> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            IpNet::new(IpAddr::V4(*ip), m.header.destination_prefix_length).ok()
        }
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
            IpNet::new(IpAddr::V6(*ip), m.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(r: &Route) -> RouteScope {
        r.message().unwrap().header.scope
    }

    #[test]
    fn routes_carry_what_ip_route_add_would() {
        let host = Route::to("10.200.0.5/32".parse().unwrap()).dev(7);
        let m = host.message().unwrap();
        assert_eq!(m.header.protocol, RouteProtocol::Boot);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(m.header.scope, RouteScope::Link, "no gateway: scope link");
        assert_eq!(route_table(&m), 254);
        assert_eq!(
            route_destination(&m),
            Some("10.200.0.5/32".parse().unwrap())
        );

        let default = Route::to("0.0.0.0/0".parse().unwrap())
            .via("169.254.1.1".parse().unwrap())
            .dev(2);
        assert_eq!(scope(&default), RouteScope::Universe);
        let gw = Route::to("169.254.1.1/32".parse().unwrap())
            .dev(2)
            .scope_link();
        assert_eq!(scope(&gw), RouteScope::Link);

        let local = Route::to("::/0".parse().unwrap()).dev(1).table(100).local();
        let m = local.message().unwrap();
        assert_eq!(m.header.kind, RouteType::Local);
        assert_eq!(m.header.scope, RouteScope::Host);
        assert_eq!(route_table(&m), 100);
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
    }

    #[test]
    fn macs_print_as_ip_does() {
        assert_eq!(
            mac_string(&[0x02, 0xab, 0, 0x10, 0xff, 1]),
            "02:ab:00:10:ff:01"
        );
    }
}

#[cfg(test)]
mod kernel_tests;
