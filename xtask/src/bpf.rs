//! Builds the eBPF programs (`bpf/programs`, their own cargo workspace).
//!
//! Only Debian's rustc-web ships a prebuilt `core` for `bpfel-unknown-none`
//! (package `libstd-rust-web-dev-bpf`), so the programs are built with
//! `/usr/bin/cargo` + `/usr/bin/rustc` (`RUSTC_BOOTSTRAP=1` for the unstable
//! features aya-ebpf uses) and `bpf-linker` from the project's tools directory.
//! See ARCHITECTURE.md "Toolchains".

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _};

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const BPF_TARGET: &str = "bpfel-unknown-none";
const BPF_RUSTLIB: &str = "/usr/lib/rustlib/bpfel-unknown-none";

/// Environment variables inherited from the outer (rustup) cargo that would
/// change the eBPF build: `RUSTFLAGS` in particular replaces the rustflags of
/// `bpf/programs/.cargo/config.toml`, which would silently drop `--btf`.
const SCRUBBED_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "CARGO",
];

/// Where the eBPF target directory lives (outside the root workspace's
/// default `target/<profile>` so the two toolchains never share artefacts).
fn target_dir(root: &Path) -> PathBuf {
    root.join("target").join("bpf")
}

/// The objects `bpf/programs` builds (its binaries): the datapath, which
/// the agent embeds, and the toolchain's smoke test, which only the
/// agent's tests and benches embed.
pub const OBJECTS: [&str; 2] = ["axoneme-bpf", "axoneme-bpf-smoke"];

/// Where [`build`] puts object `name` (one of [`OBJECTS`]);
/// `agent/build.rs` embeds it from there.
pub fn object_path(root: &Path, name: &str) -> PathBuf {
    target_dir(root).join(BPF_TARGET).join("release").join(name)
}

/// Builds `bpf/programs` in release mode and returns the objects' paths.
///
/// `root` is the workspace root, `tools_bin` the directory holding
/// `bpf-linker` (installed by `cargo xtask setup` into its tools cache).
pub fn build(root: &Path, tools_bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let crate_dir = root.join("bpf").join("programs");
    ensure!(
        crate_dir.join("Cargo.toml").is_file(),
        "eBPF crate not found at {}",
        crate_dir.display()
    );
    for (path, what) in [
        (
            Path::new(DEBIAN_RUSTC),
            "Debian's rustc (package rustc-web)",
        ),
        (
            Path::new(DEBIAN_CARGO),
            "Debian's cargo (package cargo-web)",
        ),
        (
            Path::new(BPF_RUSTLIB),
            "the prebuilt core for bpfel-unknown-none (package libstd-rust-web-dev-bpf)",
        ),
        (&tools_bin.join("bpf-linker"), "bpf-linker"),
    ] {
        ensure!(
            path.exists(),
            "{what} is missing ({}): run `cargo xtask setup`",
            path.display()
        );
    }

    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(tools_bin.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .context("cannot build PATH with the tools directory")?;

    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&crate_dir)
        .args(["build", "--release"])
        .env("PATH", &path)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", target_dir(root));
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }

    let status = cmd
        .status()
        .with_context(|| format!("cannot run {DEBIAN_CARGO}: run `cargo xtask setup`"))?;
    if !status.success() {
        bail!(
            "eBPF build failed ({status}): `{DEBIAN_CARGO} build --release` in {}",
            crate_dir.display()
        );
    }

    OBJECTS
        .iter()
        .map(|name| {
            let object = object_path(root, name);
            let bytes = std::fs::read(&object).with_context(|| {
                format!(
                    "eBPF build succeeded but {} is unreadable",
                    object.display()
                )
            })?;
            ensure!(
                bytes.windows(5).any(|w| w == b".BTF\0"),
                "{} has no .BTF section: check the `--btf` link-arg in \
                 bpf/programs/.cargo/config.toml and that RUSTFLAGS is not overriding it",
                object.display()
            );
            Ok(object)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_are_where_agent_build_rs_looks() {
        assert_eq!(
            object_path(Path::new("/w"), OBJECTS[0]),
            PathBuf::from("/w/target/bpf/bpfel-unknown-none/release/axoneme-bpf")
        );
        assert_eq!(
            object_path(Path::new("/w"), OBJECTS[1]),
            PathBuf::from("/w/target/bpf/bpfel-unknown-none/release/axoneme-bpf-smoke")
        );
    }

    #[test]
    fn scrubbed_env_covers_rustflags() {
        assert!(SCRUBBED_ENV.contains(&"RUSTFLAGS"));
        assert!(SCRUBBED_ENV.contains(&"CARGO_ENCODED_RUSTFLAGS"));
    }
}
