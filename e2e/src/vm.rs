//! A throwaway qemu VM for what this machine's kernel cannot do (ESP and
//! AES-GCM, for IPsec): Debian's cloud kernel as `cargo xtask setup`
//! unpacked it (`/var/cache/axoneme/vm/`), booted under TCG with an
//! initramfs made per run: busybox, the modules asked for (with their
//! dependencies, as modprobe resolves them), the host files asked for
//! (executables with their shared libraries), and an init that runs a
//! script and prints its exit status. The VM powers off after the script;
//! a VM that outlives its deadline is killed by PID.
//!
//! busybox's shell runs its own applets before anything on `PATH` (`ip`
//! included): call other binaries by their full path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where setup unpacks the kernels, and names the current one.
pub const CACHE: &str = "/var/cache/axoneme/vm";

/// The line the init prints after the script, with its exit status.
const RESULT: &str = "AXONEME-VM-RESULT";

/// A VM run's working directory (its initramfs tree, about 400 MB, and
/// console log) under the temp directory, removed when dropped, whether
/// the run passed or failed (a failure's message carries the console),
/// unless `AXONEME_KEEP` is set.
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// A new directory named after `tag` and this run.
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(crate::run_prefix(tag));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }
}

impl std::ops::Deref for WorkDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if crate::keep() {
            eprintln!(
                "AXONEME_KEEP: the VM's directory stays at {}",
                self.0.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

/// What a VM run gave.
#[derive(Debug)]
pub struct VmRun {
    /// The script's exit status.
    pub status: i32,
    /// Everything on the VM's console (kernel messages included).
    pub console: String,
    /// Boot to power-off.
    pub took: Duration,
}

/// A VM to run: the kernel, modules and files it gets.
pub struct Vm {
    version: String,
    kernel_dir: PathBuf,
    modules: Vec<String>,
    files: Vec<(PathBuf, String)>,
    memory_mib: u32,
}

fn sh(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

impl Vm {
    /// The kernel setup unpacked (`cargo xtask setup` fetches it).
    pub fn new() -> Result<Self> {
        let current = Path::new(CACHE).join("CURRENT");
        let version = std::fs::read_to_string(&current)
            .with_context(|| {
                format!(
                    "no VM kernel ({} missing): run `cargo xtask setup`",
                    current.display()
                )
            })?
            .trim()
            .to_string();
        Ok(Vm {
            kernel_dir: Path::new(CACHE).join(&version),
            version,
            modules: Vec::new(),
            files: Vec::new(),
            memory_mib: 512,
        })
    }

    /// The VM's memory (512 MiB unless set).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Loads `module` (and what it needs) at boot.
    pub fn module(mut self, module: &str) -> Self {
        self.modules.push(module.to_string());
        self
    }

    /// Copies the host's `source` to `dest` in the VM (an executable gets
    /// its shared libraries too).
    pub fn file(mut self, source: impl Into<PathBuf>, dest: &str) -> Self {
        self.files.push((source.into(), dest.to_string()));
        self
    }

    /// Builds the initramfs in `dir` and boots it: runs `script` (busybox
    /// sh) and returns its status, within `deadline`.
    pub fn run(&self, dir: &Path, script: &str, deadline: Duration) -> Result<VmRun> {
        let root = dir.join("root");
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "proc", "sys", "dev", "run", "tmp", "sbin"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .context("/bin/busybox (apt busybox-static; cargo xtask setup)")?;
        self.copy_modules(&root)?;
        for (source, dest) in &self.files {
            copy_with_libraries(source, &root, dest)?;
        }
        let init = format!(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             export PATH=/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev\n\
             ln -s /bin/modprobe /sbin/modprobe\n\
             for m in {modules}; do modprobe $m || echo \"modprobe $m failed\"; done\n\
             ( set -e\n{script}\n)\n\
             echo \"{RESULT} $?\"\n\
             poweroff -f\n",
            modules = self.modules.join(" "),
        );
        let init_path = root.join("init");
        std::fs::write(&init_path, init)?;
        std::fs::set_permissions(
            &init_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let initrd = dir.join("initrd.gz");
        sh(Command::new("sh").arg("-c").arg(format!(
            "cd {} && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > {}",
            root.display(),
            initrd.display()
        )))?;

        let started = Instant::now();
        let log = dir.join("console.log");
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m"])
            .arg(self.memory_mib.to_string())
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .arg("-kernel")
            .arg(
                self.kernel_dir
                    .join("boot")
                    .join(format!("vmlinuz-{}", self.version)),
            )
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-system-x86_64 (apt qemu-system-x86; cargo xtask setup)")?;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if started.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let console = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("the VM did not power off within {deadline:?}; its console:\n{console}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = started.elapsed();
        let console = std::fs::read_to_string(&log)?;
        let result = console
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(RESULT))
            .and_then(|s| s.trim().parse::<i32>().ok())
            .with_context(|| format!("qemu {status}: no {RESULT} line; its console:\n{console}"))?;
        Ok(VmRun {
            status: result,
            console,
            took,
        })
    }

    /// The modules asked for and their dependencies, with the index files
    /// modprobe reads (rebuilt for the subset).
    fn copy_modules(&self, root: &Path) -> Result<()> {
        let base = self.kernel_dir.join("lib/modules").join(&self.version);
        let into = root.join("lib/modules").join(&self.version);
        std::fs::create_dir_all(&into)?;
        for m in &self.modules {
            let out = sh(Command::new("modprobe")
                .arg("-d")
                .arg(&self.kernel_dir)
                .args(["-S", &self.version, "--show-depends", m]))?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(path) = line.strip_prefix("insmod ") else {
                    continue; // builtin
                };
                let path = Path::new(path.split_whitespace().next().unwrap_or_default());
                let rel = path.strip_prefix(&base).with_context(|| {
                    format!("module {} outside {}", path.display(), base.display())
                })?;
                let dest = into.join(rel);
                std::fs::create_dir_all(dest.parent().expect("a module's directory"))?;
                std::fs::copy(path, &dest)?;
            }
        }
        for index in [
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ] {
            if base.join(index).exists() {
                std::fs::copy(base.join(index), into.join(index))?;
            }
        }
        sh(Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&self.version))?;
        Ok(())
    }
}

/// Copies `source` to `root/dest`; an executable's shared libraries (as
/// `ldd` lists them) go to the same paths under `root`.
fn copy_with_libraries(source: &Path, root: &Path, dest: &str) -> Result<()> {
    let target = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().context("a destination directory")?)?;
    std::fs::copy(source, &target).with_context(|| format!("copying {}", source.display()))?;
    let Ok(out) = Command::new("ldd").arg(source).output() else {
        return Ok(());
    };
    for lib in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        if to.exists() {
            continue;
        }
        std::fs::create_dir_all(to.parent().context("a library directory")?)?;
        std::fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
    }
    Ok(())
}

/// The modules a cluster node needs in the VM: ESP and AES-GCM (gcm's
/// parts are asked for by name at run time, each a module of its own),
/// veth and bridge, TC's clsact and cls_bpf, nftables' TPROXY and socket
/// for the L7 proxy.
pub const CLUSTER_MODULES: [&str; 17] = [
    "esp4",
    "esp6",
    "xfrm_user",
    "gcm",
    "ghash-generic",
    "ctr",
    "aesni-intel",
    "seqiv",
    "drbg",
    "jitterentropy_rng",
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "nf_tables",
    "nft_tproxy",
    "nft_socket",
];

/// What the script of a cluster VM starts with: bpffs and cgroup2
/// mounted, `/var/run` for `ip netns`, loopback up, and the environment the
/// harness reads (`AXONEME_BIN_DIR`, `PATH` with `/opt/bin` first).
pub const CLUSTER_PREAMBLE: &str = r#"
mkdir -p /var /sys/fs/bpf /sys/fs/cgroup /run/netns /etc
ln -s /run /var/run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 none /sys/fs/cgroup
mkdir -p /sys/fs/bpf/axoneme
/opt/bin/ip link set lo up
export AXONEME_BIN_DIR=/opt/bin PATH=/opt/bin:/bin HOME=/tmp RUST_LOG=info
"#;

/// How long a cluster's node in the VM may take to be ready: TCG emulates
/// the CPU, so the agents' datapath load (the verifier) takes tens of
/// seconds there, two agents load at once, and a busy host stretches it
/// further (30 s, the default, was once not enough for the benchmark).
pub const VM_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// etcd members of a cluster in the VM: one. Three members' 50 ms
/// heartbeats starve each other under TCG on a busy host until they lose
/// their leader ("etcdserver: no leader") and the agents cannot register;
/// a single member never holds an election, and etcd's high availability
/// is tested on the host (`etcd_outage`, `kube_operator`).
pub const VM_ETCD_MEMBERS: usize = 1;

/// Agent flags for a cluster in the VM: maps sized for its memory.
pub const VM_AGENT_MAPS: [&str; 6] = [
    "--bpf-ct-max",
    "16384",
    "--bpf-policy-max",
    "16384",
    "--bpf-ipcache-max",
    "16384",
];

/// A host tool's path (its real file, symlinks resolved).
fn host_tool(name: &str) -> Result<PathBuf> {
    let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} is not installed (cargo xtask setup)"))?;
    Ok(std::fs::canonicalize(found)?)
}

impl Vm {
    /// A VM that can run a local cluster (`crate::Cluster`, binaries from
    /// `crate::bin_path`) and `program` (copied to `/opt/bin/NAME`):
    /// [`CLUSTER_MODULES`], 2 GiB, etcd, iproute2, curl, and dash as `sh`
    /// (busybox's shell runs its own applets, its `ip` among them, before
    /// `PATH`). Its script starts with [`CLUSTER_PREAMBLE`].
    pub fn for_cluster(program: &Path, name: &str) -> Result<Self> {
        let mut vm = Vm::new()?.memory_mib(2048);
        for m in CLUSTER_MODULES {
            vm = vm.module(m);
        }
        for tool in ["ip", "curl", "etcd", "etcdctl"] {
            vm = vm.file(host_tool(tool)?, &format!("/opt/bin/{tool}"));
        }
        vm = vm.file(host_tool("dash")?, "/opt/bin/sh");
        for bin in [
            "axoneme-agent",
            "axoneme-operator",
            "axoneme",
            "axoneme-cni",
        ] {
            vm = vm.file(crate::bin_path(bin), &format!("/opt/bin/{bin}"));
        }
        Ok(vm.file(program, &format!("/opt/bin/{name}")))
    }
}
