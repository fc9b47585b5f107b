//! The IPsec tests' VM, as a toolchain smoke test (like the eBPF
//! toolchain's): Debian's cloud kernel boots under qemu with esp4 and
//! AES-GCM, and a pair of network namespaces inside it exchange pings
//! through hand-made ESP transport states (`rfc4106(gcm(aes))`, the only
//! algorithm Axoneme's key file takes) whose counters show every packet
//! went through them. This machine's own kernel has neither ESP nor
//! AES-GCM: the transparent encryption's tests run in this VM.

use std::time::Duration;

use anyhow::{ensure, Result};
use axoneme_e2e::vm::Vm;

const SCRIPT: &str = r#"
IP=/opt/bin/ip
$IP netns add a
$IP netns add b
$IP link add va netns a type veth peer name vb netns b
$IP -n a addr add 10.0.0.1/24 dev va
$IP -n b addr add 10.0.0.2/24 dev vb
$IP -n a link set va up
$IP -n b link set vb up
KEY=0x0123456789abcdef0123456789abcdef01234567
for ns in a b; do
  for dir in "10.0.0.1 10.0.0.2" "10.0.0.2 10.0.0.1"; do
    set -- $dir
    $IP -n $ns xfrm state add src $1 dst $2 proto esp spi 0x3 reqid 1 mode transport \
      aead 'rfc4106(gcm(aes))' $KEY 128
  done
done
$IP -n a xfrm policy add src 10.0.0.1 dst 10.0.0.2 dir out tmpl proto esp reqid 1 mode transport
$IP -n b xfrm policy add src 10.0.0.1 dst 10.0.0.2 dir in tmpl proto esp reqid 1 mode transport
$IP -n b xfrm policy add src 10.0.0.2 dst 10.0.0.1 dir out tmpl proto esp reqid 1 mode transport
$IP -n a xfrm policy add src 10.0.0.2 dst 10.0.0.1 dir in tmpl proto esp reqid 1 mode transport
$IP netns exec a ping -c 3 -W 2 10.0.0.2
echo "SA-COUNTS $($IP -n a -s xfrm state list src 10.0.0.1 dst 10.0.0.2 | grep -A1 'lifetime current' | tail -1)"
"#;

#[test]
fn the_vm_kernel_encrypts_with_esp_and_aes_gcm() -> Result<()> {
    let dir = std::env::temp_dir().join(axoneme_e2e::run_prefix("vm"));
    std::fs::create_dir_all(&dir)?;
    // The kernel asks for gcm's parts (ghash, ctr, aes, an RNG for
    // seqiv's IVs) by name at run time: each is a module of its own.
    let mut vm = Vm::new()?;
    for m in [
        "esp4",
        "xfrm_user",
        "gcm",
        "ghash-generic",
        "ctr",
        "aesni-intel",
        "seqiv",
        "drbg",
        "jitterentropy_rng",
        "veth",
    ] {
        vm = vm.module(m);
    }
    let vm = vm.file(
        std::fs::canonicalize("/usr/bin/ip").or_else(|_| std::fs::canonicalize("/bin/ip"))?,
        "/opt/bin/ip",
    );
    let run = vm.run(&dir, SCRIPT, Duration::from_secs(120))?;
    eprintln!("VM: booted, ran and powered off in {:?}", run.took);
    ensure!(
        run.status == 0,
        "the script failed ({}):\n{}",
        run.status,
        run.console
    );
    ensure!(
        run.console.contains("3 packets received"),
        "no ping through ESP:\n{}",
        run.console
    );
    // The outgoing SA counted the three requests.
    let counts = run
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix("SA-COUNTS"))
        .unwrap_or_default();
    ensure!(
        counts.contains("3(packets)"),
        "SA counters {counts:?}:\n{}",
        run.console
    );
    if !axoneme_e2e::keep() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
