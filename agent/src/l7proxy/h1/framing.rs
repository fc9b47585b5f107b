//! How the relay reads what it relays: an answer's head and the framing
//! of its body (RFC 9112 6.3), and field values as the rules read them.

use std::io;

use axoneme_httpguard::{ChunkStep, ChunkedBody};
use hyper::StatusCode;

/// Most fields in a head (hyper's limit too).
pub(super) const MAX_FIELDS: usize = 100;
/// Largest response head taken from upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How an answer's body is framed (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A complete response head from upstream.
pub(super) struct Answer {
    pub(super) len: usize,
    pub(super) status: StatusCode,
    pub(super) framing: Framing,
    /// The upstream connection closes after this answer (and so does the
    /// client's, which reads the same head).
    pub(super) close: bool,
}

/// Follows an answer's body through the bytes that come.
pub(super) enum Body {
    Left(u64),
    Chunks(ChunkedBody),
    ToClose,
}

impl Body {
    pub(super) fn new(framing: Framing) -> Self {
        match framing {
            Framing::None => Body::Left(0),
            Framing::Length(n) => Body::Left(n),
            Framing::Chunked => Body::Chunks(ChunkedBody::default()),
            Framing::UntilClose => Body::ToClose,
        }
    }

    /// How many of `data`'s bytes belong to the body, and whether it ended
    /// with them.
    pub(super) fn take(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            Body::Left(left) => {
                let k = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                *left -= k as u64;
                Ok((k, *left == 0))
            }
            Body::Chunks(chunks) => match chunks.step(data) {
                (k, ChunkStep::More) => Ok((k, false)),
                (k, ChunkStep::End) => Ok((k, true)),
                (_, ChunkStep::Malformed) => Err(()),
            },
            Body::ToClose => Ok((data.len(), false)),
        }
    }
}

pub(super) enum Parsed {
    Partial,
    /// An interim (1xx) head of this length.
    Interim(usize),
    Final(Answer),
}

fn bad_answer(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Parses an answer's head and its framing (RFC 9112 6.3). A length
/// together with chunks, or two lengths, is refused rather than read one
/// of two ways.
pub(super) fn parse_answer(buf: &[u8], head_method: bool) -> io::Result<Parsed> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => {
            return Ok(Parsed::Partial)
        }
        Ok(httparse::Status::Partial) => return Err(bad_answer("answer head too large")),
        Err(e) => return Err(bad_answer(format!("answer head: {e}"))),
    };
    let code = resp.code.unwrap_or_default();
    if code == 101 {
        return Err(bad_answer(
            "101 Switching Protocols, and no upgrade was asked",
        ));
    }
    if (100..200).contains(&code) {
        return Ok(Parsed::Interim(len));
    }
    let status = StatusCode::from_u16(code).map_err(|_| bad_answer("answer status"))?;
    // HTTP/1.0 closes unless it says otherwise.
    let mut close = resp.version == Some(0);
    let (mut length, mut chunked) = (None, None);
    for f in resp.headers.iter() {
        if f.name.eq_ignore_ascii_case("content-length") {
            let n = visible(f.value)
                .and_then(length_of)
                .ok_or_else(|| bad_answer("answer Content-Length"))?;
            if length.replace(n).is_some() {
                return Err(bad_answer("more than one Content-Length in the answer"));
            }
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = visible(f.value).and_then(|v| v.rsplit(',').next());
            chunked = Some(last.is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")));
        } else if f.name.eq_ignore_ascii_case("connection") {
            for token in visible(f.value).unwrap_or("").split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && resp.version == Some(0) {
                    close = false;
                }
            }
        }
    }
    let framing = if head_method || code == 204 || code == 304 {
        Framing::None
    } else if let Some(chunked) = chunked {
        if length.is_some() {
            return Err(bad_answer(
                "Content-Length with Transfer-Encoding in the answer",
            ));
        }
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Parsed::Final(Answer {
        len,
        status,
        framing,
        close: close || framing == Framing::UntilClose,
    }))
}

/// A field value as text if it is visible ASCII (what hyper's `to_str`
/// accepts).
pub(super) fn visible(v: &[u8]) -> Option<&str> {
    v.iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(v).ok())
        .flatten()
}

/// A `Content-Length` value: digits only.
pub(super) fn length_of(v: &str) -> Option<u64> {
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn final_answer(head: &str, head_method: bool) -> io::Result<(Framing, bool)> {
        match parse_answer(head.as_bytes(), head_method)? {
            Parsed::Final(a) => {
                assert_eq!(a.len, head.len());
                Ok((a.framing, a.close))
            }
            Parsed::Partial => panic!("partial: {head:?}"),
            Parsed::Interim(_) => panic!("interim: {head:?}"),
        }
    }

    #[test]
    fn answers_are_framed_as_rfc_9112_says() {
        let ok = |fields: &str| format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
        assert_eq!(
            final_answer(&ok("Content-Length: 12\r\n"), false).unwrap(),
            (Framing::Length(12), false)
        );
        assert_eq!(
            final_answer(&ok("Transfer-Encoding: gzip, chunked\r\n"), false).unwrap(),
            (Framing::Chunked, false)
        );
        // Not chunked last: the body runs until the upstream closes.
        assert_eq!(
            final_answer(&ok("Transfer-Encoding: chunked, gzip\r\n"), false).unwrap(),
            (Framing::UntilClose, true)
        );
        assert_eq!(
            final_answer(&ok(""), false).unwrap(),
            (Framing::UntilClose, true)
        );
        // No body for HEAD, 204 and 304, whatever the fields say.
        assert_eq!(
            final_answer(&ok("Content-Length: 12\r\n"), true).unwrap(),
            (Framing::None, false)
        );
        for status in ["204 No Content", "304 Not Modified"] {
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: 12\r\n\r\n");
            assert_eq!(final_answer(&head, false).unwrap(), (Framing::None, false));
        }
        // Who closes.
        assert!(
            final_answer(&ok("Content-Length: 0\r\nConnection: close\r\n"), false)
                .unwrap()
                .1
        );
        let old = "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(final_answer(old, false).unwrap().1);
        let kept = "HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n";
        assert!(!final_answer(kept, false).unwrap().1);
    }

    #[test]
    fn answers_framed_two_ways_or_unasked_upgrades_are_refused() {
        for fields in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "Content-Length: 5, 5\r\n",
            "Content-Length: +5\r\n",
        ] {
            let head = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
            let err = parse_answer(head.as_bytes(), false).err();
            assert!(err.is_some(), "{fields:?} was taken");
        }
        let upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n";
        assert!(parse_answer(upgrade, false).is_err());
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(parse_answer(huge.as_bytes(), false).is_err());
    }

    #[test]
    fn interim_answers_and_partial_heads() {
        let hints = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        let interim = format!("{hints}HTTP/1.1 200 OK\r\n");
        assert!(
            matches!(parse_answer(interim.as_bytes(), false), Ok(Parsed::Interim(n)) if n == hints.len())
        );
        assert!(matches!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn a_body_ends_where_its_framing_says_however_it_is_cut() {
        let chunked = b"5\r\nhello\r\n0\r\n\r\nGET /next";
        let body_len = chunked.len() - b"GET /next".len();
        for framing in [Framing::Chunked, Framing::Length(body_len as u64)] {
            for cut in 0..chunked.len() {
                let mut body = Body::new(framing);
                let (a, done_a) = body.take(&chunked[..cut]).unwrap();
                assert_eq!(a, cut.min(body_len), "{framing:?} cut at {cut}");
                let (b, done_b) = if done_a {
                    (0, true)
                } else {
                    body.take(&chunked[cut..]).unwrap()
                };
                assert_eq!(
                    (a + b, done_b),
                    (body_len, true),
                    "{framing:?} cut at {cut}"
                );
            }
        }
        let mut none = Body::new(Framing::None);
        assert_eq!(none.take(b"HTTP/1.1").unwrap(), (0, true));
        assert!(Body::new(Framing::Chunked).take(b"zz\r\n").is_err());
    }

    #[test]
    fn field_values_and_lengths() {
        assert_eq!(visible(b"a b\tc"), Some("a b\tc"));
        assert_eq!(visible(b"caf\xc3\xa9"), None);
        assert_eq!(length_of("042"), Some(42));
        for bad in ["", "-1", "1 2", "99999999999999999999999"] {
            assert_eq!(length_of(bad), None, "{bad:?}");
        }
    }
}
