//! The control-plane binaries: which Kubernetes version they are built at
//! (read from `e2e/kube/go.mod`), where `cargo xtask setup` caches them,
//! and finding one, with an error saying how to build it when it is
//! missing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The Go module the binaries are built from; its `require k8s.io/kubernetes`
/// line is the one place the Kubernetes version is written down.
const GO_MOD: &str = include_str!("../../kube/go.mod");

/// The binaries `cargo xtask setup` builds.
pub const KUBE_BINARIES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-proxy",
    "kubectl",
];

/// Where the binaries are cached, outside the work tree: `<this>/<version>/bin`.
pub const KUBE_CACHE_DIR: &str = "/var/cache/axoneme/kube";

/// Overrides the binaries' directory (default `KUBE_CACHE_DIR/<version>/bin`).
pub const KUBE_BIN_ENV: &str = "AXONEME_KUBE_BIN";

/// The Kubernetes version the binaries are built at, e.g. `v1.37.2`.
pub fn kube_version() -> &'static str {
    go_mod_require(GO_MOD, "k8s.io/kubernetes").expect("e2e/kube/go.mod requires k8s.io/kubernetes")
}

/// The version a go.mod's `require` line gives `module` (the one place a
/// Go-built tool's version is written down).
pub fn go_mod_require<'a>(go_mod: &'a str, module: &str) -> Option<&'a str> {
    go_mod.lines().find_map(|l| {
        let l = l.trim();
        let l = l.strip_prefix("require ").unwrap_or(l);
        l.strip_prefix(module)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
    })
}

/// The directory holding the control-plane binaries (`AXONEME_KUBE_BIN`, or
/// the version-keyed cache).
pub fn kube_bin_dir() -> PathBuf {
    match std::env::var_os(KUBE_BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(KUBE_CACHE_DIR).join(kube_version()).join("bin"),
    }
}

/// Path of one control-plane binary; an error telling how to build it when
/// it is missing.
pub fn kube_bin(name: &str) -> Result<PathBuf> {
    let path = kube_bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo xtask setup` to build Kubernetes {} \
             (or point {KUBE_BIN_ENV} at a directory holding {})",
            path.display(),
            kube_version(),
            KUBE_BINARIES.join(", ")
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every staging module is replaced by its release matching
    /// k8s.io/kubernetes's (v0.37.N for v1.37.N): one release for all.
    #[test]
    fn go_mod_pins_one_release() {
        let version = kube_version();
        let staging = version.replacen("v1.", "v0.", 1);
        assert!(
            version.starts_with("v1.") && staging != version,
            "{version}"
        );
        let replaces: Vec<&str> = GO_MOD.lines().filter(|l| l.contains("=>")).collect();
        assert!(replaces.len() >= 30, "{replaces:?}");
        for l in replaces {
            let (old, new) = l.split_once("=>").expect("replace");
            let (old, new) = (old.trim(), new.split_whitespace().collect::<Vec<_>>());
            assert!(old.starts_with("k8s.io/"), "{l}");
            assert_eq!(new, [old, staging.as_str()], "{l}");
        }
    }
}
