//! HTTP/1 heads that httparse rejects but servers serve.
//!
//! httparse holds targets and header values to the RFC 9112 byte sets: a target that is not
//! UTF-8 (raw 0x80–0xFF), a control byte or DEL in a target or a header value, a header name
//! that is not a token, more than `MAX_HEADERS` headers: each is an error. Servers are laxer:
//! nginx answers raw high bytes in a path (404) and control bytes in a header value (200), and
//! Python servers split lines at spaces and colons. A request the server answers must be a
//! record, so a head httparse rejects is read again here, field by field:
//!
//! - request line: `METHOD SP target SP HTTP/version`, the method a token, the target any bytes
//!   but CR and LF (spaces included: everything between the method and the last space);
//! - status line: `HTTP/version SP 3DIGIT [SP reason]`, the reason any bytes;
//! - header lines: split at the first colon, any bytes but CR and LF on either side; a line with
//!   no colon, or folded onto the one before, is skipped;
//! - lines end at LF, an optional CR before it dropped; empty lines before a request line are
//!   skipped (RFC 9112 §2.2).
//!
//! The framing headers (Content-Length, Transfer-Encoding) of a lenient head are honoured like a
//! strict one's, so the stream stays in sync behind it.

/// Longest method accepted (the longest registered method is 17 bytes).
const MAX_METHOD: usize = 32;

/// A head read leniently. Slices borrow the parsed buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// Request method (empty for a response).
    pub method: &'a [u8],
    /// Request target (empty for a response).
    pub target: &'a [u8],
    /// Response status (0 for a request).
    pub status: u16,
    /// (name, value), both trimmed of spaces and tabs.
    pub headers: Vec<Header<'a>>,
    /// Bytes of the head, its final empty line included.
    pub len: usize,
}

/// Outcome of a lenient parse.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse<'a> {
    Complete(Head<'a>),
    /// The bytes so far can begin a head; its end has not arrived.
    Partial,
    /// Not a head, however leniently read.
    Invalid,
}

/// The line starting at `from`, without its CR LF, and the index after its LF.
fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let end = from + memchr::memchr(b'\n', &buf[from..])?;
    let l = &buf[from..end];
    Some((l.strip_suffix(b"\r").unwrap_or(l), end + 1))
}

fn trim(b: &[u8]) -> &[u8] {
    let is_ws = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !is_ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !is_ws(c)).map_or(start, |i| i + 1);
    &b[start..end]
}

/// RFC 9110 `tchar`.
fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// A header line's (name, value).
pub type Header<'a> = (&'a [u8], &'a [u8]);

/// Header lines from `from` to the empty line that ends the head, and the index after it.
fn headers(buf: &[u8], mut from: usize) -> Option<(Vec<Header<'_>>, usize)> {
    let mut out = Vec::new();
    loop {
        let (l, next) = line(buf, from)?;
        from = next;
        if l.is_empty() {
            return Some((out, from));
        }
        if l[0] == b' ' || l[0] == b'\t' {
            continue; // obsolete line folding: the value's continuation carries no framing
        }
        if let Some(colon) = memchr::memchr(b':', l) {
            out.push((trim(&l[..colon]), trim(&l[colon + 1..])));
        }
    }
}

/// A request head, read leniently.
#[must_use]
pub fn request(buf: &[u8]) -> Parse<'_> {
    let from = buf
        .iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[from..];
    // The method decides early whether this can be a request at all (TLS, binary junk: no).
    let Some(sp) = rest.iter().position(|&c| !is_token(c)) else {
        return if rest.len() <= MAX_METHOD {
            Parse::Partial
        } else {
            Parse::Invalid
        };
    };
    if sp == 0 || sp > MAX_METHOD || rest[sp] != b' ' {
        return Parse::Invalid;
    }
    let Some((l, next)) = line(buf, from) else {
        return Parse::Partial;
    };
    let after = trim(&l[sp..]);
    // Target and version: the version is the last word, the target all before it.
    let Some(last_sp) = after.iter().rposition(|&c| c == b' ') else {
        return Parse::Invalid; // no version: HTTP/0.9 or junk, not a head with headers
    };
    let (target, version) = (trim(&after[..last_sp]), &after[last_sp + 1..]);
    if target.is_empty() || !version.starts_with(b"HTTP/") {
        return Parse::Invalid;
    }
    let Some((headers, len)) = headers(buf, next) else {
        return Parse::Partial;
    };
    Parse::Complete(Head {
        method: &l[..sp],
        target,
        status: 0,
        headers,
        len,
    })
}

/// A response head, read leniently.
#[must_use]
pub fn response(buf: &[u8]) -> Parse<'_> {
    const PREFIX: &[u8] = b"HTTP/";
    let prefix = buf.len().min(PREFIX.len());
    if buf[..prefix] != PREFIX[..prefix] {
        return Parse::Invalid;
    }
    let Some((status_line, next)) = line(buf, 0) else {
        return Parse::Partial;
    };
    let Some(sp) = memchr::memchr(b' ', status_line) else {
        return Parse::Invalid;
    };
    let code = trim(&status_line[sp..]);
    if code.len() < 3
        || !code[..3].iter().all(u8::is_ascii_digit)
        || code.get(3).is_some_and(|&c| c != b' ' && c != b'\t')
    {
        return Parse::Invalid;
    }
    let status = code[..3]
        .iter()
        .fold(0, |n, &d| n * 10 + u16::from(d - b'0'));
    let Some((headers, len)) = headers(buf, next) else {
        return Parse::Partial;
    };
    Parse::Complete(Head {
        method: b"",
        target: b"",
        status,
        headers,
        len,
    })
}

/// Method and target of whatever request line begins `buf` (possibly cut short), for a request
/// known only by its answer: the method if it is a token, the target up to the version.
#[must_use]
pub fn first_line(buf: &[u8]) -> (&[u8], &[u8]) {
    let from = buf
        .iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(buf.len());
    let l = match line(buf, from) {
        Some((l, _)) => l,
        None => &buf[from..],
    };
    let sp = l.iter().position(|&c| !is_token(c)).unwrap_or(l.len());
    if sp == 0 || sp > MAX_METHOD || l.get(sp).is_some_and(|&c| c != b' ') {
        return (b"", b"");
    }
    let after = trim(&l[sp..]);
    let target = match after.iter().rposition(|&c| c == b' ') {
        Some(i) if after[i + 1..].starts_with(b"HTTP/") => trim(&after[..i]),
        _ => after,
    };
    (&l[..sp], target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(p: Parse<'_>) -> Head<'_> {
        match p {
            Parse::Complete(h) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_with_raw_bytes_in_target_and_values() {
        let buf = b"\r\nGET /a\x80\xff\x01 b HTTP/1.1\r\nHost: t\r\nX\x01Y : v\x01\x7f \r\n folded\r\nno colon\r\nContent-Length: 3\r\n\r\nabc";
        let h = complete(request(buf));
        assert_eq!(h.method, b"GET");
        assert_eq!(h.target, b"/a\x80\xff\x01 b");
        assert_eq!(
            h.headers,
            [
                (&b"Host"[..], &b"t"[..]),
                (b"X\x01Y", b"v\x01\x7f"),
                (b"Content-Length", b"3")
            ]
        );
        assert_eq!(&buf[h.len..], b"abc");
    }

    #[test]
    fn bare_lf_lines_and_partial_heads() {
        let h = complete(request(b"GET /x HTTP/1.0\nA: b\n\n"));
        assert_eq!(h.len, 22);
        assert_eq!(request(b"GET /x\x01 HTTP/1.1\r\nHost"), Parse::Partial);
        assert_eq!(request(b"GE"), Parse::Partial);
        assert_eq!(request(b""), Parse::Partial);
    }

    #[test]
    fn junk_and_http09_are_invalid() {
        assert_eq!(request(b"\x16\x03\x01\x02\x00 hello"), Parse::Invalid);
        assert_eq!(request(b"G\x01T / HTTP/1.1\r\n\r\n"), Parse::Invalid);
        assert_eq!(request(b"GET /a.txt\r\n"), Parse::Invalid);
        assert_eq!(request(b"GET  HTTP/1.1\r\n\r\n"), Parse::Invalid);
        assert_eq!(request(b"GET / FTP/1\r\n\r\n"), Parse::Invalid);
        assert_eq!(request(&[b'A'; 40]), Parse::Invalid);
    }

    #[test]
    fn responses() {
        let h = complete(response(
            b"HTTP/1.1 404 N\x01t F\x80und\r\nX: \x01\r\nContent-Length: 0\r\n\r\n",
        ));
        assert_eq!(h.status, 404);
        assert_eq!(h.headers.len(), 2);
        assert_eq!(response(b"HTT"), Parse::Partial);
        assert_eq!(response(b"HTTP/1.1 200 OK\r\n"), Parse::Partial);
        assert_eq!(response(b"HTTP/1.1 20x OK\r\n\r\n"), Parse::Invalid);
        assert_eq!(response(b"HTTP/1.1 2000\r\n\r\n"), Parse::Invalid);
        assert_eq!(response(b"hi\n"), Parse::Invalid);
        assert_eq!(complete(response(b"HTTP/1.1 101\r\n\r\n")).status, 101);
    }

    #[test]
    fn first_line_of_whatever_was_sent() {
        assert_eq!(first_line(b"GET /a.txt\r\n"), (&b"GET"[..], &b"/a.txt"[..]));
        assert_eq!(
            first_line(b"GET /a\x01b HTTP/1.1\r\nHo"),
            (&b"GET"[..], &b"/a\x01b"[..])
        );
        assert_eq!(
            first_line(b"POST /v1/chat/compl"),
            (&b"POST"[..], &b"/v1/chat/compl"[..])
        );
        assert_eq!(first_line(b"\x16\x03\x01"), (&b""[..], &b""[..]));
        assert_eq!(first_line(b""), (&b""[..], &b""[..]));
    }
}
