//! The driver against the in-memory maps: ordering, adoption after a
//! restart, per-unit failures and backoff, without a kernel.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axoneme_bpf_common::{endpoint_flags, IpcacheValue};
use axoneme_identity::{LabelSet, NumericIdentity, Source};
use axoneme_policy::compile::EnforcementMode;

use super::fake::{FakeMaps, Op};
use super::*;

const WEB: u32 = 1000;
const CLIENT: u32 = 2000;
const WEB_IF: u32 = 10;
const CLIENT_IF: u32 = 11;

fn labels(app: &str) -> LabelSet {
    LabelSet::parse([format!("app={app}")], Source::K8s).unwrap()
}

/// Lets app=client reach app=web on TCP 80.
const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: web
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: \"80\"
        protocol: TCP
";

fn endpoint(name: &str, id: u32, ip: &str) -> LocalEndpoint {
    LocalEndpoint {
        name: name.into(),
        interface: format!("veth-{name}"),
        identity: Some(NumericIdentity(id)),
        addresses: vec![ip.parse().unwrap()],
        policy_audit_mode: false,
        ifindex: None,
    }
}

/// web and client, both local; the policy when `policy`.
fn desired(policy: bool) -> Desired {
    let mut want = Desired::default();
    want.identities.insert(NumericIdentity(WEB), labels("web"));
    want.identities
        .insert(NumericIdentity(CLIENT), labels("client"));
    if policy {
        let p = axoneme_policy::parse_documents(POLICY)
            .pop()
            .unwrap()
            .unwrap();
        want.policies
            .insert("policies/web".into(), std::sync::Arc::new(p));
    }
    want.local = vec![
        endpoint("web", WEB, "10.0.0.1"),
        endpoint("client", CLIENT, "10.0.0.2"),
    ];
    for (ip, id) in [("10.0.0.1/32", WEB), ("10.0.0.2/32", CLIENT)] {
        want.ipcache
            .insert(ip.parse().unwrap(), NumericIdentity(id));
    }
    want
}

fn fake() -> FakeMaps {
    let mut f = FakeMaps::default();
    f.add_interface("veth-web", WEB_IF);
    f.add_interface("veth-client", CLIENT_IF);
    f
}

fn driver(w: FakeMaps) -> Driver<FakeMaps> {
    Driver::new(w, EnforcementMode::Default, 0)
}

/// The position in `log` of the first op `pred` matches.
fn pos(log: &[Op], pred: impl Fn(&Op) -> bool) -> Option<usize> {
    log.iter().position(pred)
}

fn last_pos(log: &[Op], pred: impl Fn(&Op) -> bool) -> Option<usize> {
    log.iter().rposition(pred)
}

fn set_endpoint(ifindex: u32) -> impl Fn(&Op) -> bool {
    move |op| matches!(op, Op::SetEndpoint { ifindex: i, .. } if *i == ifindex)
}

fn policy_of(endpoint: u32) -> impl Fn(&Op) -> bool {
    move |op| matches!(op, Op::SetPolicy { endpoint: e, .. } | Op::RemovePolicy { endpoint: e, .. } if *e == endpoint)
}

#[test]
fn an_endpoint_is_declared_after_it_is_attached_and_its_entries_are_written() {
    let mut d = driver(fake());
    let report = d.pass(&desired(true), Instant::now());
    assert!(report.ok(), "{report:?}");
    let log = d.writer_mut().take_log();
    let attach = pos(&log, |op| *op == Op::Attach("veth-web".into())).unwrap();
    let entries = last_pos(&log, policy_of(WEB)).expect("web has entries");
    let declared = pos(&log, set_endpoint(WEB_IF)).unwrap();
    assert!(attach < declared && entries < declared, "{log:?}");
    assert_eq!(
        d.writer().endpoints[&WEB_IF].flags,
        endpoint_flags::INGRESS_ENFORCED
    );
    assert_eq!(d.writer().ipcache.len(), 2);
    assert_eq!(
        d.programmed().keys().collect::<Vec<_>>(),
        vec!["client", "web"]
    );
}

#[test]
fn audit_mode_is_a_flag_of_the_endpoints_that_ask_or_of_all() {
    use endpoint_flags::{AUDIT, INGRESS_ENFORCED};
    let mut d = driver(fake());
    let mut want = desired(true);
    want.local[0].policy_audit_mode = true;
    assert!(d.pass(&want, Instant::now()).ok());
    let flags = |d: &Driver<FakeMaps>, i| d.writer().endpoints[&i].flags;
    assert_eq!(flags(&d, WEB_IF), INGRESS_ENFORCED | AUDIT);
    assert_eq!(flags(&d, CLIENT_IF), 0);
    // Off again: only the flags change, no entry is rewritten.
    want.local[0].policy_audit_mode = false;
    d.writer_mut().take_log();
    assert!(d.pass(&want, Instant::now()).ok());
    assert_eq!(flags(&d, WEB_IF), INGRESS_ENFORCED);
    let log = d.writer_mut().take_log();
    assert!(pos(&log, policy_of(WEB)).is_none(), "{log:?}");
    // The agent's --policy-audit-mode: every endpoint.
    let mut d = driver(fake()).with_audit_mode(true);
    assert!(d.pass(&desired(true), Instant::now()).ok());
    assert_eq!(flags(&d, WEB_IF), INGRESS_ENFORCED | AUDIT);
    assert_eq!(flags(&d, CLIENT_IF), AUDIT);
}

#[test]
fn enforcement_flags_change_after_the_entries_they_guard() {
    let mut d = driver(fake());
    d.pass(&desired(false), Instant::now());
    assert_eq!(d.writer().endpoints[&WEB_IF].flags, 0);
    d.writer_mut().take_log();
    // A policy comes: web's entries, then its flags.
    d.pass(&desired(true), Instant::now());
    let log = d.writer_mut().take_log();
    let entries = last_pos(&log, policy_of(WEB)).expect("entries written");
    let flags = pos(&log, set_endpoint(WEB_IF)).expect("flags written");
    assert!(entries < flags, "{log:?}");
    // It goes: entries removed while the flags still enforce (a moment of
    // denying, never of allowing), then the flags.
    d.pass(&desired(false), Instant::now());
    let log = d.writer_mut().take_log();
    let removed = last_pos(&log, policy_of(WEB)).expect("entries removed");
    let flags = pos(&log, set_endpoint(WEB_IF)).expect("flags cleared");
    assert!(removed < flags, "{log:?}");
    assert_eq!(d.writer().endpoints[&WEB_IF].flags, 0);
    assert!(d.writer().policy.keys().all(|(_, k)| k.endpoint_id != WEB));
}

#[test]
fn a_restarted_agent_adopts_the_maps_and_rewrites_nothing_unchanged() {
    let mut first = driver(fake());
    first.pass(&desired(true), Instant::now());
    let mut maps = std::mem::take(first.writer_mut());
    maps.take_log();
    // Leftovers of a state the new run no longer wants.
    let stale: ipnet::IpNet = "10.9.9.9/32".parse().unwrap();
    maps.ipcache.insert(stale, IpcacheValue::default());
    let stale_key = maps.policy.keys().next().copied().unwrap();
    let mut bogus = stale_key;
    bogus.1.endpoint_id = 4242;
    maps.policy.insert(bogus, maps.policy[&stale_key]);
    maps.endpoints.insert(99, maps.endpoints[&WEB_IF]);
    let entries = maps.policy.len();

    let mut second = driver(maps);
    let report = second.pass(&desired(true), Instant::now());
    assert!(report.ok(), "{report:?}");
    let log = second.writer_mut().take_log();
    // Programs re-attached (replacing the old ones), address entries
    // checked, leftovers removed: nothing unchanged was written.
    let unexpected: Vec<&Op> = log
        .iter()
        .filter(|op| {
            !matches!(op, Op::Attach(_) | Op::SetEndpointAddresses(_))
                && **op != Op::RemoveIpcache(stale)
                && **op
                    != (Op::RemovePolicy {
                        endpoint: 4242,
                        prefix: bogus.0,
                        deny: false,
                    })
                && **op != Op::RemoveEndpoint(99)
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?} in {log:?}");
    assert_eq!(log.len(), 2 + 2 + 3, "{log:?}");
    assert_eq!(second.writer().policy.len(), entries - 1);
    // The next pass writes nothing at all.
    second.pass(&desired(true), Instant::now());
    assert_eq!(second.writer_mut().take_log(), vec![]);
}

#[test]
fn a_failing_unit_backs_off_while_the_others_go_on() {
    let mut maps = fake();
    maps.failing = vec!["set_ipcache"];
    let mut d = driver(maps);
    let t0 = Instant::now();
    let r = d.pass(&desired(true), t0);
    assert!(matches!(r.outcome(Unit::Ipcache), Some(Outcome::Failed(_))));
    assert!(matches!(r.outcome(Unit::Policy), Some(Outcome::Synced(_))));
    assert!(matches!(
        r.outcome(Unit::Endpoints),
        Some(Outcome::Synced(_))
    ));
    assert_eq!(r.retry_at, Some(t0 + Duration::from_millis(100)));
    assert_eq!(d.health()[&Unit::Ipcache].consecutive_failures, 1);
    // Within its backoff it is not run.
    let r = d.pass(&desired(true), t0 + Duration::from_millis(50));
    assert_eq!(r.outcome(Unit::Ipcache), Some(&Outcome::Backoff));
    // Failing again: the backoff doubles.
    let t1 = t0 + Duration::from_millis(150);
    let r = d.pass(&desired(true), t1);
    assert!(matches!(r.outcome(Unit::Ipcache), Some(Outcome::Failed(_))));
    assert_eq!(r.retry_at, Some(t1 + Duration::from_millis(200)));
    let h = &d.health()[&Unit::Ipcache];
    assert_eq!((h.consecutive_failures, h.failures_total), (2, 2));
    assert!(h.last_error.as_deref().unwrap().contains("set_ipcache"));
    // Mended: in sync at its next turn, the error cleared.
    d.writer_mut().failing.clear();
    let r = d.pass(&desired(true), t1 + Duration::from_millis(200));
    assert!(r.ok(), "{r:?}");
    assert_eq!(d.writer().ipcache.len(), 2);
    assert_eq!(d.health()[&Unit::Ipcache].consecutive_failures, 0);
    assert_eq!(r.retry_at, None);
}

#[test]
fn endpoints_wait_for_their_policy_entries() {
    let mut maps = fake();
    maps.failing = vec!["set_policy"];
    let mut d = driver(maps);
    let t0 = Instant::now();
    let r = d.pass(&desired(true), t0);
    assert!(matches!(r.outcome(Unit::Policy), Some(Outcome::Failed(_))));
    assert_eq!(
        r.outcome(Unit::Endpoints),
        Some(&Outcome::Waiting(Unit::Policy))
    );
    assert!(d.writer().endpoints.is_empty());
    assert!(d.programmed().is_empty(), "no pod is reported enforced");
    d.writer_mut().failing.clear();
    d.writer_mut().take_log();
    let r = d.pass(&desired(true), t0 + Duration::from_secs(1));
    assert!(r.ok(), "{r:?}");
    let log = d.writer_mut().take_log();
    assert!(last_pos(&log, policy_of(WEB)).unwrap() < pos(&log, set_endpoint(WEB_IF)).unwrap());
    assert_eq!(d.programmed().len(), 2);
}

#[test]
fn deltas_lost_to_a_failure_are_recovered_by_adoption() {
    let mut d = driver(fake());
    let t0 = Instant::now();
    d.pass(&desired(false), t0);
    // The policy's entries fail to be written: the engine has moved on,
    // its deltas are spent.
    d.writer_mut().failing = vec!["set_policy"];
    d.pass(&desired(true), t0);
    d.writer_mut().failing.clear();
    let r = d.pass(&desired(true), t0 + Duration::from_secs(1));
    assert!(r.ok(), "{r:?}");
    // The trie holds exactly what a driver starting from scratch writes.
    let mut fresh = driver(fake());
    fresh.pass(&desired(true), t0);
    let keys = |m: &FakeMaps| {
        let mut k: Vec<_> = m.policy.iter().map(|(k, v)| (*k, v.flags)).collect();
        k.sort_by_key(|((p, key), _)| (*p, key.endpoint_id, key.identity, key.dport));
        k
    };
    assert_eq!(keys(d.writer()), keys(fresh.writer()));
    assert_eq!(d.writer().endpoints, fresh.writer().endpoints);
}

#[test]
fn an_interface_that_cannot_attach_does_not_hold_back_the_others() {
    let mut maps = FakeMaps::default();
    maps.add_interface("veth-web", WEB_IF);
    let mut d = driver(maps);
    let t0 = Instant::now();
    let r = d.pass(&desired(true), t0);
    match r.outcome(Unit::Attach) {
        Some(Outcome::Failed(e)) => assert!(e.contains("veth-client"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.programmed().keys().collect::<Vec<_>>(), vec!["web"]);
    assert_eq!(r.retry_at, Some(t0 + Duration::from_millis(100)));
    // The interface appears; it is tried again after its backoff.
    d.writer_mut().add_interface("veth-client", CLIENT_IF);
    d.pass(&desired(true), t0 + Duration::from_millis(50));
    assert_eq!(d.programmed().len(), 1);
    let r = d.pass(&desired(true), t0 + Duration::from_millis(100));
    assert!(r.ok(), "{r:?}");
    assert_eq!(d.programmed().len(), 2);
    assert_eq!(d.attached(), 2);
}

#[test]
fn a_removed_endpoint_leaves_the_map_but_its_interface_is_not_detached() {
    let mut d = driver(fake());
    d.pass(&desired(true), Instant::now());
    d.writer_mut().take_log();
    let mut want = desired(true);
    want.local.retain(|e| e.name != "client");
    d.pass(&want, Instant::now());
    let log = d.writer_mut().take_log();
    assert!(log.contains(&Op::RemoveEndpoint(CLIENT_IF)), "{log:?}");
    assert!(!d.writer().endpoints.contains_key(&CLIENT_IF));
    assert_eq!(d.attached(), 1);
    // Back again: attached anew.
    d.pass(&desired(true), Instant::now());
    let log = d.writer_mut().take_log();
    assert!(log.contains(&Op::Attach("veth-client".into())), "{log:?}");
}

#[test]
fn backoff_doubles_from_100_ms_to_30_s() {
    let ms: Vec<u128> = [1, 2, 3, 9, 10, 11, 40]
        .map(|n| backoff(n).as_millis())
        .into();
    assert_eq!(ms, vec![100, 200, 400, 25_600, 30_000, 30_000, 30_000]);
}

#[test]
fn the_maps_hold_the_right_identities() {
    let mut d = driver(fake());
    d.pass(&desired(true), Instant::now());
    let m = d.writer();
    let ids: BTreeMap<String, u32> = m
        .ipcache
        .iter()
        .map(|(n, v)| (n.to_string(), v.identity))
        .collect();
    assert_eq!(ids["10.0.0.1/32"], WEB);
    assert_eq!(m.endpoints[&CLIENT_IF].identity, CLIENT);
    assert_eq!(m.endpoints[&WEB_IF].identity, WEB);
}

/// web: everything from client but TCP 22 (a deny beside the allow).
fn with_deny() -> Desired {
    let client = serde_json::json!([{ "matchLabels": { "app": "client" } }]);
    let object = serde_json::json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": { "name": "web" },
        "spec": {
            "endpointSelector": { "matchLabels": { "app": "web" } },
            "ingress": [{ "fromEndpoints": client }],
            "ingressDeny": [{
                "fromEndpoints": client,
                "toPorts": [{ "ports": [{ "port": "22", "protocol": "TCP" }] }],
            }],
        },
    });
    let p = axoneme_policy::parse_object(&object, "web").unwrap();
    let mut want = desired(false);
    want.policies
        .insert("policies/web".into(), std::sync::Arc::new(p));
    want
}

/// web's entries in the trie: (denies, allows).
fn web_entries(m: &FakeMaps) -> (usize, usize) {
    let web = m.policy.iter().filter(|((_, k), _)| k.endpoint_id == WEB);
    let denies = web
        .clone()
        .filter(|(_, v)| v.flags & axoneme_bpf_common::policy_flags::DENY != 0)
        .count();
    (denies, web.count() - denies)
}

#[test]
fn a_full_trie_never_holds_an_allow_without_its_denies() {
    // Room for nothing new, then for one entry more, then enough.
    let mut maps = fake();
    maps.policy_max = Some(0);
    let mut d = driver(maps);
    let t0 = Instant::now();
    let r = d.pass(&with_deny(), t0);
    assert!(
        matches!(r.outcome(Unit::Policy), Some(Outcome::Failed(_))),
        "{r:?}"
    );
    assert_eq!(web_entries(d.writer()), (0, 0));
    // Not declared: web's packets meet no endpoint and are dropped (152).
    assert!(!d.writer().endpoints.contains_key(&WEB_IF));
    let (denies, allows) = {
        let mut fresh = driver(fake());
        fresh.pass(&with_deny(), t0);
        web_entries(fresh.writer())
    };
    assert!(denies > 0 && allows > 0);
    for room in 1..denies + allows {
        d.writer_mut().policy_max = Some(room);
        d.pass(&with_deny(), t0 + Duration::from_secs(60 * room as u64));
        let (d_in, a_in) = web_entries(d.writer());
        assert!(
            a_in == 0 || d_in == denies,
            "room {room}: {d_in} denies, {a_in} allows"
        );
    }
    d.writer_mut().policy_max = None;
    let r = d.pass(&with_deny(), t0 + Duration::from_secs(3600));
    assert!(r.ok(), "{r:?}");
    assert_eq!(web_entries(d.writer()), (denies, allows));
}

#[test]
fn a_pass_sets_denies_first_and_removes_them_last() {
    let mut d = driver(fake());
    let t0 = Instant::now();
    d.pass(&desired(true), t0);
    d.writer_mut().take_log();
    // From client:80 to everything but 22, and back: the deltas path.
    for (want, what) in [(with_deny(), "added"), (desired(true), "removed")] {
        let r = d.pass(&want, t0);
        assert!(r.ok(), "{r:?}");
        let log = d.writer_mut().take_log();
        let set =
            |deny: bool| move |op: &Op| matches!(op, Op::SetPolicy { deny: x, .. } if *x == deny);
        let removed = |deny: bool| move |op: &Op| matches!(op, Op::RemovePolicy { deny: x, .. } if *x == deny);
        if let (Some(deny), Some(allow)) = (last_pos(&log, set(true)), pos(&log, set(false))) {
            assert!(deny < allow, "deny {what} after an allow: {log:?}");
        }
        if let (Some(allow), Some(deny)) =
            (last_pos(&log, removed(false)), pos(&log, removed(true)))
        {
            assert!(allow < deny, "deny {what} before an allow went: {log:?}");
        }
        if let (Some(deny), Some(allow)) = (last_pos(&log, removed(true)), pos(&log, set(false))) {
            assert!(
                deny < allow,
                "{what}: an allow set before the denies went: {log:?}"
            );
        }
        assert!(
            pos(&log, set(true)).or(pos(&log, removed(true))).is_some(),
            "{what}: no deny written: {log:?}"
        );
    }
}

#[test]
fn a_full_endpoints_map_refuses_a_newcomer_until_a_leaver_makes_room() {
    let mut maps = fake();
    maps.endpoints_max = Some(1);
    let mut d = driver(maps);
    let t0 = Instant::now();
    let r = d.pass(&desired(true), t0);
    // client (ifindex 11) comes after web (10): no room.
    match r.outcome(Unit::Endpoints) {
        Some(Outcome::Failed(e)) => {
            assert!(
                e.contains("ENDPOINTS") && e.contains("--bpf-endpoints-max"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(d.programmed().keys().collect::<Vec<_>>(), vec!["web"]);
    assert_eq!(d.refused().keys().collect::<Vec<_>>(), vec!["client"]);
    assert!(!d.writer().endpoints.contains_key(&CLIENT_IF));

    // web leaves: its room goes to client in the same pass.
    let mut want = desired(true);
    want.local.retain(|e| e.name == "client");
    d.writer_mut().take_log();
    let r = d.pass(&want, t0 + Duration::from_secs(1));
    assert!(r.ok(), "{r:?}");
    let log = d.writer_mut().take_log();
    assert!(
        pos(&log, |o| *o == Op::RemoveEndpoint(WEB_IF)).unwrap()
            < pos(&log, set_endpoint(CLIENT_IF)).unwrap(),
        "{log:?}"
    );
    assert_eq!(d.programmed().keys().collect::<Vec<_>>(), vec!["client"]);
    assert!(d.refused().is_empty());
}

#[test]
fn an_endpoint_whose_new_entry_finds_no_room_is_taken_out_not_left_as_it_was() {
    let mut d = driver(fake());
    let t0 = Instant::now();
    assert!(d.pass(&desired(false), t0).ok());
    assert_eq!(d.writer().endpoints[&WEB_IF].flags, 0);
    // The policy arrives, but rewriting web's entry fails for want of room
    // (say its addresses' map is full): web is taken out, never left
    // unenforced.
    d.writer_mut().endpoints_max = Some(0);
    let r = d.pass(&desired(true), t0);
    assert!(
        matches!(r.outcome(Unit::Endpoints), Some(Outcome::Failed(_))),
        "{r:?}"
    );
    // client's entry is unchanged (the policy selects only web): it stays.
    let left: Vec<_> = d.writer().endpoints.keys().copied().collect();
    assert_eq!(left, vec![CLIENT_IF]);
    assert_eq!(d.programmed().keys().collect::<Vec<_>>(), vec!["client"]);
    assert_eq!(d.refused().keys().collect::<Vec<_>>(), vec!["web"]);
}

#[test]
fn a_pass_that_writes_says_so_and_where_its_time_went() {
    let mut d = driver(fake());
    let t0 = Instant::now();
    let r = d.pass(&desired(true), t0);
    assert!(r.changed(), "{r:?}");
    let t = r.timing;
    assert!(t.total >= t.policy_calculation + t.map_sync, "{t:?}");
    assert!(t.map_sync > Duration::ZERO, "{t:?}");
    // Nothing changed since: not a regeneration.
    let r = d.pass(&desired(true), t0);
    assert!(r.ok() && !r.changed(), "{r:?}");
}

/// The host firewall: the node's host endpoint (identity 1, the node's
/// labels) is programmed at its device's ifindex without attaching the
/// pods' programs there; host policies select it by the node's labels.
#[test]
fn the_host_endpoint_is_selected_by_node_labels_and_programmed_at_its_device() {
    const DEVICE_IF: u32 = 3;
    const HOST_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: dev
spec:
  nodeSelector:
    matchLabels:
      env: dev
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports:
      - port: \"22\"
        protocol: TCP
";
    let host = |env: &str| {
        let labels = [("env".to_string(), env.to_string())].into();
        crate::host::identity_labels(axoneme_identity::ReservedIdentity::Host, &labels)
    };
    let mut want = desired(true);
    let p = axoneme_policy::parse_documents(HOST_POLICY)
        .pop()
        .unwrap()
        .unwrap();
    want.policies
        .insert("policies/dev".into(), std::sync::Arc::new(p));
    want.identities.insert(NumericIdentity(1), host("prod"));
    want.local.push(LocalEndpoint {
        name: crate::host::NAME.into(),
        interface: "eth0".into(),
        identity: Some(NumericIdentity(1)),
        addresses: vec!["192.168.0.1".parse().unwrap()],
        policy_audit_mode: false,
        ifindex: Some(DEVICE_IF),
    });
    let mut d = driver(fake());
    assert!(d.pass(&want, Instant::now()).ok());
    let log = d.writer_mut().take_log();
    assert!(
        pos(&log, |op| *op == Op::Attach("eth0".into())).is_none(),
        "{log:?}"
    );
    let ep = d.writer().endpoints[&DEVICE_IF];
    assert_eq!((ep.identity, ep.flags), (1, 0), "a prod node: not selected");
    assert!(pos(&log, policy_of(1)).is_none(), "{log:?}");
    // The node is labelled dev: its ingress is enforced, SSH allowed.
    want.identities.insert(NumericIdentity(1), host("dev"));
    assert!(d.pass(&want, Instant::now()).ok());
    assert_eq!(
        d.writer().endpoints[&DEVICE_IF].flags,
        endpoint_flags::INGRESS_ENFORCED
    );
    let log = d.writer_mut().take_log();
    let entries = last_pos(&log, policy_of(1)).expect("the host's entries");
    assert!(entries < pos(&log, set_endpoint(DEVICE_IF)).unwrap());
    // The pods' endpoints are untouched by the host policy.
    assert!(pos(&log, policy_of(WEB)).is_none(), "{log:?}");
}

/// [`POLICY`] with an HTTP rule on its port: app=client may only GET
/// from app=web, through the proxy.
fn l7_policy() -> String {
    POLICY.replace("name: web\n", "name: web-l7\n")
        + "      rules:\n        http:\n        - method: GET\n"
}

fn with_l7(mut want: Desired) -> Desired {
    let p = axoneme_policy::parse_documents(&l7_policy())
        .pop()
        .unwrap()
        .unwrap();
    want.policies
        .insert("policies/web-l7".into(), std::sync::Arc::new(p));
    want
}

fn redirect_entry(m: &FakeMaps) -> bool {
    m.policy.values().any(|v| v.proxy_port != 0)
}

#[test]
fn the_redirect_is_installed_when_a_policy_first_has_l7_rules_and_before_its_entries() {
    const PROXY: u16 = 15001;
    let mut d = Driver::new(fake(), EnforcementMode::Default, PROXY);
    let t0 = Instant::now();
    // No L7 rule: no plumbing (the node keeps no routing rule of its own).
    let r = d.pass(&desired(true), t0);
    assert!(r.ok(), "{r:?}");
    assert!(!d.writer_mut().take_log().contains(&Op::InstallRedirect));
    // The plumbing fails: no entry sends packets to the proxy, the
    // endpoints keep what they had, and the unit backs off.
    d.writer_mut().failing = vec!["install_redirect"];
    let r = d.pass(&with_l7(desired(false)), t0);
    assert!(matches!(
        r.outcome(Unit::Redirect),
        Some(Outcome::Failed(_))
    ));
    assert_eq!(
        r.outcome(Unit::Policy),
        Some(&Outcome::Waiting(Unit::Redirect))
    );
    assert_eq!(
        r.outcome(Unit::Endpoints),
        Some(&Outcome::Waiting(Unit::Policy))
    );
    assert!(!redirect_entry(d.writer()));
    assert_eq!(r.retry_at, Some(t0 + Duration::from_millis(100)));
    // Mended: installed first, then the entries that redirect.
    d.writer_mut().failing.clear();
    d.writer_mut().take_log();
    let r = d.pass(&with_l7(desired(false)), t0 + Duration::from_millis(100));
    assert!(r.ok(), "{r:?}");
    let log = d.writer_mut().take_log();
    assert_eq!(log.first(), Some(&Op::InstallRedirect), "{log:?}");
    assert!(redirect_entry(d.writer()));
    // Kept, and not installed again, whatever the policies do next.
    for want in [desired(true), with_l7(desired(false))] {
        let r = d.pass(&want, t0 + Duration::from_secs(1));
        assert!(r.ok(), "{r:?}");
    }
    assert!(!d.writer_mut().take_log().contains(&Op::InstallRedirect));
    assert_eq!(d.health()[&Unit::Redirect].changes_total, 1);
}

#[test]
fn an_agent_without_a_proxy_never_installs_the_redirect() {
    let mut d = driver(fake());
    let r = d.pass(&with_l7(desired(false)), Instant::now());
    assert!(r.ok(), "{r:?}");
    assert!(!d.writer_mut().take_log().contains(&Op::InstallRedirect));
    assert!(!redirect_entry(d.writer()));
}
