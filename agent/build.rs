//! Locates the eBPF object that `src/datapath` embeds.
//!
//! The object is built separately (`cargo xtask build-bpf`, with Debian's
//! rustc-web and bpf-linker; see ARCHITECTURE.md "Toolchains"), because aya's
//! template build script needs a nightly toolchain this machine does not have.
//! `AXONEME_BPF_OBJECT` overrides the default location.

use std::env;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const OBJECT_ENV: &str = "AXONEME_BPF_OBJECT";

fn main() -> ExitCode {
    println!("cargo::rerun-if-env-changed={OBJECT_ENV}");

    let Some(manifest_dir) = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        eprintln!("CARGO_MANIFEST_DIR is not set: build.rs must be run by cargo");
        return ExitCode::FAILURE;
    };
    let workspace_root = manifest_dir.parent().unwrap_or(&manifest_dir).to_path_buf();

    let object = match env::var_os(OBJECT_ENV) {
        Some(path) if !path.is_empty() => workspace_root.join(path),
        _ => default_object(&workspace_root),
    };

    if !object.is_file() {
        eprintln!(
            "eBPF object not built: run `cargo xtask build-bpf` (or `cargo xtask test`)\n\
             (looked for {}; set {OBJECT_ENV} to use another file)",
            object.display()
        );
        return ExitCode::FAILURE;
    }
    let object = match object.canonicalize() {
        Ok(path) => path,
        Err(error) => {
            eprintln!(
                "cannot resolve eBPF object path {}: {error}",
                object.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let Some(object_str) = object.to_str() else {
        eprintln!("eBPF object path is not UTF-8: {}", object.display());
        return ExitCode::FAILURE;
    };

    println!("cargo::rerun-if-changed={object_str}");
    println!("cargo::rustc-env={OBJECT_ENV}={object_str}");
    ExitCode::SUCCESS
}

/// Where `cargo xtask build-bpf` puts the object (keep in sync with
/// `xtask/src/bpf.rs`).
fn default_object(workspace_root: &Path) -> PathBuf {
    workspace_root
        .join("target")
        .join("bpf")
        .join("bpfel-unknown-none")
        .join("release")
        .join("axoneme-bpf")
}
