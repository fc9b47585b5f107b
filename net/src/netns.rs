//! A network namespace by handle: opened once (a path such as
//! `/run/netns/NAME`, or the agent's own), entered by a thread of its own
//! whenever code must run inside it.
//!
//! Everything namespaced that the agent touches goes through
//! [`Netns::run`]: netlink sockets (a socket belongs to the namespace it
//! was created in, whichever thread uses it later), interface names and
//! indexes, `/proc/sys/net` (see [`crate::sysctl`]), and the proxy's
//! sockets. `setns` changes the namespace of the calling *thread* only, so
//! the agent's own threads never enter another namespace: each
//! [`Netns::run`] is a short-lived thread that does, runs the closure and
//! ends.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Error;

/// A network namespace, kept open (so a namespace whose name is removed
/// stays usable while the handle lives). Cloning shares the open file.
#[derive(Debug, Clone)]
pub struct Netns {
    file: Arc<File>,
    path: PathBuf,
    /// The process's own namespace: code runs on the calling thread.
    own: bool,
}

impl PartialEq for Netns {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.own == other.own
    }
}

impl Netns {
    /// Opens the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Netns {
            file: Arc::new(file),
            path,
            own: false,
        })
    }

    /// The process's own namespace (its main thread's). The agent's
    /// threads never leave it: only the threads [`Netns::run`] starts do.
    pub fn own() -> Result<Self, Error> {
        let mut ns = Self::open(format!("/proc/{}/ns/net", std::process::id()))?;
        ns.own = true;
        Ok(ns)
    }

    /// `path`, or the process's own namespace when `None`.
    pub fn open_or_own(path: Option<&Path>) -> Result<Self, Error> {
        match path {
            Some(p) => Self::open(p),
            None => Self::own(),
        }
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is the process's own namespace.
    pub fn is_own(&self) -> bool {
        self.own
    }

    /// The open namespace file (what `IFLA_NET_NS_FD` names).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Runs `f` inside this namespace and returns its result: on a thread
    /// of its own that enters the namespace first (on the calling thread
    /// for the process's own namespace). Blocks until `f` returns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        if self.own {
            return Ok(f());
        }
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(s, || {
                    nix::sched::setns(self.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|source| Error::Enter {
                            path: self.path.clone(),
                            source,
                        })?;
                    Ok(f())
                })
                .map_err(|source| Error::Io {
                    op: format!("starting a thread for {}", self.path.display()),
                    source,
                })?
                .join()
                .map_err(|_| Error::Panicked {
                    path: self.path.clone(),
                })?
        })
    }

    /// An rtnetlink connection inside this namespace, served by a task on
    /// the current tokio runtime (it ends when the last clone of the
    /// returned handle is dropped). Must be called within a runtime.
    pub fn rtnl(&self) -> Result<crate::Rtnl, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::Io {
            op: "rtnetlink needs a tokio runtime".into(),
            source: std::io::Error::other(e),
        })?;
        let (connection, handle, _) = self
            .run(|| {
                // The socket is made here, inside the namespace, and
                // registered with the caller's runtime.
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|source| Error::Io {
                op: format!("opening rtnetlink in {}", self.path.display()),
                source,
            })?;
        runtime.spawn(connection);
        Ok(crate::Rtnl::new(handle, self.path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_runs_inline() {
        let ns = Netns::own().unwrap();
        assert!(ns.is_own());
        let here = std::thread::current().id();
        assert_eq!(ns.run(|| std::thread::current().id()).unwrap(), here);
    }

    #[test]
    fn a_missing_namespace_is_an_open_error() {
        let e = Netns::open("/run/netns/axoneme-no-such-namespace").unwrap_err();
        assert!(matches!(e, Error::Open { .. }), "{e}");
        assert!(e.to_string().contains("axoneme-no-such-namespace"), "{e}");
    }
}
