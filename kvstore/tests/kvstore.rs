//! The etcd client layer against a real 3-member etcd.

use std::time::{Duration, Instant};

use anyhow::Result;
use axoneme_e2e::EtcdCluster;
use axoneme_kvstore::{Compare, CompareOp, KvArgs, KvConfig, KvError, KvStore, Txn, TxnOp};
use clap::Parser;

async fn cluster() -> Result<EtcdCluster> {
    tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_does_not_fail_callers() -> Result<()> {
    let mut etcd = cluster().await?;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    kv.put("k/0", b"v".to_vec(), 0).await?;
    // Member 0 is the one this client uses first.
    etcd.kill(0);
    let start = Instant::now();
    for i in 0..200 {
        kv.put(&format!("k/{i}"), b"v".to_vec(), 0).await?;
        assert!(kv.get(&format!("k/{i}")).await?.is_some());
    }
    let (all, _) = kv.get_prefix("k/").await?;
    assert_eq!(all.len(), 200);
    // Rotation happens on the first failure, not after a long stall.
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    let health = kv.member_health().await;
    assert_eq!(health.iter().filter(|h| h.healthy).count(), 2, "{health:?}");
    assert_eq!(
        health.iter().filter(|h| h.is_leader).count(),
        1,
        "{health:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_compare_and_report_gets() -> Result<()> {
    let etcd = cluster().await?;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    let create = |v: &'static str| {
        Txn::new()
            .when([Compare::create_revision("once", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("once", v, None)])
            .or_else([TxnOp::get("once", None)])
    };
    assert!(kv.txn(create("first")).await?.succeeded);
    let second = kv.txn(create("second")).await?;
    assert!(!second.succeeded);
    assert_eq!(second.gets[0][0].value, b"first");
    Ok(())
}

/// A prefix whose values add up to more than gRPC's 4 MiB answer limit
/// is read in pages, all at one revision: every key, none from outside the
/// prefix, none written after the read began.
/// Records what the store reports of each call.
#[derive(Default)]
struct Calls(std::sync::Mutex<Vec<(&'static str, bool)>>);

impl axoneme_kvstore::KvObserver for Calls {
    fn observe(&self, op: &'static str, ok: bool, elapsed: Duration) {
        assert!(elapsed < Duration::from_secs(30), "{op} took {elapsed:?}");
        self.0.lock().unwrap().push((op, ok));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_is_told_how_every_call_ended() -> Result<()> {
    let etcd = cluster().await?;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    kv.put("before", b"v".to_vec(), 0).await?;
    let calls = std::sync::Arc::new(Calls::default());
    assert!(kv.observe_with(calls.clone()));
    assert!(!kv.observe_with(calls.clone()), "set once");
    // Clones share the observer.
    let clone = kv.clone();
    clone.put("k", b"v".to_vec(), 0).await?;
    assert!(kv.get("k").await?.is_some());
    kv.txn(Txn::new().and_then([TxnOp::delete("k", None)]))
        .await?;
    // More operations than etcd takes in one transaction (128): refused
    // for good, at once.
    let many: Vec<TxnOp> = (0..200)
        .map(|i| TxnOp::put(format!("t/{i}"), "v", None))
        .collect();
    let started = Instant::now();
    assert!(kv.txn(Txn::new().and_then(many)).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        *calls.0.lock().unwrap(),
        [("put", true), ("get", true), ("txn", true), ("txn", false)]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_prefixes_are_read_in_pages_at_one_revision() -> Result<()> {
    let etcd = cluster().await?;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    let value = vec![b'x'; 4096];
    let n = 1200usize;
    use futures::StreamExt;
    let puts = futures::stream::iter(0..n)
        .map(|i| {
            let (kv, value) = (kv.clone(), value.clone());
            async move { kv.put(&format!("big/{i:05}"), value, 0).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for r in puts {
        r?;
    }
    kv.put("big0", b"outside".to_vec(), 0).await?;
    kv.put("bif/x", b"outside".to_vec(), 0).await?;
    let (all, revision) = kv.get_prefix("big/").await?;
    assert_eq!(all.len(), n, "{} MiB in all", n * 4096 / (1 << 20));
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    assert!(all.iter().all(|k| k.mod_revision <= revision));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_compaction() -> Result<()> {
    let etcd = cluster().await?;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    let mut rev = 0;
    for i in 0..10 {
        rev = kv.put(&format!("w/{i}"), b"v".to_vec(), 0).await?;
    }
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoints().join(",")))
        .args(["compact", &rev.to_string()])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stream = kv.watch_prefix("w/", 2).await?;
    match stream.next().await {
        Err(KvError::Compacted {
            compact_revision, ..
        }) => assert_eq!(compact_revision, rev),
        other => panic!("expected a compaction error, got {other:?}"),
    }
    // From a live revision the watch delivers puts and deletes in order.
    let mut stream = kv.watch_prefix("w/", rev + 1).await?;
    kv.put("w/new", b"x".to_vec(), 0).await?;
    kv.delete("w/0").await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (events, _) = stream.next().await?;
        seen.extend(events.iter().map(|e| e.key().to_string()));
    }
    assert_eq!(seen, ["w/new", "w/0"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_and_keepalive_reports_it() -> Result<()> {
    let etcd = cluster().await?;
    let kv = KvStore::connect(KvConfig::new(etcd.endpoints())).await?;
    let lease = kv.lease_grant(1).await?;
    kv.put("leased", b"v".to_vec(), lease).await?;
    assert!(kv.lease_keep_alive(lease).await? >= 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        kv.get("leased").await?.is_none(),
        "key vanished with its lease"
    );
    let r = kv.lease_keep_alive(lease).await;
    assert!(
        matches!(r, Err(KvError::LeaseExpired(id)) if id == lease),
        "{r:?}"
    );
    kv.lease_revoke(lease).await?; // already gone: not an error
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_is_required_and_works() -> Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start_tls(3)).await??;
    let certs = etcd.certs().unwrap();
    let args = Wrap::try_parse_from([
        "x",
        "--etcd-endpoints",
        &etcd.endpoints().join(","),
        "--etcd-ca",
        certs.ca_cert.to_str().unwrap(),
        "--etcd-cert",
        certs.client_cert.to_str().unwrap(),
        "--etcd-key",
        certs.client_key.to_str().unwrap(),
        "--etcd-server-name",
        "localhost",
    ])?
    .kv;
    let kv = KvStore::connect(args.to_config()?).await?;
    kv.put("tls", b"ok".to_vec(), 0).await?;
    assert_eq!(kv.get("tls").await?.unwrap().value, b"ok");

    // Without a client certificate the server refuses us.
    let mut config = args.to_config()?;
    config.tls.as_mut().unwrap().cert = None;
    config.tls.as_mut().unwrap().key = None;
    config.retry_deadline = Duration::from_secs(1);
    let anon = KvStore::connect(config).await?;
    assert!(anon.get("tls").await.is_err());
    Ok(())
}

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    kv: KvArgs,
}

#[test]
fn bad_flags_and_key_files_get_clear_errors() {
    let parse = |args: &[&str]| {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Wrap::try_parse_from(all).unwrap().kv.to_config()
    };
    let err = parse(&["--etcd-endpoints", "127.0.0.1:2379"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("must start with http:// or https://"), "{err}");
    let err = parse(&["--etcd-endpoints", "http://127.0.0.1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no port"), "{err}");
    let err = parse(&["--etcd-endpoints", "http://h:99999"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a valid host:port"), "{err}");
    let err = parse(&["--etcd-endpoints", "https://h:1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no --etcd-ca"), "{err}");
    let err = parse(&["--etcd-cert", "/x"]).unwrap_err().to_string();
    assert!(err.contains("need --etcd-ca"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("ca.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let connect = |ca: &str| {
        let cfg = parse(&["--etcd-endpoints", "https://127.0.0.1:1", "--etcd-ca", ca]).unwrap();
        rt.block_on(KvStore::connect(cfg))
            .err()
            .map(|e| e.to_string())
    };
    let err = connect(garbage.to_str().unwrap()).unwrap();
    assert!(err.contains("ca.pem is not a PEM CA certificate"), "{err}");
    let err = connect("/nonexistent/ca.pem").unwrap();
    assert!(
        err.contains("reading TLS file /nonexistent/ca.pem"),
        "{err}"
    );
}
