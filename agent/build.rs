//! Locates the eBPF objects that `src/datapath` (the datapath) and the
//! tests and benches (the toolchain's smoke test) embed.
//!
//! The objects are built separately (`cargo xtask build-bpf`, with Debian's
//! rustc-web and bpf-linker; see docs/architecture.md "eBPF toolchain"),
//! because aya's template build script needs a nightly toolchain this
//! machine does not have. `AXONEME_BPF_OBJECT` and
//! `AXONEME_BPF_SMOKE_OBJECT` override the default locations.

use std::env;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// (environment variable, object name): keep the names in sync with
/// `xtask/src/bpf.rs` (`OBJECTS`).
const OBJECTS: [(&str, &str); 2] = [
    ("AXONEME_BPF_OBJECT", "axoneme-bpf"),
    ("AXONEME_BPF_SMOKE_OBJECT", "axoneme-bpf-smoke"),
];

fn main() -> ExitCode {
    let Some(manifest_dir) = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        eprintln!("CARGO_MANIFEST_DIR is not set: build.rs must be run by cargo");
        return ExitCode::FAILURE;
    };
    let workspace_root = manifest_dir.parent().unwrap_or(&manifest_dir).to_path_buf();
    for (var, name) in OBJECTS {
        if let Err(message) = locate(&workspace_root, var, name) {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Finds object `name` (or the file `var` names) and passes its path to
/// the crate as `var`.
fn locate(workspace_root: &Path, var: &str, name: &str) -> Result<(), String> {
    println!("cargo::rerun-if-env-changed={var}");
    let object = match env::var_os(var) {
        Some(path) if !path.is_empty() => workspace_root.join(path),
        _ => default_object(workspace_root, name),
    };
    if !object.is_file() {
        return Err(format!(
            "eBPF object not built: run `cargo xtask build-bpf` (or `cargo xtask test`)\n\
             (looked for {}; set {var} to use another file)",
            object.display()
        ));
    }
    let object = object.canonicalize().map_err(|error| {
        format!(
            "cannot resolve eBPF object path {}: {error}",
            object.display()
        )
    })?;
    let Some(object_str) = object.to_str() else {
        return Err(format!(
            "eBPF object path is not UTF-8: {}",
            object.display()
        ));
    };
    println!("cargo::rerun-if-changed={object_str}");
    println!("cargo::rustc-env={var}={object_str}");
    Ok(())
}

/// Where `cargo xtask build-bpf` puts object `name` (keep in sync with
/// `xtask/src/bpf.rs`).
fn default_object(workspace_root: &Path, name: &str) -> PathBuf {
    workspace_root
        .join("target")
        .join("bpf")
        .join("bpfel-unknown-none")
        .join("release")
        .join(name)
}
