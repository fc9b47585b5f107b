//! A guard in front of hyper that refuses HTTP/1 request heads whose body
//! length two parsers could read differently: `Content-Length` together
//! with `Transfer-Encoding`, or more than one `Content-Length` field.
//!
//! hyper is RFC-compliant but lenient here: it frames such a request by
//! `Transfer-Encoding` and drops the length, and folds equal duplicate
//! lengths into one. Both are allowed (RFC 9112 6.3, RFC 9110 8.6), but
//! both are the signature of a smuggling attempt, so the proxy answers 400
//! and closes, as the RFC recommends. hyper's parsed request no longer shows
//! what was dropped, so the check has to read the raw bytes.
//!
//! The guard follows the message framing of the byte stream (heads with
//! `httparse`, the parser hyper itself uses; bodies by length or chunk
//! sizes) so that it sees every pipelined head. It hands hyper the bytes
//! unchanged as they come (hyper's header timeout keeps running), except
//! the bytes that complete a head: those wait for the verdict. A refused
//! head is completed with a byte hyper cannot parse instead (`\0` is
//! invalid anywhere in a head): hyper answers `400 Bad Request` after any
//! earlier pipelined answers and closes. Where
//! the guard cannot follow the stream (a head too large or unparsable, an
//! HTTP/2 preface, an upgrade, a malformed chunk) it steps aside: hyper
//! refuses those itself, and the proxy re-frames every forwarded request,
//! so the guard is a second line, never the only one.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Fed to hyper in place of the end of a refused head: `\0` is invalid
/// anywhere in a head, and the blank line that follows makes hyper's
/// parser reach it and answer 400 at once.
pub const POISON: &[u8] = b"\0\r\n\r\n";
/// More header fields than this: hyper's own limit (100) refuses the head.
const MAX_FIELDS: usize = 128;
/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;

/// A head the guard refused, for the proxy's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub method: String,
    pub path: String,
    pub host: String,
    pub reason: &'static str,
}

enum State {
    /// Collecting a request head.
    Head,
    /// So many body bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(ChunkedBody),
    /// Not followed any more: bytes pass as they come.
    Aside,
}

/// Follows a chunked body (RFC 9112 7.1) through a byte stream: chunk
/// sizes, chunk data, trailers. The proxy's guard follows requests with
/// it; the proxy's own HTTP/1.1 path relays chunked responses by it.
pub struct ChunkedBody(Chunk);

/// Where a chunked body stands after [`ChunkedBody::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStep {
    /// More of the body is to come.
    More,
    /// The body ended with the bytes used.
    End,
    /// Not a chunked body (a bad size, no CRLF after data, a line longer
    /// than the limit): the stream cannot be followed any more.
    Malformed,
}

impl Default for ChunkedBody {
    fn default() -> Self {
        ChunkedBody(Chunk::Size(Vec::new()))
    }
}

impl ChunkedBody {
    /// Consumes a prefix of `data` (the body's bytes in it, up to its
    /// end); returns its length and where the body stands.
    pub fn step(&mut self, data: &[u8]) -> (usize, ChunkStep) {
        let mut used = 0;
        while used < data.len() {
            let (k, step) = self.0.step(&data[used..]);
            used += k;
            if step != ChunkStep::More {
                return (used, step);
            }
        }
        (used, ChunkStep::More)
    }
}

enum Chunk {
    /// Reading a chunk-size line.
    Size(Vec<u8>),
    /// So many chunk-data bytes left.
    Data(u64),
    /// Reading the CRLF after chunk data.
    DataEnd(Vec<u8>),
    /// Reading trailer lines until an empty one.
    Trailer(Vec<u8>),
}

/// Wraps a client connection; reads are checked in place (hyper's buffer,
/// no copy), writes pass through.
pub struct FramingGuard<IO> {
    io: IO,
    /// Bytes of the connection read before the guard took it (by the
    /// proxy's own HTTP/1.1 path): read first, and judged as any.
    read_first: Vec<u8>,
    state: State,
    /// The current request head so far (already handed to hyper, all but
    /// the bytes that complete it).
    head: Vec<u8>,
    /// A head was refused: nothing more is read.
    done: bool,
    /// The part of the poison hyper has yet to read.
    poison: &'static [u8],
    max_head: usize,
    on_refuse: Box<dyn FnMut(Refused) + Send>,
}

impl<IO> FramingGuard<IO> {
    /// `max_head`: the proxy's head limit; a longer head is left to hyper
    /// (which answers 431).
    pub fn new(io: IO, max_head: usize, on_refuse: Box<dyn FnMut(Refused) + Send>) -> Self {
        FramingGuard {
            io,
            read_first: Vec::new(),
            state: State::Head,
            head: Vec::new(),
            done: false,
            poison: &[],
            max_head,
            on_refuse,
        }
    }

    /// The guard on a connection whose first bytes, `read`, were already
    /// taken from it: they are read first.
    pub fn with_read(mut self, read: Vec<u8>) -> Self {
        self.read_first = read;
        self
    }

    /// Runs newly read bytes through the framing state machine: `None`
    /// when they may all pass, `Some(k)` when a refused head completes in
    /// them and only the first `k` may (the rest of that head is withheld).
    fn feed(&mut self, data: &[u8]) -> Option<usize> {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            match &mut self.state {
                State::Aside => return None,
                State::Body(left) => {
                    let k = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                    *left -= k as u64;
                    if *left == 0 {
                        self.state = State::Head;
                    }
                    pos += k;
                }
                State::Chunked(chunk) => {
                    let (used, step) = chunk.step(rest);
                    pos += used;
                    match step {
                        ChunkStep::More => {}
                        ChunkStep::End => self.state = State::Head,
                        ChunkStep::Malformed => self.state = State::Aside,
                    }
                }
                State::Head => {
                    let before = self.head.len();
                    self.head.extend_from_slice(rest);
                    match self.judge_head() {
                        // Incomplete: hyper may have it (its header timeout
                        // runs), as the ending is what the verdict needs.
                        None => return None,
                        Some(false) => return Some(pos),
                        // What follows a complete head goes round again.
                        Some(true) => {
                            pos += self.head.len() - before;
                            self.head.clear();
                        }
                    }
                }
            }
        }
        None
    }

    /// Judges `head` once it is complete: `None` while it is not (or when
    /// the guard steps aside), `Some(passed)` after; a passed head is
    /// truncated to its length and the body's framing is set.
    fn judge_head(&mut self) -> Option<bool> {
        let head = &self.head;
        if H2_PREFACE.starts_with(&head[..head.len().min(H2_PREFACE.len())]) {
            if head.len() >= H2_PREFACE.len() {
                self.step_aside();
            }
            return None;
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        // A head longer than the limit is too large however the stream was
        // cut into reads (hyper refuses it), complete in one read or not.
        let end = match req.parse(head) {
            Ok(httparse::Status::Complete(end)) if end <= self.max_head => end,
            Ok(httparse::Status::Partial) if head.len() <= self.max_head => return None,
            // Too large, too many fields or unparsable: hyper refuses it.
            _ => {
                self.step_aside();
                return None;
            }
        };
        let (mut lengths, mut codings) = (Vec::new(), Vec::new());
        let mut host = String::new();
        for f in req.headers.iter() {
            let value = String::from_utf8_lossy(f.value).trim().to_string();
            if f.name.eq_ignore_ascii_case("content-length") {
                lengths.push(value);
            } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
                codings.push(value);
            } else if f.name.eq_ignore_ascii_case("host") {
                host = value;
            }
        }
        let upgrade = req.method == Some("CONNECT")
            || req
                .headers
                .iter()
                .any(|f| f.name.eq_ignore_ascii_case("upgrade"));
        let refused = if !codings.is_empty() && !lengths.is_empty() {
            Some("Content-Length with Transfer-Encoding")
        } else if lengths.len() > 1 || lengths.iter().any(|l| l.contains(',')) {
            Some("more than one Content-Length")
        } else {
            None
        };
        if let Some(reason) = refused {
            (self.on_refuse)(Refused {
                method: req.method.unwrap_or_default().to_string(),
                path: req.path.unwrap_or_default().to_string(),
                host,
                reason,
            });
            self.head = Vec::new();
            return Some(false);
        }
        // hyper's framing: chunked if the last coding is chunked (anything
        // else it refuses), else the length, else no body.
        self.state = if upgrade {
            State::Aside
        } else if let Some(last) = codings.last() {
            let chunked = last
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            if chunked {
                State::Chunked(ChunkedBody::default())
            } else {
                State::Aside
            }
        } else if let Some(length) = lengths.first() {
            match length.parse::<u64>() {
                Ok(0) => State::Head,
                Ok(n) => State::Body(n),
                Err(_) => State::Aside,
            }
        } else {
            State::Head
        };
        self.head.truncate(end);
        Some(true)
    }

    fn step_aside(&mut self) {
        self.state = State::Aside;
        self.head = Vec::new();
    }
}

impl Chunk {
    /// Consumes a prefix of `data` (at most one line or one chunk's data);
    /// returns its length and where the body stands.
    fn step(&mut self, data: &[u8]) -> (usize, ChunkStep) {
        if let Chunk::Data(left) = self {
            let k = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
            *left -= k as u64;
            if *left == 0 {
                *self = Chunk::DataEnd(Vec::new());
            }
            return (k, ChunkStep::More);
        }
        let (Chunk::Size(buf) | Chunk::DataEnd(buf) | Chunk::Trailer(buf)) = self else {
            unreachable!("chunk data handled above")
        };
        // A line longer than the limit is not followed, whether it came
        // whole in one read or in pieces.
        let (used, line) = line(buf, data);
        let Some(line) = line else {
            if buf.len() > MAX_LINE {
                return (used, ChunkStep::Malformed);
            }
            return (used, ChunkStep::More);
        };
        if line.len() > MAX_LINE {
            return (used, ChunkStep::Malformed);
        }
        let empty = line == b"\r\n";
        let next = match self {
            Chunk::Size(_) => match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((_, 0))) => Chunk::Trailer(Vec::new()),
                Ok(httparse::Status::Complete((_, n))) => Chunk::Data(n),
                _ => return (used, ChunkStep::Malformed),
            },
            Chunk::DataEnd(_) if empty => Chunk::Size(Vec::new()),
            Chunk::DataEnd(_) => return (used, ChunkStep::Malformed),
            Chunk::Trailer(_) if empty => return (used, ChunkStep::End),
            _ => Chunk::Trailer(Vec::new()),
        };
        *self = next;
        (used, ChunkStep::More)
    }
}

/// Appends `data` up to the first LF to `buf`; returns how much was used
/// and, when the line ended, the whole line (`buf` is emptied).
fn line(buf: &mut Vec<u8>, data: &[u8]) -> (usize, Option<Vec<u8>>) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            buf.extend_from_slice(&data[..=i]);
            (i + 1, Some(std::mem::take(buf)))
        }
        None => {
            buf.extend_from_slice(data);
            (data.len(), None)
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            if !this.poison.is_empty() {
                let n = this.poison.len().min(buf.remaining());
                buf.put_slice(&this.poison[..n]);
                this.poison = &this.poison[n..];
                return Poll::Ready(Ok(()));
            }
            // After the poison, what the client still sends is read and
            // dropped, and the end comes only when the client's does. An
            // early end would tell hyper the client left, and hyper would
            // drop the answer to a pipelined request still in flight
            // before it (it reads ahead while answering); unread bytes at
            // close would also reset the connection under the answers.
            let mut scratch = [0u8; 4096];
            loop {
                let mut rb = ReadBuf::new(&mut scratch);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                if rb.filled().is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let before = buf.filled().len();
        if this.read_first.is_empty() {
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        } else {
            let n = this.read_first.len().min(buf.remaining());
            buf.put_slice(&this.read_first[..n]);
            this.read_first.drain(..n);
        }
        if let Some(pass) = this.feed(&buf.filled()[before..]) {
            // The rest of this read is withheld; the poison takes its place
            // (what does not fit comes with the next read).
            buf.set_filled(before + pass);
            let n = POISON.len().min(buf.remaining());
            buf.put_slice(&POISON[..n]);
            this.poison = &POISON[n..];
            this.done = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A harness for tests and fuzzing: the guard reading from a connection
/// whose reads return given pieces.
#[cfg(feature = "testing")]
pub mod testing {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A connection whose reads return its pieces one by one, then EOF.
    pub struct Pieces(pub VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Reads `pieces` (empty ones are skipped: an empty read is EOF)
    /// through a guard with head limit `max_head`: what hyper would read,
    /// and the heads refused.
    pub fn read_through(pieces: &[&[u8]], max_head: usize) -> (Vec<u8>, Vec<Refused>) {
        read_through_after(&[], pieces, max_head)
    }

    /// [`read_through`] for a guard given the connection's first bytes,
    /// `read`, already read ([`FramingGuard::with_read`]).
    pub fn read_through_after(
        read: &[u8],
        pieces: &[&[u8]],
        max_head: usize,
    ) -> (Vec<u8>, Vec<Refused>) {
        let refused = Arc::new(Mutex::new(Vec::new()));
        let sink = refused.clone();
        let pieces = pieces.iter().filter(|p| !p.is_empty());
        let mut guard = FramingGuard::new(
            Pieces(pieces.map(|p| p.to_vec()).collect()),
            max_head,
            Box::new(move |r| sink.lock().expect("not poisoned").push(r)),
        )
        .with_read(read.to_vec());
        let mut out = Vec::new();
        // Reads never pend: polling with a no-op waker completes.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut buf = [0u8; 8192];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut guard).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
                Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
                other => panic!("the harness's reads never fail or pend: {other:?}"),
            }
        }
        let refused = refused.lock().expect("not poisoned").clone();
        (out, refused)
    }
}

#[cfg(test)]
mod tests;
