//! `axoneme-cni install`: what the Helm chart's init container runs on
//! every node. It copies this binary into the node's CNI plugin directory
//! and writes the network configuration list that makes the runtime call
//! it, each written beside its destination and renamed into place so a
//! runtime never reads half a file.

use std::path::{Path, PathBuf};

use crate::config::{DEFAULT_AGENT_SOCKET, DEFAULT_VERSION};

/// The plugin's name: the binary in the plugin directory and the
/// configuration's `type`.
pub const PLUGIN: &str = "axoneme-cni";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The configuration's file name: it must sort first among the
    /// directory's files for the runtime to use it.
    pub conf_name: String,
    pub agent_socket: String,
}

const USAGE: &str = "usage: axoneme-cni install --bin-dir=DIR --conf-dir=DIR \
                     [--conf-name=NAME.conflist] [--agent-socket=PATH]";

/// Parses `install`'s arguments (after the word `install`).
pub fn parse(args: &[String]) -> Result<Install, String> {
    let mut install = Install {
        bin_dir: PathBuf::new(),
        conf_dir: PathBuf::new(),
        conf_name: "05-axoneme.conflist".into(),
        agent_socket: DEFAULT_AGENT_SOCKET.into(),
    };
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(format!("`{arg}`: give --flag=value; {USAGE}"));
        };
        if value.is_empty() {
            return Err(format!("{key} is empty; {USAGE}"));
        }
        match key {
            "--bin-dir" => install.bin_dir = value.into(),
            "--conf-dir" => install.conf_dir = value.into(),
            "--conf-name" => install.conf_name = value.into(),
            "--agent-socket" => install.agent_socket = value.into(),
            other => return Err(format!("unknown flag {other}; {USAGE}")),
        }
    }
    if install.bin_dir.as_os_str().is_empty() || install.conf_dir.as_os_str().is_empty() {
        return Err(format!("--bin-dir and --conf-dir are required; {USAGE}"));
    }
    if !install.conf_name.ends_with(".conflist") || install.conf_name.contains('/') {
        return Err(format!(
            "--conf-name={}: give a file name ending in .conflist",
            install.conf_name
        ));
    }
    Ok(install)
}

/// The network configuration list.
pub fn conflist(agent_socket: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": DEFAULT_VERSION,
        "name": "axoneme",
        "plugins": [{ "type": PLUGIN, "agentSocket": agent_socket }],
    })
}

/// Installs `binary` and the configuration; the paths written.
pub fn run(install: &Install, binary: &Path) -> Result<Vec<PathBuf>, String> {
    let plugin = install.bin_dir.join(PLUGIN);
    let bytes = std::fs::read(binary).map_err(|e| format!("reading {}: {e}", binary.display()))?;
    write_atomic(&plugin, &bytes, 0o755)?;
    let conf = install.conf_dir.join(&install.conf_name);
    let text = serde_json::to_vec_pretty(&conflist(&install.agent_socket))
        .map_err(|e| format!("encoding the configuration: {e}"))?;
    write_atomic(&conf, &text, 0o644)?;
    Ok(vec![plugin, conf])
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // A dot-name, so runtimes scanning the directory skip it meanwhile.
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", tmp.display());
    std::fs::write(&tmp, bytes).map_err(|e| fail("writing", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail("setting the mode of", e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("moving {} into place: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn installs_the_plugin_and_a_configuration_the_plugin_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        let fake = dir.path().join("self");
        std::fs::write(&fake, b"\x7fELF plugin").unwrap();
        let install = parse(&args(&[
            &format!("--bin-dir={}", bin.display()),
            &format!("--conf-dir={}", conf.display()),
            "--agent-socket=/run/x/agent.sock",
        ]))
        .unwrap();
        let written = run(&install, &fake).unwrap();
        assert_eq!(written[0], bin.join("axoneme-cni"));
        assert_eq!(std::fs::read(&written[0]).unwrap(), b"\x7fELF plugin");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&written[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // The runtime hands each plugin its entry with the list's name and
        // version: the plugin's own parser must accept that.
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(conf.join("05-axoneme.conflist")).unwrap())
                .unwrap();
        let mut entry = list["plugins"][0].clone();
        entry["name"] = list["name"].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        let parsed = crate::config::parse(&serde_json::to_vec(&entry).unwrap()).unwrap();
        assert_eq!(parsed.agent_socket, "/run/x/agent.sock");
        // Nothing else is left in the directories (no temporary files).
        assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(&conf).unwrap().count(), 1);
        // Again (an agent restart): replaced in place.
        run(&install, &fake).unwrap();
        assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 1);
    }

    #[test]
    fn bad_arguments_are_named() {
        for (a, want) in [
            (
                vec!["--bin-dir=/b"],
                "--bin-dir and --conf-dir are required",
            ),
            (vec!["--bin-dir"], "give --flag=value"),
            (
                vec!["--bin-dir=/b", "--conf-dir=/c", "--x=1"],
                "unknown flag --x",
            ),
            (
                vec!["--bin-dir=/b", "--conf-dir=/c", "--conf-name=../a.conf"],
                "ending in .conflist",
            ),
        ] {
            let e = parse(&args(&a)).unwrap_err();
            assert!(e.contains(want), "{a:?}: {e}");
        }
        let e = run(
            &parse(&args(&["--bin-dir=/nonexistent-axoneme", "--conf-dir=/c"])).unwrap(),
            Path::new("/nonexistent-axoneme-self"),
        )
        .unwrap_err();
        assert!(e.starts_with("reading /nonexistent-axoneme-self"), "{e}");
    }
}
