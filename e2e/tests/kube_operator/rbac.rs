//! RBAC as the chart binds it: the agent's ServiceAccount reads what it
//! needs and nothing else; the operator without a verb it needs fails
//! loudly, and recovers when it is given back.

use super::*;

/// The agent's ServiceAccount may read its pods, namespaces and nodes, and
/// nothing else.
pub(super) fn agent_rbac(s: &Setup) -> Result<()> {
    let kc = s.cp.service_account_kubeconfig(
        "kube-system",
        "axoneme-agent",
        &s.dir.path().join("agent.kubeconfig"),
    )?;
    for args in [
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=ax-n1",
        ][..],
        &["get", "namespaces"],
        &["get", "nodes"],
    ] {
        let out = s.cp.kubectl_output_as(&kc, args)?;
        assert!(
            out.status.success(),
            "agent: kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for args in [
        &["get", "cnp", "-A"][..],
        &["get", "secrets", "-A"],
        &["delete", "node", "ax-n1"],
    ] {
        let out = s.cp.kubectl_output_as(&kc, args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("forbidden"),
            "agent may {args:?}: {err}"
        );
    }
    Ok(())
}

/// The operator's ClusterRole loses `patch` on CNP status: the leader's
/// writes fail loudly; restored, they succeed again.
pub(super) fn missing_verb(s: &Setup) -> Result<()> {
    let path = root().join("helm/axoneme/files/rbac/operator.yaml");
    let text = std::fs::read_to_string(&path)?;
    let role_without = |text: &str| -> Result<String> {
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let mut v: Value = serde::Deserialize::deserialize(doc)?;
            if v["kind"] == "ClusterRole" {
                let rules = v["rules"].as_array_mut().context("rules")?;
                for rule in rules.iter_mut() {
                    if rule["resources"] == json!(["ciliumnetworkpolicies/status"]) {
                        let verbs = rule["verbs"].as_array_mut().context("verbs")?;
                        verbs.retain(|v| v != "patch");
                    }
                }
                rules.retain(|r| r["verbs"].as_array().is_some_and(|v| !v.is_empty()));
                docs.push(v);
            }
        }
        Ok(serde_json::to_string(&docs[0])?)
    };
    s.cp.apply_yaml(&role_without(&text)?)?;
    // The API server's RBAC cache takes the change within moments.
    eventually("the verb is gone", STEP, || {
        let out = s.cp.kubectl_output([
            "auth",
            "can-i",
            "patch",
            "ciliumnetworkpolicies",
            "--subresource=status",
            "-n",
            "shop",
            "--as=system:serviceaccount:kube-system:axoneme-operator",
        ])?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(if answer == "no" { Ok(()) } else { Err(answer) })
    })?;
    let leader = s.leader()?;
    s.cp.apply_yaml(&seed()?.replace("name: payments-api", "name: rbac-probe\n  namespace: shop"))?;
    // The mirror does not need the verb: the policy is enforceable.
    let key = s.kv.layout.policy("cnp", Some("shop"), "rbac-probe");
    eventually("rbac-probe mirrored", STEP, || s.kv.enforceable(&key))?;
    let health = eventually("the leader reports the missing permission", STEP, || {
        let h = s.health(leader)?;
        Ok(
            if h["kubernetes"]["forbidden"] == json!(["patch ciliumnetworkpolicies/status"]) {
                Ok(h)
            } else {
                Err(h.to_string())
            },
        )
    })?;
    assert_eq!(health["kubernetes"]["healthy"], false);
    let message = health["kubernetes"]["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["resource"] == "ciliumnetworkpolicies/status")
        .and_then(|p| p["message"].as_str())
        .unwrap_or_default();
    assert!(
        message.contains("system:serviceaccount:kube-system:axoneme-operator")
            && message.contains("ciliumnetworkpolicies/status"),
        "{message}"
    );
    let metrics = s.ops[leader].http_get("/metrics")?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("axoneme_kube_api_errors_total{")
                && l.contains("resource=\"ciliumnetworkpolicies/status\"")
                && l.contains("reason=\"forbidden\"")),
        "{metrics}"
    );
    let log = s.ops[leader].proc.log_text();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("permission denied")
            && l.contains("ciliumnetworkpolicies/status")),
        "no loud error in the log"
    );
    assert!(s
        .condition("cnp", Some("shop"), "rbac-probe", "Valid")?
        .is_null());
    // Restored: the retry succeeds and the problem clears.
    s.cp.apply_yaml(&text)?;
    s.wait_condition("cnp", Some("shop"), "rbac-probe", "Valid", |c| {
        c["status"] == "True"
    })?;
    eventually("health clears", STEP, || {
        let h = s.health(leader)?;
        Ok(if h["kubernetes"]["healthy"] == true {
            Ok(())
        } else {
            Err(h.to_string())
        })
    })?;
    Ok(())
}
