//! The encryption task: transparent IPsec between nodes (Cilium's
//! "IPsec transparent encryption"). It owns the node's XFRM states and
//! policies (over netlink, `axoneme_ipsec::xfrm`), the datapath's
//! encryption maps (their one writer) and this node's part of the node
//! record (`NodeRecord::encryption`, through the node-record task), and
//! publishes its [`Status`] for the API, `axoneme encrypt status` and the
//! metrics.
//!
//! A pass ([`desired`] then [`sync::sync`]) runs when a node record
//! or this node's labels change, when the key file changes (read every
//! `--ipsec-key-poll`), when a replaced key's grace ends, and after a
//! failed pass (with a backoff).
//!
//! Keys: the file's keys (the last in use) plus the keys a change of the
//! file replaced, kept for `--ipsec-key-rotation-duration`. A file that no
//! longer parses changes nothing (the last good keys stay; the status and
//! the log say which line and field is wrong).

pub mod desired;
pub mod sync;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use axoneme_api::EncryptStatus as Status;
use axoneme_identity::{NodeEncryption, NodeLabels, NodeRecord, WatchCache};
use axoneme_ipsec::keys::{parse, Key, KeyFile};
use axoneme_ipsec::xfrm::Xfrm;
use ipnet::IpNet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::EncryptionConfig;
use crate::datapath::EncryptMaps;
use crate::netdev::Ns;
use desired::{desired, Me};

/// The `encryption` line in `status`.
/// What ESP in tunnel mode adds to a pod's packet, at most, with the keys
/// the key file allows (AES-GCM, 128-bit ICV): an outer IPv6 header 40,
/// ESP header 8, IV 8, padding 3, pad length and next header 2, ICV 16 —
/// 77, the figure Cilium uses (`EncryptionIPsecOverhead`).
pub const IPSEC_OVERHEAD: u32 = 77;

/// The MTU of pods' interfaces: with encryption on, the node device's
/// (Ethernet's 1,500 when unknown) less [`IPSEC_OVERHEAD`], so a full-size
/// packet still fits the device once encrypted instead of depending on
/// path-MTU discovery; without, the kernel's default.
pub fn pod_mtu(encryption: bool, device_mtu: Option<u32>) -> Option<u32> {
    encryption.then(|| device_mtu.unwrap_or(1500).saturating_sub(IPSEC_OVERHEAD))
}

pub fn component(st: &Status) -> axoneme_api::ComponentStatus {
    let (ok, message) = if !st.enabled {
        (true, "disabled".to_string())
    } else if !st.node_encrypts {
        (
            true,
            "IPsec on, but this node's labels do not match --encryption-node-selector: its pods' traffic is not encrypted".to_string(),
        )
    } else {
        let without: Vec<&str> = st
            .peers
            .iter()
            .filter(|(_, spi)| spi.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        let mut m = format!(
            "IPsec, SPI {}, {} nodes{}; {} states in, {} out, {} policies",
            st.spi.map_or("-".into(), |s| s.to_string()),
            st.peers.len(),
            if st.strict { " (strict)" } else { "" },
            st.states_in,
            st.states_out,
            st.policies
        );
        if !without.is_empty() {
            m.push_str(&format!("; no key in common with: {}", without.join(", ")));
        }
        if let Some(e) = &st.key_error {
            m.push_str(&format!("; {e}"));
        }
        if let Some(e) = st.errors.first() {
            m.push_str(&format!("; failing: {e}"));
        }
        (
            st.errors.is_empty() && st.key_error.is_none() && without.is_empty(),
            m,
        )
    };
    axoneme_api::ComponentStatus {
        name: "encryption".into(),
        ok,
        message,
    }
}

/// Removes every XFRM state and policy Axoneme added in `ns` and empties
/// the encryption maps (encryption turned off); how many XFRM entries went.
pub fn remove_all(ns: &Ns, maps: &mut EncryptMaps) -> anyhow::Result<usize> {
    let mut xfrm = ns.run(Xfrm::open)??;
    let before = xfrm.states()?.len() + xfrm.policies()?.len();
    let pass = sync::sync(&mut xfrm, maps, &desired::Desired::default());
    if let Some(e) = pass.errors.first() {
        anyhow::bail!("{e}");
    }
    Ok(before - (xfrm.states()?.len() + xfrm.policies()?.len()))
}

/// The key file's keys, or what is wrong with it (naming the file).
pub fn read_keys(path: &std::path::Path) -> Result<KeyFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--ipsec-key-file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("--ipsec-key-file {}: {e}", path.display()))
}

/// This boot's id (per pair keys change when a node reboots).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The kernel's XFRM error counters in `ns` that are not zero.
fn xfrm_errors(ns: &Ns) -> BTreeMap<String, u64> {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/xfrm_stat"))
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, value) = (it.next()?, it.next()?.parse::<u64>().ok()?);
            (value != 0).then(|| (name.to_string(), value))
        })
        .collect()
}

/// What the task works from.
pub struct Inputs {
    pub node: String,
    pub addresses: Vec<IpAddr>,
    pub config: EncryptionConfig,
    pub keys: KeyFile,
    pub boot_id: String,
    pub nodes: WatchCache<NodeRecord>,
    /// Kubernetes mode: the Node's labels, mirrored by the operator.
    pub node_labels: WatchCache<NodeLabels>,
    pub node_labels_key: String,
    /// This node's pod CIDRs (from the node-record task).
    pub pod_cidrs: watch::Receiver<Vec<IpNet>>,
    pub ns: Ns,
}

/// What the task publishes.
pub struct Outputs {
    pub status: watch::Sender<Status>,
    /// This node's part of its node record.
    pub announce: watch::Sender<Option<NodeEncryption>>,
}

/// The keys held: the file's, and replaced ones until their deadline.
struct Keys {
    file: Vec<Key>,
    retiring: Vec<(Key, Instant)>,
    grace: Duration,
}

impl Keys {
    /// Takes a new file: its keys, and the old ones it drops as retiring.
    fn replace(&mut self, new: Vec<Key>, now: Instant) {
        for old in self.file.drain(..) {
            if !new.iter().any(|k| k.spi == old.spi) {
                self.retiring.push((old, now + self.grace));
            }
        }
        self.retiring
            .retain(|(k, _)| !new.iter().any(|n| n.spi == k.spi));
        self.file = new;
    }

    /// Drops retiring keys past their deadline; whether any went.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.retiring.len();
        self.retiring.retain(|(_, until)| *until > now);
        before != self.retiring.len()
    }

    /// Every key held, the one in use last.
    fn held(&self) -> Vec<Key> {
        self.retiring
            .iter()
            .map(|(k, _)| k.clone())
            .chain(self.file.iter().cloned())
            .collect()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.retiring.iter().map(|(_, t)| *t).min()
    }
}

pub async fn run(
    mut maps: EncryptMaps,
    inputs: Inputs,
    out: Outputs,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Inputs {
        node,
        addresses,
        config,
        keys: initial,
        boot_id,
        nodes,
        node_labels,
        node_labels_key,
        mut pod_cidrs,
        ns,
    } = inputs;
    let mut xfrm = ns
        .run(Xfrm::open)
        .map_err(anyhow::Error::from)?
        .map_err(anyhow::Error::from)?;
    let mut keys = Keys {
        file: initial.keys,
        retiring: Vec::new(),
        grace: config.ipsec_key_rotation_duration,
    };
    let key_file = config.ipsec_key_file.clone();
    let mut last_text = key_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut key_error: Option<String> = None;
    // Decrypt indices, stable for a peer's address while it stays.
    let mut indices: BTreeMap<IpAddr, u16> = sync::EncryptWriter::nodes(&maps).unwrap_or_default();
    let mut node_changes = nodes.subscribe();
    let mut label_changes = node_labels.subscribe();
    let mut poll = tokio::time::interval(config.ipsec_key_poll);
    let mut failures = 0u32;
    loop {
        let now = Instant::now();
        keys.expire(now);
        let labels = crate::host::node_labels(&node_labels, &node_labels_key, &config.node_labels);
        let encrypts = config.selects(&labels);
        let held = keys.held();
        let cidrs = pod_cidrs.borrow().clone();
        let peers: Vec<NodeRecord> = nodes.snapshot().values().map(|n| (**n).clone()).collect();
        let want = if encrypts {
            let me = Me {
                name: &node,
                addresses: &addresses,
                pod_cidrs: &cidrs,
                boot_id: &boot_id,
                strict: config.ipsec_strict,
            };
            let live: Vec<IpAddr> = peers.iter().flat_map(|p| p.addresses.clone()).collect();
            indices.retain(|a, _| live.contains(a));
            let mut assign = |addr: IpAddr| {
                if let Some(i) = indices.get(&addr) {
                    return *i;
                }
                let next = (1..=u16::MAX)
                    .find(|i| !indices.values().any(|v| v == i))
                    .unwrap_or(u16::MAX);
                indices.insert(addr, next);
                next
            };
            desired(&me, &held, &peers, &mut assign)
        } else {
            desired::Desired::default()
        };
        let pass = sync::sync(&mut xfrm, &mut maps, &want);
        if pass.errors.is_empty() {
            failures = 0;
        } else {
            failures += 1;
            for e in &pass.errors {
                warn!(error = %e, failures, "encryption: a step failed; retrying after a backoff");
            }
        }
        // Announced once its inbound states are there: a key whose
        // inbound states the kernel refused (e.g. no ESP) is not accepted,
        // so no peer sends with it (in strict mode their pods' traffic is
        // dropped with "Traffic is unencrypted" instead).
        let announce = encrypts.then(|| NodeEncryption {
            boot_id: boot_id.clone(),
            spis: held
                .iter()
                .map(|k| k.spi)
                .filter(|spi| !pass.refused.contains(spi))
                .collect(),
        });
        out.announce.send_if_modified(|a| {
            let changed = *a != announce;
            *a = announce;
            changed
        });
        out.status.send_replace(Status {
            enabled: config.enable_ipsec,
            node_encrypts: encrypts,
            strict: config.ipsec_strict,
            spi: held.last().map(|k| k.spi),
            keys: held.iter().map(|k| k.spi).collect(),
            key_file: key_file.clone(),
            key_error: key_error.clone(),
            peers: want.peers.clone(),
            states_in: pass.states_in,
            states_out: pass.states_out,
            policies: pass.policies,
            errors: pass.errors,
            xfrm_errors: xfrm_errors(&ns),
        });

        let retry = async {
            if failures == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(crate::reconcile::backoff(failures)).await;
        };
        let deadline = keys.next_deadline();
        let grace_ends = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(retry, grace_ends);
        // Waits for something that changes the pass.
        loop {
            tokio::select! {
                _ = node_changes.recv() => break,
                _ = label_changes.recv() => break,
                _ = pod_cidrs.changed() => break,
                _ = &mut retry => break,
                _ = &mut grace_ends => break,
                _ = poll.tick() => {
                    // The kernel's counters move without a pass.
                    let errors = xfrm_errors(&ns);
                    out.status.send_if_modified(|st| {
                        let changed = st.xfrm_errors != errors;
                        st.xfrm_errors = errors;
                        changed
                    });
                    let Some(path) = &key_file else { continue };
                    let Ok(text) = std::fs::read_to_string(path) else { continue };
                    if text == last_text {
                        continue;
                    }
                    last_text = text;
                    match parse(&last_text) {
                        Ok(file) => {
                            info!(spi = file.current().spi, "encryption: new keys from the key file");
                            keys.replace(file.keys, Instant::now());
                            key_error = None;
                        }
                        Err(e) => {
                            let e = format!("--ipsec-key-file {}: {e}; keeping the last good keys", path.display());
                            warn!(error = %e, "encryption: the key file is not valid");
                            key_error = Some(e);
                        }
                    }
                    break;
                }
                _ = cancel.cancelled() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pods_leave_room_for_esp_only_with_encryption_on() {
        assert_eq!(super::pod_mtu(true, Some(1500)), Some(1423));
        assert_eq!(super::pod_mtu(true, Some(9000)), Some(8923));
        assert_eq!(super::pod_mtu(true, None), Some(1423));
        assert_eq!(super::pod_mtu(false, Some(1500)), None);
    }

    use super::*;

    fn key(spi: u8) -> Key {
        parse(&format!(
            "{spi} rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128\n"
        ))
        .unwrap()
        .keys
        .remove(0)
    }

    #[test]
    fn a_replaced_key_is_held_until_its_grace_ends() {
        let t0 = Instant::now();
        let mut keys = Keys {
            file: vec![key(3)],
            retiring: Vec::new(),
            grace: Duration::from_secs(60),
        };
        keys.replace(vec![key(4)], t0);
        let spis = |k: &Keys| k.held().iter().map(|k| k.spi).collect::<Vec<_>>();
        assert_eq!(spis(&keys), vec![3, 4], "the new key is last: in use");
        assert!(!keys.expire(t0 + Duration::from_secs(59)));
        assert!(keys.expire(t0 + Duration::from_secs(61)));
        assert_eq!(spis(&keys), vec![4]);
        // Rotating back to a retiring key takes it out of retirement.
        keys.replace(vec![key(5)], t0);
        keys.replace(vec![key(4)], t0);
        assert_eq!(spis(&keys), vec![5, 4]);
    }
}
