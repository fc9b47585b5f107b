//! The real Hubble CLI the flow tests run against the agent's Hubble API:
//! built by `cargo xtask setup` from Cilium's Go module
//! (`github.com/cilium/cilium/hubble`, pinned in `e2e/hubble/go.mod`) into
//! a cache outside the work tree, keyed by that version.

use std::path::{Path, PathBuf};

const GO_MOD: &str = include_str!("../hubble/go.mod");

/// Where the Hubble CLI is cached: `<this>/<version>/bin/hubble`.
pub const HUBBLE_CACHE_DIR: &str = "/var/cache/axoneme/hubble";

/// The Cilium version `e2e/hubble/go.mod` requires, e.g. `v1.20.2`.
pub fn cilium_version() -> &'static str {
    crate::kube::go_mod_require(GO_MOD, "github.com/cilium/cilium")
        .expect("e2e/hubble/go.mod requires github.com/cilium/cilium")
}

/// Path of the Hubble CLI of `version` in the cache.
pub fn cached(version: &str) -> PathBuf {
    Path::new(HUBBLE_CACHE_DIR)
        .join(version)
        .join("bin")
        .join("hubble")
}

/// The Hubble CLI the tests use (may be missing: running it then fails
/// with a message naming `cargo xtask setup`).
pub fn binary() -> PathBuf {
    cached(cilium_version())
}
