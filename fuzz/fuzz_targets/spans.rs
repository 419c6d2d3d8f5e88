//! The span builder (`SpanBuilder::on_event`, then `flush`), fed kernel events.
//!
//! The first input byte picks the mode:
//!
//! - even: **generated traffic**. The rest is an `Arbitrary` description of up to three
//!   connections, each a list of HTTP/1.1 exchanges (method, target, headers, a body framed by
//!   Content-Length or chunked; a response with interim 1xx heads, a status, and a body framed by
//!   Content-Length, chunked, or the end of the connection, plain or as an event stream), with
//!   the request and response byte streams each split into random reads and writes, each read or
//!   write optionally only partly captured (head + tail, the rest a kernel gap), interleaved in a
//!   random order that a server could produce, and ended by a close, the process's exit or the
//!   final flush. The invariants are checked here: [`run`] for every input, [`check_exact`] for
//!   undamaged traffic.
//! - odd: **raw events**, decoded from the bytes by [`raw`] (no structure at all: any kind, any
//!   connection, any payload, any length), for the invariants every event stream keeps.
#![no_main]

use std::collections::{HashMap, HashSet};

use arbitrary::{Arbitrary, Unstructured};
use cost_probe::{
    probe::{ConnId, Direction, OwnedEvent},
    spans::{Flags, Limits, RequestSpan, SpanBuilder, SpanEvent, http::segments},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        raw(mode, rest);
    } else if let Ok(t) = Traffic::arbitrary_take_rest(Unstructured::new(rest)) {
        traffic(&t);
    }
});

/// `FUZZ_DUMP=1`: print the generated traffic and its events (to read a crash).
static DUMP: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("FUZZ_DUMP").is_some());

/// `FUZZ_STATS=1`: one line per connection: requests, spans, and which invariant was checked.
static STATS: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("FUZZ_STATS").is_some());

// ------------------------------------------------------------------------------------------
// What every event stream keeps.
// ------------------------------------------------------------------------------------------

/// Runs the builder over `events`, flushes it, and checks what holds for any input: no panic;
/// every `Started` id is announced once and finished exactly once, and nothing is finished
/// that was not started; no span ends before it starts; per connection, the spans count no more
/// bytes in either direction than its reads and writes carried.
fn run(limits: Limits, events: &[OwnedEvent]) -> Vec<RequestSpan> {
    let mut b = SpanBuilder::new(limits);
    let mut out = Vec::new();
    let mut end = 0;
    for e in events {
        b.on_event(&e.borrowed(), &mut out);
        end = end.max(e.ts());
    }
    b.flush(end + 1, &mut out);
    assert_eq!(b.open_conns(), 0, "flush left connections open");

    let mut open = HashSet::new();
    let mut spans = Vec::new();
    for e in out {
        match e {
            SpanEvent::Started { id, .. } => assert!(open.insert(id), "span {id} started twice"),
            SpanEvent::Finished(s) => {
                assert!(
                    open.remove(&s.id),
                    "span {} finished twice or never started",
                    s.id
                );
                assert!(s.end >= s.start, "span ends before it starts: {s:?}");
                spans.push(s);
            }
        }
    }
    assert!(open.is_empty(), "spans never finished: {open:?}");

    // Bytes carried per connection and direction: a payload of `len` bytes, or more when the
    // head and tail claim more than `len` (raw mode), as `segments` then counts them.
    let mut carried: HashMap<(ConnId, bool), u64> = HashMap::new();
    for e in events {
        if let OwnedEvent::Data {
            conn,
            dir,
            len,
            head,
            tail,
            ..
        } = e
        {
            let segs: u64 = segments(head, tail, *len)
                .iter()
                .map(|s| match s {
                    cost_probe::spans::http::Seg::Bytes(b) => b.len() as u64,
                    cost_probe::spans::http::Seg::Gap(n) => *n,
                })
                .sum();
            *carried.entry((*conn, *dir == Direction::In)).or_default() += segs.max(*len);
        }
    }
    let mut counted: HashMap<(ConnId, bool), u64> = HashMap::new();
    for s in &spans {
        *counted.entry((s.conn, true)).or_default() += s.bytes_in;
        *counted.entry((s.conn, false)).or_default() += s.bytes_out;
    }
    for (k, n) in counted {
        let have = carried.get(&k).copied().unwrap_or(0);
        assert!(n <= have, "{k:?}: spans count {n} bytes of {have} carried");
    }
    spans
}

// ------------------------------------------------------------------------------------------
// Raw mode.
// ------------------------------------------------------------------------------------------

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from(self.u16()?) | u32::from(self.u16()?) << 16)
    }
    /// Up to `n` bytes (fewer at the end of the input).
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (b, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        b
    }
}

/// One connection of a few (two processes, four fds, four accepts each).
fn raw_conn(c: u8) -> ConnId {
    ConnId {
        tgid: u32::from(c >> 4 & 1) + 1,
        fd: i32::from(c & 3),
        id: u64::from(c >> 2 & 3),
    }
}

/// Raw mode. `mode` bit 1 selects tiny limits (2 connections, 2 queued requests), so overflow
/// is exercised. The rest is a list of events, each a tag byte (kind = tag % 5) and then:
///
/// - 0 accept: conn byte
/// - 1 data: conn byte, flags byte (bit 0: a write; bit 1: `len` is the u32 alone, whatever the
///   head and tail hold), u32 LE gap (bytes not copied), u16 LE head length, head bytes, u8
///   tail length, tail bytes; `len` = head + gap + tail
/// - 2 close: conn byte
/// - 3 process exit: tgid byte (1 + bit 0)
/// - 4 exec: tgid byte
///
/// Timestamps are 10 ns apart, in input order.
fn raw(mode: u8, data: &[u8]) {
    let mut r = Reader(data);
    let mut events = Vec::new();
    while let Some(tag) = r.u8() {
        let ts = 10 * (events.len() as u64 + 1);
        let Some(arg) = r.u8() else { break };
        let ev = match tag % 5 {
            0 => OwnedEvent::Accept {
                ts,
                conn: raw_conn(arg),
                peer: None,
                listen_fd: 3,
                family_unknown: false,
            },
            1 => {
                let (Some(flags), Some(gap), Some(hl)) = (r.u8(), r.u32(), r.u16()) else {
                    break;
                };
                let head = r.bytes(usize::from(hl)).to_vec();
                let tl = r.u8().unwrap_or(0);
                let tail = r.bytes(usize::from(tl)).to_vec();
                let len = if flags & 2 == 0 {
                    (head.len() + tail.len()) as u64 + u64::from(gap)
                } else {
                    u64::from(gap)
                };
                OwnedEvent::Data {
                    ts,
                    conn: raw_conn(arg),
                    dir: if flags & 1 == 0 {
                        Direction::In
                    } else {
                        Direction::Out
                    },
                    len,
                    head,
                    tail,
                }
            }
            2 => OwnedEvent::Close {
                ts,
                conn: raw_conn(arg),
            },
            3 => OwnedEvent::ProcExit {
                ts,
                tgid: u32::from(arg & 1) + 1,
            },
            _ => OwnedEvent::Exec {
                ts,
                tgid: u32::from(arg & 1) + 1,
            },
        };
        events.push(ev);
        if events.len() >= 512 {
            break;
        }
    }
    let limits = if mode & 2 == 0 {
        Limits::default()
    } else {
        Limits {
            max_conns: 2,
            max_queued: 2,
        }
    };
    run(limits, &events);
}

// ------------------------------------------------------------------------------------------
// Generated traffic: the description.
// ------------------------------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct Traffic {
    conns: Vec<Conversation>,
    /// Which connection's next event comes next (cyclic; empty: round robin).
    merge: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Conversation {
    /// Seen from its accept; else first seen mid-stream (attached to a running server).
    accepted: bool,
    exchanges: Vec<Exchange>,
    /// `Some(k)`: the last `k % (n + 1)` requests get no response.
    unanswered: Option<u8>,
    /// The last response sent is cut after this many bytes (the connection then ends).
    cut: Option<u16>,
    /// Read and write sizes (cyclic; empty: one read per request, one write per response).
    reads: Vec<Split>,
    writes: Vec<Split>,
    /// Whether reads and writes are only partly captured (each split's head and tail).
    gaps: bool,
    /// When both a read and a write could come next: true picks the read (cyclic).
    order: Vec<bool>,
    end: End,
    /// Bytes that are no HTTP, inserted before request (or response) `at % n`.
    junk: Option<Junk>,
    /// The request stream is cut this many bytes short.
    truncate: Option<u16>,
}

#[derive(Arbitrary, Debug)]
struct Junk {
    at: u8,
    outbound: bool,
    bytes: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Close,
    Exit,
    Flush,
}

/// One read or write: `len + 1` bytes, of which the first `head` and last `tail` are captured
/// when the conversation has gaps.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Split {
    len: u16,
    head: u16,
    tail: u16,
}

#[derive(Arbitrary, Debug)]
struct Exchange {
    method: Method,
    path: Vec<u8>,
    query: Option<Vec<u8>>,
    http10: bool,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Body,
    response: Response,
}

#[derive(Arbitrary, Debug)]
enum Method {
    Known(u8),
    Token(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Body {
    None,
    Length(Payload),
    Chunked(Vec<Chunk>, Vec<(Vec<u8>, Vec<u8>)>),
}

/// Bytes, then `pad` copies of `fill` (large bodies without large inputs).
#[derive(Arbitrary, Debug)]
struct Payload {
    bytes: Vec<u8>,
    pad: u16,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
struct Chunk {
    data: Payload,
    ext: Option<Vec<u8>>,
    upper_hex: bool,
}

#[derive(Arbitrary, Debug)]
struct Response {
    /// Interim heads before the final one: 100, 102 or 103.
    interim: Vec<u8>,
    status: u16,
    http10: bool,
    reason: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    event_stream: bool,
    body: RespBody,
}

#[derive(Arbitrary, Debug)]
enum RespBody {
    Length(Payload),
    Chunked(Vec<Chunk>, Vec<(Vec<u8>, Vec<u8>)>),
    /// Unframed: ends with the connection (only the last response; elsewhere Content-Length).
    UntilClose(Payload),
    /// Server-sent events, unframed (only the last response; elsewhere chunked), optionally
    /// ended by `data: [DONE]`.
    Sse(Vec<Vec<u8>>, bool),
}

// ------------------------------------------------------------------------------------------
// Generated traffic: the bytes, and what the builder must make of them.
// ------------------------------------------------------------------------------------------

const KNOWN: [&str; 9] = [
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];
const MAX_CONNS: usize = 3;
const MAX_EXCHANGES: usize = 24;
const MAX_HEADERS: usize = 80;
const MAX_CHUNKS: usize = 16;
/// Request or response bytes per connection before further exchanges are left out.
const MAX_STREAM: usize = 128 * 1024;
/// Reads or writes per connection and direction; the last one takes what is left.
const MAX_PIECES: usize = 256;

/// RFC 9110 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Header names the generator writes itself (never a random header's).
const FRAMING: [&[u8]; 6] = [
    b"content-length",
    b"transfer-encoding",
    b"content-type",
    b"upgrade",
    b"connection",
    b"expect",
];

/// A header name: tchars only, never one that frames or switches protocols (those the
/// generator writes itself).
fn header_name(raw: &[u8]) -> Vec<u8> {
    let mut n: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|&c| is_tchar(c))
        .take(30)
        .collect();
    if n.is_empty() {
        n = b"X".to_vec();
    }
    if FRAMING.iter().any(|f| n.eq_ignore_ascii_case(f)) {
        n.insert(0, b'X');
    }
    n
}

/// A header value or reason phrase: any bytes but CR and LF (servers accept more than RFC
/// 9110 does; the builder reads such heads leniently).
fn field_value(raw: &[u8], max: usize) -> Vec<u8> {
    raw.iter()
        .copied()
        .filter(|&c| c != b'\r' && c != b'\n')
        .take(max)
        .collect()
}

fn header_block(out: &mut Vec<u8>, headers: &[(Vec<u8>, Vec<u8>)]) {
    for (n, v) in headers.iter().take(MAX_HEADERS) {
        out.extend_from_slice(&header_name(n));
        out.extend_from_slice(b": ");
        out.extend_from_slice(&field_value(v, 100));
        out.extend_from_slice(b"\r\n");
    }
}

fn payload(p: &Payload) -> Vec<u8> {
    let mut b = p.bytes.clone();
    b.resize(b.len() + usize::from(p.pad), p.fill);
    b
}

/// Byte ranges of a stream that carry no framing (body bytes of a known length): a gap wholly
/// inside one keeps the parser in sync.
type Ranges = Vec<(usize, usize)>;

/// Appends a chunked body; returns its non-empty chunks.
fn chunked(
    out: &mut Vec<u8>,
    safe: &mut Ranges,
    chunks: &[Chunk],
    trailers: &[(Vec<u8>, Vec<u8>)],
) -> u32 {
    let mut n = 0;
    for c in chunks.iter().take(MAX_CHUNKS) {
        let data = payload(&c.data);
        if data.is_empty() {
            continue; // a zero-size chunk is the last one
        }
        n += 1;
        let size = if c.upper_hex {
            format!("{:X}", data.len())
        } else {
            format!("{:x}", data.len())
        };
        out.extend_from_slice(size.as_bytes());
        if let Some(ext) = &c.ext {
            out.push(b';');
            out.extend(
                ext.iter()
                    .copied()
                    .filter(|&c| is_tchar(c) || c == b'=')
                    .take(40),
            );
        }
        out.extend_from_slice(b"\r\n");
        safe.push((out.len(), out.len() + data.len()));
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    header_block(out, &trailers[..trailers.len().min(8)]);
    out.extend_from_slice(b"\r\n");
    n
}

/// What one request must become.
#[derive(Debug, Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about one exchange"
)]
struct Expect {
    method: String,
    path: String,
    /// Request bytes, head and body.
    bytes_in: u64,
    /// Response bytes sent (interim heads, head, body), 0 if unanswered.
    bytes_out: u64,
    /// The final response head was sent whole.
    status: Option<u16>,
    answered: bool,
    /// The response was sent whole.
    complete: bool,
    /// An unframed event stream that a `data: [DONE]` may end early (see `build`).
    early_done: bool,
    /// Non-empty chunks of a complete chunked response; `None` for Content-Length and empty
    /// bodies.
    chunks: Option<u32>,
    /// Whether `chunks` is checked (not for unframed bodies, nor cut ones).
    check_chunks: bool,
}

/// One connection's byte streams and what they must yield.
#[derive(Default)]
struct Streams {
    inb: Vec<u8>,
    out: Vec<u8>,
    /// Per request: where its head ends and where it ends, in `inb`.
    head_end: Vec<usize>,
    req_end: Vec<usize>,
    /// Per response sent: where it starts and ends in `out`.
    resp: Vec<(usize, usize)>,
    /// Per response sent: where its final head ends in `out`.
    resp_head: Vec<usize>,
    safe_in: Ranges,
    safe_out: Ranges,
    expect: Vec<Expect>,
    /// Where the first request line ends.
    first_line: usize,
    /// Junk or truncation: only the bounded invariants hold.
    damaged: bool,
}

#[expect(
    clippy::too_many_lines,
    reason = "one pass that writes both streams and the expectations side by side"
)]
fn build(c: &Conversation) -> Streams {
    let mut s = Streams::default();
    let exchanges = &c.exchanges[..c.exchanges.len().min(MAX_EXCHANGES)];
    let mut n = exchanges.len();
    // Requests.
    for (i, x) in exchanges.iter().enumerate() {
        if s.inb.len() > MAX_STREAM || s.out.len() > MAX_STREAM {
            n = i;
            break;
        }
        if let Some(j) = &c.junk
            && !j.outbound
            && usize::from(j.at) % n == i
            && !j.bytes.is_empty()
        {
            s.inb.extend_from_slice(&j.bytes);
            s.damaged = true;
        }
        let method = match &x.method {
            // A connection first seen mid-stream finds its first request by a known method.
            Method::Token(t) if c.accepted || i > 0 => {
                let t: String = t
                    .iter()
                    .copied()
                    .filter(|&c| is_tchar(c))
                    .take(20)
                    .map(char::from)
                    .collect();
                if t.is_empty() { "GET".to_owned() } else { t }
            }
            Method::Known(k) => KNOWN[usize::from(*k) % KNOWN.len()].to_owned(),
            Method::Token(_) => "GET".to_owned(),
        };
        let mut target = b"/".to_vec();
        target.extend(
            x.path
                .iter()
                .copied()
                .filter(|&c| !matches!(c, b'\r' | b'\n' | b' ' | b'\t'))
                .take(200),
        );
        let path_end = target
            .iter()
            .position(|&c| c == b'?' || c == b'#')
            .unwrap_or(target.len());
        let path = String::from_utf8_lossy(&target[..path_end]).into_owned();
        if let Some(q) = &x.query {
            target.push(b'?');
            target.extend(
                q.iter()
                    .copied()
                    .filter(|&c| !matches!(c, b'\r' | b'\n' | b' ' | b'\t'))
                    .take(100),
            );
        }
        let start = s.inb.len();
        s.inb.extend_from_slice(method.as_bytes());
        s.inb.push(b' ');
        s.inb.extend_from_slice(&target);
        s.inb.extend_from_slice(if x.http10 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        if i == 0 {
            s.first_line = s.inb.len();
        }
        header_block(&mut s.inb, &x.headers);
        let body = match &x.body {
            Body::None => None,
            Body::Length(p) => {
                let b = payload(p);
                s.inb
                    .extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
                Some(b)
            }
            Body::Chunked(..) => {
                s.inb.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                None
            }
        };
        s.inb.extend_from_slice(b"\r\n");
        s.head_end.push(s.inb.len());
        if let Some(b) = body {
            s.safe_in.push((s.inb.len(), s.inb.len() + b.len()));
            s.inb.extend_from_slice(&b);
        }
        if let Body::Chunked(chunks, trailers) = &x.body {
            chunked(&mut s.inb, &mut s.safe_in, chunks, trailers);
        }
        s.req_end.push(s.inb.len());
        s.expect.push(Expect {
            method,
            path,
            bytes_in: (s.inb.len() - start) as u64,
            ..Expect::default()
        });
    }
    s.expect.truncate(n);
    if let Some(t) = c.truncate {
        let cut = usize::from(t).min(s.inb.len());
        if cut > 0 {
            s.inb.truncate(s.inb.len() - cut);
            s.damaged = true;
        }
    }
    // Responses, to the first `answered` requests.
    let answered = n - c.unanswered.map_or(0, |k| usize::from(k) % (n + 1));
    for (i, x) in exchanges[..answered].iter().enumerate() {
        if let Some(j) = &c.junk
            && j.outbound
            && usize::from(j.at) % n.max(1) == i
            && !j.bytes.is_empty()
        {
            s.out.extend_from_slice(&j.bytes);
            s.damaged = true;
        }
        let r = &x.response;
        let start = s.out.len();
        for &k in r.interim.iter().take(3) {
            let code = [100, 102, 103][usize::from(k) % 3];
            s.out
                .extend_from_slice(format!("HTTP/1.1 {code} Interim\r\n\r\n").as_bytes());
        }
        let status = 200 + r.status % 400;
        let final_start = s.out.len();
        s.out
            .extend_from_slice(if r.http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        s.out.extend_from_slice(format!("{status} ").as_bytes());
        s.out.extend_from_slice(&field_value(&r.reason, 40));
        s.out.extend_from_slice(b"\r\n");
        header_block(&mut s.out, &r.headers);
        let last = i + 1 == n;
        let no_body = s.expect[i].method == "HEAD" || status == 204 || status == 304;
        let mut chunks = None;
        if r.event_stream || matches!(r.body, RespBody::Sse(..)) {
            s.out
                .extend_from_slice(b"Content-Type: text/event-stream; charset=utf-8\r\n");
        }
        let events = |evs: &[Vec<u8>], done: bool| {
            let mut b = Vec::new();
            for e in evs.iter().take(MAX_CHUNKS) {
                b.extend_from_slice(b"data: ");
                // Event data never holds a line end or the terminator.
                b.extend(
                    e.iter()
                        .copied()
                        .filter(|&c| !matches!(c, b'\r' | b'\n' | b'['))
                        .take(200),
                );
                b.extend_from_slice(b"\n\n");
            }
            if done {
                b.extend_from_slice(b"data: [DONE]\n\n");
            }
            b
        };
        match &r.body {
            RespBody::Chunked(cs, trailers) => {
                s.out
                    .extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                if !no_body {
                    chunks = Some(chunked(&mut s.out, &mut s.safe_out, cs, trailers));
                }
            }
            RespBody::Sse(evs, done) if !last => {
                // Not the last response: chunked, one event per chunk.
                s.out
                    .extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                if !no_body {
                    let cs: Vec<Chunk> = evs
                        .iter()
                        .map(|e| Chunk {
                            data: Payload {
                                bytes: events(std::slice::from_ref(e), false),
                                pad: 0,
                                fill: 0,
                            },
                            ext: None,
                            upper_hex: false,
                        })
                        .collect();
                    let mut n = chunked(&mut s.out, &mut s.safe_out, &cs, &[]);
                    if *done {
                        // `data: [DONE]` in a chunk of its own (a stream's usual end), before the
                        // terminal chunk.
                        let len = s.out.len();
                        s.out.truncate(len - 5);
                        s.out
                            .extend_from_slice(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n");
                        n += 1;
                    }
                    chunks = Some(n);
                }
            }
            RespBody::UntilClose(p) if last => {
                s.out.extend_from_slice(b"\r\n");
                if !no_body {
                    let b = payload(p);
                    s.safe_out.push((s.out.len(), s.out.len() + b.len()));
                    s.out.extend_from_slice(&b);
                    chunks = None;
                }
            }
            RespBody::Length(p) | RespBody::UntilClose(p) => {
                let b = payload(p);
                s.out
                    .extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
                if !no_body {
                    s.safe_out.push((s.out.len(), s.out.len() + b.len()));
                    s.out.extend_from_slice(&b);
                }
            }
            RespBody::Sse(evs, done) => {
                s.out.extend_from_slice(b"\r\n");
                if !no_body {
                    let b = events(evs, *done);
                    s.safe_out.push((s.out.len(), s.out.len() + b.len()));
                    s.out.extend_from_slice(&b);
                }
            }
        }
        let unframed =
            !no_body && last && matches!(r.body, RespBody::UntilClose(_) | RespBody::Sse(..));
        // `data: [DONE]` ends an unframed event stream at the write that carries it: bytes in
        // later writes (the rest of a terminator split across writes) are not the response's.
        // And the write is scanned whole, so a `[DONE]` that an earlier response in the same
        // write carried ends this one too (reported: spans/conn.rs `http_out`). So the byte
        // counts of an unframed event stream with a `[DONE]` anywhere are only bounded.
        let sse_end = unframed
            && (r.event_stream || matches!(r.body, RespBody::Sse(..)))
            && find(&s.out, b"data: [DONE]").is_some();
        let e = &mut s.expect[i];
        e.answered = true;
        e.complete = true;
        e.status = Some(status);
        e.bytes_out = (s.out.len() - start) as u64;
        e.early_done = sse_end;
        e.chunks = chunks;
        e.check_chunks = !unframed;
        s.resp.push((start, s.out.len()));
        let head_len = find(&s.out[final_start..], b"\r\n\r\n").expect("a head") + 4;
        s.resp_head.push(final_start + head_len);
    }
    // The last response cut short: the connection ends after it.
    if let (Some(cut), Some(&(start, end))) = (c.cut, s.resp.last()) {
        let keep = start + usize::from(cut) % (end - start);
        s.out.truncate(keep);
        s.resp.last_mut().expect("a response").1 = keep;
        let e = &mut s.expect[s.resp.len() - 1];
        e.complete = false;
        e.bytes_out = (keep - start) as u64;
        e.check_chunks = false;
        // The status stands once the final head is out; nothing sent is no answer.
        if keep < s.resp_head[s.resp.len() - 1] {
            e.status = None;
        }
        if keep == start {
            e.answered = false;
        }
    }
    s
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A read or write: `[start, end)` of its stream, `head` and `tail` bytes of it captured.
#[derive(Clone, Copy, Debug)]
struct Piece {
    start: usize,
    end: usize,
    head: usize,
    tail: usize,
}

/// Splits `len` bytes into reads or writes: at `natural` boundaries when `splits` is empty, else
/// by the split sizes in turn; the first piece, and its captured head, reach at least
/// `min_first` bytes.
fn pieces(
    len: usize,
    splits: &[Split],
    natural: &[usize],
    gaps: bool,
    min_first: usize,
) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < len {
        let (mut end, split) = if out.len() + 1 >= MAX_PIECES {
            (len, None)
        } else if splits.is_empty() {
            let end = natural.iter().copied().find(|&e| e > at).unwrap_or(len);
            (end, None)
        } else {
            let s = splits[i % splits.len()];
            i += 1;
            (at + usize::from(s.len) + 1, Some(s))
        };
        if at == 0 {
            end = end.max(min_first);
        }
        let end = end.min(len);
        let n = end - at;
        // As the kernel copies: the head first (at least a byte), the tail only past it. The
        // first read's head holds the first request line, as every record size's does (protocol
        // detection reads it; the smallest head is 512 bytes).
        let (head, tail) = match split {
            Some(s) if gaps => {
                let mut cap = usize::from(s.head).max(1);
                if at == 0 {
                    cap = cap.max(min_first);
                }
                let head = n.min(cap);
                (head, (n - head).min(usize::from(s.tail)))
            }
            _ => (n, 0),
        };
        out.push(Piece {
            start: at,
            end,
            head,
            tail,
        });
        at = end;
    }
    out
}

/// Whether a piece's gap lies wholly inside one body range (or it has none).
fn gap_safe(p: &Piece, safe: &Ranges) -> bool {
    let (a, b) = (p.start + p.head, p.end - p.tail);
    a == b || safe.iter().any(|&(s, e)| s <= a && b <= e)
}

/// One connection's events in order, without timestamps.
fn conversation(c: &Conversation, s: &Streams) -> (Vec<Ev>, bool) {
    let reads = pieces(s.inb.len(), &c.reads, &s.req_end, c.gaps, s.first_line);
    let writes = pieces(
        s.out.len(),
        &c.writes,
        &s.resp.iter().map(|r| r.1).collect::<Vec<_>>(),
        c.gaps,
        0,
    );
    let clean = !s.damaged
        && reads.iter().all(|p| gap_safe(p, &s.safe_in))
        && writes.iter().all(|p| gap_safe(p, &s.safe_out));
    // A write may start a response only once its request's head is read, and end it only once
    // the whole request is.
    let needs = |w: &Piece| {
        let mut need = 0;
        for (r, &(start, end)) in s.resp.iter().enumerate() {
            if start < w.end && end > w.start {
                need = need.max(s.head_end[r]);
                if end <= w.end {
                    need = need.max(s.req_end[r]);
                }
            }
        }
        need
    };
    let mut evs = Vec::new();
    if c.accepted {
        evs.push(Ev::Accept);
    }
    let (mut ri, mut wi, mut k) = (0, 0, 0);
    let mut read_to = 0;
    while ri < reads.len() || wi < writes.len() {
        let can_write = wi < writes.len() && (needs(&writes[wi]) <= read_to || ri == reads.len());
        let can_read = ri < reads.len();
        let prefer_read = c.order.is_empty() || c.order[k % c.order.len()];
        k += 1;
        if can_read && (!can_write || prefer_read) {
            let p = reads[ri];
            ri += 1;
            read_to = p.end;
            evs.push(Ev::Data(Direction::In, p));
        } else {
            evs.push(Ev::Data(Direction::Out, writes[wi]));
            wi += 1;
        }
    }
    match c.end {
        End::Close => evs.push(Ev::Close),
        End::Exit => evs.push(Ev::Exit),
        End::Flush => {}
    }
    (evs, clean)
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Accept,
    Data(Direction, Piece),
    Close,
    Exit,
}

fn traffic(t: &Traffic) {
    let convs = &t.conns[..t.conns.len().min(MAX_CONNS)];
    let mut streams = Vec::new();
    let mut lists = Vec::new();
    for (i, c) in convs.iter().enumerate() {
        // One process per connection, so an exit ends only its own.
        let conn = ConnId {
            tgid: i as u32 + 1,
            fd: 3,
            id: 1,
        };
        let s = build(c);
        let (evs, clean) = conversation(c, &s);
        lists.push((conn, evs, 0usize));
        streams.push((conn, s, clean));
    }
    // Interleave the connections.
    let mut events = Vec::new();
    let mut k = 0;
    loop {
        let live: Vec<usize> = (0..lists.len())
            .filter(|&i| lists[i].2 < lists[i].1.len())
            .collect();
        if live.is_empty() {
            break;
        }
        let pick = if t.merge.is_empty() {
            k
        } else {
            usize::from(t.merge[k % t.merge.len()])
        };
        k += 1;
        let i = live[pick % live.len()];
        let (conn, evs, at) = &mut lists[i];
        let ev = evs[*at];
        *at += 1;
        let ts = 10 * (events.len() as u64 + 1);
        let s = &streams[i].1;
        events.push(match ev {
            Ev::Accept => OwnedEvent::Accept {
                ts,
                conn: *conn,
                peer: None,
                listen_fd: 3,
                family_unknown: false,
            },
            Ev::Data(dir, p) => {
                let bytes = if dir == Direction::In { &s.inb } else { &s.out };
                OwnedEvent::Data {
                    ts,
                    conn: *conn,
                    dir,
                    len: (p.end - p.start) as u64,
                    head: bytes[p.start..p.start + p.head].to_vec(),
                    tail: bytes[p.end - p.tail..p.end].to_vec(),
                }
            }
            Ev::Close => OwnedEvent::Close { ts, conn: *conn },
            Ev::Exit => OwnedEvent::ProcExit {
                ts,
                tgid: conn.tgid,
            },
        });
    }
    if *DUMP {
        eprintln!("{t:#?}");
        for e in &events {
            let line = serde_json::to_string(e).unwrap_or_default();
            eprintln!("{}", line.chars().take(400).collect::<String>());
        }
    }
    let spans = run(Limits::default(), &events);
    for (conn, s, clean) in &streams {
        let mine: Vec<&RequestSpan> = spans.iter().filter(|sp| sp.conn == *conn).collect();
        if *clean {
            check_exact(s, &mine);
        }
        if *STATS {
            eprintln!(
                "conn {} requests {} spans {} {}",
                conn.tgid,
                s.expect.len(),
                mine.len(),
                if *clean { "exact" } else { "bounded" }
            );
        }
    }
}

/// Traffic with no junk, no truncation, and no gap outside a body's bytes: **every request
/// yields exactly one span**, in order, with its method, path (query cut) and bytes in, and, when
/// answered, its status, the bytes of its response and, for a complete chunked response, its
/// chunk count. An unanswered request is a span flagged `no_response`; none is `truncated`.
///
/// Why the builder owes exactly this: with every head byte captured and no junk, the request
/// parser never loses sync (a gap inside a Content-Length body or inside one chunk's data only
/// counts down), so it queues one request per request sent, in order. Responses never add or
/// drop queued requests (only `answered()` adds one, and only while the parser holds bytes it
/// could not frame: never here), and every queued request is finished once: by its response's
/// framing, at the close or exit, or by the final flush.
///
/// What the generator keeps to for that (each a property of HTTP/1.1 or of the kernel's
/// capture, not a way around the builder): the first read's captured head holds the first
/// request line (protocol detection looks at that head alone); a response starts after its
/// request's head was read and ends after the whole request was; an unframed response (ended by
/// the close) is the connection's last; only the generator writes framing and upgrade headers.
///
/// Damaged traffic (a gap hiding framing, junk, a cut request stream) is held only to [`run`]'s
/// bounds: a request can hide wholly in a gap, a lost sync is regained only at a known method
/// at a line start, and after one, bytes that look like a request line or a response start a
/// span of their own. So no exact count is owed there, but pairing, order of times and the byte
/// totals are.
fn check_exact(s: &Streams, spans: &[&RequestSpan]) {
    let got: Vec<_> = spans
        .iter()
        .map(|sp| (sp.method.as_deref(), sp.path.as_deref()))
        .collect();
    let want: Vec<_> = s
        .expect
        .iter()
        .map(|e| (Some(e.method.as_str()), Some(e.path.as_str())))
        .collect();
    assert_eq!(got, want, "one span per request, in order");
    for (sp, e) in spans.iter().zip(&s.expect) {
        let ctx = || format!("{e:?}\n{sp:?}");
        assert!(!sp.flags.contains(Flags::TRUNCATED), "{}", ctx());
        // A stream that a `[DONE]` ended early was emitted early: byte counts are then bounds.
        if e.early_done {
            assert!(sp.bytes_in <= e.bytes_in, "bytes in: {}", ctx());
            assert!(sp.bytes_out <= e.bytes_out, "bytes out: {}", ctx());
        } else {
            assert_eq!(sp.bytes_in, e.bytes_in, "bytes in: {}", ctx());
            assert_eq!(sp.bytes_out, e.bytes_out, "bytes out: {}", ctx());
        }
        assert_eq!(sp.status, e.status, "status: {}", ctx());
        assert_eq!(
            sp.flags.contains(Flags::NO_RESPONSE),
            !e.answered,
            "no_response: {}",
            ctx()
        );
        if e.complete && e.check_chunks {
            assert_eq!(sp.chunks, e.chunks, "chunks: {}", ctx());
        }
        if let Some(fb) = sp.first_byte {
            assert!(sp.start <= fb && fb <= sp.end, "first byte: {}", ctx());
        }
    }
}
