//! The test command's jobs: what cargo builds (every crate's unit tests,
//! every integration test, every benchmark in its smoke form — no
//! `--bench` argument; see `axoneme_e2e::bench` — and the doc tests), each
//! run as `cargo test` would run it (in its package's directory, with
//! `CARGO_MANIFEST_DIR` set), and the fuzz targets' short run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::lanes::Job;

/// The e2e targets that boot the IPsec VM (qemu under software emulation
/// takes both cores): no two of them run at once, and they start first,
/// the longest first.
const VM_TARGETS: &[&str] = &["ipsec_cluster", "ipsec", "ipsec_vm"];
const E2E: &str = "axoneme-e2e";

/// Builds every test and bench target and returns the jobs, longest first
/// as far as their kind tells: the VM's, fuzzing, integration tests and
/// benchmarks (end-to-end ones first), unit tests, doc tests. `args` go to
/// every test harness (a filter, say); benchmarks take none. Fuzzing runs
/// each target for `fuzz_seconds`.
pub fn build(root: &Path, args: &[String], fuzz_seconds: u64) -> Result<Vec<Job>> {
    let mut cmd = crate::cargo();
    cmd.args([
        "test",
        "--workspace",
        "--no-run",
        "--lib",
        "--bins",
        "--tests",
        "--bench",
        "*",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(root)
    .stderr(Stdio::inherit());
    eprintln!("xtask: running {cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let mut jobs: Vec<(Rank, Job)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Artifact::from_message(&v))
        .map(|a| (a.rank(), a.job(root, args)))
        .collect();
    // The fuzz targets, one after another in one job (its output is their
    // table), heavy: libFuzzer keeps a core busy. Run by xtask's binary as
    // the test command's build left it (it may have replaced this one).
    let mut fuzz = Command::new(axoneme_e2e::bin_path("xtask"));
    fuzz.args(["fuzz", "--seconds", &fuzz_seconds.to_string()])
        .current_dir(root);
    jobs.push((
        (1, 0),
        Job {
            label: format!("fuzz targets, {fuzz_seconds} s each (cargo xtask fuzz)"),
            rerun: format!("cargo xtask fuzz --seconds {fuzz_seconds}"),
            cmd: fuzz,
            heavy: true,
        },
    ));
    let mut doc = crate::cargo();
    doc.args(["test", "--workspace", "--doc", "--"])
        .args(args)
        .current_dir(root);
    jobs.push((
        (u8::MAX, 0),
        Job {
            label: "doc tests (cargo test --workspace --doc)".into(),
            rerun: "cargo test --workspace --doc".into(),
            cmd: doc,
            heavy: false,
        },
    ));
    jobs.sort_by_key(|(rank, _)| *rank);
    Ok(jobs.into_iter().map(|(_, j)| j).collect())
}

/// A job's place in the queue: its kind's, then its place among its kind.
type Rank = (u8, usize);

/// A test executable cargo built.
#[derive(Debug, PartialEq)]
struct Artifact {
    package: String,
    /// `lib`, `bin`, `test` or `bench`.
    kind: String,
    name: String,
    /// The package's directory.
    dir: PathBuf,
    /// The target's source, relative to `dir`.
    src: String,
    exe: PathBuf,
}

impl Artifact {
    /// A `compiler-artifact` message of a test executable, or `None`.
    fn from_message(v: &Value) -> Option<Self> {
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            return None;
        }
        let exe = PathBuf::from(v["executable"].as_str()?);
        let dir = Path::new(v["manifest_path"].as_str()?)
            .parent()?
            .to_path_buf();
        let src = Path::new(v["target"]["src_path"].as_str()?);
        Some(Artifact {
            package: package_name(v["package_id"].as_str()?)?,
            kind: v["target"]["kind"][0].as_str()?.to_string(),
            name: v["target"]["name"].as_str()?.to_string(),
            src: src.strip_prefix(&dir).ok()?.display().to_string(),
            dir,
            exe,
        })
    }

    /// Its place among the VM's targets, if it boots the VM.
    fn vm_place(&self) -> Option<usize> {
        let place = VM_TARGETS.iter().position(|t| *t == self.name);
        place.filter(|_| self.package == E2E)
    }

    fn vm(&self) -> bool {
        self.vm_place().is_some()
    }

    fn unit(&self) -> bool {
        !matches!(self.kind.as_str(), "test" | "bench")
    }

    /// Where it goes in the queue: lower first.
    fn rank(&self) -> Rank {
        match (self.vm_place(), self.unit(), self.package == E2E) {
            (Some(place), _, _) => (0, place),
            (None, false, true) => (2, 0),
            (None, false, false) => (3, 0),
            (None, true, _) => (4, 0),
        }
    }

    fn job(&self, root: &Path, args: &[String]) -> Job {
        let shown = self.exe.strip_prefix(root).unwrap_or(&self.exe).display();
        let label = if self.unit() {
            format!("unittests {} ({shown})", self.src)
        } else {
            format!("{} ({shown})", self.src)
        };
        let selector = match self.kind.as_str() {
            "test" | "bench" | "bin" => format!("--{} {}", self.kind, self.name),
            _ => "--lib".to_string(),
        };
        let mut cmd = Command::new(&self.exe);
        cmd.current_dir(&self.dir)
            .env("CARGO_MANIFEST_DIR", &self.dir)
            .env("CARGO_PKG_NAME", &self.package);
        if self.kind != "bench" {
            cmd.arg("--test-threads=2").args(args);
        }
        Job {
            label,
            rerun: format!("cargo test -p {} {selector}", self.package),
            cmd,
            heavy: self.vm(),
        }
    }
}

/// A package's name from its id: `path+file:///w/e2e#axoneme-e2e@0.1.0`,
/// or `path+file:///w/xtask#0.1.0` where the name is the directory's.
fn package_name(id: &str) -> Option<String> {
    let (path, fragment) = id.rsplit_once('#')?;
    match fragment.split_once('@') {
        Some((name, _)) => Some(name.to_string()),
        None => Some(path.rsplit('/').next()?.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(package_id: &str, kind: &str, name: &str, src: &str, test: bool) -> Value {
        serde_json::json!({
            "reason": "compiler-artifact",
            "package_id": package_id,
            "manifest_path": "/w/e2e/Cargo.toml",
            "target": {"kind": [kind], "name": name, "src_path": src},
            "profile": {"test": test},
            "executable": format!("/w/target/debug/deps/{name}-0a1b"),
        })
    }

    #[test]
    fn artifacts_become_jobs_named_and_rerun_as_cargo_does() {
        let id = "path+file:///w/e2e#axoneme-e2e@0.1.0";
        let a = Artifact::from_message(&message(
            id,
            "test",
            "ipsec_cluster",
            "/w/e2e/tests/ipsec_cluster.rs",
            true,
        ))
        .unwrap();
        assert!(a.vm());
        let job = a.job(Path::new("/w"), &["filter".into()]);
        assert_eq!(
            job.label,
            "tests/ipsec_cluster.rs (target/debug/deps/ipsec_cluster-0a1b)"
        );
        assert_eq!(job.rerun, "cargo test -p axoneme-e2e --test ipsec_cluster");
        let args: Vec<_> = job.cmd.get_args().collect();
        assert_eq!(args, ["--test-threads=2", "filter"]);
        assert_eq!(job.cmd.get_current_dir(), Some(Path::new("/w/e2e")));

        let lib = Artifact::from_message(&message(
            id,
            "lib",
            "axoneme_e2e",
            "/w/e2e/src/lib.rs",
            true,
        ))
        .unwrap();
        assert_eq!(
            lib.job(Path::new("/w"), &[]).label,
            "unittests src/lib.rs (target/debug/deps/axoneme_e2e-0a1b)"
        );
        assert_eq!(
            lib.job(Path::new("/w"), &[]).rerun,
            "cargo test -p axoneme-e2e --lib"
        );
        let bench = Artifact::from_message(&message(
            id,
            "bench",
            "soak",
            "/w/e2e/benches/soak.rs",
            true,
        ))
        .unwrap();
        assert_eq!(
            bench
                .job(Path::new("/w"), &["x".into()])
                .cmd
                .get_args()
                .count(),
            0,
            "smoke form: no arguments"
        );
        assert!(bench.rank() < lib.rank() && a.rank() < bench.rank());

        // The binaries built for the tests to start are not tests.
        assert_eq!(
            Artifact::from_message(&message(
                id,
                "bin",
                "axoneme-agent",
                "/w/e2e/src/main.rs",
                false
            )),
            None
        );
        assert_eq!(
            package_name("path+file:///w/xtask#0.1.0").as_deref(),
            Some("xtask")
        );
    }

    /// The VM list names exactly the e2e targets that boot the VM.
    #[test]
    fn the_vm_targets_are_those_that_boot_the_vm() {
        let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e");
        let mut booting: Vec<String> = ["tests", "benches"]
            .iter()
            .flat_map(|d| std::fs::read_dir(e2e.join(d)).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .filter(|p| std::fs::read_to_string(p).unwrap().contains("Vm::"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        booting.sort();
        let mut listed: Vec<&str> = VM_TARGETS.to_vec();
        listed.sort();
        assert_eq!(booting, listed);
    }
}
