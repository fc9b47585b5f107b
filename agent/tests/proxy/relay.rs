//! The proxy's own HTTP/1.1 relay against a scripted upstream that
//! answers each path with fixed bytes: every framing an answer can have
//! reaches the client byte for byte, on one kept-alive connection each
//! way; an upstream connection closed while idle is replaced; an answer
//! framed two ways is refused; and a request the relay does not take goes
//! to hyper on the same connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;

/// Every GET, HEAD and POST to the server's port 8080.
const ANY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: any\nspec:\n  endpointSelector:\n    matchLabels:\n      app: payments\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: checkout\n    toPorts:\n    - ports:\n      - port: \"8080\"\n        protocol: TCP\n      rules:\n        http:\n        - method: GET|HEAD|POST\n          path: /.*\n";

const CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
const INTERIM: &[u8] =
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const UNTIL_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nuntil the upstream closes";
const SHORT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye";
const AMBIGUOUS: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

/// What the scripted upstream saw: the heads it read, in order, and how
/// many connections it accepted.
#[derive(Default)]
struct Seen {
    heads: Mutex<Vec<String>>,
    connections: AtomicUsize,
}

/// Replaces the setup's backend with the scripted one, on the same port.
fn scripted(t: &mut Setup) -> Result<Arc<Seen>> {
    t.backend.kill9();
    let listener = t
        .server
        .ns
        .enter(|| std::net::TcpListener::bind(("0.0.0.0", 8080)))??;
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            s.connections.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            std::thread::spawn(move || answer_by_path(conn, &s));
        }
    });
    Ok(seen)
}

/// Serves one upstream connection: each request's answer is fixed by its
/// path (`/echo` sends the body back); `/close` and `/bye` close after
/// answering, `/bye` without saying so (as a server whose idle timeout
/// fired would).
fn answer_by_path(mut conn: TcpStream, seen: &Seen) {
    let mut buf = Vec::new();
    let more = |conn: &mut TcpStream, buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 65536];
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    };
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !more(&mut conn, &mut buf) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        while buf.len() < end + len {
            if !more(&mut conn, &mut buf) {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..end + len).skip(end).collect();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        seen.heads.lock().unwrap().push(head);
        let answer = match path.as_str() {
            "/chunked" => CHUNKED.to_vec(),
            "/head" => HEAD.to_vec(),
            "/interim" => INTERIM.to_vec(),
            "/close" => UNTIL_CLOSE.to_vec(),
            "/bye" | "/short" => SHORT.to_vec(),
            "/ambiguous" => AMBIGUOUS.to_vec(),
            "/echo" => [
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                &body,
            ]
            .concat(),
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        let _ = conn.write_all(&answer);
        if path == "/close" || path == "/bye" {
            return;
        }
    }
}

/// Sends `req` and reads exactly `want.len()` bytes of answer.
fn expect_answer(s: &mut TcpStream, req: &[u8], want: &[u8], what: &str) {
    s.write_all(req).unwrap();
    let mut got = vec![0u8; want.len()];
    let read = s.read_exact(&mut got);
    assert!(
        read.is_ok() && got == want,
        "{what}: {read:?}, got {:?}",
        String::from_utf8_lossy(&got)
    );
}

fn get(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: payments\r\nX-Test: 1\r\n{extra}\r\n").into_bytes()
}

#[test]
fn answers_reach_the_client_byte_for_byte_whatever_their_framing() -> Result<()> {
    let mut t = setup(15105)?;
    t.views.send_replace(view(ANY, t.client.ip, t.server.ip));
    let seen = scripted(&mut t)?;
    let mut s = t.raw();
    expect_answer(&mut s, &get("GET", "/chunked", ""), CHUNKED, "chunks");
    // A HEAD answer has no body whatever its length says: the next answer
    // follows at once.
    expect_answer(&mut s, &get("HEAD", "/head", ""), HEAD, "HEAD");
    expect_answer(&mut s, &get("GET", "/interim", ""), INTERIM, "1xx");
    // A body larger than any one read, both ways.
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let post = [
        get(
            "POST",
            "/echo",
            &format!("Content-Length: {}\r\n", body.len()),
        ),
        body.clone(),
    ]
    .concat();
    let want = [
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
        body,
    ]
    .concat();
    expect_answer(&mut s, &post, &want, "a large body");
    // `Connection` is hop-by-hop: upstream gets the head without it.
    expect_answer(
        &mut s,
        &get("GET", "/chunked", "Connection: keep-alive\r\n"),
        CHUNKED,
        "keep-alive",
    );
    // An answer framed by the upstream's close: the client's connection
    // closes after it too.
    s.write_all(&get("GET", "/close", ""))?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(UNTIL_CLOSE)
    );

    let heads = seen.heads.lock().unwrap().clone();
    // Heads go upstream as the client sent them, but for `Connection`.
    assert_eq!(
        heads[0],
        String::from_utf8_lossy(&get("GET", "/chunked", ""))
    );
    assert_eq!(heads[4], heads[0], "Connection reached the upstream");
    assert_eq!(heads.len(), 6, "{heads:?}");
    // One upstream connection served all six.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    let statuses: Vec<(String, u16, String)> = t
        .events
        .snapshot()
        .into_iter()
        .filter_map(|e| {
            let h = e.http?;
            Some((h.path, h.status, e.verdict))
        })
        .collect();
    let forwarded = |p: &str| (p.to_string(), 200, "forwarded".to_string());
    assert_eq!(
        statuses,
        [
            forwarded("/chunked"),
            forwarded("/head"),
            forwarded("/interim"),
            forwarded("/echo"),
            forwarded("/chunked"),
            forwarded("/close"),
        ]
    );
    Ok(())
}

#[test]
fn a_closed_upstream_connection_is_replaced_and_a_bad_answer_refused() -> Result<()> {
    let mut t = setup(15106)?;
    t.views.send_replace(view(ANY, t.client.ip, t.server.ip));
    let seen = scripted(&mut t)?;
    let mut s = t.raw();
    // The upstream closes its connection after each `/bye` without saying
    // so; the next request on the client's connection, whole at hand, is
    // sent on a new one.
    expect_answer(&mut s, &get("GET", "/bye", ""), SHORT, "bye");
    std::thread::sleep(Duration::from_millis(100));
    expect_answer(&mut s, &get("GET", "/bye", ""), SHORT, "after a close");
    std::thread::sleep(Duration::from_millis(100));
    let post = [
        get("POST", "/echo", "Content-Length: 2\r\n"),
        b"hi".to_vec(),
    ]
    .concat();
    expect_answer(
        &mut s,
        &post,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        "a POST after a close",
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
    // An answer whose length could be read two ways never reaches the
    // client; the client's connection goes on.
    s.write_all(&get("GET", "/ambiguous", ""))?;
    let answer = exchange(&mut s, b"");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.ends_with("upstream unavailable\r\n"), "{answer:?}");
    expect_answer(&mut s, &get("GET", "/short", ""), SHORT, "after a 503");
    // HTTP/1.0 is hyper's: the connection goes there and is answered.
    let answer = exchange(&mut s, b"GET /short HTTP/1.0\r\nHost: payments\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("bye"),
        "{answer:?}"
    );
    let verdicts: Vec<(String, String)> = t
        .events
        .snapshot()
        .into_iter()
        .filter_map(|e| Some((e.http?.path, e.verdict)))
        .collect();
    assert_eq!(
        verdicts[3],
        ("/ambiguous".to_string(), "upstream-error".to_string())
    );
    assert_eq!(verdicts.len(), 6, "{verdicts:?}");
    Ok(())
}
