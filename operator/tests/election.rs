//! Leader election and fencing, in-process against a real 3-member etcd.

use std::time::{Duration, Instant};

use anyhow::Result;
use axoneme_e2e::EtcdCluster;
use axoneme_identity::Layout;
use axoneme_kvstore::{KvConfig, KvStore, Txn, TxnOp};
use axoneme_operator::election::{campaign, hold, resign};
use tokio_util::sync::CancellationToken;

async fn setup() -> Result<(EtcdCluster, KvStore)> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await??;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    Ok((etcd, kv))
}

fn fenced_put(fence: axoneme_kvstore::Compare, key: &str) -> Txn {
    Txn::new()
        .when([fence])
        .and_then([TxnOp::put(key, "x", None)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_out() -> Result<()> {
    let (_etcd, kv) = setup().await?;
    let layout = Layout::default();
    let never = CancellationToken::new();
    // A leads, then "pauses": it stops renewing its 1 s lease.
    let a = campaign(&kv, &layout, "a", 1, &never).await?.unwrap();
    assert!(kv.txn(fenced_put(a.fence(), "by-a-1")).await?.succeeded);

    // B stands by and takes over once A's lease has expired.
    let started = Instant::now();
    let b = campaign(&kv, &layout, "b", 1, &never).await?.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "takeover took {took:?}");
    assert!(b.fence_revision > a.fence_revision);

    // A "resumes" and writes with its old fence: etcd refuses.
    let r = kv.txn(fenced_put(a.fence(), "by-a-2")).await?;
    assert!(!r.succeeded, "a deposed leader's write must be rejected");
    assert!(kv.get("by-a-2").await?.is_none());
    assert!(kv.txn(fenced_put(b.fence(), "by-b")).await?.succeeded);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_keeps_leadership_and_resign_hands_it_over() -> Result<()> {
    let (_etcd, kv) = setup().await?;
    let layout = Layout::default();
    let cancel = CancellationToken::new();
    let a = campaign(&kv, &layout, "a", 1, &cancel).await?.unwrap();
    let holder = {
        let (kv, a, cancel) = (kv.clone(), a.clone(), cancel.clone());
        tokio::spawn(async move { hold(&kv, &a, 1, &cancel).await })
    };
    // Well past the TTL, A still leads because it renews.
    let b_task = {
        let (kv, layout) = (kv.clone(), layout.clone());
        tokio::spawn(async move { campaign(&kv, &layout, "b", 1, &CancellationToken::new()).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!b_task.is_finished(), "B must not win while A renews");
    assert!(kv.txn(fenced_put(a.fence(), "still-a")).await?.succeeded);

    // Resigning hands over at once, without waiting for a TTL.
    cancel.cancel();
    holder.await?;
    let started = Instant::now();
    resign(&kv, &a).await;
    let b = b_task.await??.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.holder, "b");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_returns_when_the_lease_is_gone() -> Result<()> {
    let (_etcd, kv) = setup().await?;
    let layout = Layout::default();
    let cancel = CancellationToken::new();
    let a = campaign(&kv, &layout, "a", 2, &cancel).await?.unwrap();
    // Someone revokes the lease behind A's back (as expiry would).
    kv.lease_revoke(a.lease).await?;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), hold(&kv, &a, 2, &cancel)).await?;
    assert!(started.elapsed() < Duration::from_secs(3));
    Ok(())
}
