//! The IPsec tests' VM and Axoneme's XFRM layer (`axoneme_ipsec::xfrm`).
//!
//! This machine's kernel has XFRM but neither ESP nor AES-GCM: here the
//! XFRM layer can add policies, and its refusal of a state names the
//! request and the kernel's reason. In the VM (Debian's cloud kernel under
//! qemu, `axoneme_e2e::vm`), one boot runs both: (1) hand-made ESP states
//! with `ip xfrm` between two namespaces — the kernel's own path, the
//! toolchain check; (2) this test binary, copied into the VM, runs
//! [`in_vm_axoneme_programs_esp_between_two_namespaces`]: the states and
//! policies programmed over netlink by the XFRM layer, with per-pair keys
//! derived from one `+` key of a key file; pings pass and each SA counts
//! them, and a pair whose keys do not match drops everything.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axoneme_e2e::netns::{run, Netns};
use axoneme_e2e::vm::Vm;
use axoneme_ipsec::keys::{derive_pair_key, parse, Key};
use axoneme_ipsec::xfrm::{Dir, Mode, PolicyId, PolicySpec, StateSpec, Xfrm};

const HAND_MADE: &str = r#"
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
PATH=/opt/bin:/bin /opt/bin/ipsec_vm --ignored --exact in_vm_axoneme_programs_esp_between_two_namespaces --nocapture
"#;

const KEY_FILE: &str = "3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n";
const BOOT_A: &str = "3f0b7c2e-5b1a-4a57-9d55-6a3c9a8f4e21";
const BOOT_B: &str = "b7d3c1a9-0e2f-4c6b-8a17-2f5e9d4c3b10";

/// Two namespaces `<prefix>a` (10.1.0.1) and `<prefix>b` (10.1.0.2) joined
/// by a veth.
fn pair(prefix: &str) -> Result<(Netns, Netns, IpAddr, IpAddr)> {
    let a = Netns::create(&format!("{prefix}a"))?;
    let b = Netns::create(&format!("{prefix}b"))?;
    run(&[
        "ip", "link", "add", "va", "netns", &a.name, "type", "veth", "peer", "name", "vb", "netns",
        &b.name,
    ])?;
    a.ip(&["addr", "add", "10.1.0.1/24", "dev", "va"])?;
    b.ip(&["addr", "add", "10.1.0.2/24", "dev", "vb"])?;
    a.ip(&["link", "set", "va", "up"])?;
    b.ip(&["link", "set", "vb", "up"])?;
    Ok((a, b, "10.1.0.1".parse()?, "10.1.0.2".parse()?))
}

/// The key of the pair `src` → `dst`, derived from the file's `+` key.
fn pair_key(global: &Key, src: IpAddr, dst: IpAddr, boots: (&str, &str)) -> Key {
    Key {
        key: derive_pair_key(&global.key, src, dst, boots.0, boots.1),
        ..global.clone()
    }
}

/// Programs, in `ns` (whose address is `me`), both directions' states and
/// its out and in policies towards `peer`.
fn program(ns: &Netns, me: IpAddr, peer: IpAddr, out: &Key, inbound: &Key) -> Result<()> {
    ns.enter(|| -> Result<()> {
        let mut x = Xfrm::open()?;
        for (src, dst, key) in [(me, peer, out), (peer, me, inbound)] {
            x.add_state(&StateSpec {
                src,
                dst,
                spi: u32::from(key.spi),
                reqid: 1,
                key,
                mode: Mode::Transport,
                mark: None,
            })?;
        }
        for (src, dst, dir) in [(me, peer, Dir::Out), (peer, me, Dir::In)] {
            x.add_policy(&PolicySpec {
                src: src.into(),
                dst: dst.into(),
                dir,
                tmpl_src: src,
                tmpl_dst: dst,
                reqid: 1,
                mode: Mode::Transport,
                mark: None,
                optional: false,
                priority: 0,
            })?;
        }
        Ok(())
    })?
}

fn pings(from: &Netns, to: &str) -> Result<bool> {
    Ok(from
        .command(&["ping", "-c", "3", "-W", "2", to])
        .output()?
        .status
        .success())
}

#[test]
#[ignore = "runs inside the IPsec VM: the_vm_kernel_encrypts_with_esp_whether_set_by_hand_or_by_axoneme boots it and runs this"]
fn in_vm_axoneme_programs_esp_between_two_namespaces() -> Result<()> {
    let global = parse(KEY_FILE)?.current().clone();
    ensure!(global.per_pair);
    let (a, b, ia, ib) = pair("ok")?;
    let ab = pair_key(&global, ia, ib, (BOOT_A, BOOT_B));
    let ba = pair_key(&global, ib, ia, (BOOT_B, BOOT_A));
    ensure!(ab.key != ba.key && ab.key != global.key, "per-pair keys");
    program(&a, ia, ib, &ab, &ba)?;
    program(&b, ib, ia, &ba, &ab)?;
    ensure!(
        pings(&a, "10.1.0.2")?,
        "no ping through Axoneme's ESP states"
    );
    for (ns, src, dst) in [(&a, "10.1.0.1", "10.1.0.2"), (&b, "10.1.0.2", "10.1.0.1")] {
        let out = ns.ip(&["-s", "xfrm", "state", "list", "src", src, "dst", dst])?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains("3(packets)"),
            "{} SA {src} -> {dst}:\n{text}",
            ns.name
        );
    }
    // One side derived its keys with another boot id: the keys differ,
    // and nothing passes (fail closed, never in clear).
    let (c, d, ic, id) = pair("bad")?;
    let cd = pair_key(&global, ic, id, (BOOT_A, BOOT_B));
    let dc = pair_key(&global, id, ic, (BOOT_B, BOOT_A));
    let stale = pair_key(
        &global,
        ic,
        id,
        (BOOT_A, "00000000-0000-0000-0000-000000000000"),
    );
    program(&c, ic, id, &cd, &dc)?;
    program(&d, id, ic, &dc, &stale)?;
    ensure!(
        !pings(&c, "10.1.0.2")?,
        "a ping passed with mismatched keys"
    );
    // Cleanup removes every state it added.
    a.enter(|| -> Result<()> {
        let mut x = Xfrm::open()?;
        x.delete_state(ib, 3, None)?;
        x.delete_state(ia, 3, None)?;
        Ok(())
    })??;
    let out = a.ip(&["xfrm", "state"])?;
    ensure!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!("AXONEME-XFRM-OK");
    Ok(())
}

#[test]
fn the_xfrm_layer_adds_policies_here_and_names_the_kernels_refusal_of_esp() -> Result<()> {
    let prefix = axoneme_e2e::run_prefix("xf");
    let (a, _b, ia, ib) = pair(&prefix)?;
    let key = parse(KEY_FILE)?.current().clone();
    let err = program(&a, ia, ib, &key, &key).unwrap_err();
    let chain = format!("{err:#}");
    ensure!(
        chain.contains("adding the XFRM state 10.1.0.1 -> 10.1.0.2 SPI 3"),
        "{chain}"
    );
    // Policies need no algorithm: this kernel takes them.
    a.enter(|| -> Result<()> {
        Xfrm::open()?.add_policy(&PolicySpec {
            src: ia.into(),
            dst: ib.into(),
            dir: Dir::Out,
            tmpl_src: ia,
            tmpl_dst: ib,
            reqid: 7,
            mode: Mode::Tunnel,
            mark: Some((0x0300, 0x0f00)),
            optional: false,
            priority: 0,
        })?;
        Ok(())
    })??;
    let out = a.ip(&["xfrm", "policy"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "src 10.1.0.1/32 dst 10.1.0.2/32",
        "dir out",
        "mark 0x300/0xf00",
        "tmpl src 10.1.0.1 dst 10.1.0.2",
        "proto esp reqid 7 mode tunnel",
    ] {
        ensure!(text.contains(want), "{want:?} missing:\n{text}");
    }
    // Listed as added; an update replaces it (another reqid now), and it
    // is still the one policy.
    a.enter(|| -> Result<()> {
        let mut x = Xfrm::open()?;
        let want = PolicyId {
            src: ia.into(),
            dst: ib.into(),
            dir: Dir::Out,
            mark: Some((0x0300, 0x0f00)),
            reqid: 7,
        };
        ensure!(x.policies()? == vec![want.clone()], "{:?}", x.policies()?);
        x.upsert_policy(&PolicySpec {
            src: ia.into(),
            dst: ib.into(),
            dir: Dir::Out,
            tmpl_src: ia,
            tmpl_dst: ib,
            reqid: 8,
            mode: Mode::Tunnel,
            mark: Some((0x0300, 0x0f00)),
            optional: false,
            priority: 0,
        })?;
        let updated = PolicyId { reqid: 8, ..want };
        ensure!(x.policies()? == vec![updated], "{:?}", x.policies()?);
        ensure!(x.states()?.is_empty());
        Ok(())
    })??;
    let out = a.ip(&["xfrm", "policy"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("reqid 8 mode tunnel"),
        "the update did not replace the policy: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Deleted, nothing is left; deleting again names what is missing.
    let again = a.enter(|| -> Result<String> {
        let mut x = Xfrm::open()?;
        x.delete_policy(ia.into(), ib.into(), Dir::Out, Some((0x0300, 0x0f00)))?;
        let err = x
            .delete_policy(ia.into(), ib.into(), Dir::Out, Some((0x0300, 0x0f00)))
            .unwrap_err();
        Ok(format!("{err:#}"))
    })??;
    ensure!(
        again.contains("deleting the XFRM policy 10.1.0.1/32 -> 10.1.0.2/32"),
        "{again}"
    );
    let out = a.ip(&["xfrm", "policy"])?;
    ensure!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn the_vm_kernel_encrypts_with_esp_whether_set_by_hand_or_by_axoneme() -> Result<()> {
    let dir = axoneme_e2e::vm::WorkDir::new("vm")?;
    let mut vm = Vm::new()?;
    for m in axoneme_e2e::vm::CLUSTER_MODULES {
        vm = vm.module(m);
    }
    let ip = std::fs::canonicalize("/usr/bin/ip").or_else(|_| std::fs::canonicalize("/bin/ip"))?;
    let me = std::env::current_exe().context("this test binary")?;
    let vm = vm.file(ip, "/opt/bin/ip").file(me, "/opt/bin/ipsec_vm");
    let run = vm.run(&dir, HAND_MADE, Duration::from_secs(180))?;
    eprintln!("VM: booted, ran and powered off in {:?}", run.took);
    ensure!(
        run.status == 0,
        "the script failed ({}):\n{}",
        run.status,
        run.console
    );
    ensure!(
        run.console.contains("3 packets received"),
        "no ping through hand-made ESP:\n{}",
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
    ensure!(
        run.console.contains("AXONEME-XFRM-OK"),
        "Axoneme's XFRM layer in the VM:\n{}",
        run.console
    );
    Ok(())
}
