//! The CNI plugin's input: the CNI_* environment and the network
//! configuration on stdin. The input is the environment as `KEY=VALUE`
//! lines, a NUL byte, then stdin. Every invocation parses or fails with a
//! CNI error that has a code and a message; CNI_ARGS and the configuration
//! are also parsed on their own.

#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use axoneme_cni::env::EnvMap;
use axoneme_cni::error::CniError;
use axoneme_cni::{command, config, env};
use libfuzzer_sys::fuzz_target;

fn explained(e: &CniError) {
    assert!(e.code != 0, "an error without a code: {e:?}");
    assert!(
        !e.msg.trim().is_empty(),
        "an error without a message: {e:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let (vars, stdin) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut environment = EnvMap::new();
    for line in vars.split(|&b| b == b'\n') {
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = String::from_utf8_lossy(&line[..eq]).into_owned();
            environment.insert(key, OsStr::from_bytes(&line[eq + 1..]).to_owned());
        }
    }
    if let Err(e) = command::parse(&environment, stdin) {
        explained(&e);
    }
    if let Err(e) = config::parse(stdin) {
        explained(&e);
    }
    let _ = config::result_version(stdin);
    if let Ok(args) = std::str::from_utf8(vars) {
        if let Err(e) = env::parse_cni_args(args) {
            explained(&e);
        }
    }
});
