//! `axoneme completion bash|zsh|fish`: the real binary's scripts name every
//! top-level command; bash accepts its script (`bash -n`) and, sourced,
//! completes every command's subcommands and long flags (globals included),
//! walking the whole command tree. A shell it does not know is clap's error.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

const AXONEME: &str = env!("CARGO_BIN_EXE_axoneme");

fn completion(shell: &str) -> Result<String> {
    let out = Command::new(AXONEME)
        .args(["completion", shell])
        .env_clear()
        .output()?;
    ensure!(
        out.status.success(),
        "axoneme completion {shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The command tree: each command's path below `axoneme`, with the words
/// completion should offer after it (its subcommands and long flags).
fn tree() -> Vec<(Vec<String>, Vec<String>)> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, Vec<String>)>) {
        let mut words: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        words.extend(
            cmd.get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long().map(|l| format!("--{l}"))),
        );
        out.push((path.clone(), words));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            walk(sub, p, out);
        }
    }
    let mut cmd = axoneme_cli::args::command();
    // What parsing sees: globals propagated, help subcommands added.
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, Vec::new(), &mut out);
    out
}

/// What bash offers after `axoneme <path> ` with `script` sourced, as
/// readline would call it.
fn bash_offers(script: &Path, path: &[String]) -> Result<Vec<String>> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            r#"source "$0"
COMP_WORDS=(axoneme "$@" "")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
_axoneme axoneme "" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg(script)
        .args(path)
        .output()
        .context("running bash")?;
    ensure!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(String::from)
        .collect())
}

#[test]
fn every_shell_s_script_names_every_command() -> Result<()> {
    let top: Vec<String> = axoneme_cli::args::command()
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    assert!(top.len() >= 8, "{top:?}");
    for shell in ["bash", "zsh", "fish"] {
        let script = completion(shell)?;
        for cmd in &top {
            assert!(script.contains(cmd.as_str()), "{shell}: no {cmd}");
        }
    }
    Ok(())
}

#[test]
fn bash_accepts_its_script_and_completes_every_command_and_flag() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("axoneme.bash");
    std::fs::write(&script, completion("bash")?)?;
    let syntax = Command::new("bash").arg("-n").arg(&script).output()?;
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let tree = tree();
    assert!(tree.len() > 20, "{} commands", tree.len());
    for (path, want) in &tree {
        let offered = bash_offers(&script, path)?;
        for w in want {
            assert!(
                offered.contains(w),
                "`axoneme {} <TAB>` does not offer {w}: {offered:?}",
                path.join(" ")
            );
        }
    }
    // A flag's values complete too.
    let types = bash_offers(&script, &["events".into(), "--type".into()])?;
    assert_eq!(types, ["drop", "trace", "policy-verdict", "http"]);
    Ok(())
}

#[test]
fn an_unknown_shell_names_the_choices() -> Result<()> {
    let out = Command::new(AXONEME)
        .args(["completion", "powershell"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'powershell' for '<SHELL>'")
            && stderr.contains("[possible values: bash, zsh, fish]"),
        "{stderr}"
    );
    Ok(())
}
