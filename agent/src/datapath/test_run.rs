//! Running the loaded programs on a packet with `BPF_PROG_TEST_RUN`: the
//! datapath's tests and benches (no interface, no traffic), with the
//! packet, `skb->mark` and the time per run as the kernel reports them.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};

use super::{program_error, Datapath, DatapathError};

impl Datapath {
    /// Runs program `name` once on `packet` (starting with its Ethernet
    /// header) with `BPF_PROG_TEST_RUN` and returns its TC action
    /// (`TC_ACT_OK` = 0, `TC_ACT_SHOT` = 2). The packet appears to come
    /// through the loopback device (ifindex 1).
    pub fn test_run(&self, name: &'static str, packet: &[u8]) -> Result<i32, DatapathError> {
        self.test_run_marked(name, packet, 0)
    }

    /// [`Self::test_run`] with `skb->mark` set to `mark` (the kernel takes
    /// a `__sk_buff` whose fields before `mark`, at offset 8, are zero).
    pub fn test_run_marked(
        &self,
        name: &'static str,
        packet: &[u8],
        mark: u32,
    ) -> Result<i32, DatapathError> {
        Ok(self.test_run_with(name, packet, mark, 1)?.0)
    }

    /// [`Self::test_run`], also returning the packet as the program left
    /// it.
    pub fn test_run_packet(
        &self,
        name: &'static str,
        packet: &[u8],
    ) -> Result<(i32, Vec<u8>), DatapathError> {
        self.test_run_marked_packet(name, packet, 0)
    }

    /// [`Self::test_run_packet`] with `skb->mark` set to `mark`.
    pub fn test_run_marked_packet(
        &self,
        name: &'static str,
        packet: &[u8],
        mark: u32,
    ) -> Result<(i32, Vec<u8>), DatapathError> {
        let (action, _, out, _) = self.test_run_with(name, packet, mark, 1)?;
        Ok((action, out))
    }

    /// [`Self::test_run`], also returning `skb->mark` as the program left
    /// it.
    pub fn test_run_mark_out(
        &self,
        name: &'static str,
        packet: &[u8],
    ) -> Result<(i32, u32), DatapathError> {
        self.test_run_mark_in_out(name, packet, 0)
    }

    /// [`Self::test_run_mark_out`] with `skb->mark` set to `mark`.
    pub fn test_run_mark_in_out(
        &self,
        name: &'static str,
        packet: &[u8],
        mark: u32,
    ) -> Result<(i32, u32), DatapathError> {
        let run = self.test_run_with(name, packet, mark, 1)?;
        Ok((run.0, run.3))
    }

    /// Runs program `name` `repeat` times on `packet` in one
    /// `BPF_PROG_TEST_RUN`; returns the last TC action and the kernel's mean
    /// time per run (program plus the test harness' per-run overhead).
    pub fn test_run_repeated(
        &self,
        name: &'static str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(i32, Duration), DatapathError> {
        let (action, duration, _, _) = self.test_run_with(name, packet, 0, repeat)?;
        Ok((action, duration))
    }

    /// The run: the last TC action, the mean time per run, the packet and
    /// `skb->mark` as the program left them.
    fn test_run_with(
        &self,
        name: &'static str,
        packet: &[u8],
        mark: u32,
        repeat: u32,
    ) -> Result<(i32, Duration, Vec<u8>, u32), DatapathError> {
        // A `__sk_buff` in and out (the kernel copies as much as there is
        // room for); `mark` is at offset 8, the fields before it zero.
        let mut ctx_in = [0u8; 192];
        ctx_in[8..12].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; 192];
        // Room for what a program may add (none of ours grows a packet).
        let mut out = vec![0u8; packet.len() + 256];
        let result = self
            .program(name)?
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat,
                ..TestRunOptions::new()
            })
            .map_err(|source| program_error(name, "BPF_PROG_TEST_RUN", source))?;
        out.truncate(result.data_size_out as usize);
        // The kernel reports the program's `int` return value as a u32.
        let action = i32::from_ne_bytes(result.return_value.to_ne_bytes());
        let mark_out = u32::from_ne_bytes(ctx_out[8..12].try_into().expect("4 bytes"));
        Ok((action, result.duration, out, mark_out))
    }
}
