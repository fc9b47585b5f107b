//! Pods' endpoints and identities, as kubectl shows them.

use super::*;

fn pod_yaml(name: &str, app: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    app: {app}\n\
         spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: registry.invalid/none\n"
    )
}

pub(super) fn endpoints_and_identities(s: &Setup, layout: &Layout) -> Result<()> {
    // No kubelet: the Pods stay Pending; the harness plays the agent.
    let mut uids = BTreeMap::new();
    for (name, app, node) in [("web-0", "web", "ax-n1"), ("client-0", "client", "ax-n2")] {
        let yaml = pod_yaml(name, app, node);
        // The namespace's `default` ServiceAccount appears shortly after
        // the namespace; until then admission refuses pods.
        eventually(&format!("pod {name} created"), STEP, || {
            Ok(match s.cp.kubectl_stdin(["apply", "-f", "-"], &yaml) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{e:#}")),
            })
        })?;
        let pod = s.get_json(&["pod", name, "-n", "shop"])?.context("pod")?;
        let uid = pod["metadata"]["uid"].as_str().context("uid")?.to_string();
        uids.insert(name, uid.clone());
        let record = EndpointRecord {
            id: format!("ep-{name}"),
            node: node.to_string(),
            labels: vec![
                format!("k8s:app={app}"),
                "k8s:io.kubernetes.pod.namespace=shop".to_string(),
            ],
            addresses: vec![
                format!("10.200.{}.5", if node == "ax-n1" { 0 } else { 1 }),
                "fd00::5".to_string(),
            ],
            namespace: Some("shop".into()),
            interface: None,
            pod_name: Some(name.to_string()),
            pod_uid: Some(uid),
            named_ports: Default::default(),
            policy_audit_mode: false,
        };
        s.kv.put(&layout.endpoint(node, &format!("ep-{name}")), &record)?;
    }
    // The identity, mirrored as a CiliumIdentity.
    let assignment_key = layout.endpoint_identity("ax-n1", "ep-web-0");
    let id = eventually("web-0's identity", STEP, || {
        Ok(match s.kv.json(&assignment_key)? {
            Some((v, _)) if v["identity"].is_u64() => Ok(v["identity"].as_u64().unwrap()),
            other => Err(format!("{other:?}")),
        })
    })?;
    let ciliumid = eventually("CiliumIdentity", STEP, || {
        Ok(s.get_json(&["ciliumid", &id.to_string()])?
            .ok_or_else(|| "absent".to_string()))
    })?;
    assert_eq!(ciliumid["security-labels"]["k8s:app"], "web", "{ciliumid}");
    assert_eq!(
        ciliumid["metadata"]["labels"]["io.kubernetes.pod.namespace"],
        "shop"
    );
    // The endpoint, mirrored as a CiliumEndpoint owned by its Pod.
    let cep = eventually("CiliumEndpoint web-0", STEP, || {
        Ok(match s.get_json(&["cep", "web-0", "-n", "shop"])? {
            Some(v) if v["status"]["identity"]["id"] == id => Ok(v),
            other => Err(format!("{other:?}")),
        })
    })?;
    assert_eq!(cep["metadata"]["ownerReferences"][0]["uid"], uids["web-0"]);
    assert_eq!(cep["metadata"]["ownerReferences"][0]["kind"], "Pod");
    let net = &cep["status"]["networking"];
    assert_eq!(net["addressing"][0]["ipv4"], "10.200.0.5");
    assert_eq!(net["addressing"][0]["ipv6"], "fd00::5");
    assert_eq!(net["node"], "192.168.77.1");
    assert_eq!(cep["status"]["state"], "not-ready", "{cep}");
    assert!(cep["status"]["identity"]["labels"]
        .as_array()
        .is_some_and(|l| l.iter().any(|l| l == "k8s:app=web")));
    // The node reports the endpoint enforced: ready, ingress enforcing.
    report(
        s,
        "ax-n1",
        &[],
        &[(
            "ep-web-0",
            EndpointEnforcement {
                ready: true,
                ingress_enforced: true,
                egress_enforced: false,
            },
        )],
    )?;
    eventually("CiliumEndpoint ready", STEP, || {
        let v = s
            .get_json(&["cep", "web-0", "-n", "shop"])?
            .unwrap_or_default();
        let ok = v["status"]["state"] == "ready"
            && v["status"]["policy"]["ingress"]["state"] == "enforcing"
            && v["status"]["policy"]["egress"]["state"] == "non-enforcing";
        Ok(if ok {
            Ok(())
        } else {
            Err(v["status"].to_string())
        })
    })?;
    eventually("CiliumEndpoint client-0", STEP, || {
        Ok(s.get_json(&["cep", "client-0", "-n", "shop"])?
            .map(|_| ())
            .ok_or_else(|| "absent".to_string()))
    })?;
    // The endpoint goes: its CiliumEndpoint goes, and identity GC takes
    // the CiliumIdentity with the identity.
    s.kv.delete(&layout.endpoint("ax-n1", "ep-web-0"))?;
    eventually("CiliumEndpoint web-0 gone", STEP, || {
        Ok(match s.get_json(&["cep", "web-0", "-n", "shop"])? {
            None => Ok(()),
            Some(_) => Err("present".into()),
        })
    })?;
    eventually("identity collected", STEP, || {
        Ok(
            match s
                .kv
                .get(&layout.identity_id(axoneme_identity::NumericIdentity(u32::try_from(id)?)))?
            {
                None => Ok(()),
                Some(_) => Err("present".into()),
            },
        )
    })?;
    eventually("CiliumIdentity gone with it", STEP, || {
        Ok(match s.get_json(&["ciliumid", &id.to_string()])? {
            None => Ok(()),
            Some(_) => Err("present".into()),
        })
    })?;
    // client-0's stay.
    assert!(s.get_json(&["cep", "client-0", "-n", "shop"])?.is_some());
    Ok(())
}
