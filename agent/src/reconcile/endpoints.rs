//! The attach and endpoints sync units.
//!
//! Attach: the programs onto every local endpoint's interface, each
//! interface retried on its own backoff when it fails (one bad interface
//! never holds the others back). Endpoints: each local endpoint whose
//! identity and policy are in place into the endpoints map (declaring it
//! enforced, with its enforcement flags and its addresses for local
//! delivery); endpoints that are gone out of it. This unit runs after the
//! policy unit, so an endpoint's entries are in the trie before the
//! endpoint is declared and enforcement flags change after the entries
//! they guard; removals fail closed (an entry removed before its flags
//! drop denies, never allows).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use axoneme_bpf_common::{endpoint_flags, EndpointInfo};
use axoneme_identity::NumericIdentity;
use axoneme_policy::compile::Direction;
use axoneme_policy::engine::Engine;
use tracing::{info, warn};

use super::desired::LocalEndpoint;
use super::writer::MapWriter;
use super::{backoff, Changes};
use crate::datapath::DatapathError;

/// A local endpoint in the endpoints map: enforced with its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    pub interface: String,
    pub ifindex: u32,
    pub info: EndpointInfo,
}

/// An interface that failed to attach.
#[derive(Debug, Clone)]
struct Failing {
    attempts: u32,
    retry_at: Instant,
    error: String,
}

/// The attach unit.
#[derive(Default)]
pub struct Attachments {
    attached: BTreeMap<String, u32>,
    failing: BTreeMap<String, Failing>,
}

/// One attach pass.
#[derive(Debug, Default)]
pub struct AttachReport {
    pub changes: Changes,
    /// Interfaces that failed, with why.
    pub errors: Vec<(String, String)>,
    /// When the earliest failed interface is due again.
    pub retry_at: Option<Instant>,
}

impl Attachments {
    /// The ifindex of an interface with the programs attached.
    pub fn ifindex(&self, interface: &str) -> Option<u32> {
        self.attached.get(interface).copied()
    }

    pub fn len(&self) -> usize {
        self.attached.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attached.is_empty()
    }

    /// Attaches to every interface of `want` not attached yet (a failed
    /// one once its backoff is over) and forgets the others.
    pub fn sync(
        &mut self,
        want: &BTreeSet<&str>,
        now: Instant,
        w: &mut impl MapWriter,
    ) -> AttachReport {
        let mut report = AttachReport::default();
        self.attached.retain(|i, _| want.contains(i.as_str()));
        self.failing.retain(|i, _| want.contains(i.as_str()));
        for interface in want {
            if self.attached.contains_key(*interface) {
                continue;
            }
            if let Some(f) = self.failing.get(*interface) {
                if f.retry_at > now {
                    report.errors.push((interface.to_string(), f.error.clone()));
                    continue;
                }
            }
            match w.attach(interface) {
                Ok(ifindex) => {
                    info!(%interface, ifindex, "datapath attached");
                    self.attached.insert(interface.to_string(), ifindex);
                    self.failing.remove(*interface);
                    report.changes.writes += 1;
                }
                Err(e) => {
                    let error = crate::error_chain(&e);
                    let attempts = self.failing.get(*interface).map_or(0, |f| f.attempts) + 1;
                    let retry_at = now + backoff(attempts);
                    warn!(%interface, %error, attempts, "cannot attach; retrying after a backoff");
                    self.failing.insert(
                        interface.to_string(),
                        Failing {
                            attempts,
                            retry_at,
                            error: error.clone(),
                        },
                    );
                    report.errors.push((interface.to_string(), error));
                }
            }
        }
        report.retry_at = self.failing.values().map(|f| f.retry_at).min();
        report
    }
}

/// The endpoints unit.
#[derive(Default)]
pub struct EndpointsUnit {
    /// What the endpoints map holds, when known.
    have: Option<BTreeMap<u32, EndpointInfo>>,
    /// Local endpoints by name, as of the last whole pass.
    programmed: BTreeMap<String, Programmed>,
}

impl EndpointsUnit {
    pub fn invalidate(&mut self) {
        self.have = None;
    }

    pub fn programmed(&self) -> &BTreeMap<String, Programmed> {
        &self.programmed
    }

    pub fn sync(
        &mut self,
        local: &[LocalEndpoint],
        attached: &Attachments,
        engine: &Engine,
        local_ids: &BTreeMap<NumericIdentity, usize>,
        w: &mut impl MapWriter,
    ) -> Result<Changes, DatapathError> {
        let adopting = self.have.is_none();
        let have = match self.have.take() {
            Some(h) => h,
            None => w.endpoints()?.into_iter().collect(),
        };
        let mut changes = Changes::default();
        let mut want = BTreeMap::new();
        let mut programmed = BTreeMap::new();
        for ep in local {
            let Some(ifindex) = attached.ifindex(&ep.interface) else {
                continue;
            };
            let Some(id) = ep.identity.filter(|id| local_ids.contains_key(id)) else {
                continue;
            };
            let mut flags = 0;
            if let Some(p) = engine.endpoint_policy(id) {
                if p.direction(Direction::Ingress).enforced {
                    flags |= endpoint_flags::INGRESS_ENFORCED;
                }
                if p.direction(Direction::Egress).enforced {
                    flags |= endpoint_flags::EGRESS_ENFORCED;
                }
            }
            let info = EndpointInfo::new(id.0, id.0, flags, &ep.addresses);
            want.insert(ifindex, info);
            programmed.insert(
                ep.name.clone(),
                Programmed {
                    interface: ep.interface.clone(),
                    ifindex,
                    info,
                },
            );
        }
        for (ifindex, info) in &want {
            if have.get(ifindex) != Some(info) {
                w.set_endpoint(*ifindex, *info)?;
                changes.writes += 1;
            } else if adopting {
                // Pins from before local delivery have no address entries.
                w.set_endpoint_addresses(*ifindex, info)?;
            }
        }
        for ifindex in have.keys().filter(|i| !want.contains_key(i)) {
            w.remove_endpoint(*ifindex)?;
            changes.removals += 1;
        }
        self.have = Some(want);
        self.programmed = programmed;
        Ok(changes)
    }
}
