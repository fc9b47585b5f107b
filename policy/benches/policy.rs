//! Policy engine benchmark (`cargo xtask bench policy`), on one core:
//! - full computation: 10,000 identities and 1,000 rules (70% L3/L4, 20% L7,
//!   10% CIDR/entities), the policy of 100 local endpoints (a node's worth);
//! - incremental: one added identity, one changed policy (p50/p99);
//! - robustness: 100,000 mutated policy documents through the parser and
//!   validator (none may panic).
//!
//! Writes JSON to `$AXONEME_BENCH_OUT` (default target/bench/policy.json).
//!
//! Under `cargo test` (no `--bench` argument) it runs in its smoke form
//! instead: small counts, every check on, nothing written.

use std::time::{Duration, Instant};

use axoneme_e2e::bench::{pick, write_figures};

use axoneme_identity::{LabelSet, NumericIdentity, Source};
use axoneme_policy::compile::{compute, Direction};
use axoneme_policy::document::parse_documents;
use axoneme_policy::engine::Engine;
use axoneme_policy::EnforcementMode;

const IDENTITIES: u32 = 10_000;
const RULES: usize = 1_000;
const LOCAL_ENDPOINTS: u32 = 100;
const SAMPLES: usize = 200;
const FUZZ_INPUTS: usize = 100_000;
/// The smoke form's counts, in the same order.
const SMOKE: (u32, usize, u32, usize, usize) = (500, 100, 20, 20, 2_000);

fn identity_labels(i: u32) -> LabelSet {
    LabelSet::parse(
        [
            format!("app=app-{}", i % 500),
            format!("team=t{}", i % 50),
            format!("io.kubernetes.pod.namespace=ns-{}", i % 20),
        ],
        Source::K8s,
    )
    .expect("valid labels")
}

fn rule(r: usize, variant: usize) -> String {
    let subject = format!(
        "{{matchLabels: {{app: app-{}, io.kubernetes.pod.namespace: ns-{}}}}}",
        r % 500,
        r % 20
    );
    let port = 8000 + r % 100;
    let body = match r % 10 {
        0..=6 => format!(
            "  ingress:\n  - fromEndpoints: [{{matchLabels: {{team: t{}, io.kubernetes.pod.namespace: ns-{}}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n",
            (r + variant) % 50,
            r % 20
        ),
        7 | 8 => format!(
            "  ingress:\n  - fromEndpoints: [{{matchLabels: {{team: t{}}}}}]\n    toPorts:\n    - ports: [{{port: \"{port}\", protocol: TCP}}]\n      rules: {{http: [{{method: GET, path: \"/api/v{variant}/.*\"}}]}}\n",
            (r + variant) % 50
        ),
        _ => format!(
            "  egress:\n  - toCIDRSet: [{{cidr: 10.{}.0.0/16, except: [10.{}.1.0/24]}}]\n  - toEntities: [cluster, host]\n",
            (r + variant) % 256,
            (r + variant) % 256
        ),
    };
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: r{r}}}\nspec:\n  endpointSelector: {subject}\n{body}"
    )
}

/// The `per_mille`-th nearest-rank percentile, in milliseconds.
fn percentile(mut v: Vec<Duration>, per_mille: usize) -> f64 {
    v.sort();
    let rank = (v.len() - 1) * per_mille / 1000;
    v[rank].as_secs_f64() * 1000.0
}

/// A tiny deterministic generator (no dependency needed for this).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next()).expect("64-bit") % n
    }
}

/// Mutates policy text: deletions, duplications, and swaps of YAML-significant tokens.
fn mutate(rng: &mut Lcg, seed: &str) -> String {
    const TOKENS: &[&str] = &[
        ":",
        "-",
        "[",
        "]",
        "{",
        "}",
        "\"",
        "80800",
        "0",
        "-1",
        "tcp",
        "In",
        "moon",
        "/33",
        "fromEndpoints",
        "toPorts",
        "null",
        "~",
        "&a",
        "*a",
        "!!binary",
        "\n  ",
        "\t",
        "{}",
        "[]",
        "99999999999999999999",
        "é",
        "\u{0}",
    ];
    let mut s: Vec<char> = seed.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(s.len() + 1);
        match rng.below(3) {
            0 if !s.is_empty() => {
                let end = (at + rng.below(8)).min(s.len());
                s.drain(at.min(s.len())..end);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                for (i, c) in t.chars().enumerate() {
                    s.insert((at + i).min(s.len()), c);
                }
            }
            _ => {
                let from = rng.below(s.len().max(1));
                let len = rng.below(12).min(s.len() - from.min(s.len()));
                let chunk: Vec<char> = s[from.min(s.len())..from.min(s.len()) + len].to_vec();
                for (i, c) in chunk.into_iter().enumerate() {
                    s.insert((at + i).min(s.len()), c);
                }
            }
        }
    }
    s.into_iter().collect()
}

fn main() {
    let (identities, rules, local_endpoints, samples, fuzz_inputs) = pick(
        (IDENTITIES, RULES, LOCAL_ENDPOINTS, SAMPLES, FUZZ_INPUTS),
        SMOKE,
    );
    let mut engine = Engine::new(EnforcementMode::Default);
    for i in 0..identities {
        engine.set_identity(NumericIdentity(256 + i), Some(identity_labels(i)));
    }
    let policies: Vec<_> = (0..rules)
        .map(|r| {
            parse_documents(&rule(r, 0))
                .remove(0)
                .expect("generated policies are valid")
        })
        .collect();

    // Full computation: every policy, then every local endpoint.
    let started = Instant::now();
    for (r, p) in policies.iter().enumerate() {
        engine.set_policy(&format!("r{r}"), Some(p.clone()));
    }
    let mut entries = 0usize;
    for i in 0..local_endpoints {
        engine.add_endpoint(NumericIdentity(256 + i));
    }
    let full = started.elapsed();
    for i in 0..local_endpoints {
        let p = engine
            .endpoint_policy(NumericIdentity(256 + i))
            .expect("computed");
        entries += p.direction(Direction::Ingress).entries.len()
            + p.direction(Direction::Egress).entries.len();
    }

    // Incremental: one new identity each time (labels that rules name).
    let mut add_identity = Vec::with_capacity(samples);
    let mut deltas_identity = 0;
    for s in 0..samples {
        let id = NumericIdentity(256 + identities + u32::try_from(s).expect("small"));
        let labels = identity_labels(u32::try_from(s).expect("small") * 7);
        let t = Instant::now();
        deltas_identity += engine.set_identity(id, Some(labels)).len();
        add_identity.push(t.elapsed());
    }
    // Incremental: one changed policy each time (another peer team / L7 path / CIDR).
    let mut change_policy = Vec::with_capacity(samples);
    let mut deltas_policy = 0;
    for s in 0..samples {
        let r = (s * 37) % rules;
        let p = parse_documents(&rule(r, s + 1)).remove(0).expect("valid");
        let t = Instant::now();
        deltas_policy += engine.set_policy(&format!("r{r}"), Some(p)).len();
        change_policy.push(t.elapsed());
    }
    // What was measured is right: after all the incremental changes, every
    // local endpoint's policy equals a full computation from scratch.
    assert!(entries > 0, "the full computation gave no entries");
    let all = engine.policies();
    for i in 0..local_endpoints {
        let ep = NumericIdentity(256 + i);
        let labels = engine.identities().get(ep).expect("known identity");
        let ports = engine.identity_ports(ep);
        let want = compute(
            &all,
            engine.identities(),
            labels,
            ports,
            EnforcementMode::Default,
        );
        assert!(
            engine.endpoint_policy(ep) == Some(&want),
            "endpoint {ep}: the incremental policy differs from a full computation"
        );
    }

    // Robustness: mutated documents never panic the parser/validator.
    let seeds: Vec<String> = (0..20).map(|r| rule(r * 3, 0)).collect();
    let mut rng = Lcg(0x5eed);
    let fuzz_started = Instant::now();
    let mut rejected = 0usize;
    for _ in 0..fuzz_inputs {
        let seed = &seeds[rng.below(seeds.len())];
        let text = mutate(&mut rng, seed);
        rejected += parse_documents(&text)
            .iter()
            .filter(|r| r.is_err())
            .count()
            .min(1);
    }
    let fuzz = fuzz_started.elapsed();

    let result = serde_json::json!({
        "identities": identities,
        "rules": rules,
        "rule_mix": "70% L3/L4, 20% L7, 10% CIDR+entities",
        "local_endpoints": local_endpoints,
        "full_computation_ms": full.as_secs_f64() * 1000.0,
        "entries_total": entries,
        "cached_selectors": engine.identities().cached_selectors(),
        "incremental_add_identity_ms": {
            "p50": percentile(add_identity.clone(), 500),
            "p99": percentile(add_identity, 990),
            "deltas": deltas_identity,
        },
        "incremental_change_policy_ms": {
            "p50": percentile(change_policy.clone(), 500),
            "p99": percentile(change_policy, 990),
            "deltas": deltas_policy,
        },
        "fuzz": {"inputs": fuzz_inputs, "rejected": rejected, "panics": 0, "seconds": fuzz.as_secs_f64()},
    });
    println!(
        "policy: full {:.0} ms ({identities} identities x {rules} rules, {local_endpoints} endpoints, {entries} entries); \
         add identity p99 {:.3} ms; change policy p99 {:.3} ms; {fuzz_inputs} mutated documents, 0 panics",
        result["full_computation_ms"].as_f64().unwrap_or_default(),
        result["incremental_add_identity_ms"]["p99"].as_f64().unwrap_or_default(),
        result["incremental_change_policy_ms"]["p99"].as_f64().unwrap_or_default(),
    );
    write_figures("policy", &result).expect("writing the figures");
}
