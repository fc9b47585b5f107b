//! Shared by the datapath tests: loading the real eBPF object with its own
//! pin directory (removed on drop), and packet builders.
#![allow(dead_code)]

pub mod checked;

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use axoneme_agent::datapath::{Datapath, DatapathError, PIN_ROOT};
pub use axoneme_agent::datapath::{LoadOptions, MapSizes, PodLb};
pub use axoneme_agent::error_chain;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;

/// A loaded datapath whose pins live in a per-run directory under
/// `/sys/fs/bpf/axoneme/`, removed when dropped (kept with `AXONEME_KEEP`).
pub struct TestDatapath {
    pub dp: Datapath,
    dir: PathBuf,
}

impl TestDatapath {
    /// Where map `name` is pinned.
    pub fn pin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Deref for TestDatapath {
    type Target = Datapath;
    fn deref(&self) -> &Datapath {
        &self.dp
    }
}

impl DerefMut for TestDatapath {
    fn deref_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }
}

impl Drop for TestDatapath {
    fn drop(&mut self) {
        if !axoneme_e2e::keep() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Effective UID from /proc (no libc dependency needed).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Fails the test, with an explanation, unless it runs as root.
fn assert_root() {
    let euid = effective_uid();
    assert_eq!(
        euid,
        Some(0),
        "the datapath tests need root (CAP_BPF, CAP_NET_ADMIN) to load eBPF programs; \
         effective uid is {euid:?}. Run them as root (CI does); they do not skip."
    );
}

/// Loads the datapath with fresh pins, as the agent does by default.
/// Needs root; it does not skip (CI runs as root, and a silent skip would
/// hide a broken datapath).
pub fn load() -> TestDatapath {
    load_options(LoadOptions::default())
}

/// [`load`], with the per-packet LB at the pods' veths as `pod_lb` says.
#[allow(dead_code)]
pub fn load_with(pod_lb: PodLb) -> TestDatapath {
    load_options(LoadOptions {
        pod_lb,
        ..LoadOptions::default()
    })
}

/// [`load`] with `options`.
pub fn load_options(options: LoadOptions) -> TestDatapath {
    load_sized(&Default::default(), options)
}

/// [`load`] with small conntrack tables, for tests that empty them after
/// every flow: emptying walks the table with `BPF_MAP_GET_NEXT_KEY`, whose
/// cost grows with the table's size, not with its entries.
#[allow(dead_code)]
pub fn load_small_ct() -> TestDatapath {
    let sizes = MapSizes {
        ct: 1024,
        ..MapSizes::default()
    };
    load_sized(&sizes, LoadOptions::default())
}

/// [`load`] with maps of `sizes` and `options`.
pub fn load_sized(sizes: &MapSizes, options: LoadOptions) -> TestDatapath {
    assert_root();
    let dir = PathBuf::from(PIN_ROOT).join(axoneme_e2e::run_prefix("test"));
    match Datapath::load_with(&dir, sizes, options) {
        Ok(dp) => TestDatapath { dp, dir },
        Err(error) => {
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "loading the eBPF datapath failed (root? bpffs mounted at {PIN_ROOT}? \
                 `cargo xtask setup` mounts it):\n{}",
                error_chain(&error)
            )
        }
    }
}

/// The toolchain's smoke-test object (`bpf/programs/src/smoke.rs`, built
/// by `cargo xtask build-bpf`, located by `agent/build.rs`): only tests
/// and benches embed it; the agent's [`Datapath`] is the production object
/// alone.
pub static SMOKE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AXONEME_BPF_SMOKE_OBJECT"));
/// The smoke object's SCHED_CLS program: drops UDP/IPv4 packets to the
/// ports in its map, and packets too short for their headers.
pub const SMOKE_PROGRAM: &str = "axoneme_smoke";
/// ... and one that writes a packet byte directly (a program with the
/// verifier's unclone prologue).
pub const SMOKE_WRITE_PROGRAM: &str = "axoneme_smoke_write";

/// The smoke object, loaded: its program verified, its map (not pinned)
/// created. Needs root, as [`load`] does.
pub struct Smoke(pub aya::Ebpf);

impl Smoke {
    pub fn load() -> anyhow::Result<Self> {
        assert_root();
        let mut ebpf = aya::Ebpf::load(SMOKE_OBJECT)?;
        for name in [SMOKE_PROGRAM, SMOKE_WRITE_PROGRAM] {
            ebpf.program_mut(name)
                .ok_or_else(|| anyhow::anyhow!("{name} is not in the smoke object"))
                .and_then(|p| Ok(<&mut aya::programs::SchedClassifier>::try_from(p)?.load()?))?;
        }
        Ok(Self(ebpf))
    }

    /// The loaded program.
    pub fn program(&mut self) -> &mut aya::programs::SchedClassifier {
        self.0
            .program_mut(SMOKE_PROGRAM)
            .expect("loaded")
            .try_into()
            .expect("a SCHED_CLS program")
    }

    /// Runs the program once on `packet` (`BPF_PROG_TEST_RUN`); its TC
    /// action.
    pub fn run(&mut self, packet: &[u8]) -> anyhow::Result<i32> {
        Ok(self.run_repeated(packet, 1)?.0)
    }

    /// Runs the program `repeat` times on `packet` in one
    /// `BPF_PROG_TEST_RUN`, as `Datapath::test_run_repeated` does: the
    /// last TC action and the kernel's mean time per run.
    pub fn run_repeated(
        &mut self,
        packet: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(i32, std::time::Duration)> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; packet.len() + 256];
        let result = self.program().test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::new()
        })?;
        let action = i32::from_ne_bytes(result.return_value.to_ne_bytes());
        Ok((action, result.duration))
    }

    /// Makes the program drop UDP/IPv4 packets to `port` (host order).
    pub fn deny_port(&mut self, port: u16) -> anyhow::Result<()> {
        use axoneme_bpf_common::map_names::SMOKE_DENY_PORTS;
        let map = self
            .0
            .map_mut(SMOKE_DENY_PORTS)
            .ok_or_else(|| anyhow::anyhow!("{SMOKE_DENY_PORTS} is not in the smoke object"))?;
        aya::maps::HashMap::<_, u16, u8>::try_from(map)?.insert(port, 1, 0)?;
        Ok(())
    }
}

/// Runs `program` on `packet`, panicking with the error chain on failure.
pub fn run(dp: &Datapath, program: &'static str, packet: &[u8]) -> i32 {
    dp.test_run(program, packet)
        .unwrap_or_else(|error: DatapathError| panic!("{}", error_chain(&error)))
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut pkt = Vec::with_capacity(128);
    pkt.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    pkt.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    pkt.extend_from_slice(&ethertype.to_be_bytes());
    pkt
}

pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let sum: u32 = header
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    !u16::try_from(folded).expect("folded checksum fits in 16 bits")
}

/// Ethernet + IPv4 (no options) + `l4`. `frag` is the flags/offset field
/// (0x2000 = more fragments; low 13 bits = offset in 8-byte units).
pub fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8], frag: u16, id: u16) -> Vec<u8> {
    let total = u16::try_from(20 + l4.len()).expect("short packet");
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut pkt = ethernet(0x0800);
    pkt.extend_from_slice(&ip);
    pkt.extend_from_slice(l4);
    pkt
}

/// Ethernet + IPv6 + `payload` (which may start with extension headers;
/// `next` names the first).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&u16::try_from(payload.len()).expect("short").to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src);
    ip[24..40].copy_from_slice(&dst);
    let mut pkt = ethernet(0x86dd);
    pkt.extend_from_slice(&ip);
    pkt.extend_from_slice(payload);
    pkt
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&1024u16.to_be_bytes());
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(
        &u16::try_from(8 + payload.len())
            .expect("short")
            .to_be_bytes(),
    );
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// ICMP (v4 or v6) with type, code, identifier, and a body after the
/// 8-byte header.
pub fn icmp(ty: u8, code: u8, id: u16, body: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&1u16.to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// The IP header (and first 8 bytes after it) of an IPv4 packet, as an
/// ICMP error quotes it.
pub fn quote_v4(packet: &[u8]) -> Vec<u8> {
    packet[14..14 + 28].to_vec()
}
