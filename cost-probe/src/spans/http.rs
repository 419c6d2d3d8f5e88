//! HTTP/1.x framing over partially captured streams.
//!
//! Each syscall contributes its head bytes, a gap of bytes we did not copy, and its tail bytes
//! ([`Seg`]). Framing needs lengths more than contents: a gap inside a body just counts down the
//! remaining length; a gap inside headers or a chunk-size line loses sync, which is flagged and
//! recovered from at the next recognisable boundary.
use std::collections::VecDeque;

/// Header bytes kept while waiting for the end of a header block.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Body bytes kept from the start and end of a request body (for `"model"`).
pub const BODY_KEEP: usize = 2048;
const MAX_HEADERS: usize = 64;

/// A piece of one syscall's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg<'a> {
    Bytes(&'a [u8]),
    /// Bytes transferred but not copied by the kernel.
    Gap(u64),
}

/// Splits a payload of `len` bytes into head, gap and tail.
#[must_use]
pub fn segments<'a>(head: &'a [u8], tail: &'a [u8], len: u64) -> [Seg<'a>; 3] {
    let h = head.len() as u64;
    let tail = if h + tail.len() as u64 > len {
        &tail[..len.saturating_sub(h) as usize]
    } else {
        tail
    };
    let gap = len.saturating_sub(h + tail.len() as u64);
    [Seg::Bytes(head), Seg::Gap(gap), Seg::Bytes(tail)]
}

/// Whether bytes begin like an HTTP/1 request line (`TOKEN SP`).
#[must_use]
pub fn looks_like_request(b: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    METHODS.iter().any(|m| b.starts_with(m))
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    match header(headers, "content-length") {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or(()),
    }
}

fn is_chunked(headers: &[httparse::Header<'_>]) -> bool {
    header(headers, "transfer-encoding").is_some_and(|v| {
        v.split(|&c| c == b',')
            .next_back()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    })
}

// ------------------------------------------------------------------------------------------
// Chunked transfer coding.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line (kept bytes, at most a few).
    Size(Vec<u8>),
    Data(u64),
    /// The CRLF after chunk data: bytes still expected.
    DataEnd(u8),
    /// After the last chunk: trailer lines until an empty one (bytes of the current line).
    Trailer(usize),
    Done,
    /// A gap hid framing bytes; only the terminal chunk at the end of a write is recognised.
    Lost,
}

/// Chunk framing that does not parse (a bad size line, missing CRLF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked framing")]
pub struct ChunkError;

/// Parses `Transfer-Encoding: chunked` framing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunked {
    state: Chunk,
    /// Non-empty chunks started so far.
    pub chunks: u32,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: Chunk::Size(Vec::new()),
            chunks: 0,
        }
    }
}

impl Chunked {
    #[must_use]
    pub fn done(&self) -> bool {
        self.state == Chunk::Done
    }
    #[must_use]
    pub fn lost(&self) -> bool {
        self.state == Chunk::Lost
    }

    /// Consumes bytes; returns how many belong to this body (the rest follows the body).
    pub fn feed(&mut self, b: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < b.len() {
            match &mut self.state {
                Chunk::Size(line) => {
                    let c = b[i];
                    i += 1;
                    if c == b'\n' {
                        let text = std::str::from_utf8(line).map_err(|_| ChunkError)?;
                        let hex = text.split(';').next().unwrap_or("").trim();
                        let size = u64::from_str_radix(hex, 16).map_err(|_| ChunkError)?;
                        self.state = if size == 0 {
                            Chunk::Trailer(0)
                        } else {
                            self.chunks += 1;
                            Chunk::Data(size)
                        };
                    } else if c != b'\r' {
                        if line.len() >= 64 {
                            return Err(ChunkError);
                        }
                        line.push(c);
                    }
                }
                Chunk::Data(rem) => {
                    let k = (*rem).min((b.len() - i) as u64);
                    *rem -= k;
                    i += k as usize;
                    if *rem == 0 {
                        self.state = Chunk::DataEnd(2);
                    }
                }
                Chunk::DataEnd(n) => {
                    if !matches!(b[i], b'\r' | b'\n') {
                        return Err(ChunkError);
                    }
                    let last = b[i] == b'\n';
                    i += 1;
                    *n -= 1;
                    if *n == 0 || last {
                        self.state = Chunk::Size(Vec::new());
                    }
                }
                Chunk::Trailer(len) => {
                    let c = b[i];
                    i += 1;
                    if c == b'\n' {
                        if *len == 0 {
                            self.state = Chunk::Done;
                            return Ok(i);
                        }
                        *len = 0;
                    } else if c != b'\r' {
                        *len += 1;
                    }
                }
                Chunk::Done => return Ok(i),
                Chunk::Lost => return Ok(b.len()),
            }
        }
        Ok(i)
    }

    /// Accounts for bytes that were not captured.
    pub fn skip(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        match &mut self.state {
            Chunk::Data(rem) if *rem >= n => {
                *rem -= n;
                if *rem == 0 {
                    self.state = Chunk::DataEnd(2);
                }
            }
            Chunk::Done => {}
            _ => self.state = Chunk::Lost,
        }
    }

    /// After losing sync: a write ending in the terminal chunk ends the body.
    pub fn resync_on_tail(&mut self, tail: &[u8]) {
        if self.state == Chunk::Lost && tail.ends_with(b"0\r\n\r\n") {
            self.state = Chunk::Done;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Requests (inbound).
// ------------------------------------------------------------------------------------------

/// A request whose header block has been read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Span id, assigned by the builder when the header block completes.
    pub id: u64,
    pub method: String,
    /// Path without the query string (never emitted: it may carry secrets).
    pub path: String,
    /// Timestamp of the read that carried the request's first bytes.
    pub start: u64,
    /// Body framing is complete (all body bytes read).
    pub complete: bool,
    pub bytes_in: u64,
    pub body_head: Vec<u8>,
    pub malformed: bool,
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ReqState {
    Headers {
        buf: Vec<u8>,
        start: u64,
    },
    Body(u64),
    ChunkedBody(Chunked),
    /// Lost sync: wait for bytes that start a request line.
    Lost,
}

/// Parses the inbound byte stream of a connection into requests.
#[derive(Clone, Debug)]
pub struct RequestParser {
    state: ReqState,
}

impl Default for RequestParser {
    fn default() -> Self {
        Self {
            state: ReqState::Headers {
                buf: Vec::new(),
                start: 0,
            },
        }
    }
}

/// What one segment did to the inbound stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReqOutput {
    /// Requests whose header block completed (pushed to the queue's back).
    pub new: u32,
    /// Sync lost: bytes that cannot be framed.
    pub lost_sync: bool,
}

impl RequestParser {
    /// Starts in the lost state, for a connection first seen mid-stream.
    #[must_use]
    pub fn mid_stream() -> Self {
        Self {
            state: ReqState::Lost,
        }
    }

    /// Whether the parser is between requests (no partial header block, no pending body).
    #[must_use]
    pub fn idle(&self) -> bool {
        matches!(&self.state, ReqState::Headers { buf, .. } if buf.is_empty())
    }

    /// Feeds one segment. New requests are pushed to `queue`; body bytes belong to its back.
    pub fn feed(&mut self, seg: Seg<'_>, ts: u64, queue: &mut VecDeque<Request>) -> ReqOutput {
        let mut out = ReqOutput::default();
        match seg {
            Seg::Gap(0) => {}
            Seg::Gap(n) => match &mut self.state {
                ReqState::Body(rem) if *rem >= n => {
                    *rem -= n;
                    body(queue, &[], n, *rem == 0);
                    if *rem == 0 {
                        self.state = ReqState::default_headers();
                    }
                }
                ReqState::ChunkedBody(c) => {
                    c.skip(n);
                    body(queue, &[], n, false);
                    if c.lost() {
                        self.lose(queue, &mut out);
                    }
                }
                ReqState::Lost => {}
                _ => self.lose(queue, &mut out),
            },
            Seg::Bytes(mut b) => {
                while !b.is_empty() {
                    match &mut self.state {
                        ReqState::Lost => {
                            if looks_like_request(b) {
                                self.state = ReqState::default_headers();
                            } else {
                                return out;
                            }
                        }
                        ReqState::Headers { buf, start } => {
                            if buf.is_empty() {
                                *start = ts;
                            }
                            let old = buf.len();
                            let take = b.len().min(MAX_HEADER_BYTES - old);
                            buf.extend_from_slice(&b[..take]);
                            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
                            let mut req = httparse::Request::new(&mut hs);
                            match req.parse(buf) {
                                Ok(httparse::Status::Complete(n)) => {
                                    let (mut r, next) = request_from(&req, *start, n as u64);
                                    b = &b[n - old..];
                                    r.complete = next == ReqState::default_headers();
                                    self.state = next;
                                    queue.push_back(r);
                                    out.new += 1;
                                }
                                Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER_BYTES => {
                                    return out;
                                }
                                _ => {
                                    self.lose(queue, &mut out);
                                    return out;
                                }
                            }
                        }
                        ReqState::Body(rem) => {
                            let k = (*rem).min(b.len() as u64) as usize;
                            *rem -= k as u64;
                            body(queue, &b[..k], k as u64, *rem == 0);
                            b = &b[k..];
                            if *rem == 0 {
                                self.state = ReqState::default_headers();
                            }
                        }
                        ReqState::ChunkedBody(c) => match c.feed(b) {
                            Ok(k) => {
                                let done = c.done();
                                body(queue, &b[..k], k as u64, done);
                                b = &b[k..];
                                if done {
                                    self.state = ReqState::default_headers();
                                }
                            }
                            Err(ChunkError) => {
                                self.lose(queue, &mut out);
                                return out;
                            }
                        },
                    }
                }
            }
        }
        out
    }

    fn lose(&mut self, queue: &mut VecDeque<Request>, out: &mut ReqOutput) {
        out.lost_sync = true;
        // A request whose body we were reading is flagged; a lost header block has no request.
        if !matches!(self.state, ReqState::Headers { .. } | ReqState::Lost)
            && let Some(r) = queue.back_mut()
        {
            r.truncated = true;
        }
        self.state = ReqState::Lost;
    }
}

/// Body bytes for the request at the back of the queue: count them, keep the first few.
fn body(queue: &mut VecDeque<Request>, kept: &[u8], n: u64, complete: bool) {
    if let Some(r) = queue.back_mut() {
        r.bytes_in += n;
        let room = BODY_KEEP.saturating_sub(r.body_head.len());
        r.body_head.extend_from_slice(&kept[..kept.len().min(room)]);
        r.complete |= complete;
    }
}

impl ReqState {
    fn default_headers() -> Self {
        Self::Headers {
            buf: Vec::new(),
            start: 0,
        }
    }
}

fn request_from(
    req: &httparse::Request<'_, '_>,
    start: u64,
    header_len: u64,
) -> (Request, ReqState) {
    let raw_path = req.path.unwrap_or("");
    let path = raw_path.split(['?', '#']).next().unwrap_or("").to_owned();
    let mut r = Request {
        method: req.method.unwrap_or("").to_owned(),
        path,
        start,
        bytes_in: header_len,
        ..Request::default()
    };
    let next = if is_chunked(req.headers) {
        ReqState::ChunkedBody(Chunked::default())
    } else {
        match content_length(req.headers) {
            Ok(Some(n)) if n > 0 => ReqState::Body(n),
            Ok(_) => ReqState::default_headers(),
            Err(()) => {
                r.malformed = true;
                ReqState::default_headers()
            }
        }
    };
    (r, next)
}

// ------------------------------------------------------------------------------------------
// Responses (outbound).
// ------------------------------------------------------------------------------------------

/// How the end of a response body is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// No framing: the body ends at close, or at `data: [DONE]` for an event stream.
    UntilClose,
    /// Nothing follows the headers (HEAD, 204, 304).
    Empty,
}

/// A parsed response header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    pub event_stream: bool,
    /// Bytes of the header block.
    pub len: usize,
}

impl ResponseHead {
    /// A header block that could not be read (hidden by a kernel gap, or malformed): no status,
    /// and no framing but the end of the connection or the next request.
    #[must_use]
    pub fn unknown() -> Self {
        Self {
            status: 0,
            framing: Framing::UntilClose,
            event_stream: false,
            len: 0,
        }
    }
}

/// Outcome of parsing a response header block from accumulated bytes.
pub enum HeadParse {
    Complete(ResponseHead),
    Partial,
    Invalid,
}

/// Parses a response header block; `head_request` for responses to HEAD.
#[must_use]
pub fn parse_response_head(buf: &[u8], head_request: bool) -> HeadParse {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let status = resp.code.unwrap_or(0);
            let event_stream = header(resp.headers, "content-type").is_some_and(|v| {
                v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream")
            });
            let framing = if head_request || status == 204 || status == 304 || status < 200 {
                Framing::Empty
            } else if is_chunked(resp.headers) {
                Framing::Chunked(Chunked::default())
            } else {
                match content_length(resp.headers) {
                    Ok(Some(0)) => Framing::Empty,
                    Ok(Some(n)) => Framing::Length(n),
                    Ok(None) => Framing::UntilClose,
                    Err(()) => return HeadParse::Invalid,
                }
            };
            HeadParse::Complete(ResponseHead {
                status,
                framing,
                event_stream,
                len: n,
            })
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER_BYTES => HeadParse::Partial,
        _ => HeadParse::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(p: &mut RequestParser, b: &[u8]) -> (ReqOutput, VecDeque<Request>) {
        let mut q = VecDeque::new();
        let out = p.feed(Seg::Bytes(b), 1, &mut q);
        (out, q)
    }

    #[test]
    fn pipelined_requests_in_one_read() {
        let mut p = RequestParser::default();
        let (out, q) = feed_all(
            &mut p,
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?x=1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(out.new, 3);
        let paths: Vec<_> = q.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert!(q.iter().all(|r| r.complete));
        assert_eq!(q[2].body_head, b"abc");
        assert!(p.idle());
    }

    #[test]
    fn headers_split_across_reads() {
        let mut p = RequestParser::default();
        assert_eq!(feed_all(&mut p, b"GET /split HT").0.new, 0);
        let (_, q) = feed_all(&mut p, b"TP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(q[0].path, "/split");
    }

    #[test]
    fn gap_inside_a_body_counts_down() {
        let mut p = RequestParser::default();
        let mut q = VecDeque::new();
        let head = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"model\":\"m\"";
        let hdr = head.len() as u64 - 12;
        for s in segments(head, b"}", head.len() as u64 + 987 + 1) {
            p.feed(s, 1, &mut q);
        }
        assert!(q[0].complete);
        assert_eq!(q[0].bytes_in, hdr + 1000);
        assert!(p.idle());
    }

    #[test]
    fn gap_inside_headers_loses_sync_then_recovers() {
        let mut p = RequestParser::default();
        let mut q = VecDeque::new();
        p.feed(Seg::Bytes(b"GET /x HTTP/1.1\r\nA: b"), 1, &mut q);
        assert!(p.feed(Seg::Gap(5000), 1, &mut q).lost_sync);
        p.feed(Seg::Bytes(b"tail of headers\r\n\r\n"), 1, &mut q);
        assert!(q.is_empty());
        let (_, q) = feed_all(&mut p, b"GET /y HTTP/1.1\r\n\r\n");
        assert_eq!(q[0].path, "/y");
    }

    #[test]
    fn garbage_is_flagged_not_panicked() {
        let mut p = RequestParser::default();
        let (out, q) = feed_all(&mut p, b"\x16\x03\x01\x02\x00 TLS hello");
        assert!(out.lost_sync && q.is_empty());
        let mut p = RequestParser::default();
        let (_, q) = feed_all(&mut p, b"GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n");
        assert!(q[0].malformed);
    }

    #[test]
    fn chunked_framing_counts_chunks_and_ends() {
        let mut c = Chunked::default();
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        let n = c.feed(body).unwrap();
        assert!(c.done());
        assert_eq!(c.chunks, 2);
        assert_eq!(&body[n..], b"NEXT");
    }

    #[test]
    fn chunked_gap_in_data_keeps_sync_gap_in_size_loses_it() {
        let mut c = Chunked::default();
        c.feed(b"400\r\nab").unwrap();
        c.skip(1022);
        c.feed(b"\r\n0\r\n\r\n").unwrap();
        assert!(c.done());
        let mut c = Chunked::default();
        c.feed(b"4").unwrap();
        c.skip(10);
        assert!(c.lost());
        c.resync_on_tail(b"data: [DONE]\n\n\r\n0\r\n\r\n");
        assert!(c.done());
    }

    #[test]
    fn response_heads() {
        let HeadParse::Complete(h) = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        ) else {
            panic!()
        };
        assert!(h.event_stream);
        assert!(matches!(h.framing, Framing::Chunked(_)));
        let HeadParse::Complete(h) = parse_response_head(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            false,
        ) else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Empty);
        assert!(matches!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            HeadParse::Partial
        ));
        assert!(matches!(
            parse_response_head(b"\x00\x01garbage\r\n\r\n", false),
            HeadParse::Invalid
        ));
    }
}
