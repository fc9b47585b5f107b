//! What test runs killed before their clean-up ran (SIGKILL, a machine
//! stopped mid-run) leave behind: etcd's data directories (on tmpfs, so
//! memory), the control planes' run directories and the IPsec VM's
//! initramfs trees (about 400 MB each). Every run removes its own when it
//! ends, passing or failing; this removes those of runs long gone, by age,
//! when `cargo xtask test` starts. No run lasts that long, so nothing of a
//! run still going is touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Older than this, a run's directory is a killed run's.
const STALE_AFTER: Duration = Duration::from_secs(12 * 3600);

/// The directories' name prefixes (`axoneme_e2e::run_prefix`'s tags).
const PREFIXES: &[&str] = &["axetcd", "axkube", "axvm"];

/// Removes stale run directories from tmpfs and the temp directory.
pub fn stale_runs() {
    let now = SystemTime::now();
    for place in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        for dir in stale(&place, now) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => println!("xtask: removed {}, left by a killed run", dir.display()),
                Err(e) => eprintln!("xtask: removing {}: {e}", dir.display()),
            }
        }
    }
}

/// The run directories in `place` last modified more than
/// [`STALE_AFTER`] before `now`.
fn stale(place: &Path, now: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(place) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .filter(|e| {
            e.metadata().is_ok_and(|m| {
                m.is_dir()
                    && m.modified()
                        .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_AFTER)
            })
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_run_directories_are_stale() {
        let place = tempfile::tempdir().unwrap();
        for name in ["axetcd123-x", "axvmb45", "axkube9-y", "other", "axvmfile"] {
            if name == "axvmfile" {
                std::fs::write(place.path().join(name), b"").unwrap();
            } else {
                std::fs::create_dir(place.path().join(name)).unwrap();
            }
        }
        let names = |now| {
            let mut v: Vec<String> = stale(place.path(), now)
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert!(names(SystemTime::now()).is_empty());
        let later = SystemTime::now() + STALE_AFTER + Duration::from_secs(60);
        assert_eq!(names(later), ["axetcd123-x", "axkube9-y", "axvmb45"]);
    }
}
