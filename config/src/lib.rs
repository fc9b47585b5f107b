//! Flags from a configuration directory: one file per flag, named as the
//! flag without its dashes, holding the value — what a ConfigMap mounted as
//! a volume looks like (the Helm chart's `axoneme-config`). The agent and
//! the operator read the same directory; each takes the keys it has flags
//! for and reports the others, so one ConfigMap serves both.
//!
//! Precedence, as operators expect from Cilium (viper): a flag on the
//! command line, then its `AXONEME_*` environment variable, then the file,
//! then the default. Files are turned into command-line flags appended
//! after the given ones, so clap checks their values exactly as if they
//! had been typed, and its errors name the flag.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Command};

pub mod logging;

/// The flag (and its environment variable) naming the directory.
pub const FLAG: &str = "config-dir";
pub const ENV: &str = "AXONEME_CONFIG_DIR";

/// The command line with the directory's flags appended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub args: Vec<OsString>,
    /// The directory read, if any.
    pub dir: Option<PathBuf>,
    /// Keys taken from the directory.
    pub applied: Vec<String>,
    /// Keys this binary has no flag for (the other component's), or set
    /// already on the command line or in the environment.
    pub ignored: Vec<String>,
}

/// Appends to `args` (argv, program name first) the flags of the
/// directory given by `--config-dir` (or `AXONEME_CONFIG_DIR`) that
/// `cmd` knows and that were not given otherwise. An unreadable directory
/// or file, or a boolean file that is neither `true` nor `false`, is an
/// error naming the file.
pub fn load(cmd: &Command, args: impl IntoIterator<Item = OsString>) -> Result<Loaded, String> {
    load_with_env(cmd, args, |k| std::env::var_os(k))
}

/// `P::parse()` with the configuration directory's flags: bad input is
/// reported, naming the flag or the file, and the process exits with
/// clap's code for usage errors (2).
pub fn parse<P: clap::Parser>() -> (P, Loaded) {
    let loaded = match load(&P::command(), std::env::args_os()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    (P::parse_from(&loaded.args), loaded)
}

impl Loaded {
    /// One log line saying what the directory set.
    pub fn log_line(&self) -> Option<String> {
        let dir = self.dir.as_ref()?;
        Some(format!(
            "flags from {}: {} applied [{}], {} ignored (another component's, or set by flag or environment) [{}]",
            dir.display(),
            self.applied.len(),
            self.applied.join(" "),
            self.ignored.len(),
            self.ignored.join(" ")
        ))
    }
}

fn load_with_env(
    cmd: &Command,
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Loaded, String> {
    let args: Vec<OsString> = args.into_iter().collect();
    let Some(dir) = given_dir(&args).or_else(|| env(ENV).map(PathBuf::from)) else {
        return Ok(Loaded {
            args,
            ..Loaded::default()
        });
    };
    let given: BTreeSet<String> = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let mut out = Loaded {
        args: args.clone(),
        dir: Some(dir.clone()),
        ..Loaded::default()
    };
    for (key, path) in entries(&dir)? {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != FLAG);
        let Some(arg) = arg else {
            out.ignored.push(key);
            continue;
        };
        let from_env = arg.get_env().and_then(|e| env(&e.to_string_lossy()));
        if given.contains(&key) || from_env.is_some() {
            out.ignored.push(key);
            continue;
        }
        let raw = std::fs::read_to_string(&path)
            .map_err(|e| format!("config dir: reading {}: {e}", path.display()))?;
        let value = raw.trim();
        if value.is_empty() {
            // An empty key leaves the flag at its default (a value the
            // chart renders as "").
            continue;
        }
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                "true" => out.args.push(format!("--{key}").into()),
                "false" => {}
                other => {
                    return Err(format!(
                        "config dir: {}: `{other}` is not a boolean (true or false)",
                        path.display()
                    ))
                }
            },
            // A repeatable flag: one value per line.
            ArgAction::Append => out.args.extend(
                value
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| OsString::from(format!("--{key}={l}"))),
            ),
            _ => out.args.push(format!("--{key}={value}").into()),
        }
        out.applied.push(key);
    }
    Ok(out)
}

fn given_dir(args: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{FLAG}");
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_str()?;
        if s == flag {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// The directory's keys, sorted. Names starting with `.` are skipped: a
/// mounted ConfigMap keeps its data in `..data` and `..<timestamp>`.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let read = std::fs::read_dir(dir).map_err(|e| format!("config dir {}: {e}", dir.display()))?;
    let mut keys = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| format!("config dir {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| !n.starts_with('.')) else {
            continue;
        };
        // Follows the ConfigMap's symlinks into `..data`.
        if entry.path().is_file() {
            keys.push((name.to_string(), entry.path()));
        }
    }
    keys.sort();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cmd() -> Command {
        Command::new("t")
            .arg(Arg::new("config-dir").long("config-dir"))
            .arg(Arg::new("mode").long("mode").env("T_MODE"))
            .arg(Arg::new("port").long("port"))
            .arg(
                Arg::new("kubernetes")
                    .long("kubernetes")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("label-filter")
                    .long("label-filter")
                    .action(ArgAction::Append),
            )
    }

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (k, v) in files {
            std::fs::write(d.path().join(k), v).unwrap();
        }
        d
    }

    fn strings(l: &Loaded) -> Vec<String> {
        l.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn files_become_flags_after_the_given_ones() {
        let d = dir(&[
            ("mode", "always\n"),
            ("port", "9962"),
            ("kubernetes", "true\n"),
            ("label-filter", "k8s:app\n\nk8s:team\n"),
            ("cluster-pool-ipv4-cidr", "10.0.0.0/8"),
            (".hidden", "x"),
        ]);
        let args = ["t", "--config-dir", d.path().to_str().unwrap(), "--port=1"];
        let l = load_with_env(&cmd(), args.map(OsString::from), |_| None).unwrap();
        assert_eq!(
            strings(&l)[4..],
            [
                "--kubernetes",
                "--label-filter=k8s:app",
                "--label-filter=k8s:team",
                "--mode=always"
            ]
        );
        assert_eq!(l.applied, ["kubernetes", "label-filter", "mode"]);
        // Another component's key, and a flag given on the command line.
        assert_eq!(l.ignored, ["cluster-pool-ipv4-cidr", "port"]);
        // The result parses as clap would parse typed flags.
        let m = cmd().try_get_matches_from(&l.args).unwrap();
        assert_eq!(m.get_one::<String>("port").unwrap(), "1");
        assert_eq!(m.get_one::<String>("mode").unwrap(), "always");
        assert!(m.get_flag("kubernetes"));
    }

    #[test]
    fn the_environment_wins_over_a_file_and_names_the_directory_too() {
        let d = dir(&[("mode", "always"), ("kubernetes", "false")]);
        let path = d.path().to_str().unwrap().to_string();
        let l = load_with_env(&cmd(), ["t"].map(OsString::from), |k| match k {
            ENV => Some(path.clone().into()),
            "T_MODE" => Some("never".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(strings(&l), ["t"], "false adds nothing; T_MODE wins");
        assert_eq!(l.ignored, ["mode"]);
    }

    #[test]
    fn bad_input_names_the_file() {
        let d = dir(&[("kubernetes", "yes")]);
        let args = ["t", &format!("--config-dir={}", d.path().display())].map(OsString::from);
        let e = load_with_env(&cmd(), args, |_| None).unwrap_err();
        assert!(
            e.contains("kubernetes: `yes` is not a boolean (true or false)"),
            "{e}"
        );
        let e = load_with_env(
            &cmd(),
            ["t", "--config-dir", "/nonexistent-axoneme"].map(OsString::from),
            |_| None,
        )
        .unwrap_err();
        assert!(e.starts_with("config dir /nonexistent-axoneme: "), "{e}");
        // Without a directory nothing changes.
        let l = load_with_env(&cmd(), ["t", "--port", "2"].map(OsString::from), |_| None).unwrap();
        assert_eq!(strings(&l), ["t", "--port", "2"]);
    }

    #[test]
    fn a_mounted_config_map_is_read_through_its_symlinks() {
        // What the kubelet writes: ..data -> ..2026_12_03, key -> ..data/key.
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("..2026_12_03");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("mode"), "never").unwrap();
        std::os::unix::fs::symlink("..2026_12_03", d.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/mode", d.path().join("mode")).unwrap();
        let args = ["t", "--config-dir", d.path().to_str().unwrap()].map(OsString::from);
        let l = load_with_env(&cmd(), args, |_| None).unwrap();
        assert_eq!(strings(&l)[3..], ["--mode=never"]);
    }
}
