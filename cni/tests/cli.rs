//! Runs the built `axoneme-cni` as a runtime would: a clean environment
//! with the CNI_* variables, the configuration on stdin. None of these
//! needs an agent.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_axoneme-cni");

/// Runs the plugin with exactly `vars` (plus PATH) and `stdin` (`None`:
/// stdin is /dev/null).
fn run(vars: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn axoneme-cni");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(bytes).expect("write stdin");
    }
    child.wait_with_output().expect("wait for axoneme-cni")
}

fn full_env(cmd: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "3f2a9c0d1e"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn conf(socket: &Path) -> Vec<u8> {
    json!({
        "cniVersion": "1.0.0",
        "name": "axoneme",
        "type": "axoneme-cni",
        "agentSocket": socket,
        "timeoutMs": 1000,
        "args": {"cni": {"labels": [{"key": "k8s:app", "value": "web"}]}},
        "runtimeConfig": {"portMappings": []}
    })
    .to_string()
    .into_bytes()
}

/// A socket path that does not exist (its tempdir does).
fn missing_socket() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    (dir, path)
}

/// Asserts a failed run: exit status 1, the spec's error result (exactly
/// cniVersion, code, msg, details) on stdout, one line on stderr.
/// Returns the error result.
#[track_caller]
fn assert_error(out: &Output, code: u64, cni_version: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let v: Value = serde_json::from_str(&stdout).expect("the error result is JSON");
    let obj = v.as_object().expect("the error result is an object");
    let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["cniVersion"], cni_version, "{v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["details"].is_string(), "{v}");
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with("axoneme-cni: "), "stderr: {stderr}");
    v
}

#[track_caller]
fn msg(v: &Value) -> &str {
    v["msg"].as_str().unwrap_or_default()
}

const VERSION_INFO: &str = r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#;

#[test]
fn version_without_stdin() {
    let out = run(&[("CNI_COMMAND", "VERSION")], None);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        VERSION_INFO
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn version_with_stdin() {
    for stdin in [
        &br#"{"cniVersion":"0.4.0"}"#[..],
        br#"{"cniVersion":"1.0.0","name":"axoneme","type":"axoneme-cni"}"#,
        br#"{"cniVersion":"9.9.9"}"#,
        b"",
        b"not json at all",
    ] {
        let out = run(&[("CNI_COMMAND", "VERSION")], Some(stdin));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(stdin));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            VERSION_INFO
        );
    }
}

#[test]
fn bad_json_is_code_6() {
    let out = run(&full_env("ADD"), Some(b"{\"cniVersion\": \"1.0.0\", "));
    let v = assert_error(&out, 6, "1.0.0");
    assert!(msg(&v).contains("failed to decode content"), "{v}");
    assert!(
        v["details"].as_str().is_some_and(|d| d.contains("EOF")),
        "{v}"
    );
}

#[test]
fn empty_stdin_on_add_is_code_6() {
    let out = run(&full_env("ADD"), None);
    assert_error(&out, 6, "1.0.0");
}

#[test]
fn unknown_cni_version_is_code_1() {
    let (_dir, sock) = missing_socket();
    for cmd in ["ADD", "DEL", "CHECK"] {
        let stdin = json!({"cniVersion": "9.9.9", "name": "axoneme", "agentSocket": sock});
        let out = run(&full_env(cmd), Some(stdin.to_string().as_bytes()));
        // Not "9.9.9": the error is written in a version the plugin knows.
        let v = assert_error(&out, 1, "1.0.0");
        assert!(msg(&v).contains("9.9.9"), "{v}");
        assert!(
            msg(&v).contains("0.4.0") && msg(&v).contains("1.0.0"),
            "{v}"
        );
    }
}

#[test]
fn missing_cni_version_or_name_is_code_7() {
    let out = run(&full_env("ADD"), Some(br#"{"name":"axoneme"}"#));
    let v = assert_error(&out, 7, "1.0.0");
    assert!(msg(&v).contains("cniVersion"), "{v}");
    let out = run(&full_env("ADD"), Some(br#"{"cniVersion":"0.4.0"}"#));
    let v = assert_error(&out, 7, "0.4.0");
    assert!(msg(&v).contains("name"), "{v}");
}

#[test]
fn wrong_field_type_is_code_7_naming_it() {
    let stdin = br#"{"cniVersion":"1.0.0","name":"axoneme","timeoutMs":"soon"}"#;
    let v = assert_error(&run(&full_env("ADD"), Some(stdin)), 7, "1.0.0");
    assert!(msg(&v).contains("timeoutMs"), "{v}");
    let stdin = br#"{"cniVersion":"1.0.0","name":"axoneme",
        "args":{"cni":{"labels":[{"key":"app","value":3}]}}}"#;
    let v = assert_error(&run(&full_env("ADD"), Some(stdin)), 7, "1.0.0");
    assert!(msg(&v).contains("args.cni.labels[0].value"), "{v}");
}

#[test]
fn missing_netns_on_add_is_code_4() {
    let (_dir, sock) = missing_socket();
    let vars: Vec<_> = full_env("ADD")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    let v = assert_error(&run(&vars, Some(&conf(&sock))), 4, "1.0.0");
    assert!(msg(&v).contains("CNI_NETNS"), "{v}");
    // Empty is missing too.
    let mut vars = full_env("ADD");
    vars.push(("CNI_NETNS", ""));
    let v = assert_error(&run(&vars, Some(&conf(&sock))), 4, "1.0.0");
    assert!(msg(&v).contains("CNI_NETNS"), "{v}");
}

#[test]
fn missing_container_id_on_del_is_code_4() {
    let (_dir, sock) = missing_socket();
    let vars: Vec<_> = full_env("DEL")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_CONTAINERID")
        .collect();
    let v = assert_error(&run(&vars, Some(&conf(&sock))), 4, "1.0.0");
    assert!(msg(&v).contains("CNI_CONTAINERID"), "{v}");
}

#[test]
fn missing_command_is_code_4() {
    let (_dir, sock) = missing_socket();
    let vars: Vec<_> = full_env("ADD")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_COMMAND")
        .collect();
    let v = assert_error(&run(&vars, Some(&conf(&sock))), 4, "1.0.0");
    assert!(msg(&v).contains("CNI_COMMAND"), "{v}");
    // Without any stdin either.
    let v = assert_error(&run(&[], None), 4, "1.0.0");
    assert!(msg(&v).contains("CNI_COMMAND"), "{v}");
}

#[test]
fn unknown_command_is_code_4() {
    let (_dir, sock) = missing_socket();
    for cmd in ["GC", "STATUS", "add", "ADD "] {
        let v = assert_error(&run(&full_env(cmd), Some(&conf(&sock))), 4, "1.0.0");
        assert!(msg(&v).contains("CNI_COMMAND"), "{v}");
        assert!(msg(&v).contains(&format!("{cmd:?}")), "{v}");
    }
}

#[test]
fn invalid_container_id_is_code_4() {
    let (_dir, sock) = missing_socket();
    for id in ["-leading-dash", "has/slash", "has space", "../etc"] {
        for cmd in ["ADD", "DEL", "CHECK"] {
            let mut vars = full_env(cmd);
            vars.push(("CNI_CONTAINERID", id));
            let v = assert_error(&run(&vars, Some(&conf(&sock))), 4, "1.0.0");
            assert!(msg(&v).contains("CNI_CONTAINERID"), "{v}");
        }
    }
}

#[test]
fn malformed_cni_args_is_code_4() {
    let (_dir, sock) = missing_socket();
    let mut vars = full_env("ADD");
    vars.push(("CNI_ARGS", "K8S_POD_NAMESPACE=default;garbage"));
    let v = assert_error(&run(&vars, Some(&conf(&sock))), 4, "1.0.0");
    assert!(msg(&v).contains("CNI_ARGS"), "{v}");
}

#[test]
fn check_without_prev_result_is_code_7() {
    let (_dir, sock) = missing_socket();
    let v = assert_error(&run(&full_env("CHECK"), Some(&conf(&sock))), 7, "1.0.0");
    assert!(msg(&v).contains("CHECK needs prevResult"), "{v}");
}

#[test]
fn add_without_agent_is_code_11_naming_the_socket() {
    let (_dir, sock) = missing_socket();
    let v = assert_error(&run(&full_env("ADD"), Some(&conf(&sock))), 11, "1.0.0");
    assert!(msg(&v).contains(&sock.display().to_string()), "{v}");
}

#[test]
fn add_error_keeps_the_configuration_version() {
    let (_dir, sock) = missing_socket();
    let stdin = json!({"cniVersion": "0.4.0", "name": "axoneme", "agentSocket": sock});
    let out = run(&full_env("ADD"), Some(stdin.to_string().as_bytes()));
    assert_error(&out, 11, "0.4.0");
}

#[test]
fn del_without_agent_is_code_11() {
    let (_dir, sock) = missing_socket();
    let v = assert_error(&run(&full_env("DEL"), Some(&conf(&sock))), 11, "1.0.0");
    assert!(msg(&v).contains(&sock.display().to_string()), "{v}");
    // Also with no netns (a torn-down pod).
    let vars: Vec<_> = full_env("DEL")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    let v = assert_error(&run(&vars, Some(&conf(&sock))), 11, "1.0.0");
    assert!(msg(&v).contains(&sock.display().to_string()), "{v}");
}

#[test]
fn check_without_agent_is_code_11() {
    let (_dir, sock) = missing_socket();
    let stdin = json!({
        "cniVersion": "1.0.0", "name": "axoneme", "agentSocket": sock,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.200.1.7/32", "interface": 1}]}
    });
    let out = run(&full_env("CHECK"), Some(stdin.to_string().as_bytes()));
    let v = assert_error(&out, 11, "1.0.0");
    assert!(msg(&v).contains(&sock.display().to_string()), "{v}");
}

#[test]
fn binary_garbage_never_panics() {
    for stdin in [
        &b"\xff\xfe\x00\x01"[..],
        b"[1,2,3]",
        b"null",
        b"{\"cniVersion\":{}}",
    ] {
        for cmd in ["ADD", "DEL", "CHECK"] {
            let out = run(&full_env(cmd), Some(stdin));
            assert_eq!(out.status.code(), Some(1));
            let code = serde_json::from_slice::<Value>(&out.stdout).expect("JSON")["code"]
                .as_u64()
                .expect("a code");
            assert!(code == 6 || code == 7, "{code}");
        }
    }
}

/// A stand-in agent: answers one request on `sock` with `status` and
/// `body`, and hands back the request's path and JSON body.
fn fake_agent(
    sock: &Path,
    status: &'static str,
    body: Value,
) -> std::thread::JoinHandle<(String, Value)> {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::net::UnixListener;

    let listener = UnixListener::bind(sock).expect("bind the fake agent");
    std::thread::spawn(move || {
        // Polls, so that a plugin that never connects fails the test
        // instead of hanging it.
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the plugin never connected"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).expect("blocking");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("request line");
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).expect("header");
            if h.trim_end().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().expect("content-length");
                }
            }
        }
        let mut req = vec![0; len];
        reader.read_exact(&mut req).expect("body");
        let body = body.to_string();
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("answer");
        (
            path,
            serde_json::from_slice(&req).expect("the request is JSON"),
        )
    })
}

#[test]
fn add_prints_the_result_from_the_agent() {
    let (_dir, sock) = missing_socket();
    let agent = fake_agent(
        &sock,
        "200 OK",
        json!({
            "endpoint": "endpoints/v1/node-1/ep-1", "identity": 4242,
            "host_interface": "lxc3f2a9c0d", "host_mac": "02:00:00:00:00:01",
            "mac": "02:00:00:00:00:02",
            "ips": [{"address": "10.200.1.7/32", "gateway": "10.200.1.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.200.1.1"}]
        }),
    );
    let out = run(&full_env("ADD"), Some(&conf(&sock)));
    let (path, req) = agent.join().expect("fake agent");
    assert_eq!(path, "/v1/cni/add");
    assert_eq!(
        req,
        json!({
            "container_id": "3f2a9c0d1e", "netns": "/var/run/netns/cni-1234",
            "ifname": "eth0", "labels": ["k8s:app=web"], "namespace": "default",
            "pod_name": "web-0", "timeout_ms": 1000
        })
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("the result is JSON");
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "lxc3f2a9c0d", "mac": "02:00:00:00:00:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/var/run/netns/cni-1234"}
            ],
            "ips": [{"address": "10.200.1.7/32", "gateway": "10.200.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.200.1.1"}],
            "dns": {}
        })
    );
}

#[test]
fn agent_errors_pass_through_unchanged() {
    let (_dir, sock) = missing_socket();
    let agent = fake_agent(
        &sock,
        "503 Service Unavailable",
        json!({"code": 101, "msg": "no free address in 10.200.1.0/24", "details": "254 in use"}),
    );
    let out = run(&full_env("ADD"), Some(&conf(&sock)));
    agent.join().expect("fake agent");
    let v = assert_error(&out, 101, "1.0.0");
    assert_eq!(msg(&v), "no free address in 10.200.1.0/24");
    assert_eq!(v["details"], "254 in use");
}

#[test]
fn del_of_an_unknown_container_succeeds() {
    let (_dir, sock) = missing_socket();
    let agent = fake_agent(
        &sock,
        "404 Not Found",
        json!({"code": 3, "msg": "no endpoint for container 3f2a9c0d1e"}),
    );
    let out = run(&full_env("DEL"), Some(&conf(&sock)));
    let (path, req) = agent.join().expect("fake agent");
    assert_eq!(path, "/v1/cni/del");
    assert_eq!(
        req,
        json!({"container_id": "3f2a9c0d1e", "ifname": "eth0", "netns": "/var/run/netns/cni-1234"})
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn check_sends_the_prev_result_addresses() {
    let (_dir, sock) = missing_socket();
    let agent = fake_agent(&sock, "200 OK", json!({}));
    let stdin = json!({
        "cniVersion": "0.4.0", "name": "axoneme", "agentSocket": sock,
        "prevResult": {"cniVersion": "0.4.0", "ips": [
            {"version": "4", "address": "10.200.1.7/32", "gateway": "10.200.1.1", "interface": 1}
        ]}
    });
    let out = run(&full_env("CHECK"), Some(stdin.to_string().as_bytes()));
    let (path, req) = agent.join().expect("fake agent");
    assert_eq!(path, "/v1/cni/check");
    assert_eq!(req["addresses"], json!(["10.200.1.7/32"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
}
