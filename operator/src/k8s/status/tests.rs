use super::*;
use axoneme_crds::condition;
use axoneme_identity::NodeStatusRecord;

fn judgement(valid: bool, generation: i64) -> Judgement {
    Judgement {
        kind: PolicyKind::CiliumNetworkPolicy,
        key: "axoneme/state/policies/v1/cnp/default/p".into(),
        name: "p".into(),
        namespace: Some("default".into()),
        uid: "u".into(),
        generation: Some(generation),
        verdict: if valid {
            Ok(b"{}".to_vec())
        } else {
            Err(
                "p: spec.ingress[0].toPorts[0].ports[0].port: 80800 is not a valid port (1-65535)"
                    .into(),
            )
        },
    }
}

fn nodes(reports: &[(&str, Option<i64>)]) -> Nodes {
    let mut n = Nodes::default();
    for (name, rev) in reports {
        n.live.push(name.to_string());
        if let Some(rev) = rev {
            let mut r = NodeStatusRecord {
                node: name.to_string(),
                ..Default::default()
            };
            // Keyed below the root, as an agent may report it.
            r.policies.insert("policies/v1/cnp/default/p".into(), *rev);
            n.reports.insert(name.to_string(), Arc::new(r));
        }
    }
    n
}

fn now() -> Time {
    Time(Timestamp::from_second(100).unwrap())
}

#[test]
fn enforced_when_every_node_runs_the_current_revision() {
    let l = Layout::default();
    let [valid, enforced] = conditions(
        &l,
        &judgement(true, 2),
        Some((42, Some(2))),
        &nodes(&[("a", Some(42)), ("b", Some(42)), ("c", Some(43))]),
        &now(),
    );
    assert_eq!(
        (valid.status.as_str(), valid.message.as_str()),
        ("True", VALID_MESSAGE)
    );
    assert_eq!(enforced.status, "True");
    assert_eq!(enforced.message, "enforced on 3/3 nodes (revision 42)");
    assert_eq!(enforced.observed_generation, Some(2));
}

#[test]
fn lagging_nodes_are_named() {
    let l = Layout::default();
    let [_, enforced] = conditions(
        &l,
        &judgement(true, 2),
        Some((42, Some(2))),
        &nodes(&[("a", Some(42)), ("b", Some(40)), ("c", None)]),
        &now(),
    );
    assert_eq!(enforced.status, "False");
    assert_eq!(enforced.reason, REASON_LAGGING);
    assert_eq!(
        enforced.message,
        "enforced on 1/3 nodes (revision 42); lagging: b (revision 40), c (not reported)"
    );
}

#[test]
fn an_invalid_edit_says_which_generation_stays() {
    let l = Layout::default();
    let [valid, enforced] = conditions(
        &l,
        &judgement(false, 3),
        Some((42, Some(2))),
        &nodes(&[("a", Some(42))]),
        &now(),
    );
    assert_eq!(valid.status, "False");
    assert!(valid.message.starts_with("p: spec.ingress[0].toPorts"));
    assert!(valid
        .message
        .ends_with("generation 2, the last valid one, stays enforced"));
    assert_eq!(valid.observed_generation, Some(3));
    assert_eq!(enforced.status, "True");
    assert_eq!(
        enforced.message,
        "generation 2, the last valid one, is enforced on 1/1 nodes (revision 42)"
    );
    let [valid, enforced] = conditions(&l, &judgement(false, 1), None, &nodes(&[]), &now());
    assert!(valid.message.ends_with("no generation has been valid)"));
    assert_eq!(enforced.reason, REASON_NOT_STORED);
}

fn wanted_state(reason: &str, changed: bool, generation: i64) -> Wanted {
    let j = judgement(true, generation);
    let enforced = condition(
        CONDITION_ENFORCED,
        reason == REASON_ENFORCED,
        reason,
        "",
        Some(generation),
        now(),
    );
    Wanted {
        in_progress: in_progress(&j, &enforced),
        j: Arc::new(j),
        changed,
        conditions: vec![enforced],
    }
}

#[test]
fn in_progress_states_are_held_then_paced_and_final_ones_written_at_once() {
    let mut m = Memory::default();
    let key = "axoneme/state/policies/v1/cnp/default/p";
    let t0 = Instant::now();
    // First seen in progress: held for SETTLE.
    let w = wanted_state(REASON_NOT_STORED, true, 1);
    assert_eq!(m.due(key, &w, t0), Err(t0 + SETTLE));
    let w = wanted_state(REASON_LAGGING, true, 1);
    assert_eq!(m.due(key, &w, t0 + SETTLE / 2), Err(t0 + SETTLE));
    // Settled within the hold: one write, of the final state.
    let w = wanted_state(REASON_ENFORCED, true, 1);
    assert_eq!(m.due(key, &w, t0 + SETTLE / 2), Ok(true));
    // A new generation stuck in progress: written after SETTLE, then
    // at most once per SETTLE.
    let w = wanted_state(REASON_PENDING, true, 2);
    assert_eq!(m.due(key, &w, t0 + SETTLE), Err(t0 + SETTLE * 2));
    let w = wanted_state(REASON_LAGGING, true, 2);
    assert_eq!(m.due(key, &w, t0 + SETTLE * 2), Ok(true));
    assert_eq!(
        m.due(key, &w, t0 + SETTLE * 2 + SETTLE / 2),
        Err(t0 + SETTLE * 3)
    );
    assert_eq!(m.due(key, &w, t0 + SETTLE * 3), Ok(true));
    // Nothing changed: nothing to write, held or not.
    let w = wanted_state(REASON_LAGGING, false, 2);
    assert_eq!(m.due(key, &w, t0 + SETTLE * 4), Ok(false));
    // Invalid with nothing stored is final.
    let j = judgement(false, 3);
    let enforced = condition(
        CONDITION_ENFORCED,
        false,
        REASON_NOT_STORED,
        "",
        Some(3),
        now(),
    );
    assert!(!in_progress(&j, &enforced));
}

#[test]
fn an_unseen_write_counts_until_the_watch_shows_a_newer_version() {
    let m = Memory::default();
    let key = "k";
    let mut obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p", "resourceVersion": "7"},
    }))
    .unwrap();
    assert!(m.current(key, &obj).is_empty());
    let written = wanted_state(REASON_ENFORCED, true, 1).conditions;
    m.unseen.lock().unwrap().insert(
        key.into(),
        Unseen {
            replaced: Some("7".into()),
            conditions: written.clone(),
        },
    );
    assert_eq!(m.current(key, &obj), written);
    obj.metadata.resource_version = Some("8".into());
    assert!(m.current(key, &obj).is_empty());
    assert!(m.unseen.lock().unwrap().is_empty());
}

#[test]
fn pending_and_no_nodes() {
    let l = Layout::default();
    let [_, e] = conditions(
        &l,
        &judgement(true, 3),
        Some((42, Some(2))),
        &nodes(&[("a", Some(42))]),
        &now(),
    );
    assert_eq!(
        (e.status.as_str(), e.reason.as_str()),
        ("False", REASON_PENDING)
    );
    let [_, e] = conditions(
        &l,
        &judgement(true, 2),
        Some((42, Some(2))),
        &nodes(&[]),
        &now(),
    );
    assert_eq!(e.reason, REASON_NO_NODES);
}
