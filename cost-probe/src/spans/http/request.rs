//! The inbound stream of a connection: request heads and bodies, framed as they arrive.
use std::collections::VecDeque;

use compact_str::CompactString;

use super::{
    BODY_KEEP, ChunkError, Chunked, HeaderInfo, MAX_HEADER_BYTES, MAX_HEADERS, RequestHash, Seg,
    Upgrade, looks_like_request,
};
use crate::spans::lenient;

/// A request whose header block has been read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Span id, assigned by the builder when the header block completes.
    pub id: u64,
    /// Lossily decoded: a server may serve bytes that are not UTF-8.
    pub method: CompactString,
    /// Path without the query string, lossily decoded (never emitted: it may carry secrets).
    pub path: CompactString,
    /// Timestamp of the read that carried the request's first bytes.
    pub start: u64,
    /// Body framing is complete (all body bytes read).
    pub complete: bool,
    pub bytes_in: u64,
    pub body_head: Vec<u8>,
    pub malformed: bool,
    pub truncated: bool,
    /// Asked to switch protocols (the server's 101 decides).
    pub upgrade: Option<Upgrade>,
    /// The caller's W3C trace context, when the head carried a valid one.
    pub trace_parent: Option<crate::spans::TraceParent>,
    /// Method, target and body bytes hashed as they are read; cleared when a body byte was not
    /// captured.
    pub hash: RequestHash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ReqState {
    Headers {
        buf: Vec<u8>,
        start: u64,
    },
    Body(u64),
    ChunkedBody(Chunked),
    /// After a request that asked to switch protocols, until the server answers it: bytes that
    /// do not begin a request are the new protocol's, read early.
    Upgrading,
    /// Lost sync: wait for bytes that start a request line.
    Lost,
}

/// Why a header block could not be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unframable {
    /// It does not parse, even leniently (junk, HTTP/0.9), or the server answered it before it
    /// was complete (rejected it).
    Malformed,
    /// A kernel gap hid part of it, or it outgrew what we keep.
    Truncated,
}

/// A header block that could not be framed, kept until a response or a request line shows
/// where it ended: then it is a request, known by what its first bytes showed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Unframed {
    start: u64,
    bytes: u64,
    method: CompactString,
    path: CompactString,
    why: Unframable,
}

impl Unframed {
    fn from_head(buf: &[u8], start: u64, why: Unframable) -> Self {
        let (method, target) = lenient::first_line(buf);
        Self {
            start,
            bytes: buf.len() as u64,
            method: lossy(method),
            path: path_of(target),
            why,
        }
    }

    fn into_request(self) -> Request {
        Request {
            method: self.method,
            path: self.path,
            start: self.start,
            complete: true,
            bytes_in: self.bytes,
            malformed: self.why == Unframable::Malformed,
            truncated: self.why == Unframable::Truncated,
            ..Request::default()
        }
    }
}

/// Parses the inbound byte stream of a connection into requests.
#[derive(Clone, Debug)]
pub struct RequestParser {
    state: ReqState,
    /// The header block that made us lose sync, if one did.
    unframed: Option<Unframed>,
    /// Sync was lost here (not a connection first seen mid-stream): a response the server starts
    /// with no request queued answers a request we could not frame.
    desynced: bool,
    /// Timestamp of the last inbound bytes.
    last_in: u64,
}

impl Default for RequestParser {
    fn default() -> Self {
        Self {
            state: ReqState::default_headers(),
            unframed: None,
            desynced: false,
            last_in: 0,
        }
    }
}

/// What one segment did to the inbound stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReqOutput {
    /// Requests whose header block completed (pushed to the queue's back).
    pub new: u32,
    /// Sync lost: bytes the kernel did not copy hid framing.
    pub lost_sync: bool,
}

/// Where in `b` a request line begins, for a parser that lost sync: at a line start (`b`'s own
/// start counts when `at_start`).
fn resync_point(b: &[u8], at_start: bool) -> Option<usize> {
    if at_start && looks_like_request(b) {
        return Some(0);
    }
    memchr::memchr_iter(b'\n', b)
        .map(|i| i + 1)
        .find(|&i| looks_like_request(&b[i..]))
}

impl RequestParser {
    /// Starts in the lost state, for a connection first seen mid-stream.
    #[must_use]
    pub fn mid_stream() -> Self {
        Self {
            state: ReqState::Lost,
            ..Self::default()
        }
    }

    /// Whether the parser is between requests (no partial header block, no pending body).
    #[must_use]
    pub fn idle(&self) -> bool {
        matches!(&self.state, ReqState::Headers { buf, .. } if buf.is_empty())
    }

    /// The server started a response with no request queued. If we hold inbound bytes that
    /// were not framed as a request (a header block that did not parse or that a gap hid, a
    /// head the server answered before it was complete, a stream out of sync), the server
    /// answered a request we could not frame: here it is, flagged, so it is still a record.
    pub fn answered(&mut self) -> Option<Request> {
        match &self.state {
            ReqState::Headers { buf, start } if !buf.is_empty() => {
                // The server does not answer a head it is still reading: it rejected it.
                self.unframed = Some(Unframed::from_head(buf, *start, Unframable::Malformed));
                self.state = ReqState::Lost;
                self.desynced = true;
            }
            ReqState::Lost if self.desynced => {}
            _ => return None,
        }
        Some(self.unframed.take().map_or_else(
            || Request {
                start: self.last_in,
                complete: true,
                truncated: true,
                ..Request::default()
            },
            Unframed::into_request,
        ))
    }

    /// The server answered a request that asked to switch protocols with something other
    /// than 101: the stream stays HTTP.
    pub fn upgrade_declined(&mut self) {
        if self.state == ReqState::Upgrading {
            self.state = ReqState::default_headers();
        }
    }

    /// Feeds one segment. New requests are pushed to `queue`; body bytes belong to its back.
    #[expect(
        clippy::too_many_lines,
        reason = "one state machine over the inbound stream; split, its states would be passed around"
    )]
    pub fn feed(&mut self, seg: Seg<'_>, ts: u64, queue: &mut VecDeque<Request>) -> ReqOutput {
        let mut out = ReqOutput::default();
        self.last_in = ts;
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
                ReqState::Headers { buf, start } => {
                    // A gap at a request boundary hides a request that begins here.
                    if buf.is_empty() {
                        *start = ts;
                    }
                    self.lose_head(Unframable::Truncated, &mut out);
                    self.discard(n);
                }
                ReqState::Lost => self.discard(n),
                ReqState::Upgrading => {}
                ReqState::Body(_) => self.lose(queue, &mut out),
            },
            Seg::Bytes(mut b) => {
                // Whether `b` starts where the segment does (a request line may begin there).
                let mut at_start = true;
                while !b.is_empty() {
                    match &mut self.state {
                        ReqState::Lost => {
                            let Some(i) = resync_point(b, at_start) else {
                                self.discard(b.len() as u64);
                                return out;
                            };
                            self.discard(i as u64);
                            b = &b[i..];
                            // What we could not frame ended where this request begins.
                            if let Some(u) = self.unframed.take() {
                                queue.push_back(u.into_request());
                                out.new += 1;
                            }
                            self.desynced = false;
                            self.state = ReqState::default_headers();
                        }
                        ReqState::Upgrading => {
                            if !looks_like_request(b) {
                                return out;
                            }
                            self.state = ReqState::default_headers();
                        }
                        ReqState::Headers { buf, start } => {
                            if buf.is_empty() {
                                *start = ts;
                            }
                            let old = buf.len();
                            let take = b.len().min(MAX_HEADER_BYTES - old);
                            // A head that starts in this segment is parsed in place: copied
                            // only when it continues in a later read.
                            let parsed = if old == 0 {
                                let head = parse_request_head(&b[..take], *start);
                                if !matches!(head, ReqHead::Complete(..)) {
                                    buf.extend_from_slice(&b[..take]);
                                }
                                head
                            } else {
                                buf.extend_from_slice(&b[..take]);
                                parse_request_head(buf, *start)
                            };
                            match parsed {
                                ReqHead::Complete(r, n, next) => {
                                    b = &b[n - old..];
                                    at_start = false;
                                    self.state = next;
                                    queue.push_back(r);
                                    out.new += 1;
                                }
                                ReqHead::Partial if buf.len() < MAX_HEADER_BYTES => {
                                    return out;
                                }
                                ReqHead::Partial => {
                                    self.lose_head(Unframable::Truncated, &mut out);
                                    self.discard((b.len() - take) as u64);
                                    return out;
                                }
                                ReqHead::Invalid => {
                                    self.lose_head(Unframable::Malformed, &mut out);
                                    // This segment's bytes are counted as they are scanned
                                    // for a request line that may follow.
                                    if let Some(u) = &mut self.unframed {
                                        u.bytes -= take as u64;
                                    }
                                    at_start = false;
                                }
                            }
                        }
                        ReqState::Body(rem) => {
                            let k = (*rem).min(b.len() as u64) as usize;
                            *rem -= k as u64;
                            body(queue, &b[..k], k as u64, *rem == 0);
                            b = &b[k..];
                            at_start = false;
                            if *rem == 0 {
                                self.state = ReqState::default_headers();
                            }
                        }
                        ReqState::ChunkedBody(c) => match c.feed(b) {
                            Ok(k) => {
                                let done = c.done();
                                body(queue, &b[..k], k as u64, done);
                                b = &b[k..];
                                at_start = false;
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

    /// Lost sync inside a request's body: that request is flagged.
    fn lose(&mut self, queue: &mut VecDeque<Request>, out: &mut ReqOutput) {
        out.lost_sync = true;
        if let Some(r) = queue.back_mut() {
            r.truncated = true;
        }
        self.state = ReqState::Lost;
        self.desynced = true;
    }

    /// Lost sync inside a header block: it is kept as unframed until a response or a request
    /// line shows that it was a request.
    fn lose_head(&mut self, why: Unframable, out: &mut ReqOutput) {
        let ReqState::Headers { buf, start } = std::mem::replace(&mut self.state, ReqState::Lost)
        else {
            return;
        };
        out.lost_sync |= why == Unframable::Truncated;
        self.desynced = true;
        self.unframed = Some(Unframed::from_head(&buf, start, why));
    }

    /// Bytes read while out of sync belong to the header block that lost it, if any.
    fn discard(&mut self, n: u64) {
        if let Some(u) = &mut self.unframed {
            u.bytes += n;
        }
    }
}

/// Body bytes for the request at the back of the queue: count them, keep the first few, hash
/// them (`kept` shorter than `n`: bytes the kernel did not copy).
fn body(queue: &mut VecDeque<Request>, kept: &[u8], n: u64, complete: bool) {
    if let Some(r) = queue.back_mut() {
        r.bytes_in += n;
        r.hash.body(kept, n);
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

/// The path of a request target: the query and fragment cut off, lossily decoded.
fn path_of(target: &[u8]) -> CompactString {
    let end = target
        .iter()
        .position(|&c| c == b'?' || c == b'#')
        .unwrap_or(target.len());
    lossy(&target[..end])
}

/// Bytes as text, invalid UTF-8 replaced (`from_utf8_lossy` alone is several times slower on
/// the valid text of nearly every request).
fn lossy(b: &[u8]) -> CompactString {
    std::str::from_utf8(b).map_or_else(|_| CompactString::from_utf8_lossy(b), CompactString::from)
}

/// Outcome of parsing a request header block.
#[expect(
    clippy::large_enum_variant,
    reason = "matched at once where it is made; boxing would allocate once per request"
)]
enum ReqHead {
    /// The request, the bytes of its head, and the state after it.
    Complete(Request, usize, ReqState),
    Partial,
    Invalid,
}

/// Parses a request head: strictly with httparse, else leniently (flagged `malformed`) when
/// httparse rejects bytes a server may still serve.
fn parse_request_head(buf: &[u8], start: u64) -> ReqHead {
    // Uninitialised: zeroing 64 headers (2 KiB) cost more than parsing a small head.
    let mut hs = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let err = match req.parse_with_uninit_headers(buf, &mut hs) {
        Ok(httparse::Status::Complete(n)) => {
            let info = HeaderInfo::strict(req.headers);
            let method = CompactString::from(req.method.unwrap_or(""));
            let target = req.path.unwrap_or("").as_bytes();
            let (r, next) = request_from(method, target, start, n, &info);
            return ReqHead::Complete(r, n, next);
        }
        Ok(httparse::Status::Partial) => return ReqHead::Partial,
        Err(e) => e,
    };
    match lenient::request(buf) {
        lenient::Parse::Complete(h) => {
            let info = HeaderInfo::of(h.headers.iter().copied());
            let method = lossy(h.method);
            let (mut r, next) = request_from(method, h.target, start, h.len, &info);
            // More headers than we parse strictly is legal HTTP; anything else is not.
            r.malformed |= err != httparse::Error::TooManyHeaders;
            ReqHead::Complete(r, h.len, next)
        }
        lenient::Parse::Partial => ReqHead::Partial,
        lenient::Parse::Invalid => ReqHead::Invalid,
    }
}

fn request_from(
    method: CompactString,
    target: &[u8],
    start: u64,
    header_len: usize,
    info: &HeaderInfo<'_>,
) -> (Request, ReqState) {
    let mut r = Request {
        hash: RequestHash::start(method.as_bytes(), target),
        method,
        path: path_of(target),
        start,
        bytes_in: header_len as u64,
        upgrade: info.upgrade(),
        trace_parent: info.traceparent.and_then(crate::spans::TraceParent::parse),
        ..Request::default()
    };
    let next = if info.is_chunked() {
        ReqState::ChunkedBody(Chunked::default())
    } else {
        match info.content_length() {
            Ok(Some(n)) if n > 0 => ReqState::Body(n),
            Ok(_) if r.upgrade.is_some() => ReqState::Upgrading,
            Ok(_) => ReqState::default_headers(),
            Err(()) => {
                r.malformed = true;
                ReqState::default_headers()
            }
        }
    };
    r.complete = matches!(next, ReqState::Headers { .. } | ReqState::Upgrading);
    (r, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::http::segments;

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
        // The next request line shows where the hidden one ended: it is kept, flagged.
        let (_, q) = feed_all(&mut p, b"GET /y HTTP/1.1\r\n\r\n");
        let got: Vec<_> = q.iter().map(|r| (r.path.as_str(), r.truncated)).collect();
        assert_eq!(got, [("/x", true), ("/y", false)]);
        assert_eq!(q[0].bytes_in, 21 + 5000 + 19);
    }

    #[test]
    fn garbage_is_flagged_not_panicked() {
        let mut p = RequestParser::default();
        let (out, q) = feed_all(&mut p, b"\x16\x03\x01\x02\x00 TLS hello");
        // Not a request, and no bytes hidden: nothing queued, nothing truncated.
        assert!(!out.lost_sync && q.is_empty() && !p.idle());
        // Answered all the same (a 400): then it was a request, known only as malformed.
        let r = p.answered().expect("an answered request");
        assert!(r.malformed && r.method.is_empty());
        let mut p = RequestParser::default();
        let (_, q) = feed_all(&mut p, b"GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n");
        assert!(q[0].malformed);
    }

    /// #10.2: httparse rejects a target that is not UTF-8; nginx answers it (404).
    #[test]
    fn raw_high_bytes_in_the_path_parse_leniently() {
        let mut p = RequestParser::default();
        let (_, q) = feed_all(
            &mut p,
            b"GET /a\x80\xff?q=\xfe HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        let got: Vec<_> = q
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.malformed))
            .collect();
        assert_eq!(
            got,
            [("GET", "/a\u{fffd}\u{fffd}", true), ("GET", "/ok", false)]
        );
        assert!(p.idle());
    }

    /// #10.2: control bytes and DEL in the target (nginx 400, Python 200).
    #[test]
    fn control_bytes_in_the_path_parse_leniently() {
        let mut p = RequestParser::default();
        let (_, q) = feed_all(&mut p, b"GET /a\x01b\x7f HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].path, "/a\u{1}b\u{7f}");
        assert!(q[0].malformed && q[0].complete);
    }

    /// #10.2: a control byte in a header value (nginx and Python answer 200); the framing
    /// headers of a leniently read head still frame its body, so the next request follows.
    #[test]
    fn a_control_byte_in_a_header_value_parses_leniently() {
        let mut p = RequestParser::default();
        let (_, q) = feed_all(
            &mut p,
            b"POST /v1/chat/completions HTTP/1.1\r\nX-A: a\x01b\r\nContent-Length: 14\r\n\r\n{\"model\":\"m\x01\"}GET /next HTTP/1.1\r\n\r\n",
        );
        let got: Vec<_> = q
            .iter()
            .map(|r| (r.path.as_str(), r.malformed, r.complete))
            .collect();
        assert_eq!(
            got,
            [("/v1/chat/completions", true, true), ("/next", false, true)]
        );
        assert_eq!(q[0].body_head.len(), 14);
        assert!(p.idle());
    }

    /// #10.2: chunked framing of a leniently read head is honoured too.
    #[test]
    fn a_lenient_head_keeps_chunked_framing() {
        let mut p = RequestParser::default();
        let (_, q) = feed_all(
            &mut p,
            b"POST /\xff HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /n HTTP/1.1\r\n\r\n",
        );
        assert_eq!(q.len(), 2);
        assert!(q[0].complete && q[0].malformed);
        assert_eq!(q[1].path, "/n");
    }

    /// More headers than httparse is given room for is legal HTTP: read leniently, not flagged.
    #[test]
    fn many_headers_are_not_malformed() {
        let mut raw = b"GET /many HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            raw.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut p = RequestParser::default();
        let (_, q) = feed_all(&mut p, &raw);
        assert_eq!(q.len(), 1);
        assert!(!q[0].malformed);
    }

    /// #10.2: a head answered before it was complete (nginx rejects a bad request line at
    /// once) and an HTTP/0.9 line (nginx serves it, with no status line) are records too.
    #[test]
    fn a_request_answered_before_it_parsed_is_kept() {
        let mut p = RequestParser::default();
        let (_, q) = feed_all(&mut p, b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n");
        assert!(q.is_empty());
        let r = p.answered().unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/a\u{1}b"));
        assert!(r.malformed && !r.truncated);
        // A second answer with nothing else read is still an answer to something we lost.
        assert!(p.answered().is_some());
        // Back in sync at the next request line.
        let (_, q) = feed_all(&mut p, b"GET /b HTTP/1.1\r\n\r\n");
        assert_eq!(q[0].path, "/b");
        assert!(p.answered().is_none());

        let mut p = RequestParser::default();
        let (_, q) = feed_all(&mut p, b"GET /a.txt\r\n");
        assert!(q.is_empty());
        let r = p.answered().unwrap();
        assert_eq!((r.path.as_str(), r.malformed), ("/a.txt", true));
        // An idle parser has nothing to answer.
        assert!(RequestParser::default().answered().is_none());
    }

    /// A line that does not parse does not hide the request line after it.
    #[test]
    fn a_request_after_junk_in_the_same_read_is_found() {
        let mut p = RequestParser::default();
        let (_, q) = feed_all(
            &mut p,
            b"G\x01T /x HTTP/1.1\r\nA: b\r\n\r\nGET /y HTTP/1.1\r\n\r\n",
        );
        let got: Vec<_> = q
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.malformed, r.bytes_in))
            .collect();
        assert_eq!(got, [("", "", true, 25), ("GET", "/y", false, 19)]);
    }

    /// #10.7: after a request asking to switch protocols, bytes that do not begin a request
    /// are the new protocol's; a declined upgrade leaves the stream HTTP.
    #[test]
    fn an_upgrade_request_waits_for_the_servers_answer() {
        let mut p = RequestParser::default();
        let (out, q) = feed_all(
            &mut p,
            b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x85\x00\x00\x00\x00hello",
        );
        assert_eq!(q[0].upgrade, Some(Upgrade::Other));
        assert!(!out.lost_sync && q.len() == 1);
        assert!(p.answered().is_none());
        p.upgrade_declined();
        assert!(p.idle());
        let mut p = RequestParser::default();
        let (_, q) = feed_all(
            &mut p,
            b"GET / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n",
        );
        assert_eq!(q[0].upgrade, Some(Upgrade::H2c));
        // Upgrade without `Connection: upgrade` is not a request to switch.
        let mut p = RequestParser::default();
        let (_, q) = feed_all(&mut p, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(q[0].upgrade, None);
    }
}
