//! Waiting for what a test expects to see: HTTP answers between pods
//! (polled, with a deadline), and a policy's conditions on the API server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{CniPod, KubeControlPlane};

/// The payments policy every scenario starts from (../shared/testdata).
pub fn seed_policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/seed-payments-policy.yaml")
}

/// Polls every 50 ms until `from`'s `METHOD http://addr:8080/path`
/// answers `want` (`None`: blocked); how long that took.
pub fn until_http(
    from: &CniPod,
    method: &str,
    addr: &str,
    path: &str,
    want: Option<u16>,
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let got = from.http(method, addr, 8080, path);
        if got == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!(
                "{}: {method} {addr} {path} got {got:?}, not {want:?}, after {within:?}",
                from.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`until_http`] for checkout's `POST /v1/charge`.
pub fn until_post(
    from: &CniPod,
    addr: &str,
    want: Option<u16>,
    within: Duration,
) -> Result<Duration> {
    until_http(from, "POST", addr, "/v1/charge", want, within)
}

/// Asserts that `from`'s `METHOD addr path` answers `want` now and keeps
/// answering it for `for_`.
pub fn stays(
    from: &CniPod,
    method: &str,
    addr: &str,
    path: &str,
    want: Option<u16>,
    for_: Duration,
) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < for_ {
        let got = from.http(method, addr, 8080, path);
        if got != want {
            bail!(
                "{}: {method} {addr} {path} got {got:?}, not {want:?}, {:?} in",
                from.name,
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits until condition `condition` of CNP `name` in `default` reads
/// `want` (its status first, then its message).
pub fn wait_condition(
    kube: &KubeControlPlane,
    name: &str,
    condition: &str,
    want: &str,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let jsonpath = format!(
        "jsonpath={{.status.conditions[?(@.type==\"{condition}\")].status}} {{.status.conditions[?(@.type==\"{condition}\")].message}}"
    );
    loop {
        let out = kube.kubectl(["get", "cnp", name, "-o", &jsonpath])?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.starts_with(want) {
            eprintln!("{name} {condition}: {text}");
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("{name} {condition} is {text:?}, not {want}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `check` every 100 ms until it holds; an error naming `what`
/// after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
