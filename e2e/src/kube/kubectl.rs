//! Running the built kubectl against the control plane: as admin or with
//! another kubeconfig, with input on stdin, failing with kubectl's stderr.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

use super::KubeControlPlane;

pub(super) fn check(what: &str, out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn render_args<I, S>(args: I) -> (Vec<std::ffi::OsString>, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    (args, shown)
}

impl KubeControlPlane {
    /// Path of the built kubectl.
    pub fn kubectl_bin(&self) -> &Path {
        &self.kubectl_bin
    }

    /// A kubectl command with the admin kubeconfig and nothing else.
    pub fn kubectl_command(&self) -> Command {
        self.kubectl_command_as(&self.admin_kubeconfig)
    }

    fn kubectl_command_as(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(&self.kubectl_bin);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl as admin; an error with its stderr when it fails.
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (args, shown) = render_args(args);
        let out = self.kubectl_output(&args)?;
        check(&format!("kubectl {shown}"), out)
    }

    /// Runs kubectl as admin and returns its output whatever its exit code.
    pub fn kubectl_output<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_command()
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// Runs kubectl with another kubeconfig (e.g. a ServiceAccount's) and
    /// returns its output whatever its exit code.
    pub fn kubectl_output_as<I, S>(&self, kubeconfig: &Path, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_command_as(kubeconfig)
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// Runs kubectl as admin with `input` on stdin; an error when it fails.
    pub fn kubectl_stdin<I, S>(&self, args: I, input: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (args, shown) = render_args(args);
        let mut child = self
            .kubectl_command()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_owned();
        // A separate writer: kubectl may fill its output pipes first.
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().context("waiting for kubectl")?;
        let _ = writer.join();
        check(&format!("kubectl {shown}"), out)
    }
}
