//! Axoneme's kernel networking, with no process per call: a network
//! namespace handle ([`Netns`]), rtnetlink for links, addresses, routes
//! and rules ([`Rtnl`]), the L7 proxy's nftables table ([`nft`]), and sysctls written to `/proc/sys` ([`sysctl`]).
//!
//! Why these libraries:
//! - `rtnetlink` (with the `netlink-packet-route` it re-exports): the
//!   rust-netlink project's typed route messages, async on tokio, used by
//!   youki and others; one request and its acknowledgement per change,
//!   where iproute2 costs a process (and `nsenter` another) per call.
//! - `nix`: `setns(2)` for the thread that enters a namespace (the only
//!   way into one; netlink sockets and `/proc/sys/net` belong to the
//!   namespace of whoever opens them).
//! - `netlink-packet-netfilter` (same project, same `netlink-packet-core`):
//!   nftables table, chain and rule messages, so the L7 proxy's TPROXY
//!   redirect is one table replaced in one kernel transaction ([`nft`])
//!   rather than a dozen iptables processes with a window in between.
//! - sysctls are plain file writes; no library.
//!
//! Everything namespaced happens inside a [`Netns::run`] closure or on an
//! [`Rtnl`] opened in the namespace; the caller's threads never change
//! namespace.

#![forbid(unsafe_code)]

use std::path::PathBuf;

mod netns;
pub mod nft;
mod rtnl;
pub mod sysctl;

pub use netns::Netns;
/// The netlink message types the API exposes ([`Rtnl::routes`]).
pub use rtnetlink::packet_route;
pub use rtnl::{errno, route_destination, route_table, Address, FwmarkRule, Link, Route, Rtnl};

/// What went wrong, with the namespace or object it concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening network namespace {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {}: {source}", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("code run in network namespace {} panicked", path.display())]
    Panicked { path: PathBuf },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no link {name} in {}", ns.display())]
    NoLink { name: String, ns: PathBuf },
    #[error("sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    /// The errno of a netlink error answer, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => errno(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod testns;
