//! The watch-fed cache against a real etcd.

use std::time::Duration;

use anyhow::Result;
use axoneme_e2e::EtcdCluster;
use axoneme_identity::{
    identity_cache, CacheEvent, IdentityRecord, LabelSet, Layout, NumericIdentity, Source,
};
use axoneme_kvstore::{KvConfig, KvStore};

fn record(id: u32, app: &str) -> Vec<u8> {
    serde_json::to_vec(&IdentityRecord {
        id: NumericIdentity(id),
        labels: LabelSet::parse([format!("app={app}")], Source::K8s).unwrap(),
        allocator: "test".into(),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_watches_and_skips_garbage() -> Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    let layout = Layout::default();
    kv.put(
        &layout.identity_id(NumericIdentity(300)),
        record(300, "a"),
        0,
    )
    .await?;
    kv.put(
        &layout.identity_id(NumericIdentity(301)),
        b"garbage".to_vec(),
        0,
    )
    .await?;

    let cache = identity_cache(kv.clone(), &layout);
    cache.ready().await;
    // Subscribers get changes from now on; the snapshot holds the rest.
    let mut sub = cache.subscribe();
    assert_eq!(cache.len(), 1, "the undecodable record is skipped");
    assert_eq!(cache.stats().decode_errors, 1);
    let key = layout.identity_id(NumericIdentity(300));
    assert_eq!(cache.get(&key).unwrap().labels.canonical(), "k8s:app=a;");

    let key2 = layout.identity_id(NumericIdentity(302));
    kv.put(&key2, record(302, "b"), 0).await?;
    match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await? {
        CacheEvent::Upsert { key, value } => {
            assert_eq!(key, key2);
            assert_eq!(value.id, NumericIdentity(302));
        }
        other => panic!("expected an upsert, got {other:?}"),
    }
    kv.delete(&key).await?;
    match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await? {
        CacheEvent::Delete { key: k, prev } => {
            assert_eq!(k, key);
            assert_eq!(prev.unwrap().id, NumericIdentity(300));
        }
        other => panic!("expected a delete, got {other:?}"),
    }
    // A value overwritten with garbage disappears from the cache.
    kv.put(&key2, b"{".to_vec(), 0).await?;
    cache
        .wait_for(&key2, Duration::from_secs(5), |v| v.is_none())
        .await?;
    assert_eq!(cache.stats().decode_errors, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscriber_is_told_to_resync() -> Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    let layout = Layout::default();
    let cache = identity_cache(kv.clone(), &layout);
    cache.ready().await;
    let mut sub = cache.subscribe();
    // More changes than the event buffer holds, without reading.
    let n = 17_000u32;
    for chunk in (0..n).collect::<Vec<_>>().chunks(128) {
        let ops: Vec<_> = chunk
            .iter()
            .map(|i| {
                axoneme_kvstore::TxnOp::put(
                    layout.identity_id(NumericIdentity(1000 + i)),
                    record(1000 + i, &format!("x{i}")),
                    None,
                )
            })
            .collect();
        kv.txn(axoneme_kvstore::Txn::new().and_then(ops)).await?;
    }
    cache
        .wait_for(
            &layout.identity_id(NumericIdentity(1000 + n - 1)),
            Duration::from_secs(30),
            |v| v.is_some(),
        )
        .await?;
    assert!(matches!(sub.recv().await, CacheEvent::Resynced));
    assert_eq!(cache.len(), n as usize, "the snapshot is complete");
    Ok(())
}
