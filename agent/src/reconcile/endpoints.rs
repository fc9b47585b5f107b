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
    /// Local endpoints by name, as of the last pass.
    programmed: BTreeMap<String, Programmed>,
    /// Local endpoints the map had no room for in the last pass, with why.
    refused: BTreeMap<String, String>,
}

impl EndpointsUnit {
    pub fn invalidate(&mut self) {
        self.have = None;
    }

    pub fn programmed(&self) -> &BTreeMap<String, Programmed> {
        &self.programmed
    }

    /// Endpoints left out of the map because it is full (they drop every
    /// packet: no endpoint, no verdict), with the error.
    pub fn refused(&self) -> &BTreeMap<String, String> {
        &self.refused
    }

    /// Fail-closed order: endpoints gone first (a full map gets room),
    /// then the ones whose entry changed, then the new ones. An endpoint
    /// the map has no room for is taken out (never left with an old
    /// identity or old flags), reported in [`Self::refused`], and the
    /// others go on; the pass then fails with the first such error, so
    /// the unit says so.
    pub fn sync(
        &mut self,
        local: &[LocalEndpoint],
        audit_all: bool,
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
        for ep in local {
            let Some(ifindex) = ep.ifindex.or_else(|| attached.ifindex(&ep.interface)) else {
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
            if audit_all || ep.policy_audit_mode {
                flags |= endpoint_flags::AUDIT;
            }
            let info = EndpointInfo::new(id.0, id.0, flags, &ep.addresses);
            let p = Programmed {
                interface: ep.interface.clone(),
                ifindex,
                info,
            };
            want.insert(ifindex, (ep.name.as_str(), p));
        }
        for ifindex in have.keys().filter(|i| !want.contains_key(i)) {
            w.remove_endpoint(*ifindex)?;
            changes.removals += 1;
        }
        let (changed, new): (Vec<_>, Vec<_>) = want
            .values()
            .partition(|(_, p)| have.contains_key(&p.ifindex));
        let mut refused = BTreeMap::new();
        let mut first_refusal = None;
        for (name, p) in changed.into_iter().chain(new) {
            if have.get(&p.ifindex) == Some(&p.info) {
                if adopting {
                    // Pins from before local delivery have no address entries.
                    w.set_endpoint_addresses(p.ifindex, &p.info)?;
                }
                continue;
            }
            match w.set_endpoint(p.ifindex, p.info) {
                Ok(()) => changes.writes += 1,
                Err(e) if e.is_full() => {
                    w.remove_endpoint(p.ifindex)?;
                    let error = crate::error_chain(&e);
                    warn!(endpoint = name, %error, "no room for the endpoint: it drops every packet until there is");
                    refused.insert(name.to_string(), error);
                    first_refusal.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        self.programmed = want
            .values()
            .filter(|(name, _)| !refused.contains_key(*name))
            .map(|(name, p)| (name.to_string(), p.clone()))
            .collect();
        self.refused = refused;
        match first_refusal {
            Some(e) => Err(e),
            None => {
                // Only a whole pass makes `want` the truth.
                self.have = Some(
                    want.into_values()
                        .map(|(_, p)| (p.ifindex, p.info))
                        .collect(),
                );
                Ok(changes)
            }
        }
    }
}
