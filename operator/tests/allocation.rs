//! Identity allocation against a real 3-member etcd and real operator
//! processes: concurrency, operator failover, fencing, etcd leader loss,
//! garbage collection, bad input and range exhaustion.

mod support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use support::*;

const STORM: usize = 5000;
const SETS: usize = 500;
const WRITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_gives_exactly_one_identity_per_label_set() -> Result<()> {
    let f = Fixture::new(1, &[]).await?;
    f.wait_leader(Duration::from_secs(10)).await?;
    storm(&f.kv, 0..STORM, SETS, WRITERS).await?;
    f.wait_all_assigned(STORM, Duration::from_secs(120)).await?;
    f.check_invariants(SETS).await?;
    // Endpoints with the same relevant labels share one identity.
    let a = f.assignments().await?;
    let ep = |i| {
        let (n, e) = storm_key(i);
        a[&f.layout.endpoint(&n, &e)].0.identity
    };
    assert_eq!(ep(7), ep(7 + SETS));
    assert_ne!(ep(7), ep(8));
    assert_eq!(
        a[&f.layout.endpoint("node-3", "ep-7")].0.labels,
        storm_canonical(7, SETS)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_finishes_after_leader_is_killed_mid_storm() -> Result<()> {
    let mut f = Fixture::new(2, &[]).await?;
    let (first, fence) = f.wait_leader(Duration::from_secs(10)).await?;
    let kv = f.kv.clone();
    let writer = tokio::spawn(async move { storm(&kv, 0..STORM, SETS, WRITERS).await });
    // Kill -9 once the leader is visibly in the middle of the work.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = f.assignments().await?.len();
        if n >= STORM / 5 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "leader made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.op(&first).proc.kill9();
    writer.await??;
    f.wait_all_assigned(STORM, Duration::from_secs(120)).await?;
    let (second, fence2) = f.wait_leader(Duration::from_secs(10)).await?;
    assert_ne!(first, second, "the standby took over");
    assert!(fence2 > fence);
    f.check_invariants(SETS).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_leader_cannot_write_after_takeover() -> Result<()> {
    let mut f = Fixture::new(2, &[]).await?;
    let (first, _) = f.wait_leader(Duration::from_secs(10)).await?;
    storm(&f.kv, 0..1000, 100, WRITERS).await?;
    f.wait_all_assigned(1000, Duration::from_secs(60)).await?;

    // SIGSTOP the leader until its 2 s lease expires and the standby leads.
    f.op(&first).proc.pause()?;
    let (second, takeover) = loop {
        if let Some((holder, rev)) = f.leader().await? {
            if holder != first {
                break (holder, rev);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // New work arrives while the old leader is frozen; its watch buffers it.
    storm(&f.kv, 1000..1500, 150, WRITERS).await?;
    f.op(&first).proc.resume()?;
    f.wait_all_assigned(1500, Duration::from_secs(60)).await?;
    // Give the resumed replica time to act on what it had buffered.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Nothing the old leader wrote landed after the takeover revision.
    let mut written_by_first_after = Vec::new();
    for (key, (a, rev)) in f.assignments().await? {
        if a.allocator == first && rev > takeover {
            written_by_first_after.push(key);
        }
    }
    for (id, (rec, rev)) in f.identities().await? {
        if rec.allocator == first && rev > takeover {
            written_by_first_after.push(format!("identity {id}"));
        }
    }
    assert!(
        written_by_first_after.is_empty(),
        "deposed leader wrote after takeover: {written_by_first_after:?}"
    );
    let (leader, _) = f.wait_leader(Duration::from_secs(5)).await?;
    assert_eq!(leader, second, "leadership stayed with the standby");
    let old = f.op(&first);
    assert!(old.proc.is_running(), "old leader keeps running as standby");
    let health = old.http_get("/healthz")?;
    assert!(
        health.contains("\"leader\":false"),
        "old leader stepped down: {health}"
    );
    f.check_invariants(150).await?;
    Ok(())
}

/// A storm of [`STORM`] endpoints started, once a fifth of them are
/// assigned: its writer, to await.
async fn storm_under_way(f: &Fixture) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let kv = f.kv.clone();
    let writer = tokio::spawn(async move { storm(&kv, 0..STORM, SETS, WRITERS).await });
    while f.assignments().await?.len() < STORM / 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocation_survives_the_etcd_leader_being_killed() -> Result<()> {
    let mut f = Fixture::new(2, &[]).await?;
    f.wait_leader(Duration::from_secs(10)).await?;
    let writer = storm_under_way(&f).await?;
    let leader = f.etcd.leader()?.context("etcd has a leader")?;
    f.etcd.kill(leader);
    writer.await??;
    f.wait_all_assigned(STORM, Duration::from_secs(120)).await?;
    f.check_invariants(SETS).await?;
    let new_leader = f.etcd.leader()?.context("etcd re-elected a leader")?;
    assert_ne!(new_leader, leader);
    Ok(())
}

/// One member's data lost for good while allocation runs: the member is
/// removed, wiped and added back empty (the leader sends it a snapshot).
/// Every endpoint still gets exactly one identity per label set, none is
/// lost, and the rejoined member ends up holding every key itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocation_survives_a_member_wiped_and_rejoined() -> Result<()> {
    let mut f = Fixture::new(2, &[]).await?;
    f.wait_leader(Duration::from_secs(10)).await?;
    let writer = storm_under_way(&f).await?;
    // The raft leader: the harder case (an election on top of the loss).
    let lost = f.etcd.leader()?.context("etcd has a leader")?;
    let etcd = &mut f.etcd;
    tokio::task::block_in_place(|| etcd.wipe_and_rejoin(lost))?;
    let rejoined_during = f.assignments().await?.len();
    writer.await??;
    f.wait_all_assigned(STORM, Duration::from_secs(120)).await?;
    f.check_invariants(SETS).await?;
    let root = format!("{}/", f.layout.root());
    let everyone = f.etcd.local_keys((lost + 1) % 3, &root)?;
    let rejoined = f.etcd.local_keys(lost, &root)?;
    assert_eq!(
        rejoined.len(),
        everyone.len(),
        "the rejoined member holds {} keys, the others {}",
        rejoined.len(),
        everyone.len()
    );
    assert_eq!(rejoined, everyone);
    eprintln!(
        "member {lost} wiped and rejoined with {rejoined_during} of {STORM} endpoints assigned; \
         now {} keys on every member",
        everyone.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_deletes_unused_keeps_rereferenced_and_in_use() -> Result<()> {
    let f = Fixture::new(
        1,
        &[
            "--identity-gc-grace",
            "3s",
            "--identity-gc-interval",
            "200ms",
        ],
    )
    .await?;
    f.wait_leader(Duration::from_secs(10)).await?;
    let labels = |app: &str| vec![format!("app={app}")];
    f.put_endpoint("n1", "unused", &labels("unused")).await?;
    f.put_endpoint("n1", "back", &labels("back")).await?;
    f.put_endpoint("n1", "inuse", &labels("inuse")).await?;
    let t = Duration::from_secs(10);
    let unused = f
        .wait_assignment("n1", "unused", t)
        .await?
        .identity
        .unwrap();
    let back = f.wait_assignment("n1", "back", t).await?.identity.unwrap();
    let inuse = f.wait_assignment("n1", "inuse", t).await?.identity.unwrap();

    f.delete_endpoint("n1", "unused").await?;
    f.delete_endpoint("n1", "back").await?;
    // Re-referenced well inside the grace period by a new endpoint.
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.put_endpoint("n2", "back-again", &labels("back")).await?;
    let again = f
        .wait_assignment("n2", "back-again", t)
        .await?
        .identity
        .unwrap();
    assert_eq!(again, back, "re-referenced label set keeps its identity");

    // Past the grace period (3 s) plus GC interval.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ids = f.identities().await?;
    assert!(
        !ids.contains_key(&unused.0),
        "unreferenced identity {unused} deleted"
    );
    assert!(ids.contains_key(&back.0), "re-referenced identity kept");
    assert!(ids.contains_key(&inuse.0), "identity in use kept");
    assert!(
        f.assignment("n1", "unused").await?.is_none(),
        "deleted endpoint's assignment removed"
    );
    let deleted = f.ops[0].metric("axoneme_identity_gc_entries_total{status=\"deleted\"}")?;
    assert_eq!(deleted, 1.0);
    // A new endpoint with the collected labels gets a fresh identity.
    f.put_endpoint("n1", "unused-2", &labels("unused")).await?;
    let fresh = f
        .wait_assignment("n1", "unused-2", t)
        .await?
        .identity
        .unwrap();
    assert_ne!(fresh, unused, "freed numbers are not reused at once");
    f.check_invariants(3).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_records_get_clear_errors_and_do_not_disturb_others() -> Result<()> {
    let mut f = Fixture::new(1, &[]).await?;
    f.wait_leader(Duration::from_secs(10)).await?;
    let t = Duration::from_secs(10);
    f.put_raw("n1", "garbage", b"{not json").await?;
    f.put_endpoint("n1", "badkey", &["k8s:-app=x".into()])
        .await?;
    f.put_endpoint("n1", "badvalue", &["app=has space".into()])
        .await?;
    f.put_endpoint("n1", "badsource", &["nosuch:app=x".into(), "app=y".into()])
        .await?;
    let many: Vec<String> = (0..70).map(|i| format!("l{i}=v")).collect();
    f.put_endpoint("n1", "oversized", &many).await?;
    f.put_raw(
        "n1",
        "mismatch",
        br#"{"id":"other","node":"n1","labels":["app=x"]}"#,
    )
    .await?;
    f.put_endpoint("n1", "onlyfiltered", &["pod-template-hash=abc".into()])
        .await?;
    f.put_endpoint("n1", "good", &["app=good".into()]).await?;

    let expect = [
        ("garbage", "invalid endpoint record JSON"),
        ("badkey", "key \"-app\" is invalid"),
        ("badvalue", "value \"has space\" is invalid"),
        ("badsource", "key \"nosuch:app\" is invalid"),
        ("oversized", "70 labels; at most 64"),
        ("mismatch", "names n1/other but is stored under n1/mismatch"),
        ("onlyfiltered", "no identity-relevant labels"),
    ];
    for (ep, text) in expect {
        let a = f.wait_assignment("n1", ep, t).await?;
        assert!(a.identity.is_none(), "{ep} must not get an identity");
        let err = a.error.unwrap_or_default();
        assert!(
            err.contains(text),
            "{ep}: error {err:?} should contain {text:?}"
        );
    }
    let good = f.wait_assignment("n1", "good", t).await?;
    assert!(good.identity.is_some());
    // Fixing a bad record gives it an identity; the operator kept running.
    f.put_endpoint("n1", "garbage", &["app=good".into()])
        .await?;
    let fixed = f.wait_assignment("n1", "garbage", t).await?;
    assert_eq!(fixed.identity, good.identity);
    assert!(f.ops[0].proc.is_running());
    let json_errors = f.ops[0].metric("axoneme_operator_endpoint_errors_total{reason=\"json\"}")?;
    assert!(json_errors >= 1.0);
    assert_eq!(
        f.identities().await?.len(),
        1,
        "bad records created no identity"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_range_is_reported_and_recovers_after_gc() -> Result<()> {
    let f = Fixture::new(
        1,
        &[
            "--identity-min",
            "256",
            "--identity-max",
            "260",
            "--identity-gc-grace",
            "1s",
            "--identity-gc-interval",
            "200ms",
        ],
    )
    .await?;
    f.wait_leader(Duration::from_secs(10)).await?;
    let t = Duration::from_secs(10);
    for i in 0..7 {
        f.put_endpoint("n1", &format!("e{i}"), &[format!("app=a{i}")])
            .await?;
    }
    let mut ok = Vec::new();
    let mut exhausted = Vec::new();
    for i in 0..7 {
        let a = f.wait_assignment("n1", &format!("e{i}"), t).await?;
        match (a.identity, a.error) {
            (Some(id), None) => ok.push((i, id)),
            (None, Some(e)) => {
                assert!(
                    e.contains("identity range exhausted: all 5 identities of 256-260 are in use"),
                    "{e}"
                );
                exhausted.push(i);
            }
            other => panic!("unexpected assignment {other:?}"),
        }
    }
    assert_eq!(ok.len(), 5);
    assert_eq!(exhausted.len(), 2);
    let mut ids: Vec<u32> = ok.iter().map(|(_, id)| id.0).collect();
    ids.sort();
    assert_eq!(ids, vec![256, 257, 258, 259, 260]);
    let failures =
        f.ops[0].metric("axoneme_identity_allocation_failures_total{reason=\"exhausted\"}")?;
    assert!(failures >= 2.0, "exhaustion counted: {failures}");
    assert_eq!(f.ops[0].metric("axoneme_identity_range_free")?, 0.0);

    // Free two numbers; after the grace period the waiting endpoints get them.
    for (i, _) in &ok[..2] {
        f.delete_endpoint("n1", &format!("e{i}")).await?;
    }
    for i in &exhausted {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let a = f.assignment("n1", &format!("e{i}")).await?.unwrap();
            if let Some(id) = a.identity {
                assert!((256..=260).contains(&id.0));
                assert!(a.error.is_none());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "e{i} never recovered\n{}",
                f.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    f.check_invariants(5).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocation_over_mutual_tls() -> Result<()> {
    let etcd = tokio::task::spawn_blocking(|| axoneme_e2e::EtcdCluster::start_tls(3)).await??;
    let f = Fixture::with_etcd(etcd, 1, &["--etcd-server-name", "localhost"]).await?;
    f.wait_leader(Duration::from_secs(10)).await?;
    f.put_endpoint("n1", "tls", &["app=tls".into()]).await?;
    let a = f
        .wait_assignment("n1", "tls", Duration::from_secs(10))
        .await?;
    assert!(a.identity.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identities_written_behind_the_leaders_back_are_respected() -> Result<()> {
    use axoneme_identity::{IdentityRecord, LabelSet, NumericIdentity, Source};
    let f = Fixture::new(1, &[]).await?;
    f.wait_leader(Duration::from_secs(10)).await?;
    // After the leader loaded its state, someone (say, a deposed leader's
    // last transaction) created identity 256 for app=ghost.
    let ghost = LabelSet::parse(["app=ghost"], Source::K8s)?;
    let rec = IdentityRecord {
        id: NumericIdentity(256),
        labels: ghost.clone(),
        allocator: "ghost".into(),
    };
    f.kv.put(
        &f.layout.identity_id(NumericIdentity(256)),
        serde_json::to_vec(&rec)?,
        0,
    )
    .await?;
    f.kv.put(
        &f.layout.identity_labels(&ghost.canonical()),
        b"256".to_vec(),
        0,
    )
    .await?;
    // The leader's next number (256) is taken: it must pick another.
    f.put_endpoint("n1", "new", &["app=new".into()]).await?;
    let new = f
        .wait_assignment("n1", "new", Duration::from_secs(10))
        .await?;
    assert_ne!(new.identity, Some(NumericIdentity(256)));
    // The label set already has an identity: it must be adopted, not duplicated.
    f.put_endpoint("n1", "ghostly", &["app=ghost".into()])
        .await?;
    let g = f
        .wait_assignment("n1", "ghostly", Duration::from_secs(10))
        .await?;
    assert_eq!(g.identity, Some(NumericIdentity(256)));
    f.check_invariants(2).await?;
    Ok(())
}

/// With every etcd member gone, both replicas stop within a few seconds
/// of SIGTERM: a call in flight (retried up to the kvstore's 30 s deadline)
/// is dropped, and the leader's hand-over is bounded (its lease then
/// expires by itself). Before, a replica took up to 40 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_stop_promptly_with_etcd_gone() -> Result<()> {
    let mut f = Fixture::new(2, &[]).await?;
    let (leader, _) = f.wait_leader(Duration::from_secs(10)).await?;
    for i in 0..3 {
        f.etcd.kill(i);
    }
    // The standby's campaign and the leader's lease keep-alive now retry.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for op in &mut f.ops {
        let started = std::time::Instant::now();
        op.proc.terminate(Duration::from_secs(15));
        let took = started.elapsed();
        eprintln!(
            "{} (leader: {}) stopped {took:?} after SIGTERM",
            op.id,
            op.id == leader
        );
        ensure!(
            took < Duration::from_secs(4),
            "{} stopped {took:?} after SIGTERM with etcd gone",
            op.id
        );
    }
    Ok(())
}
