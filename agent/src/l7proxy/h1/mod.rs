//! The proxy's own HTTP/1.1 path: each client connection's requests are
//! read, judged and forwarded in the connection's own task. A head is
//! parsed once (httparse, the parser hyper uses), judged, and written
//! upstream as it came (without its `Connection` field, if it has one);
//! the answer is relayed by its framing (length, chunks, or until the
//! upstream closes) as its bytes come. nginx forwards the same way. Through
//! hyper, a request crosses a server connection and a client connection,
//! each a task of its own joined by channels, and that cost the proxy twice
//! nginx's user time per request (docs/benchmarks.md, "L7 proxy").
//!
//! Only plain requests take this path: HTTP/1.1, an origin-form target no
//! longer than the limit, one `Host`, no body or one `Content-Length`, and
//! no `Transfer-Encoding`, `Expect`, `Upgrade` or hop-by-hop field but
//! `Connection: keep-alive|close`. At the first head that is not (h2c's
//! preface, a chunked or ambiguous body, a head too large or unparsable,
//! HTTP/1.0, `CONNECT`), the connection goes to the hyper path behind the
//! framing guard with the bytes read so far, and is answered there as
//! before (400, 414, 431, h2c streams).

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use axoneme_policy::compile::Direction;
use axoneme_policy::l7::HttpRequest;
use bytes::{Buf, BytesMut};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::event::{self, Seen, Verdict};
use super::handler::{judge, Shared};
use super::upstream::{raw_closed, UpstreamKey};

mod framing;
use framing::{length_of, parse_answer, visible, Answer, Body, Framing, Parsed, MAX_FIELDS};

/// Room made for each read.
const READ_SIZE: usize = 16 * 1024;

/// Request fields that send the connection to the hyper path: a framing
/// other than a length, an interim answer or upgrade to negotiate, or
/// hop-by-hop fields beyond `Connection`.
const HANDED_OVER: &[&str] = &[
    "transfer-encoding",
    "expect",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// How a client connection left the relay.
pub(super) enum End {
    /// It is done: closed by the client, cut off, or closed by the proxy.
    Closed,
    /// Its next request is not for this path: the hyper path serves it
    /// from here, starting with these bytes.
    Handover(BytesMut),
}

/// Serves the client connection `peer` → `orig` (the original
/// destination) until it closes or goes to the hyper path.
pub(super) async fn relay(
    shared: &Shared,
    client: &mut TcpStream,
    peer: SocketAddr,
    orig: SocketAddr,
) -> End {
    let mut relay = Relay {
        shared,
        client,
        peer,
        orig,
        buf: BytesMut::with_capacity(READ_SIZE),
        out: Vec::new(),
        up_buf: BytesMut::new(),
        up: None,
    };
    let end = relay.run().await;
    if let Some((key, up)) = relay.up.take() {
        shared.upstreams.give_back_raw(key, up);
    }
    end
}

/// A complete request head, judged.
struct Request {
    head_len: usize,
    /// The body's length (`Content-Length`; none is 0).
    body: u64,
    /// The client asked to close after this answer.
    close: bool,
    /// A `HEAD` request: its answer has no body, whatever its length says.
    head_method: bool,
    seen: Seen,
    key: UpstreamKey,
    denied: Option<Direction>,
}

// Returned once per request, on the stack; a box would be an allocation
// per request.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// The head is not complete yet.
    Partial,
    Request(Request),
    Handover,
}

/// Why a request found no answer upstream.
struct Failed {
    error: io::Error,
    /// All of the request's body was read from the client, so the client
    /// connection can go on.
    body_read: bool,
}

struct Relay<'a> {
    shared: &'a Shared,
    client: &'a mut TcpStream,
    peer: SocketAddr,
    orig: SocketAddr,
    /// What the client sent that is not used yet.
    buf: BytesMut,
    /// The request as it goes upstream: its head and the body's bytes at
    /// hand (kept to send again on a new connection, see [`Relay::send`]).
    out: Vec<u8>,
    /// What upstream sent that is not relayed yet.
    up_buf: BytesMut,
    /// The upstream connection, between two requests.
    up: Option<(UpstreamKey, TcpStream)>,
}

impl Relay<'_> {
    async fn run(&mut self) -> End {
        loop {
            let mut deadline = None;
            let request = loop {
                match self.plan() {
                    Step::Request(r) => break r,
                    Step::Handover => return End::Handover(std::mem::take(&mut self.buf)),
                    Step::Partial => {}
                }
                // The head timeout runs from its first byte (slowloris); a
                // kept-alive connection may idle between requests.
                if !self.buf.is_empty() && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + self.shared.cfg.header_timeout);
                }
                self.buf.reserve(READ_SIZE);
                let read = self.client.read_buf(&mut self.buf);
                let read = match deadline {
                    None => read.await,
                    Some(at) => match tokio::time::timeout_at(at, read).await {
                        Ok(r) => r,
                        Err(_) => {
                            debug!(peer = %self.peer, "request head timed out");
                            return End::Closed;
                        }
                    },
                };
                if !matches!(read, Ok(n) if n > 0) {
                    return End::Closed;
                }
            };
            if !self.answer(request).await {
                let _ = self.client.shutdown().await;
                return End::Closed;
            }
        }
    }

    /// Parses the head at the front of the buffer and judges it; a head
    /// to forward is written to `out` as it goes upstream.
    fn plan(&mut self) -> Step {
        if self.buf.is_empty() {
            return Step::Partial;
        }
        let cfg = &self.shared.cfg;
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let head_len = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) if n <= cfg.max_header_bytes => n,
            Ok(httparse::Status::Partial) if self.buf.len() <= cfg.max_header_bytes => {
                return Step::Partial
            }
            _ => return Step::Handover,
        };
        let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
            return Step::Handover;
        };
        if method == "CONNECT" || !path.starts_with('/') || path.len() > cfg.max_uri_bytes {
            return Step::Handover;
        }
        let (mut host, mut body, mut close, mut connection) = (None, None, false, false);
        let mut headers = Vec::with_capacity(req.headers.len());
        for f in req.headers.iter() {
            let name = f.name;
            let value = visible(f.value);
            if name.eq_ignore_ascii_case("host") {
                if value.is_none() || host.replace(value).is_some() {
                    return Step::Handover;
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                let Some(n) = value.and_then(length_of) else {
                    return Step::Handover;
                };
                if body.replace(n).is_some() {
                    return Step::Handover;
                }
            } else if name.eq_ignore_ascii_case("connection") {
                connection = true;
                for token in value.unwrap_or(",").split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case("keep-alive") {
                        return Step::Handover;
                    }
                }
            } else if HANDED_OVER.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                return Step::Handover;
            }
            // The rules read fields as text, as on hyper's path: values
            // that are not visible ASCII are forwarded, not matched.
            if let Some(value) = value {
                headers.push((name, value));
            }
        }
        let Some(Some(host)) = host else {
            return Step::Handover;
        };
        let view = self.shared.view.borrow().clone();
        let judged = judge(
            &view,
            self.peer,
            self.orig,
            &HttpRequest {
                method,
                path,
                host,
                headers: &headers,
            },
            Instant::now(),
        );
        self.out.clear();
        if judged.denied.is_none() {
            if connection {
                // Hop-by-hop: the upstream connection is the proxy's.
                for part in [method, " ", path, " HTTP/1.1\r\n"] {
                    self.out.extend_from_slice(part.as_bytes());
                }
                for f in req.headers.iter() {
                    if !f.name.eq_ignore_ascii_case("connection") {
                        for part in [f.name.as_bytes(), b": ", f.value, b"\r\n"] {
                            self.out.extend_from_slice(part);
                        }
                    }
                }
                self.out.extend_from_slice(b"\r\n");
            } else {
                self.out.extend_from_slice(&self.buf[..head_len]);
            }
        }
        Step::Request(Request {
            head_len,
            body: body.unwrap_or(0),
            close,
            head_method: method == "HEAD",
            seen: judged.seen,
            key: (self.peer.ip(), judged.src_identity, self.orig),
            denied: judged.denied,
        })
    }

    /// Answers one request; `false` when the client connection closes.
    async fn answer(&mut self, req: Request) -> bool {
        let Request {
            head_len,
            body,
            close,
            head_method,
            mut seen,
            key,
            denied,
        } = req;
        let at_hand = usize::try_from(body)
            .unwrap_or(usize::MAX)
            .min(self.buf.len() - head_len);
        let rest = body - at_hand as u64;
        if let Some(by) = denied {
            self.buf.advance(head_len + at_hand);
            seen.direction = by;
            let status = StatusCode::FORBIDDEN;
            event::record(&self.shared.events, seen, status, Verdict::Denied);
            // The body is read and dropped: the next request follows it.
            return self.discard(rest).await
                && self
                    .client
                    .write_all(&canned(status, "Access denied\r\n", close))
                    .await
                    .is_ok()
                && !close;
        }
        self.out
            .extend_from_slice(&self.buf[head_len..head_len + at_hand]);
        self.buf.advance(head_len + at_hand);
        match self.send(key, rest, head_method).await {
            Ok((up, answer)) => {
                event::record(&self.shared.events, seen, answer.status, Verdict::Forwarded);
                self.relay_answer(key, up, answer).await && !close
            }
            Err(Failed { error, body_read }) => {
                warn!(orig = %self.orig, error = %error, "upstream unreachable");
                let status = StatusCode::SERVICE_UNAVAILABLE;
                event::record(&self.shared.events, seen, status, Verdict::UpstreamError);
                let close = close || !body_read;
                self.client
                    .write_all(&canned(status, "upstream unavailable\r\n", close))
                    .await
                    .is_ok()
                    && !close
            }
        }
    }

    /// The upstream connection for `key`: this client connection's, an
    /// idle one, or a new one; and whether it was used before.
    async fn upstream(&mut self, key: UpstreamKey, rest: u64) -> io::Result<(TcpStream, bool)> {
        if let Some((k, s)) = self.up.take() {
            // A request that can be sent again needs no look first (see
            // `send`); one whose body is still coming does.
            if k == key && (rest == 0 || !raw_closed(&s)) {
                return Ok((s, true));
            }
            if k != key {
                self.shared.upstreams.give_back_raw(k, s);
            }
        }
        if let Some(s) = self.shared.upstreams.take_idle_raw(key) {
            return Ok((s, true));
        }
        Ok((self.shared.upstreams.connect_raw(key).await?, false))
    }

    /// Sends the request in `out` (and the `rest` of its body from the
    /// client) upstream and reads the answer's head. A kept connection
    /// the upstream closed before answering gets the request once more on
    /// a new one when the whole request is at hand: the upstream sent no
    /// byte of an answer, so it closed the connection while idle, before
    /// reading the request (browsers retry the same case).
    async fn send(
        &mut self,
        key: UpstreamKey,
        rest: u64,
        head_method: bool,
    ) -> Result<(TcpStream, Answer), Failed> {
        let mut again = rest == 0;
        let early = |error| Failed {
            error,
            body_read: rest == 0,
        };
        loop {
            let (mut up, reused) = self.upstream(key, rest).await.map_err(early)?;
            let retry = reused && again;
            if let Err(e) = up.write_all(&self.out).await {
                if retry {
                    again = false;
                    continue;
                }
                return Err(early(e));
            }
            if rest > 0 {
                self.copy_body(&mut up, rest)
                    .await
                    .map_err(|error| Failed {
                        error,
                        body_read: false,
                    })?;
            }
            let mut heard = false;
            match self.answer_head(&mut up, head_method, &mut heard).await {
                Ok(answer) => return Ok((up, answer)),
                Err(_) if retry && !heard => again = false,
                Err(error) => {
                    return Err(Failed {
                        error,
                        body_read: true,
                    })
                }
            }
        }
    }

    /// Copies `left` body bytes from the client to `up`.
    async fn copy_body(&mut self, up: &mut TcpStream, mut left: u64) -> io::Result<()> {
        while left > 0 {
            if self.buf.is_empty() {
                self.buf.reserve(READ_SIZE);
                if self.client.read_buf(&mut self.buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let k = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            up.write_all(&self.buf[..k]).await?;
            self.buf.advance(k);
            left -= k as u64;
        }
        Ok(())
    }

    /// Reads and drops `left` body bytes from the client; `false` if it
    /// closed first.
    async fn discard(&mut self, mut left: u64) -> bool {
        while left > 0 {
            self.buf.clear();
            self.buf.reserve(READ_SIZE);
            match self.client.read_buf(&mut self.buf).await {
                Ok(n) if n > 0 => {
                    let k = usize::try_from(left).unwrap_or(usize::MAX).min(n);
                    self.buf.advance(k);
                    left -= k as u64;
                }
                _ => return false,
            }
        }
        true
    }

    /// Reads the answer's head into `up_buf`; interim answers (1xx) go to
    /// the client as they come. `heard`: a byte of an answer came.
    async fn answer_head(
        &mut self,
        up: &mut TcpStream,
        head_method: bool,
        heard: &mut bool,
    ) -> io::Result<Answer> {
        self.up_buf.clear();
        loop {
            if !self.up_buf.is_empty() {
                match parse_answer(&self.up_buf, head_method)? {
                    Parsed::Partial => {}
                    Parsed::Interim(len) => {
                        self.client.write_all(&self.up_buf[..len]).await?;
                        self.up_buf.advance(len);
                        continue;
                    }
                    Parsed::Final(answer) => return Ok(answer),
                }
            }
            self.up_buf.reserve(READ_SIZE);
            if up.read_buf(&mut self.up_buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed before answering",
                ));
            }
            *heard = true;
        }
    }

    /// Relays the answer whose head is at the front of `up_buf`, and its
    /// body; keeps the upstream connection for the next request when it
    /// stays usable. `false` when the client connection closes.
    async fn relay_answer(&mut self, key: UpstreamKey, mut up: TcpStream, answer: Answer) -> bool {
        let mut body = Body::new(answer.framing);
        let mut end = answer.len;
        let mut extra = false;
        loop {
            let Ok((used, done)) = body.take(&self.up_buf[end..]) else {
                debug!(orig = %self.orig, "malformed chunked answer from upstream");
                return false;
            };
            extra |= end + used < self.up_buf.len();
            end += used;
            if self.client.write_all(&self.up_buf[..end]).await.is_err() {
                return false;
            }
            if done {
                break;
            }
            self.up_buf.clear();
            self.up_buf.reserve(READ_SIZE);
            end = 0;
            match up.read_buf(&mut self.up_buf).await {
                Ok(0) if answer.framing == Framing::UntilClose => break,
                Ok(n) if n > 0 => {}
                // Cut short: the client cannot tell, so its connection closes.
                _ => return false,
            }
        }
        // Bytes after the answer were never asked for: the connection is
        // not reused.
        if !answer.close && !extra {
            self.up = Some((key, up));
        }
        !answer.close
    }
}

/// The proxy's own short answer.
fn canned(status: StatusCode, body: &str, close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        if close { "connection: close\r\n" } else { "" },
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_s_own_answers() {
        let text =
            String::from_utf8(canned(StatusCode::FORBIDDEN, "Access denied\r\n", true)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 15\r\nconnection: close\r\n\r\nAccess denied\r\n"
        );
    }
}
