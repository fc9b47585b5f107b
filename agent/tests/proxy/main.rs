//! The L7 proxy on real connections: a node namespace with a client pod
//! and a server pod running a real HTTP backend that logs every request.
//! The node redirects client → server:8080 to the proxy with iptables
//! TPROXY (the same socket semantics as the datapath's redirect), so the
//! proxy learns the original destination from its accepted socket.
//! Clients are curl and raw sockets (for the malformed corpus).

mod relay;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axoneme_agent::l7proxy::{self as proxy, ProxyConfig, ProxyView, SocketFactory};
use axoneme_agent::views::EventRing;
use axoneme_e2e::netns::{Node, Pod};
use axoneme_e2e::{http::logging_backend, run_prefix};
use axoneme_identity::{LabelSet, NumericIdentity, Source};
use axoneme_policy::compile::EnforcementMode;
use axoneme_policy::engine::Engine;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const CLIENT: NumericIdentity = NumericIdentity(1000);
const SERVER: NumericIdentity = NumericIdentity(2000);
const SEED: &str = include_str!("../../../../shared/testdata/seed-payments-policy.yaml");
const GET_ALLOWED: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: payments-api\nspec:\n  endpointSelector:\n    matchLabels:\n      app: payments\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: checkout\n    toPorts:\n    - ports:\n      - port: \"8080\"\n        protocol: TCP\n      rules:\n        http:\n        - method: GET\n          path: /v1/.*\n          host: payments(:8080)?\n          headers: ['X-Team: blue']\n";

fn labels(app: &str) -> LabelSet {
    LabelSet::parse(
        &[
            format!("app={app}"),
            "io.kubernetes.pod.namespace=default".into(),
        ],
        Source::K8s,
    )
    .unwrap()
}

/// The proxy's view for one policy document (YAML).
fn view(policy: &str, client: Ipv4Addr, server: Ipv4Addr) -> Arc<ProxyView> {
    let mut engine = Engine::new(EnforcementMode::Default);
    engine.set_identity(CLIENT, Some(labels("checkout")));
    engine.set_identity(SERVER, Some(labels("payments")));
    let p = axoneme_policy::parse_documents(policy).remove(0).unwrap();
    engine.set_policy("p", Some(p));
    engine.add_endpoint(SERVER);
    let ep = engine.endpoint_policy(SERVER).unwrap().clone();
    let ipcache = BTreeMap::from([
        (IpAddr::from(client).into(), CLIENT),
        (IpAddr::from(server).into(), SERVER),
    ]);
    let local = HashMap::from([
        (IpAddr::from(client), CLIENT),
        (IpAddr::from(server), SERVER),
    ]);
    Arc::new(ProxyView::new(
        ipcache,
        local,
        HashMap::from([(SERVER, Arc::new(ep))]),
    ))
}

struct Setup {
    _node: Node,
    client: Pod,
    server: Pod,
    log: std::path::PathBuf,
    backend: axoneme_e2e::Proc,
    views: watch::Sender<Arc<ProxyView>>,
    cancel: CancellationToken,
    events: EventRing,
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn setup(port: u16) -> Result<Setup> {
    let prefix = run_prefix("px");
    let node = Node::create(&format!("{prefix}-node"))?;
    let client = node.add_pod(&format!("{prefix}-c"), "pxc", Ipv4Addr::new(10, 211, 0, 1))?;
    let server = node.add_pod(&format!("{prefix}-s"), "pxs", Ipv4Addr::new(10, 211, 0, 2))?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("backend-requests.log");
    let backend = logging_backend(&server.ns, 8080, &log, &dir.path().join("backend.out"))?;
    // The redirect: marked packets to server:8080 go to the proxy socket.
    node.ns
        .ip(&["rule", "add", "fwmark", "0x1/0x1", "lookup", "100"])?;
    node.ns.ip(&[
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        "100",
    ])?;
    let out = node
        .ns
        .command(&[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-d",
            "10.211.0.2",
            "--dport",
            "8080",
            "-j",
            "TPROXY",
            "--on-port",
            &port.to_string(),
            "--tproxy-mark",
            "0x1/0x1",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "iptables: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Answers to the proxy's upstream connections (sent from the client's
    // address) go to the proxy, as the agent's rule makes them.
    for rule in [
        &["-N", "AXONEME_PROXY"][..],
        &["-A", "PREROUTING", "-j", "AXONEME_PROXY"],
        // The agent's `socket transparent` rule, in iptables terms.
        &[
            "-A",
            "AXONEME_PROXY",
            "-p",
            "tcp",
            "-m",
            "socket",
            "--transparent",
            "-j",
            "MARK",
            "--set-mark",
            "0x1/0x1",
        ],
    ] {
        let out = node
            .ns
            .command(&[&["iptables", "-w", "-t", "mangle"][..], rule].concat())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "iptables {rule:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let sockets = SocketFactory::new(Some(node.ns.path()));
    let listener = sockets.listener(port)?;
    let (views, rx) = watch::channel(view(SEED, client.ip, server.ip));
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let events = EventRing::default();
    let ring = events.clone();
    let cfg = ProxyConfig {
        header_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(proxy::serve(listener, sockets, rx, cfg, events.into(), c))
    });
    Ok(Setup {
        _node: node,
        client,
        server,
        log,
        backend,
        views,
        cancel,
        events: ring,
        _dir: dir,
    })
}

impl Setup {
    /// curl from the client pod; returns "CODE BODY" per URL.
    fn curl(&self, args: &[&str]) -> String {
        let mut all = vec![
            "curl",
            "-s",
            "--max-time",
            "5",
            "-w",
            " %{http_code} %{num_connects}\n",
        ];
        all.extend_from_slice(args);
        let out = self.client.ns.command(&all).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}:8080{path}", self.server.ip)
    }

    /// A raw connection from the client pod to the server's port 8080.
    fn raw(&self) -> TcpStream {
        let addr = (self.server.ip, 8080);
        let s = self
            .client
            .ns
            .enter(|| TcpStream::connect(addr))
            .unwrap()
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn backend_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Sends `req` and reads one response head plus its body
/// (Content-Length), or until the server closes.
fn exchange(s: &mut TcpStream, req: &[u8]) -> String {
    s.write_all(req).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return text;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
}

#[test]
fn seed_rules_on_real_connections() -> Result<()> {
    let t = setup(15101)?;
    // Allowed: the backend's answer. Denied: Cilium's 403, and the same
    // keep-alive connection serves the next request.
    let out = t.curl(&["-X", "POST", &t.url("/v1/charge")]);
    assert_eq!(out, "ok POST /v1/charge\n 200 1\n", "{out}");
    let out = t.curl(&[&t.url("/v1/charge")]);
    assert_eq!(out, "Access denied\r\n 403 1\n", "{out}");
    let out = t.curl(&["-X", "POST", &t.url("/v1/refund"), &t.url("/v1/charge")]);
    assert_eq!(
        out, "Access denied\r\n 403 1\nok POST /v1/charge\n 200 0\n",
        "{out}"
    );
    assert_eq!(t.backend_log(), "POST /v1/charge\nPOST /v1/charge\n");
    // One L7 event per request, with both identities.
    let http: Vec<(String, String, u16, u32, u32)> = t
        .events
        .snapshot()
        .into_iter()
        .filter_map(|e| {
            let h = e.http?;
            Some((h.method, h.path, h.status, e.src_identity, e.dst_identity))
        })
        .collect();
    let expect = |m: &str, p: &str, s| (m.to_string(), p.to_string(), s, 1000, 2000);
    assert_eq!(
        http,
        vec![
            expect("POST", "/v1/charge", 200),
            expect("GET", "/v1/charge", 403),
            expect("POST", "/v1/refund", 403),
            expect("POST", "/v1/charge", 200),
        ]
    );
    Ok(())
}

#[test]
fn a_policy_change_applies_to_the_next_request_on_an_open_connection() -> Result<()> {
    let t = setup(15102)?;
    let mut s = t.raw();
    let post = b"POST /v1/charge HTTP/1.1\r\nHost: payments\r\nContent-Length: 0\r\n\r\n";
    let get = b"GET /v1/items HTTP/1.1\r\nHost: payments\r\nX-Team: blue\r\n\r\n";
    assert!(exchange(&mut s, post).starts_with("HTTP/1.1 200"));
    // Transparent upstream: the backend's peer is the client's address.
    let out = t
        .server
        .ns
        .command(&["ss", "-Htn", "state", "established"])
        .output()?;
    let peers = String::from_utf8_lossy(&out.stdout);
    assert!(
        peers.contains(&t.client.ip.to_string()),
        "the backend's peers: {peers}"
    );
    assert!(exchange(&mut s, get).starts_with("HTTP/1.1 403"));
    t.views
        .send_replace(view(GET_ALLOWED, t.client.ip, t.server.ip));
    // Same connection: now GET with the header passes and POST does not.
    assert!(exchange(&mut s, get).starts_with("HTTP/1.1 200"));
    assert!(exchange(&mut s, post).starts_with("HTTP/1.1 403"));
    let no_header = b"GET /v1/items HTTP/1.1\r\nHost: payments\r\n\r\n";
    assert!(exchange(&mut s, no_header).starts_with("HTTP/1.1 403"));
    let other_host = b"GET /v1/items HTTP/1.1\r\nHost: billing\r\nX-Team: blue\r\n\r\n";
    assert!(exchange(&mut s, other_host).starts_with("HTTP/1.1 403"));
    // Pipelining: two requests in one write, two answers in order.
    let both = [&get[..], &post[..]].concat();
    let answer = exchange(&mut s, &both);
    let answer = if answer.matches("HTTP/1.1").count() < 2 {
        answer + &exchange(&mut s, b"")
    } else {
        answer
    };
    let first = answer.find("HTTP/1.1 200").context("pipelined 200")?;
    let second = answer.find("HTTP/1.1 403").context("pipelined 403")?;
    assert!(first < second, "{answer}");
    assert_eq!(
        t.backend_log(),
        "POST /v1/charge\nGET /v1/items\nGET /v1/items\n"
    );
    Ok(())
}

#[test]
fn malformed_requests_are_refused_and_never_reach_the_backend() -> Result<()> {
    let mut t = setup(15103)?;
    let cases: &[(&str, Vec<u8>, &str)] = &[
        (
            "conflicting CL",
            b"POST /v1/charge HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            "HTTP/1.1 400",
        ),
        ("invalid method", b"PO(ST /v1/charge HTTP/1.1\r\nHost: p\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (
            "oversized header",
            format!("POST /v1/charge HTTP/1.1\r\nHost: p\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            "HTTP/1.1 431",
        ),
        (
            "oversized URI",
            format!("POST /v1/charge?{} HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n", "a".repeat(9_000)).into_bytes(),
            "HTTP/1.1 414",
        ),
    ];
    for (what, req, want) in cases {
        let mut s = t.raw();
        let answer = exchange(&mut s, req);
        assert!(answer.starts_with(want), "{what}: {answer:?}");
        assert!(closed(&mut s), "{what}: the connection stays open");
    }
    // Smuggling: a length that two parsers could read differently is
    // refused with 400 and a close, also behind good pipelined requests,
    // and the request hidden after it is never read.
    let smuggled: &[(&str, &[u8])] = &[
        ("CL+TE", b"POST /v1/charge HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE+CL", b"POST /v1/charge HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
        ("equal duplicate CL", b"POST /v1/charge HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"),
    ];
    let hidden = b"POST /v1/charge?hidden HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n";
    let chunked = b"POST /v1/charge HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    for (what, bad) in smuggled {
        let mut s = t.raw();
        assert!(
            exchange(&mut s, &[*bad, &hidden[..]].concat()).starts_with("HTTP/1.1 400"),
            "{what}"
        );
        assert!(closed(&mut s), "{what}: the connection stays open");
        // Behind a chunked request on the same connection: 200, then 400.
        let mut s = t.raw();
        s.write_all(&[&chunked[..], bad, hidden].concat())?;
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        let ok = answer
            .find("HTTP/1.1 200")
            .with_context(|| format!("{what}: no 200 for the pipelined request: {answer:?}"))?;
        let refused = answer
            .find("HTTP/1.1 400")
            .with_context(|| format!("{what}: no 400 after the pipelined request: {answer:?}"))?;
        assert!(
            ok < refused && answer.matches("HTTP/1.1").count() == 2,
            "{what}: {answer}"
        );
    }
    assert_eq!(t.backend_log(), "POST /v1/charge\n".repeat(3), "smuggling");
    let refusals = t
        .events
        .snapshot()
        .into_iter()
        .filter(|e| e.verdict == "malformed" && e.http.as_ref().is_some_and(|h| h.status == 400))
        .count();
    assert_eq!(
        refusals,
        1 + 2 * smuggled.len(),
        "one event per refused head"
    );
    std::fs::write(&t.log, "")?;

    // Slowloris: a head that never ends is cut off after the timeout.
    let mut s = t.raw();
    s.write_all(b"POST /v1/charge HTTP/1.1\r\nHost: p\r\n")?;
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(4), "not cut off");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );
    assert_eq!(t.backend_log(), "", "a refused request reached the backend");

    // The proxy still works, and an unreachable backend is a 503.
    let out = t.curl(&["-X", "POST", &t.url("/v1/charge")]);
    assert!(out.ends_with(" 200 1\n"), "{out}");
    t.backend.kill9();
    let out = t.curl(&["-X", "POST", &t.url("/v1/charge")]);
    assert!(out.ends_with(" 503 1\n"), "{out}");
    Ok(())
}

#[test]
fn h2c_streams_are_checked_one_by_one() -> Result<()> {
    let mut t = setup(15104)?;
    // An HTTP/2 backend (nginx, cleartext with prior knowledge) in place
    // of the HTTP/1.1 one.
    t.backend.kill9();
    let _nginx =
        axoneme_e2e::http::nginx(&t.server.ns, &[8080], true, &t._dir.path().join("nginx"))?;
    // Two streams on one HTTP/2 connection: the allowed one reaches the
    // backend over HTTP/2, the other gets the proxy's 403.
    // curl 7.88 (Debian 12) cannot reuse an h2 prior-knowledge connection
    // for a second transfer (a framing error, also straight to nginx), so
    // each curl request is its own connection; streams sharing one
    // connection are tested below with hyper's client.
    let h2 = |method: &str, path: &str| -> Result<String> {
        let out = t
            .client
            .ns
            .command(&[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--http2-prior-knowledge",
                "-w",
                " %{http_code} %{http_version}\n",
                "-X",
                method,
                &t.url(path),
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    };
    assert_eq!(h2("POST", "/v1/charge")?, "ok\n 200 2\n");
    assert_eq!(h2("POST", "/v1/refund")?, "Access denied\r\n 403 2\n");
    assert_eq!(h2("GET", "/v1/charge")?, "Access denied\r\n 403 2\n");
    let http: Vec<(String, u16)> = t
        .events
        .snapshot()
        .into_iter()
        .filter_map(|e| e.http.map(|h| (h.path, h.status)))
        .collect();
    assert_eq!(
        http,
        [
            ("/v1/charge".to_string(), 200),
            ("/v1/refund".to_string(), 403),
            ("/v1/charge".to_string(), 403),
        ]
    );

    // Concurrent streams on one connection (hyper's HTTP/2 client, as
    // curl cannot): each is judged on its own, the denied one does not
    // disturb the others, and all share the client's source port.
    let stream = t.raw();
    stream.set_nonblocking(true)?;
    let port = stream.local_addr()?.port();
    let statuses = tokio::runtime::Runtime::new()?.block_on(async move {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let io = TokioIo::new(tokio::net::TcpStream::from_std(stream)?);
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        let send = |method: &str, path: &str| {
            let mut sender = sender.clone();
            let req = hyper::Request::builder()
                .method(method)
                .uri(format!("http://payments{path}"))
                .body(http_body_util::Empty::<hyper::body::Bytes>::new());
            async move { anyhow::Ok(sender.send_request(req?).await?.status().as_u16()) }
        };
        let (a, b, c) = futures::join!(
            send("POST", "/v1/charge"),
            send("POST", "/v1/refund"),
            send("POST", "/v1/charge"),
        );
        anyhow::Ok(vec![a?, b?, c?])
    })?;
    assert_eq!(statuses, [200, 403, 200]);
    let mut streams: Vec<(String, u16, u16)> = t
        .events
        .snapshot()
        .into_iter()
        .filter_map(|e| {
            let h = e.http?;
            Some((h.path, h.status, e.sport))
        })
        .filter(|(_, _, sport)| *sport == port)
        .collect();
    streams.sort();
    assert_eq!(
        streams,
        [
            ("/v1/charge".to_string(), 200, port),
            ("/v1/charge".to_string(), 200, port),
            ("/v1/refund".to_string(), 403, port),
        ]
    );
    Ok(())
}
