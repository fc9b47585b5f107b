//! The leader killed: the other replica takes over.

use super::*;

pub(super) fn failover(s: &mut Setup) -> Result<()> {
    let old = s.leader()?;
    let standby = 1 - old;
    s.ops[old].proc.kill9();
    let killed = Instant::now();
    eventually("the standby leads", STEP, || {
        let h = s.health(standby)?;
        Ok(if h["leader"] == true {
            Ok(())
        } else {
            Err(h.to_string())
        })
    })?;
    eprintln!("  standby leads {:.1?} after the kill", killed.elapsed());
    s.cp.apply_yaml(&seed()?.replace(
        "name: payments-api",
        "name: after-failover\n  namespace: shop",
    ))?;
    s.wait_condition("cnp", Some("shop"), "after-failover", "Valid", |c| {
        c["status"] == "True"
    })?;
    let key = s.kv.layout.policy("cnp", Some("shop"), "after-failover");
    eventually("after-failover enforceable", STEP, || {
        s.kv.enforceable(&key)
    })?;
    let writes = s.ops[standby].http_get("/metrics")?;
    assert!(
        writes
            .lines()
            .any(|l| l.starts_with("axoneme_kube_object_writes_total{")
                && l.contains("ciliumnetworkpolicies/status")),
        "the standby wrote no status:\n{writes}"
    );
    eprintln!("  status written {:.1?} after the kill", killed.elapsed());
    Ok(())
}
