//! The eBPF datapath: the object built from `bpf/programs`, embedded at compile
//! time, loaded into the kernel with aya.
//!
//! For now it only carries the toolchain smoke program (`axoneme_smoke`) and
//! its deny map, exercised through `BPF_PROG_TEST_RUN`.

use aya::maps::{HashMap, MapError};
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfError};

/// The eBPF object built by `cargo xtask build-bpf` (located by `build.rs`).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AXONEME_BPF_OBJECT"));

/// Name of the toolchain smoke SCHED_CLS program.
pub const SMOKE_PROGRAM: &str = "axoneme_smoke";
/// Name of the smoke program's map of denied UDP ports (host order `u16` → `u8`).
pub const SMOKE_DENY_PORTS_MAP: &str = "SMOKE_DENY_PORTS";

/// Errors from loading or driving the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The embedded object could not be parsed, or its maps could not be
    /// created (no BPF syscall access, not root, ...).
    #[error("failed to load the embedded eBPF object ({path})")]
    Object {
        /// Path the object was embedded from.
        path: &'static str,
        /// The aya error.
        #[source]
        source: EbpfError,
    },
    /// The object does not contain the named program.
    #[error("eBPF program `{name}` not found in the object")]
    ProgramNotFound {
        /// Program (function) name.
        name: &'static str,
    },
    /// The object does not contain the named map.
    #[error("eBPF map `{name}` not found in the object")]
    MapNotFound {
        /// Map (static) name.
        name: &'static str,
    },
    /// A program operation failed: wrong type, verifier rejection, test run.
    #[error("eBPF program `{name}`: {op} failed")]
    Program {
        /// Program (function) name.
        name: &'static str,
        /// What was being done.
        op: &'static str,
        /// The aya error (its message carries the verifier log on rejection).
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("eBPF map `{name}`: {op} failed")]
    Map {
        /// Map (static) name.
        name: &'static str,
        /// What was being done.
        op: &'static str,
        /// The aya error.
        #[source]
        source: MapError,
    },
}

/// The loaded datapath: maps created, programs verified and loaded (not
/// attached).
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Parses the embedded object, creates its maps and loads its programs
    /// into the kernel. Needs `CAP_BPF` (in practice: root).
    pub fn load() -> Result<Self, DatapathError> {
        let mut ebpf = Ebpf::load(BPF_OBJECT).map_err(|source| DatapathError::Object {
            path: env!("AXONEME_BPF_OBJECT"),
            source,
        })?;

        let program: &mut SchedClassifier = ebpf
            .program_mut(SMOKE_PROGRAM)
            .ok_or(DatapathError::ProgramNotFound {
                name: SMOKE_PROGRAM,
            })?
            .try_into()
            .map_err(|source| program_error(SMOKE_PROGRAM, "type check", source))?;
        program
            .load()
            .map_err(|source| program_error(SMOKE_PROGRAM, "load (verifier)", source))?;
        tracing::debug!(program = SMOKE_PROGRAM, "eBPF program loaded");

        Ok(Self { ebpf })
    }

    /// Runs `axoneme_smoke` once on `packet` (starting with its Ethernet
    /// header, at least 14 bytes) with `BPF_PROG_TEST_RUN` and returns the
    /// program's TC action (`TC_ACT_OK` = 0, `TC_ACT_SHOT` = 2).
    pub fn run_smoke(&self, packet: &[u8]) -> Result<i32, DatapathError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(SMOKE_PROGRAM)
            .ok_or(DatapathError::ProgramNotFound {
                name: SMOKE_PROGRAM,
            })?
            .try_into()
            .map_err(|source| program_error(SMOKE_PROGRAM, "type check", source))?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                ..TestRunOptions::new()
            })
            .map_err(|source| program_error(SMOKE_PROGRAM, "BPF_PROG_TEST_RUN", source))?;
        // The kernel reports the program's `int` return value as a u32.
        Ok(i32::from_ne_bytes(result.return_value.to_ne_bytes()))
    }

    /// Makes `axoneme_smoke` drop UDP/IPv4 packets to `port` (host order).
    pub fn deny_smoke_port(&mut self, port: u16) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(SMOKE_DENY_PORTS_MAP)
            .ok_or(DatapathError::MapNotFound {
                name: SMOKE_DENY_PORTS_MAP,
            })?;
        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(map)
            .map_err(|source| map_error(SMOKE_DENY_PORTS_MAP, "open", source))?;
        ports
            .insert(port, 1, 0)
            .map_err(|source| map_error(SMOKE_DENY_PORTS_MAP, "insert", source))
    }
}

fn program_error(name: &'static str, op: &'static str, source: ProgramError) -> DatapathError {
    DatapathError::Program { name, op, source }
}

fn map_error(name: &'static str, op: &'static str, source: MapError) -> DatapathError {
    DatapathError::Map { name, op, source }
}
