//! Sockets made in the node's network namespace: the proxy's transparent
//! listener and its marked, transparent upstream sockets.

use std::net::{IpAddr, SocketAddr};

use super::{ProxyConfig, MARK_PROXY};

/// Makes sockets in the node's network namespace (a socket belongs to the
/// namespace it was created in, whichever thread uses it later).
#[derive(Clone)]
pub struct SocketFactory {
    netns: Option<std::path::PathBuf>,
}

impl SocketFactory {
    pub fn new(netns: Option<std::path::PathBuf>) -> Self {
        SocketFactory { netns }
    }

    fn in_netns<T: Send>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> std::io::Result<T> {
        match &self.netns {
            None => f(),
            Some(path) => std::thread::scope(|s| {
                s.spawn(|| {
                    let file = std::fs::File::open(path)?;
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    f()
                })
                .join()
                .map_err(|_| std::io::Error::other("socket thread panicked"))?
            }),
        }
    }

    /// The node's network namespace cookie (`SO_NETNS_COOKIE`), by which
    /// the sockops program tells the proxy's sockets from the pods'.
    pub fn netns_cookie(&self) -> std::io::Result<u64> {
        self.in_netns(|| {
            use socket2::{Domain, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
            netns_cookie(&s)
        })
    }

    /// A transparent dual-stack listener on `[::]:port`, with the default
    /// backlog ([`ProxyConfig::listen_backlog`]).
    pub fn listener(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        self.listener_with_backlog(port, ProxyConfig::default().listen_backlog)
    }

    /// A transparent dual-stack listener on `[::]:port` with room for
    /// `backlog` connections not yet accepted.
    pub fn listener_with_backlog(
        &self,
        port: u16,
        backlog: u32,
    ) -> std::io::Result<std::net::TcpListener> {
        self.in_netns(|| {
            use socket2::{Domain, Protocol, Socket, Type};
            let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
            s.set_only_v6(false)?;
            s.set_reuse_address(true)?;
            // Accept connections addressed to other hosts (the pods).
            s.set_ip_transparent_v4(true)?;
            s.set_ip_transparent_v6(true)?;
            s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
            s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
    }

    /// A marked, non-blocking TCP socket to connect upstream, bound to the
    /// client's address `src` (transparent): the destination's node judges
    /// the request by the client's identity, and the backend sees the
    /// client's address. The replies reach this socket through the node's
    /// `socket transparent` rule (see `redirect.rs`).
    pub(super) fn upstream(&self, src: IpAddr) -> std::io::Result<tokio::net::TcpSocket> {
        let s = self.in_netns(|| {
            use socket2::{Domain, Protocol, Socket, Type};
            let domain = if src.is_ipv6() {
                Domain::IPV6
            } else {
                Domain::IPV4
            };
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.set_mark(MARK_PROXY)?;
            if src.is_ipv6() {
                s.set_ip_transparent_v6(true)?;
            } else {
                s.set_ip_transparent_v4(true)?;
            }
            s.bind(&SocketAddr::new(src, 0).into())?;
            s.set_nonblocking(true)?;
            s.set_tcp_nodelay(true)?;
            Ok(s)
        })?;
        Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
    }
}

/// `getsockopt(SO_NETNS_COOKIE)`, which neither nix nor socket2 wraps.
#[allow(unsafe_code)]
fn netns_cookie(s: &socket2::Socket) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut cookie = 0u64;
    let mut len: nix::libc::socklen_t = 8;
    // SAFETY: `cookie` and `len` are live locals of the sizes passed; the
    // kernel writes at most `len` bytes into `cookie`.
    let r = unsafe {
        nix::libc::getsockopt(
            s.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
