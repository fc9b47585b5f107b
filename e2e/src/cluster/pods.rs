//! Pods of the local cluster: network namespaces plugged in by the real
//! `axoneme-cni` binary (invoked as a container runtime does), each with a
//! cgroup under its node's, and what tests run inside them.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Cluster;
use crate::cgroup::Cgroup;
use crate::netns::Netns;
use crate::{bin_path, Proc};

/// A pod made through the CNI plugin.
pub struct CniPod {
    pub name: String,
    pub node: usize,
    pub container_id: String,
    pub ns: Netns,
    /// The CNI result (JSON) of its ADD.
    pub result: serde_json::Value,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    /// How long its CNI ADD took (plugin start to return).
    pub ready: Duration,
    /// The pod's cgroup, under its node's: the processes
    /// [`CniPod::command`] starts run there, so services are translated
    /// for them.
    pub cgroup: Option<Cgroup>,
}

/// What one CNI invocation returned.
#[derive(Debug)]
pub struct CniOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CniOutput {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("CNI output is not JSON: {:?}", self.stdout))
    }

    /// The CNI error of a failed call: (code, message and details).
    pub fn error(&self) -> Result<(u64, String)> {
        let v = self.json()?;
        Ok((
            v["code"].as_u64().context("code")?,
            format!("{} {}", v["msg"], v["details"]),
        ))
    }
}

impl Cluster {
    /// The request-logging HTTP backend ([`crate::http`]) in `pod` on
    /// `port`, stopped with the cluster; returns the path of its log.
    pub fn logging_backend(&mut self, pod: &CniPod, port: u16) -> Result<PathBuf> {
        let log = self.dir.join(format!("requests-{}-{port}.log", pod.name));
        let out = self.dir.join(format!("backend-{}-{port}.out", pod.name));
        self.extra
            .push(crate::http::logging_backend(&pod.ns, port, &log, &out)?);
        Ok(log)
    }

    /// A real HTTP server (Python's `http.server`, both families) in `pod`
    /// on `port`, stopped with the cluster; returns once it answers.
    pub fn http_server(&mut self, pod: &CniPod, port: u16) -> Result<()> {
        let mut cmd = pod.ns.command(&[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "::",
            &port.to_string(),
        ]);
        cmd.current_dir(&self.dir);
        let name = format!("http-{}-{port}", pod.name);
        let log = self.dir.join(format!("{name}.log"));
        self.extra.push(Proc::spawn(&name, cmd, &log)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pod.http_ok("127.0.0.1", port) {
            if Instant::now() > deadline {
                bail!("the HTTP server in {} did not start", pod.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The network configuration for node `i` with these labels.
    pub fn cni_config(&self, node: usize, labels: &[(&str, &str)]) -> serde_json::Value {
        let labels: Vec<serde_json::Value> = labels
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "axoneme",
            "type": "axoneme-cni",
            "agentSocket": self.nodes[node].socket,
            "timeoutMs": 15000,
            "args": {"cni": {"labels": labels}},
        })
    }

    /// Runs the CNI plugin as a runtime does.
    pub fn cni(
        &self,
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
        cni_args: &str,
        stdin: &[u8],
    ) -> Result<CniOutput> {
        let plugin = bin_path("axoneme-cni");
        let start = Instant::now();
        let mut child = Command::new(&plugin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", cni_args)
            .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running axoneme-cni")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin)
            .context("writing the CNI config")?;
        let out = child.wait_with_output()?;
        Ok(CniOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        })
    }

    /// Creates pod `name` on `node` with `labels` through CNI ADD (in
    /// Kubernetes mode: a Pod object in `default` first, its labels taken
    /// from there by the agent, and its `status.podIPs` set after, as a
    /// kubelet does).
    /// A CNI ADD of a new pod `name` (app=checkout) on `node`, expected to
    /// fail: its output, and the namespace it was to plug in.
    pub fn failing_add(&self, node: usize, name: &str) -> Result<(CniOutput, Netns)> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let config = serde_json::to_vec(&self.cni_config(node, &[("app", "checkout")]))?;
        let out = self.cni(
            "ADD",
            &format!("{}-{name}", self.prefix),
            &ns.path().to_string_lossy(),
            "eth0",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default",
            &config,
        )?;
        anyhow::ensure!(!out.success, "the ADD of {name} succeeded: {out:?}");
        Ok((out, ns))
    }

    /// How many files node `i`'s agent keeps in its endpoints directory
    /// with extension `ext` (`json`: endpoints' state; `orphan`: records
    /// to delete).
    pub fn endpoint_files(&self, i: usize, ext: &str) -> Result<usize> {
        Ok(
            std::fs::read_dir(self.nodes[i].state_dir.join("endpoints"))?
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count(),
        )
    }

    pub fn add_pod(&self, node: usize, name: &str, labels: &[(&str, &str)]) -> Result<CniPod> {
        self.add_pod_in(node, "default", name, labels)
    }

    /// [`Self::add_pod`] in Kubernetes namespace `namespace`.
    pub fn add_pod_in(
        &self,
        node: usize,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<CniPod> {
        self.add_pod_as(node, namespace, name, labels, None)
    }

    /// [`Self::add_pod_in`] running as ServiceAccount `service_account`
    /// (Kubernetes mode only; created when it is not `default`).
    pub fn add_pod_as(
        &self,
        node: usize,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        service_account: Option<&str>,
    ) -> Result<CniPod> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let cgroup = match &self.nodes[node].cgroup {
            Some(cg) => Some(cg.child(name)?),
            None => None,
        };
        let container_id = format!("{}-{name}", self.prefix);
        let mut cni_args =
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
        let config = match &self.kube {
            Some(kube) => {
                let uid = kube.create_pod_as(
                    namespace,
                    name,
                    &self.nodes[node].name,
                    labels,
                    service_account,
                )?;
                cni_args.push_str(&format!(
                    ";K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"
                ));
                self.cni_config(node, &[])
            }
            None => self.cni_config(node, labels),
        };
        let config = serde_json::to_vec(&config)?;
        let out = self.cni(
            "ADD",
            &container_id,
            &ns.path().to_string_lossy(),
            "eth0",
            &cni_args,
            &config,
        )?;
        if !out.success {
            bail!(
                "CNI ADD of {name} failed: {} {}\n{}",
                out.stdout,
                out.stderr,
                self.agent_log(node)
            );
        }
        let result = out.json()?;
        let mut ip = None;
        let mut ip6 = None;
        for a in result["ips"].as_array().into_iter().flatten() {
            let addr = a["address"].as_str().unwrap_or_default();
            match addr.split('/').next().unwrap_or_default().parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => ip = Some(v4),
                Ok(IpAddr::V6(v6)) => ip6 = Some(v6),
                Err(_) => bail!("bad address {addr:?} in {result}"),
            }
        }
        let ip = ip.context("no IPv4 address in the CNI result")?;
        if let Some(kube) = &self.kube {
            let ips: Vec<IpAddr> = std::iter::once(IpAddr::V4(ip))
                .chain(ip6.map(IpAddr::V6))
                .collect();
            kube.set_pod_ips(namespace, name, &ips)?;
        }
        Ok(CniPod {
            name: name.to_string(),
            node,
            container_id,
            ns,
            ip,
            ip6,
            ready: out.elapsed,
            result,
            cgroup,
        })
    }

    /// CNI DEL of a pod (its namespace goes when the pod is dropped).
    pub fn delete_pod(&self, pod: &CniPod) -> Result<()> {
        let config = serde_json::to_vec(&self.cni_config(pod.node, &[]))?;
        let out = self.cni(
            "DEL",
            &pod.container_id,
            &pod.ns.path().to_string_lossy(),
            "eth0",
            "",
            &config,
        )?;
        if !out.success {
            bail!(
                "CNI DEL of {} failed: {} {}",
                pod.name,
                out.stdout,
                out.stderr
            );
        }
        Ok(())
    }
}

impl CniPod {
    /// A command run inside the pod (its network namespace and, in
    /// standalone mode, its cgroup), as a container's process would be.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut all = vec!["ip", "netns", "exec", &self.ns.name];
        all.extend_from_slice(args);
        match &self.cgroup {
            Some(cg) => cg.command(&all),
            None => self.ns.command(args),
        }
    }

    /// The HTTP status `curl` from this pod gets for `METHOD
    /// http://addr:port/path` within a second; `None` when no answer
    /// came (the connection was blocked).
    pub fn http(&self, method: &str, addr: &str, port: u16, path: &str) -> Option<u16> {
        self.http_with(method, addr, port, path, None, 1)
    }

    /// [`Self::http`] with a request `body` and a deadline of `seconds`.
    pub fn http_with(
        &self,
        method: &str,
        addr: &str,
        port: u16,
        path: &str,
        body: Option<&str>,
        seconds: u32,
    ) -> Option<u16> {
        let host = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr.to_string()
        };
        let seconds = seconds.to_string();
        let url = format!("http://{host}:{port}{path}");
        let mut args = vec![
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            &seconds,
            "-X",
            method,
            "-w",
            "%{http_code}",
        ];
        if let Some(body) = body {
            args.extend(["--data", body]);
        }
        args.push(&url);
        let out = self.command(&args).stderr(Stdio::null()).output().ok()?;
        let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        (out.status.success() && code != 0).then_some(code)
    }

    /// Whether `GET http://addr:port/` from this pod answers 200.
    pub fn http_ok(&self, addr: &str, port: u16) -> bool {
        self.http("GET", addr, port, "/") == Some(200)
    }

    /// `GET`s of `paths` from this pod to `addr:port` on one kept-alive
    /// connection, each given a second: the status of each (`None`: no
    /// answer), and how many connections the client opened in all.
    /// HTTP/1.1 with curl (one request after the other); cleartext HTTP/2
    /// with prior knowledge (`h2c`) with nghttp, which multiplexes every
    /// request as a stream of its one connection (curl 7.88 cannot reuse
    /// an h2c connection).
    pub fn http_session(
        &self,
        addr: &str,
        port: u16,
        paths: &[&str],
        h2c: bool,
    ) -> Result<(Vec<Option<u16>>, u32)> {
        let host = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr.to_string()
        };
        let urls = paths.iter().map(|p| format!("http://{host}:{port}{p}"));
        let mut args: Vec<String> = if h2c {
            ["nghttp", "-n", "--stat", "-t", "2"]
                .map(String::from)
                .into()
        } else {
            [
                "curl",
                "-s",
                "--max-time",
                "2",
                "-w",
                "%{http_code} %{num_connects}\\n",
            ]
            .map(String::from)
            .into()
        };
        for url in urls {
            if !h2c {
                args.extend(["-o".into(), "/dev/null".into()]);
            }
            args.push(url);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.command(&args).stderr(Stdio::null()).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if h2c {
            // `--stat`: a row per answered stream, `id responseEnd
            // requestStart process code size path`.
            let rows: Vec<(String, u16)> = text
                .lines()
                .skip_while(|l| !l.starts_with("id "))
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    Some((f.get(6)?.to_string(), f.get(4)?.parse().ok()?))
                })
                .collect();
            let codes = paths
                .iter()
                .map(|p| rows.iter().find(|(path, _)| path == p).map(|r| r.1))
                .collect();
            return Ok((codes, u32::from(!rows.is_empty())));
        }
        let mut codes = Vec::new();
        let mut connects = 0;
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let code: u16 = f.next().unwrap_or("").parse().unwrap_or(0);
            connects += f.next().unwrap_or("").parse::<u32>().unwrap_or(0);
            codes.push((code != 0).then_some(code));
        }
        if codes.len() != paths.len() {
            bail!("curl from {} wrote {text:?} for {paths:?}", self.name);
        }
        Ok((codes, connects))
    }
}
