//! The leader validates policies stored in etcd (standalone mode) and
//! writes each one's status.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axoneme_identity::PolicyStatus;
use support::*;

async fn wait_status(f: &Fixture, key: &str, revision: i64) -> Result<PolicyStatus> {
    let status_key = f.layout.status_for_policy_key(key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(kv) = f.kv.get(&status_key).await? {
            let s: PolicyStatus = serde_json::from_slice(&kv.value)?;
            if s.observed_revision == revision {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            bail!("no status for {key} at revision {revision}\n{}", f.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn seed_json() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/seed-payments-policy.yaml"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the seed policy belongs beside the project ({path}): {e}"));
    let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stored_policies_get_a_valid_or_invalid_status() -> Result<()> {
    let mut f = Fixture::new(2, &[]).await?;
    let (first, _) = f.wait_leader(Duration::from_secs(10)).await?;
    let seed_key = f.layout.policy("cnp", Some("default"), "payments-api");
    let rev = f.kv.put(&seed_key, seed_json(), 0).await?;
    let s = wait_status(&f, &seed_key, rev).await?;
    assert!(s.valid, "{s:?}");
    assert_eq!(s.operator, first);

    // An invalid policy gets the field-path message.
    let bad = br#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"bad","namespace":"default"},
        "spec":{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"80800"}]}]}]}}"#;
    let bad_key = f.layout.policy("cnp", Some("default"), "bad");
    let rev = f.kv.put(&bad_key, bad.to_vec(), 0).await?;
    let s = wait_status(&f, &bad_key, rev).await?;
    assert!(!s.valid);
    assert_eq!(
        s.message,
        "bad: spec.ingress[0].toPorts[0].ports[0].port: 80800 is not a valid port (1-65535)"
    );
    // Garbage and a policy stored under the wrong name are invalid too.
    let garbage_key = f.layout.policy("cnp", Some("default"), "garbage");
    let rev = f.kv.put(&garbage_key, b"\xff\xfe".to_vec(), 0).await?;
    assert!(!wait_status(&f, &garbage_key, rev).await?.valid);
    let misplaced = f.layout.policy("cnp", Some("other"), "payments-api");
    let rev = f.kv.put(&misplaced, seed_json(), 0).await?;
    let s = wait_status(&f, &misplaced, rev).await?;
    assert!(!s.valid && s.message.contains("stored under"), "{s:?}");

    // Fixing the policy flips its status; deleting it removes the status.
    let rev = f.kv.put(&bad_key, seed_json().to_vec(), 0).await?;
    let s = wait_status(&f, &bad_key, rev).await?;
    assert!(!s.valid, "the seed's name does not match the key 'bad'");
    f.kv.delete(&seed_key).await?;
    let status_key = f.layout.status_for_policy_key(&seed_key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.kv.get(&status_key).await?.is_some() {
        assert!(
            Instant::now() < deadline,
            "status of a deleted policy remains"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // After failover the new leader judges new policies; old statuses stay.
    f.op(&first).proc.kill9();
    let seed_key2 = f.layout.policy("ccnp", None, "everyone");
    let ccnp = br#"{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"everyone"},
        "spec":{"endpointSelector":{},"egress":[{"toEntities":["cluster"]}]}}"#;
    let rev = f.kv.put(&seed_key2, ccnp.to_vec(), 0).await?;
    let s = wait_status(&f, &seed_key2, rev).await?;
    assert!(s.valid);
    assert_ne!(s.operator, first);
    Ok(())
}
