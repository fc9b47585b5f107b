//! Drives the datapath towards what the node's caches say, one sync unit
//! per map, all owned by one [`Driver`] (one writer per map):
//!
//! | unit | map | from |
//! |---|---|---|
//! | attach | programs on interfaces | local endpoints' interfaces |
//! | redirect | the proxy's fwmark rules, local table, TPROXY table | any policy with L7 rules (installed once, kept) |
//! | policy | `POLICY` trie | the engine's entries for local identities |
//! | ipcache | `IPCACHE` trie | every endpoint address + policy CIDRs |
//! | endpoints | `ENDPOINTS` (+ cache slot, `ENDPOINT_ADDRS`) | local endpoints with identity and policy in place |
//!
//! The driver owns ordering (attach and policy before endpoints: an
//! endpoint is declared only once its entries are written, and its
//! enforcement flags change after the entries they guard; the redirect
//! before policy: an entry that marks packets for the proxy is written
//! only once marked packets are delivered to it), per-unit error
//! counts and backoff (a failing unit is retried after 100 ms doubling to
//! 30 s; a unit that depends on it waits; the others go on), and
//! adoption: after a start or a failed pass a unit diffs the map whole
//! instead of trusting what it wrote, writing only what differs, so a
//! restarted agent opens no window and never touches unchanged entries
//! or conntrack.
//!
//! Everything here is synchronous and reads only the [`Desired`] state it
//! is given: no etcd call is ever awaited on the reconcile path. Writes go
//! through [`MapWriter`], with an in-memory [`fake::FakeMaps`] for tests.

mod desired;
mod endpoints;
pub mod fake;
mod ipcache;
mod policy;
mod task;
mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axoneme_identity::{LabelSet, NumericIdentity};
use axoneme_policy::compile::EnforcementMode;
use axoneme_policy::engine::{Delta, Engine};
use axoneme_policy::Policy;
use serde::Serialize;
use tracing::warn;

pub use desired::{Desired, LocalEndpoint};
pub use endpoints::{Attachments, Programmed};
pub use task::{run, DatapathView, Enforcement, Outputs, Regenerations, StateEvents};
pub use writer::{Kernel, MapWriter};

use crate::datapath::DatapathError;

/// What a pass of one unit changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub writes: usize,
    pub removals: usize,
}

/// The sync units, in the order a pass runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Attach,
    Redirect,
    Policy,
    Ipcache,
    Endpoints,
}

impl Unit {
    pub const ALL: [Unit; 5] = [
        Unit::Attach,
        Unit::Redirect,
        Unit::Policy,
        Unit::Ipcache,
        Unit::Endpoints,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Unit::Attach => "attach",
            Unit::Redirect => "redirect",
            Unit::Policy => "policy",
            Unit::Ipcache => "ipcache",
            Unit::Endpoints => "endpoints",
        }
    }
}

/// What happened to one unit in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Synced(Changes),
    Failed(String),
    /// In its backoff after a failure: not run.
    Backoff,
    /// Not run: the unit it depends on is not in sync.
    Waiting(Unit),
}

/// A unit's health across passes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnitHealth {
    /// Failures since the last success.
    pub consecutive_failures: u32,
    pub failures_total: u64,
    /// Map writes and removals, in all.
    pub changes_total: u64,
    pub last_error: Option<String>,
    /// Due again at (after a failure).
    #[serde(skip)]
    pub retry_at: Option<Instant>,
}

/// How long a unit (or an interface) waits after `failures` failures in a
/// row: 100 ms doubling, at most 30 s.
pub fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(9));
    Duration::from_millis(ms.min(30_000))
}

/// One pass.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub outcomes: Vec<(Unit, Outcome)>,
    /// When a failed unit or interface is due again.
    pub retry_at: Option<Instant>,
    pub timing: PassTiming,
}

/// Where a pass's time went (Cilium's endpoint regeneration scopes).
#[derive(Debug, Clone, Copy, Default)]
pub struct PassTiming {
    /// Feeding the engine what changed: the policy computed.
    pub policy_calculation: Duration,
    /// The sync units writing the maps (attach included).
    pub map_sync: Duration,
    pub total: Duration,
}

impl PassReport {
    /// Whether the pass wrote or removed anything: the datapath of some
    /// endpoints was regenerated.
    pub fn changed(&self) -> bool {
        self.outcomes.iter().any(|(_, o)| match o {
            Outcome::Synced(c) => c.writes + c.removals > 0,
            _ => false,
        })
    }

    pub fn ok(&self) -> bool {
        self.outcomes
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Synced(_)))
    }

    pub fn outcome(&self, unit: Unit) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, o)| o)
    }
}

/// The engine's inputs as last fed, to feed it only changes.
#[derive(Default)]
struct Fed {
    identities: BTreeMap<NumericIdentity, LabelSet>,
    policies: BTreeMap<String, Arc<Policy>>,
    /// Endpoint identities in the engine, with how many local endpoints
    /// have each.
    local_ids: BTreeMap<NumericIdentity, usize>,
    /// Endpoints' named ports, by endpoint key.
    named_ports: BTreeMap<String, (NumericIdentity, axoneme_identity::NamedPorts)>,
}

/// The one owner of the datapath's maps.
pub struct Driver<W> {
    w: W,
    engine: Engine,
    proxy_port: u16,
    fed: Fed,
    attach: Attachments,
    policy: policy::PolicyUnit,
    ipcache: ipcache::IpcacheUnit,
    endpoints: endpoints::EndpointsUnit,
    redirect: Redirect,
    /// Policy audit mode for every local endpoint (`--policy-audit-mode`).
    audit_all: bool,
    health: BTreeMap<Unit, UnitHealth>,
    passes: u64,
}

impl<W: MapWriter> Driver<W> {
    pub fn new(w: W, mode: EnforcementMode, proxy_port: u16) -> Self {
        Driver {
            w,
            engine: Engine::new(mode),
            proxy_port,
            fed: Fed::default(),
            attach: Attachments::default(),
            policy: policy::PolicyUnit::new(proxy_port),
            ipcache: ipcache::IpcacheUnit::default(),
            endpoints: endpoints::EndpointsUnit::default(),
            redirect: Redirect::default(),
            audit_all: false,
            health: Unit::ALL
                .into_iter()
                .map(|u| (u, UnitHealth::default()))
                .collect(),
            passes: 0,
        }
    }

    /// Puts every local endpoint in policy audit mode (or only those that
    /// ask for it).
    pub fn with_audit_mode(mut self, all: bool) -> Self {
        self.audit_all = all;
        self
    }

    pub fn writer(&self) -> &W {
        &self.w
    }

    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.w
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Local endpoints whose identity and policy are in the maps.
    pub fn programmed(&self) -> &BTreeMap<String, Programmed> {
        self.endpoints.programmed()
    }

    /// Local endpoints the endpoints map had no room for, with why.
    pub fn refused(&self) -> &BTreeMap<String, String> {
        self.endpoints.refused()
    }

    /// Interfaces with the programs attached.
    pub fn attached(&self) -> usize {
        self.attach.len()
    }

    pub fn health(&self) -> &BTreeMap<Unit, UnitHealth> {
        &self.health
    }

    /// Passes run so far.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// One pass towards `want` at time `now`.
    pub fn pass(&mut self, want: &Desired, now: Instant) -> PassReport {
        let started = Instant::now();
        self.passes += 1;
        let deltas = self.feed(want);
        let fed = Instant::now();
        let mut report = PassReport::default();

        // Attach: every interface on its own backoff; never skipped.
        let interfaces: BTreeSet<&str> = want
            .local
            .iter()
            .filter(|e| e.ifindex.is_none())
            .map(|e| e.interface.as_str())
            .collect();
        let attached = self.attach.sync(&interfaces, now, &mut self.w);
        let outcome = match attached.errors.first() {
            None => Outcome::Synced(attached.changes),
            Some((interface, error)) => Outcome::Failed(format!(
                "{} of {} interfaces not attached; {interface}: {error}",
                attached.errors.len(),
                interfaces.len()
            )),
        };
        self.record(Unit::Attach, &outcome, None);
        report.outcomes.push((Unit::Attach, outcome));

        // Redirect: installed when a policy first has L7 rules, before
        // any entry that sends packets to the proxy: a marked packet with
        // no rule delivering it locally is forwarded past the proxy (fail
        // open). Until then the node has no routing rule of its own, and
        // the kernel keeps its local and main tables merged (one lookup
        // per forwarded packet instead of two).
        let outcome = if !self.redirect.wanted || self.redirect.installed {
            Outcome::Synced(Changes::default())
        } else if self.due(Unit::Redirect, now) {
            let r = self.w.install_redirect().map(|()| Changes {
                writes: 1,
                removals: 0,
            });
            self.redirect.installed = r.is_ok();
            self.finish(Unit::Redirect, r, now)
        } else {
            Outcome::Backoff
        };
        let redirect_ok = matches!(outcome, Outcome::Synced(_));
        report.outcomes.push((Unit::Redirect, outcome));

        // Policy.
        let outcome = if !redirect_ok {
            // This pass's deltas are spent: diff the trie whole next time.
            self.policy.invalidate();
            Outcome::Waiting(Unit::Redirect)
        } else if self.due(Unit::Policy, now) {
            let r = self
                .policy
                .sync(&self.engine, &self.fed.local_ids, &deltas, &mut self.w);
            self.finish(Unit::Policy, r, now)
        } else {
            Outcome::Backoff
        };
        let policy_ok = matches!(outcome, Outcome::Synced(_));
        report.outcomes.push((Unit::Policy, outcome));

        // Ipcache: endpoint addresses and the policies' CIDRs.
        let outcome = if self.due(Unit::Ipcache, now) {
            let mut ipcache: BTreeMap<ipnet::IpNet, u32> =
                want.ipcache.iter().map(|(n, id)| (*n, id.0)).collect();
            for (net, id) in self.engine.cidr_identities() {
                ipcache.entry(net).or_insert(id.0);
            }
            let r = self.ipcache.sync(&ipcache, &mut self.w);
            self.finish(Unit::Ipcache, r, now)
        } else {
            Outcome::Backoff
        };
        report.outcomes.push((Unit::Ipcache, outcome));

        // Endpoints: after their policy entries.
        let outcome = if !policy_ok {
            Outcome::Waiting(Unit::Policy)
        } else if self.due(Unit::Endpoints, now) {
            let r = self.endpoints.sync(
                &want.local,
                self.audit_all,
                &self.attach,
                &self.engine,
                &self.fed.local_ids,
                &mut self.w,
            );
            self.finish(Unit::Endpoints, r, now)
        } else {
            Outcome::Backoff
        };
        report.outcomes.push((Unit::Endpoints, outcome));

        report.retry_at = self
            .health
            .values()
            .filter_map(|h| h.retry_at)
            .chain(attached.retry_at)
            .min();
        let done = Instant::now();
        report.timing = PassTiming {
            policy_calculation: fed - started,
            map_sync: done - fed,
            total: done - started,
        };
        report
    }

    /// Feeds the engine what changed since the last pass; its deltas.
    fn feed(&mut self, want: &Desired) -> Vec<Delta> {
        let fed = &mut self.fed;
        let mut deltas = Vec::new();
        for (id, labels) in &want.identities {
            if fed.identities.get(id) != Some(labels) {
                deltas.extend(self.engine.set_identity(*id, Some(labels.clone())));
                fed.identities.insert(*id, labels.clone());
            }
        }
        let gone: Vec<NumericIdentity> = fed
            .identities
            .keys()
            .filter(|id| !want.identities.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            deltas.extend(self.engine.set_identity(id, None));
            fed.identities.remove(&id);
        }
        for (key, policy) in &want.policies {
            // The same parse (one per revision) is unchanged at the cost
            // of a pointer compare; a new parse counts only if it differs.
            let unchanged = fed
                .policies
                .get(key)
                .is_some_and(|p| Arc::ptr_eq(p, policy) || p == policy);
            if !unchanged {
                if policy.rules.iter().any(|(_, r)| has_l7(r)) {
                    if self.proxy_port == 0 {
                        warn!(policy = %key, "L7 rules are enforced at L3/L4 only: this agent runs no L7 proxy (--proxy-port)");
                    } else {
                        self.redirect.wanted = true;
                    }
                }
                deltas.extend(self.engine.set_shared_policy(key, Some(policy.clone())));
                fed.policies.insert(key.clone(), policy.clone());
            }
        }
        let gone: Vec<String> = fed
            .policies
            .keys()
            .filter(|k| !want.policies.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            deltas.extend(self.engine.set_policy(&key, None));
            fed.policies.remove(&key);
        }
        for (key, ports) in &want.named_ports {
            if fed.named_ports.get(key) != Some(ports) {
                deltas.extend(self.engine.set_endpoint_ports(key, Some(ports.clone())));
                fed.named_ports.insert(key.clone(), ports.clone());
            }
        }
        let gone: Vec<String> = fed
            .named_ports
            .keys()
            .filter(|k| !want.named_ports.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            deltas.extend(self.engine.set_endpoint_ports(&key, None));
            fed.named_ports.remove(&key);
        }
        let mut local_ids: BTreeMap<NumericIdentity, usize> = BTreeMap::new();
        for ep in &want.local {
            if let Some(id) = ep.identity.filter(|id| fed.identities.contains_key(id)) {
                *local_ids.entry(id).or_default() += 1;
            }
        }
        for id in local_ids.keys() {
            if !fed.local_ids.contains_key(id) {
                deltas.extend(self.engine.add_endpoint(*id));
            }
        }
        for id in fed.local_ids.keys() {
            if !local_ids.contains_key(id) {
                deltas.extend(self.engine.remove_endpoint(*id));
            }
        }
        fed.local_ids = local_ids;
        deltas
    }

    fn due(&self, unit: Unit, now: Instant) -> bool {
        self.health[&unit].retry_at.is_none_or(|t| t <= now)
    }

    /// Records a unit's result; on failure the unit re-adopts its map next
    /// time and waits out its backoff.
    fn finish(
        &mut self,
        unit: Unit,
        result: Result<Changes, DatapathError>,
        now: Instant,
    ) -> Outcome {
        let outcome = match result {
            Ok(c) => Outcome::Synced(c),
            Err(e) => {
                match unit {
                    Unit::Policy => self.policy.invalidate(),
                    Unit::Ipcache => self.ipcache.invalidate(),
                    Unit::Endpoints => self.endpoints.invalidate(),
                    Unit::Attach | Unit::Redirect => {}
                }
                Outcome::Failed(crate::error_chain(&e))
            }
        };
        self.record(unit, &outcome, Some(now));
        outcome
    }

    fn record(&mut self, unit: Unit, outcome: &Outcome, now: Option<Instant>) {
        let h = self.health.get_mut(&unit).expect("every unit has health");
        match outcome {
            Outcome::Synced(c) => {
                h.consecutive_failures = 0;
                h.changes_total += (c.writes + c.removals) as u64;
                h.last_error = None;
                h.retry_at = None;
            }
            Outcome::Failed(e) => {
                h.consecutive_failures += 1;
                h.failures_total += 1;
                if h.last_error.as_ref() != Some(e) {
                    warn!(unit = unit.name(), error = %e, failures = h.consecutive_failures, "sync unit failed; keeping the last state and retrying after a backoff");
                }
                h.last_error = Some(e.clone());
                h.retry_at = now.map(|n| n + backoff(h.consecutive_failures));
            }
            Outcome::Backoff | Outcome::Waiting(_) => {}
        }
    }
}

/// The proxy's redirect plumbing: wanted once any policy has L7 rules,
/// and kept once installed (a later policy may need it again, and routing
/// rules once added leave the kernel's tables unmerged anyway).
#[derive(Debug, Default)]
struct Redirect {
    wanted: bool,
    installed: bool,
}

/// Whether `rule` has HTTP rules (ingress or egress).
fn has_l7(rule: &axoneme_policy::Rule) -> bool {
    [false, true]
        .into_iter()
        .flat_map(|egress| rule.allow_sections(egress))
        .any(|s| {
            s.to_ports
                .iter()
                .any(|p| p.rules.as_ref().is_some_and(|r| !r.http.is_empty()))
        })
}

#[cfg(test)]
mod tests;
