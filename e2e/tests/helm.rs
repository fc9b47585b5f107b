//! The Helm chart, as users install it. It lints (Helm v4 and v3) on its
//! defaults and four value sets, and its schema rejects bad values naming
//! them. Every value set renders to objects the real kube-apiserver accepts
//! (server-side dry run). With `dashboards.enabled` it renders the Grafana
//! dashboards ConfigMap holding every dashboard of `dashboards/`.
//!
//! `helm install` into the real control plane creates everything. Then the
//! operators and agents run configured only from the installed ConfigMap,
//! with tokens of the chart's ServiceAccounts, and the seed scenario passes:
//! the chart's RBAC is proven by use. A verb taken from the agent's
//! ClusterRole shows as a permission error naming it. `helm upgrade` to
//! `policyEnforcementMode=always` changes the restarted agents' behaviour.
//! `helm uninstall` removes everything but the CRDs.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use axoneme_e2e::expect::{seed_policy, until_http, until_post, wait_condition, wait_for};
use axoneme_e2e::helm::{chart_dir, helm_bin, undocumented_values, values_readme, NAMESPACE};
use axoneme_e2e::{Cluster, ClusterConfig};

/// The value sets beside the defaults (`helm/axoneme/ci/`).
fn value_sets() -> Result<Vec<PathBuf>> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    sets.sort();
    Ok(sets)
}

fn helm(major: u8, args: &[&str]) -> Result<Output> {
    std::process::Command::new(helm_bin(major)?)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .context("running helm")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn the_chart_lints_and_its_schema_names_bad_values() -> Result<()> {
    let chart = chart_dir().display().to_string();
    let sets = value_sets()?;
    assert!(sets.len() >= 4, "value sets: {sets:?}");
    for major in [4, 3] {
        let mut runs = vec![vec![]];
        runs.extend(
            sets.iter()
                .map(|s| vec!["-f".to_string(), s.display().to_string()]),
        );
        for extra in runs {
            let mut args = vec!["lint", "--strict", chart.as_str()];
            args.extend(extra.iter().map(String::as_str));
            let out = helm(major, &args)?;
            assert!(
                out.status.success() && text(&out).contains("0 chart(s) failed"),
                "helm v{major} lint {extra:?}: {}",
                text(&out)
            );
        }
    }

    // Five kinds of bad value, each refused with a message naming it.
    for (set, want) in [
        (
            "operator.replicas=two",
            "'/operator/replicas': got string, want integer",
        ),
        (
            "nosuchkey=1",
            "additional properties 'nosuchkey' not allowed",
        ),
        (
            "operator.replicas=0",
            "'/operator/replicas': minimum: got 0, want 1",
        ),
        (
            "ipam.operator.clusterPoolIPv4PodCIDRList={10.0.0.0/33}",
            "clusterPoolIPv4PodCIDRList[0]: \"10.0.0.0/33\" is not an IPv4 CIDR",
        ),
        (
            "kubeProxyReplacement=maybe",
            "'/kubeProxyReplacement': got string, want boolean",
        ),
        (
            "policyEnforcementMode=sometimes",
            "'/policyEnforcementMode': value must be one of 'default', 'always', 'never'",
        ),
        (
            "dashboards.enabled=yes",
            "'/dashboards/enabled': got string, want boolean",
        ),
        ("hubble.listenAddress=4244", "'/hubble/listenAddress'"),
        (
            "hostFirewall.enabled=yes",
            "'/hostFirewall/enabled': got string, want boolean",
        ),
    ] {
        let out = helm(4, &["template", "t", &chart, "--set", set])?;
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(text(&out).contains(want), "--set {set}: {}", text(&out));
        // Helm v3 refuses the same values (its messages differ in form).
        let out = helm(3, &["template", "t", &chart, "--set", set])?;
        let key = set.split(['=', '.']).next().unwrap_or(set);
        assert!(
            !out.status.success() && text(&out).contains(key),
            "helm v3 --set {set}: {}",
            text(&out)
        );
    }

    dashboards_configmap_renders(&chart)?;
    hubble_tcp_renders(&chart)?;
    for (set, want) in [
        (
            "hostFirewall.enabled=true",
            r#"enable-host-firewall: "true""#,
        ),
        (
            "hostFirewall.enabled=false",
            r#"enable-host-firewall: "false""#,
        ),
    ] {
        let out = helm(4, &["template", "t", &chart, "--set", set])?;
        assert!(text(&out).contains(want), "--set {set}: {}", text(&out));
    }

    // Every value is documented, and the README says what values.yaml does.
    let values = std::fs::read_to_string(chart_dir().join("values.yaml"))?;
    assert_eq!(undocumented_values(&values)?, Vec::<String>::new());
    let readme = std::fs::read_to_string(chart_dir().join("README.md"))?;
    assert!(
        readme == values_readme(&values)?,
        "helm/axoneme/README.md is out of date: run `cargo xtask helm-docs`"
    );
    // The chart's versions are the workspace's.
    let chart_yaml = std::fs::read_to_string(chart_dir().join("Chart.yaml"))?;
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        chart_yaml.contains(&format!("\nversion: {version}\n"))
            && chart_yaml.contains(&format!("\nappVersion: \"{version}\"\n")),
        "Chart.yaml's version and appVersion must be {version}"
    );
    Ok(())
}

/// `hubble.listenAddress` renders the agent's TCP API flags: with TLS (the
/// default) the Secret mounted and its files named, client CA included;
/// with `tls.enabled=false`, clear text said explicitly and no Secret.
fn hubble_tcp_renders(chart: &str) -> Result<()> {
    let render = |sets: &[&str]| -> Result<String> {
        let mut args = vec![
            "template",
            "t",
            chart,
            "--set",
            "hubble.listenAddress=:4244",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = helm(4, &args)?;
        anyhow::ensure!(
            out.status.success(),
            "helm template {sets:?}: {}",
            text(&out)
        );
        Ok(text(&out))
    };
    let tls = render(&[])?;
    for want in [
        r#"hubble-listen-address: ":4244""#,
        r#"hubble-tls-cert-file: "/var/lib/axoneme/hubble-tls/tls.crt""#,
        r#"hubble-tls-key-file: "/var/lib/axoneme/hubble-tls/tls.key""#,
        r#"hubble-tls-client-ca-files: "/var/lib/axoneme/hubble-tls/ca.crt""#,
        "secretName: hubble-server-certs",
    ] {
        assert!(tls.contains(want), "{want} not rendered:\n{tls}");
    }
    let clear = render(&["hubble.tls.enabled=false"])?;
    assert!(clear.contains(r#"hubble-disable-tls: "true""#), "{clear}");
    assert!(!clear.contains("hubble-tls"), "{clear}");
    let default = helm(4, &["template", "t", chart])?;
    assert!(!text(&default).contains("hubble-listen-address"));
    Ok(())
}

/// `dashboards.enabled=true` renders ConfigMap `axoneme-dashboards` with
/// every file of `dashboards/` under its name, the same JSON, labelled for
/// Grafana's sidecar, in the namespace and with the annotations asked for;
/// the defaults render no dashboards.
fn dashboards_configmap_renders(chart: &str) -> Result<()> {
    let dir = chart_dir().join("dashboards");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let path = e?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{name} is not JSON"))?;
        files.push((name, json));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "axoneme-agent.json",
            "axoneme-operator.json",
            "axoneme-slo.json"
        ]
    );
    for major in [4, 3] {
        let out = helm(
            major,
            &[
                "template",
                "axoneme",
                chart,
                "-n",
                "kube-system",
                "--set",
                "dashboards.enabled=true",
                "--set",
                "dashboards.namespace=monitoring",
                "--set",
                "dashboards.annotations.grafana_folder=Axoneme",
                "--show-only",
                "templates/dashboards.yaml",
            ],
        )?;
        assert!(
            out.status.success(),
            "helm v{major} template: {}",
            text(&out)
        );
        let cm: serde_yaml::Value = serde_yaml::from_slice(&out.stdout)?;
        assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
        let meta = &cm["metadata"];
        assert_eq!(meta["name"].as_str(), Some("axoneme-dashboards"));
        assert_eq!(meta["namespace"].as_str(), Some("monitoring"));
        assert_eq!(meta["labels"]["grafana_dashboard"].as_str(), Some("1"));
        assert_eq!(
            meta["annotations"]["grafana_folder"].as_str(),
            Some("Axoneme")
        );
        let data = cm["data"].as_mapping().context("data")?;
        assert_eq!(data.len(), files.len(), "helm v{major}: {data:?}");
        for (name, json) in &files {
            let rendered = data
                .get(name.as_str())
                .and_then(|v| v.as_str())
                .with_context(|| format!("helm v{major}: {name} missing"))?;
            let rendered: serde_json::Value = serde_json::from_str(rendered)?;
            assert_eq!(
                &rendered, json,
                "helm v{major}: {name} differs from the file"
            );
        }
    }
    let out = helm(4, &["template", "axoneme", chart])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("axoneme-dashboards"),
        "rendered by default"
    );
    Ok(())
}

/// `kubectl get` of objects by label in the release's namespace, as names.
fn release_objects(c: &Cluster, kinds: &str) -> Result<String> {
    let kube = c.kube.as_ref().context("control plane")?;
    let out = kube.kubectl([
        "get",
        kinds,
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/part-of=axoneme",
        "-o",
        "name",
    ])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn helm_install_runs_the_seed_scenario_and_upgrade_and_uninstall_work() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig {
        helm: Some(Vec::new()),
        ..ClusterConfig::default()
    })?;
    let kube = c.kube.as_ref().context("control plane")?;

    // Every value set renders to objects the API server accepts.
    let chart = chart_dir().display().to_string();
    let mut renders = vec![vec![]];
    renders.extend(
        value_sets()?
            .iter()
            .map(|s| vec!["-f".to_string(), s.display().to_string()]),
    );
    for extra in &renders {
        let mut args = vec![
            "template",
            "axoneme",
            &chart,
            "-n",
            NAMESPACE,
            "--include-crds",
        ];
        args.extend(extra.iter().map(String::as_str));
        let out = helm(4, &args)?;
        assert!(
            out.status.success(),
            "helm template {extra:?}: {}",
            text(&out)
        );
        let manifest = String::from_utf8(out.stdout)?;
        let applied = kube
            .kubectl_stdin(["apply", "--dry-run=server", "-f", "-"], &manifest)
            .with_context(|| format!("server dry run of the chart with {extra:?}"))?;
        let accepted = String::from_utf8_lossy(&applied.stdout).lines().count();
        let objects = manifest.matches("\nkind: ").count();
        assert_eq!(accepted, objects, "{extra:?}: {}", text(&applied));
        eprintln!("dry run {extra:?}: {accepted} objects accepted");
    }

    // What `helm install` created, as a Cilium user looks at it.
    let workloads = release_objects(&c, "ds,deploy,cm,sa,svc")?;
    for want in [
        "daemonset.apps/axoneme-agent",
        "deployment.apps/axoneme-operator",
        "configmap/axoneme-config",
        "serviceaccount/axoneme-agent",
        "serviceaccount/axoneme-operator",
        "service/axoneme-agent-metrics",
    ] {
        assert!(workloads.contains(want), "{want} missing: {workloads}");
    }
    let roles = release_objects(&c, "clusterrole,clusterrolebinding")?;
    assert_eq!(roles.lines().count(), 4, "{roles}");
    // The operators and agents found etcd's members by name through the
    // API server (no DNS here knows `<member>.<service>.kube-system.svc`).
    let config_endpoints = std::fs::read_to_string(c.config_dir().join("etcd-endpoints"))?;
    assert!(config_endpoints.contains(".svc:"), "{config_endpoints}");

    // The seed scenario, with every process configured by the chart.
    let payments = c.add_pod(0, "payments", &[("app", "payments")])?;
    let checkout = c.add_pod(1, "checkout", &[("app", "checkout")])?;
    let intruder = c.add_pod(1, "intruder", &[("app", "intruder")])?;
    c.logging_backend(&payments, 8080)?;
    c.http_server(&intruder, 8080)?;
    let kube = c.kube.as_ref().context("control plane")?;
    kube.kubectl(["apply", "-f", seed_policy().to_str().context("path")?])?;
    wait_condition(kube, "payments-api", "Valid", "True")?;
    let cnps = kube.kubectl(["get", "cnp"])?;
    let cnps = String::from_utf8_lossy(&cnps.stdout);
    assert!(
        cnps.contains("payments-api") && cnps.contains("True"),
        "{cnps}"
    );
    let pay = payments.ip.to_string();
    let ten = Duration::from_secs(10);
    until_post(&intruder, &pay, None, ten)?;
    until_post(&checkout, &pay, Some(200), ten)?;
    until_http(&checkout, "GET", &pay, "/v1/charge", Some(403), ten)?;
    // policyEnforcementMode=default: a pod no policy selects is open.
    let to_intruder = intruder.ip.to_string();
    until_http(&checkout, "GET", &to_intruder, "/", Some(200), ten)?;
    let brief = c.cli(1, &["status", "--brief"])?;
    assert_eq!(String::from_utf8_lossy(&brief.stdout).trim(), "OK");

    // One verb fewer in the agent's ClusterRole: the restarted agent says
    // which permission it lacks, in its log and in `status --brief`.
    let kube = c.kube.as_ref().context("control plane")?;
    let role = kube.kubectl(["get", "clusterrole", "axoneme-agent", "-o", "json"])?;
    let mut role: serde_json::Value = serde_json::from_slice(&role.stdout)?;
    let rules = role["rules"].as_array_mut().context("rules")?;
    let pods = rules
        .iter_mut()
        .find(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "pods"))
        })
        .context("the pods rule")?;
    pods["verbs"] = serde_json::json!(["get", "watch"]);
    kube.kubectl_stdin(["replace", "-f", "-"], &role.to_string())?;
    c.restart_agent(1).ok();
    let mut said = String::new();
    wait_for("the agent reports the missing permission", ten, || {
        let out = c.cli_command(1, &["status", "--brief"]).output()?;
        said = text(&out);
        Ok(!out.status.success() && said.contains("cannot list resource \"pods\""))
    })?;
    eprintln!("without `list pods`: {}", said.trim());
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert_eq!(said.matches("cannot list").count(), 1, "said twice: {said}");
    assert!(
        c.agent_log(1).contains("forbidden"),
        "the agent's log does not say forbidden"
    );

    // `helm upgrade` to always: the ConfigMap changes, Helm puts the
    // ClusterRole back, and the restarted agents deny what no policy
    // allows, even into a pod no policy selects.
    let kube = c.kube.as_ref().context("control plane")?;
    let mut upgrade: Vec<String> = ["--reuse-values", "--set", "policyEnforcementMode=always"]
        .map(String::from)
        .to_vec();
    // Helm v4 applies server-side: it will not silently undo a hand edit,
    // it names who made it; `--force-conflicts` takes the fields back.
    let refused = axoneme_e2e::helm::install(kube, "upgrade", &upgrade).unwrap_err();
    assert!(
        format!("{refused:#}").contains("conflict with \"kubectl-replace\""),
        "{refused:#}"
    );
    upgrade.push("--force-conflicts".into());
    axoneme_e2e::helm::install(kube, "upgrade", &upgrade)?;
    let keys = c.write_config_dir()?;
    assert!(keys.contains(&"enforcement".to_string()), "{keys:?}");
    assert_eq!(
        std::fs::read_to_string(c.config_dir().join("enforcement"))?,
        "always"
    );
    let role = kube.kubectl(["get", "clusterrole", "axoneme-agent", "-o", "json"])?;
    assert!(
        String::from_utf8_lossy(&role.stdout).contains("\"list\""),
        "helm upgrade left the ClusterRole without list"
    );
    for i in 0..c.nodes.len() {
        c.restart_agent(i)?;
    }
    wait_for("agent 1 healthy again", ten, || {
        let out = c.cli(1, &["status", "--brief"]);
        Ok(out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "OK"))
    })?;
    until_http(&checkout, "GET", &to_intruder, "/", None, ten)?;
    until_post(&intruder, &pay, None, ten)?;

    // `helm uninstall`: everything but the CRDs (and the policies in them).
    let kube = c.kube.as_ref().context("control plane")?;
    axoneme_e2e::helm::run(
        kube,
        &[
            "uninstall".into(),
            axoneme_e2e::helm::RELEASE.into(),
            "-n".into(),
            NAMESPACE.into(),
            "--wait".into(),
        ],
    )?;
    let left = release_objects(&c, "ds,deploy,cm,sa,svc,secret,pdb,statefulset")?
        + &release_objects(&c, "clusterrole,clusterrolebinding,role,rolebinding")?;
    assert_eq!(left.trim(), "", "left after uninstall");
    let kube = c.kube.as_ref().context("control plane")?;
    kube.kubectl(["get", "crd", "ciliumnetworkpolicies.cilium.io"])?;
    kube.kubectl(["get", "cnp", "payments-api"])?;
    Ok(())
}
