//! The verdict corpus (tests/corpus/verdicts): policies with the verdicts
//! they must give for a handful of flows, each flow checked both with the
//! compiled policy-map entries and with the reference oracle, which must
//! agree with each other and with the expectation.
//!
//! Each file holds one or more policy documents (CNP, CCNP, NetworkPolicy);
//! all of them apply together. Comment lines carry the flows:
//!
//! ```text
//! # mode: default|always|never            (optional; default)
//! # ports: <pod> <name>=<proto>/<port>[,<name>=<proto>/<port>...]   (any number)
//! # flow: <src> -> <dst> <proto>/<port> [METHOD PATH [host=HOST] [Name=value]...] => <verdict>
//! ```
//!
//! `# ports:` gives a pod's named ports (its identity's: lines for two
//! pods of one identity add up, as the engine unions them).
//!
//! - `<src>`/`<dst>`: a pod as comma-separated labels (`app=web,env=prod`,
//!   source k8s; `ns=X` is short for `io.kubernetes.pod.namespace=X`, which
//!   defaults to `default`); or `reserved:<name>` (host, world, remote-node,
//!   ...); or `cidr:<prefix>`, the CIDR identity of a prefix the policies
//!   name; or `ip:<address>`, which the ipcache maps to the longest policy
//!   prefix containing it, else to `reserved:world`.
//! - `<proto>`: tcp, udp, sctp, icmp, icmpv6 (for ICMP the "port" is the type).
//! - A request (method, path, optional host, headers `Name=value`) is applied
//!   to the L7 rules of either side.
//! - `<verdict>`: `allow`; `deny` (dropped at L3/L4, no rule allows it:
//!   reason 133); `deny-181` (a deny rule matched); `deny-l7` (allowed at
//!   L4 but the proxy refuses the request); `redirect` (no request given:
//!   allowed at L4 and sent to the proxy).
//!
//! Every pod named in a flow or a `# ports:` line gets an identity (256,
//! 257, ... in order of appearance, flows first), beside the reserved identities and the node-local CIDR
//! identities of every prefix the policies name. A flow is checked at the
//! source's egress (`compute(src).egress.lookup(dst)`) and the destination's
//! ingress (`compute(dst).ingress.lookup(src)`): deny if either denies (the
//! egress reason first, as the oracle reports it), and a request must pass
//! the L7 rules of each side that redirects.

mod format;

use format::*;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use axoneme_identity::{LabelSet, NumericIdentity, ReservedIdentity, Source};
use axoneme_policy::compile::{
    add_cidr_identities, cidr_identities, compute, Decision, Direction, EnforcementMode,
};
use axoneme_policy::l7::HttpMatcher;
use axoneme_policy::oracle::{direction_verdict, verdict, OracleVerdict, Request};
use axoneme_policy::selector::Identities;
use axoneme_policy::{parse_documents, Policy, PolicyKind, PortNames};
use ipnet::IpNet;

/// What happens to a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Allow,
    /// Dropped with this reason.
    Deny(u8),
    /// The proxy refused the request.
    DenyL7,
    /// Sent to the proxy with these rules (as Debug strings).
    Redirect(BTreeSet<String>),
}

impl Outcome {
    fn is(&self, e: Expect) -> bool {
        matches!(
            (self, e),
            (Outcome::Allow, Expect::Allow)
                | (Outcome::Deny(133), Expect::Deny)
                | (Outcome::Deny(181), Expect::Deny181)
                | (Outcome::DenyL7, Expect::DenyL7)
                | (Outcome::Redirect(_), Expect::Redirect)
        )
    }
}

fn rule_set(rules: &[axoneme_policy::api::HttpRule]) -> BTreeSet<String> {
    rules.iter().map(|r| format!("{r:?}")).collect()
}

fn same(d: &Decision, o: &OracleVerdict) -> bool {
    match (d, o) {
        (Decision::Allow, OracleVerdict::Allow) => true,
        (Decision::Deny(r), OracleVerdict::Deny(c)) => r.code() == *c,
        (Decision::Redirect(a), OracleVerdict::Redirect(b)) => rule_set(a) == rule_set(b),
        _ => false,
    }
}

/// The compiled entries' answer for the whole flow.
fn compiled_outcome(egress: &Decision, ingress: &Decision, req: Option<&Request<'_>>) -> Outcome {
    for d in [egress, ingress] {
        if let Decision::Deny(r) = d {
            return Outcome::Deny(r.code());
        }
    }
    let mut rules = BTreeSet::new();
    for d in [egress, ingress] {
        if let Decision::Redirect(r) = d {
            // The proxy's compiled matcher; the oracle uses `http_allows`.
            if let Some(req) = req {
                let matcher = HttpMatcher::new(r).expect("validated regexes compile");
                if !matcher.allows(req) {
                    return Outcome::DenyL7;
                }
            }
            rules.extend(rule_set(r));
        }
    }
    if rules.is_empty() || req.is_some() {
        Outcome::Allow
    } else {
        Outcome::Redirect(rules)
    }
}

/// The oracle's answer for the whole flow. With a request, a denial is an
/// L7 one when the flow without the request is a redirect.
fn oracle_outcome(with_request: &OracleVerdict, without: &OracleVerdict) -> Outcome {
    match (without, with_request) {
        (OracleVerdict::Redirect(_), OracleVerdict::Deny(133)) => Outcome::DenyL7,
        (_, OracleVerdict::Allow) => Outcome::Allow,
        (_, OracleVerdict::Deny(c)) => Outcome::Deny(*c),
        (_, OracleVerdict::Redirect(r)) => Outcome::Redirect(rule_set(r)),
    }
}

struct Checked {
    policies: Vec<Policy>,
    flows: usize,
    failures: Vec<String>,
    mode: EnforcementMode,
    ids: Identities,
    /// `(protocol, port)` of every flow.
    l4: BTreeSet<(u8, u16)>,
}

/// Checks every flow of one corpus text.
fn check(name: &str, text: &str) -> Checked {
    let mut out = Checked {
        policies: Vec::new(),
        flows: 0,
        failures: Vec::new(),
        mode: EnforcementMode::Default,
        ids: Identities::default(),
        l4: BTreeSet::new(),
    };
    for r in parse_documents(text) {
        match r {
            Ok(p) => out.policies.push(p),
            Err(e) => out.failures.push(format!("{name}: invalid policy:\n{e}")),
        }
    }
    let mut mode = EnforcementMode::Default;
    let mut flows = Vec::new();
    let mut named: Vec<(LabelSet, PortNames)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(p) = line.strip_prefix("# ports:") {
            match parse_ports(p) {
                Ok(p) => named.push(p),
                Err(e) => out.failures.push(format!("{name}:{}: {e}", i + 1)),
            }
            continue;
        }
        if let Some(m) = line.strip_prefix("# mode:") {
            mode = match m.trim() {
                "default" => EnforcementMode::Default,
                "always" => EnforcementMode::Always,
                "never" => EnforcementMode::Never,
                other => {
                    out.failures
                        .push(format!("{name}:{}: unknown mode {other:?}", i + 1));
                    continue;
                }
            };
        } else if let Some(f) = line.strip_prefix("# flow:") {
            match parse_flow(i + 1, f) {
                Ok(f) => flows.push(f),
                Err(e) => out.failures.push(format!("{name}:{}: {e}", i + 1)),
            }
        }
    }
    out.mode = mode;
    out.l4 = flows.iter().map(|f| (f.proto, f.port)).collect();
    out.l4.extend(
        named
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, pr, port)| (pr, port))),
    );
    if !out.failures.is_empty() {
        return out;
    }
    let policies = &out.policies;

    // Identities: reserved, pods in order of appearance, CIDRs of policies.
    let mut ids = Identities::with_reserved();
    let mut pods: Vec<LabelSet> = Vec::new();
    for f in &flows {
        for p in [&f.src, &f.dst] {
            if let Peer::Pod(l) = p {
                if !pods.contains(l) {
                    pods.push(l.clone());
                }
            }
        }
    }
    for (l, _) in &named {
        if !pods.contains(l) {
            pods.push(l.clone());
        }
    }
    for (i, l) in pods.iter().enumerate() {
        let id = NumericIdentity(256 + u32::try_from(i).expect("few pods"));
        ids.insert(id, l.clone());
        let union: PortNames = named
            .iter()
            .filter(|(pod, _)| pod == l)
            .flat_map(|(_, p)| p.iter())
            .collect();
        ids.set_ports(id, union);
    }
    let cidrs = cidr_identities(policies);
    add_cidr_identities(&mut ids, &cidrs);
    let resolve = |p: &Peer| -> Result<NumericIdentity, String> {
        match p {
            Peer::Pod(l) => Ok(NumericIdentity(
                256 + u32::try_from(pods.iter().position(|x| x == l).expect("collected"))
                    .expect("few pods"),
            )),
            Peer::Reserved(id) => Ok(*id),
            Peer::Cidr(net) => cidrs
                .get(net)
                .copied()
                .ok_or_else(|| format!("no policy names {net}, so it has no CIDR identity")),
            Peer::Ip(ip) => Ok(cidrs
                .iter()
                .filter(|(net, _)| net.contains(ip))
                .max_by_key(|(net, _)| net.prefix_len())
                .map(|(_, id)| *id)
                .unwrap_or(ReservedIdentity::World.id())),
        }
    };

    for f in &flows {
        out.flows += 1;
        let at = format!("{name}:{}: {}", f.line, f.text);
        let (src, dst) = match (resolve(&f.src), resolve(&f.dst)) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => {
                out.failures.push(format!("{at}\n  {e}"));
                continue;
            }
        };
        let src_labels = ids.get(src).expect("known").clone();
        let dst_labels = ids.get(dst).expect("known").clone();
        let headers: Vec<(&str, &str)> = f
            .request
            .iter()
            .flat_map(|r| r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        let request = f.request.as_ref().map(|r| Request {
            method: &r.method,
            path: &r.path,
            host: &r.host,
            headers: &headers,
        });

        // Compiled entries, and each direction against the oracle.
        let egress = compute(policies, &ids, &src_labels, ids.ports(src), mode)
            .egress
            .lookup(dst, f.proto, f.port);
        let ingress = compute(policies, &ids, &dst_labels, ids.ports(dst), mode)
            .ingress
            .lookup(src, f.proto, f.port);
        let oracle_egress = direction_verdict(
            policies,
            &ids,
            &src_labels,
            ids.ports(src),
            Direction::Egress,
            dst,
            f.proto,
            f.port,
            mode,
        );
        let oracle_ingress = direction_verdict(
            policies,
            &ids,
            &dst_labels,
            ids.ports(dst),
            Direction::Ingress,
            src,
            f.proto,
            f.port,
            mode,
        );
        for (dir, d, o) in [
            ("egress at the source", &egress, &oracle_egress),
            ("ingress at the destination", &ingress, &oracle_ingress),
        ] {
            if !same(d, o) {
                out.failures.push(format!(
                    "{at}\n  DISAGREEMENT {dir}: compiled {d:?}, oracle {o:?}"
                ));
            }
        }

        let compiled = compiled_outcome(&egress, &ingress, request.as_ref());
        let with_request = verdict(
            policies,
            &ids,
            (src, &src_labels),
            (dst, &dst_labels),
            f.proto,
            f.port,
            request.as_ref(),
            mode,
        );
        let without = verdict(
            policies,
            &ids,
            (src, &src_labels),
            (dst, &dst_labels),
            f.proto,
            f.port,
            None,
            mode,
        );
        let oracle = oracle_outcome(&with_request, &without);
        if compiled != oracle {
            out.failures.push(format!(
                "{at}\n  DISAGREEMENT: compiled {compiled:?} (egress {egress:?}, ingress {ingress:?}), \
                 oracle {oracle:?}"
            ));
        }
        for (who, o) in [("compiled", &compiled), ("oracle", &oracle)] {
            if !o.is(f.expect) {
                out.failures.push(format!(
                    "{at}\n  {who}: {o:?}, expected {:?} (egress {egress:?}, ingress {ingress:?})",
                    f.expect
                ));
            }
        }
    }
    out.ids = ids;
    out
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/verdicts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_verdicts_hold_compiled_and_in_the_oracle() {
    let files = corpus();
    assert!(files.len() >= 30, "at least 30 policy files");
    let mut failures = Vec::new();
    let (mut flows, mut policies) = (0, 0);
    let mut kinds = BTreeSet::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(file).unwrap();
        let c = check(&name, &text);
        if c.flows < 3 && c.failures.is_empty() {
            failures.push(format!("{name}: only {} flows (want 3 or more)", c.flows));
        }
        flows += c.flows;
        policies += c.policies.len();
        kinds.extend(c.policies.iter().map(|p| p.kind.as_str()));
        failures.extend(c.failures);
    }
    eprintln!(
        "verdict corpus: {} files, {policies} policies, {flows} flows",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for k in [
        PolicyKind::CiliumNetworkPolicy,
        PolicyKind::CiliumClusterwideNetworkPolicy,
        PolicyKind::NetworkPolicy,
    ] {
        assert!(
            kinds.contains(k.as_str()),
            "no {} in the corpus",
            k.as_str()
        );
    }
}

/// Beyond the listed flows: for every identity of each file as the subject,
/// both directions, every peer and every protocol, at the ports the flows
/// use and their neighbours, the compiled entries agree with the oracle.
#[test]
fn corpus_policies_compile_like_the_oracle_everywhere() {
    let mut failures = Vec::new();
    let mut lookups = 0usize;
    for file in corpus() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let c = check(&name, &std::fs::read_to_string(&file).unwrap());
        let mut ports: BTreeSet<u16> = [1, 80, 443, 65535].into();
        for &(_, p) in &c.l4 {
            ports.extend([p.saturating_sub(1), p, p.saturating_add(1)]);
        }
        ports.remove(&0);
        for (subject, labels) in c.ids.iter() {
            let own = c.ids.ports(subject);
            let compiled = compute(&c.policies, &c.ids, labels, own, c.mode);
            for dir in [Direction::Ingress, Direction::Egress] {
                for (peer, _) in c.ids.iter() {
                    for proto in [1u8, 6, 17, 58, 132] {
                        for &port in &ports {
                            if matches!(proto, 1 | 58) && port > 255 {
                                continue;
                            }
                            lookups += 1;
                            let got = compiled.direction(dir).lookup(peer, proto, port);
                            let want = direction_verdict(
                                &c.policies,
                                &c.ids,
                                labels,
                                own,
                                dir,
                                peer,
                                proto,
                                port,
                                c.mode,
                            );
                            if !same(&got, &want) {
                                failures.push(format!(
                                    "{name}: subject {subject} {dir:?} peer {peer} {proto}/{port}: \
                                     compiled {got:?}, oracle {want:?}"
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!("sweep: {lookups} lookups");
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The corpus exercises every feature it claims to (a cheap guard against
/// a feature's files being dropped).
#[test]
fn corpus_covers_every_feature() {
    let text: String = corpus()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "matchLabels",
        "operator: In,",
        "operator: NotIn",
        "operator: Exists",
        "operator: DoesNotExist",
        "io.kubernetes.pod.namespace",
        "io.cilium.k8s.policy.serviceaccount",
        "io.cilium.k8s.namespace.labels.team",
        "ingressDeny:",
        "egressDeny:",
        "fromRequires:",
        "toRequires:",
        "fromEntities: [world]",
        "fromEntities: [cluster]",
        "toEntities: [host",
        "fromEntities: [all]",
        "remote-node",
        "kube-apiserver",
        "world-ipv4",
        "fromCIDR:",
        "toCIDR:",
        "fromCIDRSet:",
        "toCIDRSet:",
        "except:",
        "port: \"",
        "port: 443",
        "endPort:",
        "protocol: TCP",
        "protocol: UDP",
        "protocol: SCTP",
        "protocol: ANY",
        "icmps:",
        "family: IPv6",
        "EchoRequest",
        "method:",
        "path:",
        "host:",
        "headers:",
        "headerMatches:",
        "enableDefaultDeny:",
        "specs:",
        "kind: CiliumClusterwideNetworkPolicy",
        "kind: NetworkPolicy",
        "namespaceSelector: {}",
        "namespaceSelector:",
        "ipBlock:",
        "policyTypes:",
        "# mode: always",
        "# mode: never",
        "=> deny-181",
        "=> deny-l7",
        "=> redirect",
        "=> allow",
        "=> deny\n",
        " ip:",
        " cidr:",
        "icmpv6/",
        "sctp/",
        "udp/",
    ] {
        assert!(text.contains(needle), "no file uses {needle:?}");
    }
}

/// The seed policy, from the shared test data unchanged: checkout may POST
/// /v1/charge to payments and nothing else; others are dropped at L3/L4.
#[test]
fn seed_policy_verdicts() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/seed-payments-policy.yaml");
    let text = std::fs::read_to_string(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
    let flows = "
# flow: app=checkout -> app=payments tcp/8080 POST /v1/charge => allow
# flow: app=checkout -> app=payments tcp/8080 GET /v1/charge => deny-l7
# flow: app=checkout -> app=payments tcp/8080 POST /v1/refund => deny-l7
# flow: app=checkout -> app=payments tcp/8080 POST /v1/charge/x => deny-l7
# flow: app=checkout -> app=payments tcp/8080 => redirect
# flow: app=intruder -> app=payments tcp/8080 => deny
# flow: app=intruder -> app=payments tcp/8080 POST /v1/charge => deny
# flow: app=checkout -> app=payments tcp/8081 => deny
# flow: app=checkout -> app=payments udp/8080 => deny
# flow: app=checkout,ns=other -> app=payments tcp/8080 => deny
# flow: reserved:world -> app=payments tcp/8080 => deny
# flow: app=payments -> app=checkout tcp/443 => allow
";
    let c = check("seed-payments-policy.yaml", &format!("{text}\n{flows}"));
    assert_eq!(c.policies.len(), 1);
    assert_eq!(c.flows, 12);
    assert!(c.failures.is_empty(), "{}", c.failures.join("\n"));
}

#[test]
fn flow_lines_parse_strictly() {
    assert!(parse_flow(1, "a=b -> c=d tcp/80 => allow").is_ok());
    assert!(parse_flow(1, "a=b -> c=d tcp/80 GET / host=x X-A=1 => deny-l7").is_ok());
    for bad in [
        "a=b c=d tcp/80 => allow",
        "a=b -> c=d tcp/80 => maybe",
        "a=b -> c=d tcp/80",
        "a=b -> c=d gre/1 => allow",
        "a=b -> c=d tcp/80 GET => allow",
        "a=b -> c=d tcp/80 GET / => redirect",
        "a=b -> c=d tcp/80 => deny-l7",
        "reserved:moon -> c=d tcp/80 => allow",
    ] {
        assert!(parse_flow(1, bad).is_err(), "{bad}");
    }
}

/// The checker itself: every wrong expectation is caught, by both sides.
#[test]
fn wrong_expectations_fail() {
    let policy = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: \"80\", protocol: TCP}]
      rules: {http: [{method: GET}]}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: bad}}]
";
    let wrong = [
        "app=web -> app=api tcp/80 GET / => deny-l7",
        "app=web -> app=api tcp/80 POST / => allow",
        "app=web -> app=api tcp/80 => allow",
        "app=web -> app=api tcp/81 => allow",
        "app=web -> app=api tcp/81 => deny-181",
        "app=bad -> app=api tcp/80 => deny",
        "app=other -> app=web tcp/80 => deny",
        "app=other -> app=web tcp/80 => redirect",
        "app=web -> app=api tcp/80 POST / => deny",
        "app=bad -> app=api tcp/80 GET / => deny-l7",
    ];
    for flow in wrong {
        let c = check("self-test", &format!("# flow: {flow}\n{policy}"));
        assert_eq!(c.flows, 1, "{flow}");
        // One failure from the compiled entries, one from the oracle.
        assert_eq!(c.failures.len(), 2, "{flow}: {:#?}", c.failures);
    }
    let c = check(
        "self-test",
        &format!("# flow: app=web -> app=api tcp/80 => redirect\n{policy}"),
    );
    assert!(c.failures.is_empty(), "{:#?}", c.failures);
    let c = check(
        "self-test",
        &format!("# flow: app=web -> cidr:10.0.0.0/8 tcp/80 => allow\n{policy}"),
    );
    assert!(
        c.failures[0].contains("no policy names 10.0.0.0/8"),
        "{:#?}",
        c.failures
    );
}
