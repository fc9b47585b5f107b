//! Orphaned endpoint records: endpoints gone from this node whose record
//! etcd has not been told to delete (it was unavailable, or a write timed
//! out and may still land). Each is kept in memory and as a file beside
//! the endpoints' state files (`NAME.orphan`, its addresses), so an agent
//! restarted meanwhile still deletes it. Until the record is deleted the
//! addresses stay out of IPAM: other nodes still map them to the old pod's
//! identity, so no new pod may get them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

const SUFFIX: &str = "orphan";

pub struct Orphans {
    dir: PathBuf,
    held: Mutex<BTreeMap<String, Vec<IpAddr>>>,
    added: tokio::sync::Notify,
}

impl Orphans {
    /// The orphans kept in `dir` (an unreadable file is left for a human,
    /// with a warning).
    pub fn load(dir: &Path) -> Self {
        let held = super::state::read_json_files(dir, SUFFIX, "orphan file")
            .into_iter()
            .collect();
        Orphans {
            dir: dir.to_path_buf(),
            held: Mutex::new(held),
            added: tokio::sync::Notify::new(),
        }
    }

    /// `name`'s record is an orphan holding `addresses`.
    pub fn add(&self, name: &str, addresses: &[IpAddr]) {
        keep(&self.dir, name, addresses);
        self.held
            .lock()
            .expect("orphans lock")
            .insert(name.to_string(), addresses.to_vec());
        self.added.notify_one();
    }

    /// `name`'s record is deleted or written anew: no orphan any more.
    /// Whether it was one.
    pub fn remove(&self, name: &str) -> bool {
        let _ = std::fs::remove_file(path(&self.dir, name));
        self.held
            .lock()
            .expect("orphans lock")
            .remove(name)
            .is_some()
    }

    /// The orphans and the addresses each holds.
    pub fn held(&self) -> BTreeMap<String, Vec<IpAddr>> {
        self.held.lock().expect("orphans lock").clone()
    }

    pub fn is_empty(&self) -> bool {
        self.held.lock().expect("orphans lock").is_empty()
    }

    /// Resolves when an orphan is added.
    pub async fn added(&self) {
        self.added.notified().await
    }
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.{SUFFIX}"))
}

/// Writes the orphan file of `name` (before [`Orphans::load`] runs, e.g.
/// while the previous run's endpoints are restored). A failure is logged:
/// it costs only a restart's memory of the orphan.
pub fn keep(dir: &Path, name: &str, addresses: &[IpAddr]) {
    let path = path(dir, name);
    let tmp = path.with_extension("orphan.tmp");
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(addresses).expect("serializes")))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        warn!(file = %path.display(), error = %e, "cannot keep the orphan file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_outlive_a_restart_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()];
        let orphans = Orphans::load(dir.path());
        assert!(orphans.is_empty());
        orphans.add("pod-a.1", &a);
        // A state file and junk beside it are no orphans.
        std::fs::write(dir.path().join("pod-b.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("pod-c.orphan"), b"not json").unwrap();

        let again = Orphans::load(dir.path());
        assert_eq!(again.held(), BTreeMap::from([("pod-a.1".to_string(), a)]));
        assert!(again.remove("pod-a.1"));
        assert!(!again.remove("pod-a.1"));
        assert!(Orphans::load(dir.path()).is_empty());
    }
}
