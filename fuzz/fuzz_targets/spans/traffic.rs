//! Generated traffic: the description (`Arbitrary`), the byte streams it writes, and what the
//! builder must make of them.
use arbitrary::Arbitrary;

#[derive(Arbitrary, Debug)]
pub(crate) struct Traffic {
    pub(crate) conns: Vec<Conversation>,
    /// Which connection's next event comes next (cyclic; empty: round robin).
    pub(crate) merge: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
pub(crate) struct Conversation {
    /// Seen from its accept; else first seen mid-stream (attached to a running server).
    pub(crate) accepted: bool,
    pub(crate) exchanges: Vec<Exchange>,
    /// `Some(k)`: the last `k % (n + 1)` requests get no response.
    pub(crate) unanswered: Option<u8>,
    /// The last response sent is cut after this many bytes (the connection then ends).
    pub(crate) cut: Option<u16>,
    /// Read and write sizes (cyclic; empty: one read per request, one write per response).
    pub(crate) reads: Vec<Split>,
    pub(crate) writes: Vec<Split>,
    /// Whether reads and writes are only partly captured (each split's head and tail).
    pub(crate) gaps: bool,
    /// When both a read and a write could come next: true picks the read (cyclic).
    pub(crate) order: Vec<bool>,
    pub(crate) end: End,
    /// Bytes that are no HTTP, inserted before request (or response) `at % n`.
    pub(crate) junk: Option<Junk>,
    /// The request stream is cut this many bytes short.
    pub(crate) truncate: Option<u16>,
}

#[derive(Arbitrary, Debug)]
pub(crate) struct Junk {
    pub(crate) at: u8,
    pub(crate) outbound: bool,
    pub(crate) bytes: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Close,
    Exit,
    Flush,
}

/// One read or write: `len + 1` bytes, of which the first `head` and last `tail` are captured
/// when the conversation has gaps.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub(crate) struct Split {
    pub(crate) len: u16,
    pub(crate) head: u16,
    pub(crate) tail: u16,
}

#[derive(Arbitrary, Debug)]
pub(crate) struct Exchange {
    pub(crate) method: Method,
    pub(crate) path: Vec<u8>,
    pub(crate) query: Option<Vec<u8>>,
    http10: bool,
    pub(crate) headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) body: Body,
    pub(crate) response: Response,
}

#[derive(Arbitrary, Debug)]
pub(crate) enum Method {
    Known(u8),
    Token(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
pub(crate) enum Body {
    None,
    Length(Payload),
    Chunked(Vec<Chunk>, Vec<(Vec<u8>, Vec<u8>)>),
}

/// Bytes, then `pad` copies of `fill` (large bodies without large inputs).
#[derive(Arbitrary, Debug)]
pub(crate) struct Payload {
    pub(crate) bytes: Vec<u8>,
    pub(crate) pad: u16,
    pub(crate) fill: u8,
}

#[derive(Arbitrary, Debug)]
pub(crate) struct Chunk {
    pub(crate) data: Payload,
    pub(crate) ext: Option<Vec<u8>>,
    pub(crate) upper_hex: bool,
}

#[derive(Arbitrary, Debug)]
pub(crate) struct Response {
    /// Interim heads before the final one: 100, 102 or 103.
    pub(crate) interim: Vec<u8>,
    pub(crate) status: u16,
    http10: bool,
    pub(crate) reason: Vec<u8>,
    pub(crate) headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) event_stream: bool,
    pub(crate) body: RespBody,
}

#[derive(Arbitrary, Debug)]
pub(crate) enum RespBody {
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

pub(crate) const KNOWN: [&str; 9] = [
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];
pub(crate) const MAX_CONNS: usize = 3;
pub(crate) const MAX_EXCHANGES: usize = 24;
pub(crate) const MAX_HEADERS: usize = 80;
pub(crate) const MAX_CHUNKS: usize = 16;
/// Request or response bytes per connection before further exchanges are left out.
pub(crate) const MAX_STREAM: usize = 128 * 1024;
/// Reads or writes per connection and direction; the last one takes what is left.
pub(crate) const MAX_PIECES: usize = 256;

/// RFC 9110 `tchar`.
pub(crate) fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Header names the generator writes itself (never a random header's).
pub(crate) const FRAMING: [&[u8]; 6] = [
    b"content-length",
    b"transfer-encoding",
    b"content-type",
    b"upgrade",
    b"connection",
    b"expect",
];

/// A header name: tchars only, never one that frames or switches protocols (those the
/// generator writes itself).
pub(crate) fn header_name(raw: &[u8]) -> Vec<u8> {
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
pub(crate) fn field_value(raw: &[u8], max: usize) -> Vec<u8> {
    raw.iter()
        .copied()
        .filter(|&c| c != b'\r' && c != b'\n')
        .take(max)
        .collect()
}

pub(crate) fn header_block(out: &mut Vec<u8>, headers: &[(Vec<u8>, Vec<u8>)]) {
    for (n, v) in headers.iter().take(MAX_HEADERS) {
        out.extend_from_slice(&header_name(n));
        out.extend_from_slice(b": ");
        out.extend_from_slice(&field_value(v, 100));
        out.extend_from_slice(b"\r\n");
    }
}

pub(crate) fn payload(p: &Payload) -> Vec<u8> {
    let mut b = p.bytes.clone();
    b.resize(b.len() + usize::from(p.pad), p.fill);
    b
}

/// Byte ranges of a stream that carry no framing (body bytes of a known length): a gap wholly
/// inside one keeps the parser in sync.
pub(crate) type Ranges = Vec<(usize, usize)>;

/// Appends a chunked body; returns its non-empty chunks.
pub(crate) fn chunked(
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
pub(crate) struct Expect {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Request bytes, head and body.
    pub(crate) bytes_in: u64,
    /// Response bytes sent (interim heads, head, body), 0 if unanswered.
    pub(crate) bytes_out: u64,
    /// The final response head was sent whole.
    pub(crate) status: Option<u16>,
    pub(crate) answered: bool,
    /// The response was sent whole.
    pub(crate) complete: bool,
    /// An unframed event stream: where its response and its body begin in the outbound
    /// stream. A `data: [DONE]` in its own bytes ends it at the write that carries it (see
    /// `check_exact`).
    pub(crate) sse: Option<(usize, usize)>,
    /// Non-empty chunks of a complete chunked response; `None` for Content-Length and empty
    /// bodies.
    pub(crate) chunks: Option<u32>,
    /// Whether `chunks` is checked (not for unframed bodies, nor cut ones).
    pub(crate) check_chunks: bool,
}

/// One connection's byte streams and what they must yield.
#[derive(Default)]
pub(crate) struct Streams {
    pub(crate) inb: Vec<u8>,
    pub(crate) out: Vec<u8>,
    /// Per request: where its head ends and where it ends, in `inb`.
    pub(crate) head_end: Vec<usize>,
    pub(crate) req_end: Vec<usize>,
    /// Per response sent: where it starts and ends in `out`.
    pub(crate) resp: Vec<(usize, usize)>,
    /// Per response sent: where its final head ends in `out`.
    pub(crate) resp_head: Vec<usize>,
    pub(crate) safe_in: Ranges,
    pub(crate) safe_out: Ranges,
    pub(crate) expect: Vec<Expect>,
    /// Where the first request line ends.
    pub(crate) first_line: usize,
    /// Junk or truncation: only the bounded invariants hold.
    pub(crate) damaged: bool,
}

#[expect(
    clippy::too_many_lines,
    reason = "one pass that writes both streams and the expectations side by side"
)]
pub(crate) fn build(c: &Conversation) -> Streams {
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
        // A 2xx to CONNECT opens a tunnel: what follows is no longer HTTP (unit-tested in
        // spans); here CONNECT is refused, and the connection stays HTTP.
        let status = if s.expect[i].method == "CONNECT" {
            300 + r.status % 300
        } else {
            200 + r.status % 400
        };
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
        let head_len = find(&s.out[final_start..], b"\r\n\r\n").expect("a head") + 4;
        let sse = (unframed && (r.event_stream || matches!(r.body, RespBody::Sse(..))))
            .then_some((start, final_start + head_len));
        let e = &mut s.expect[i];
        e.answered = true;
        e.complete = true;
        e.status = Some(status);
        e.bytes_out = (s.out.len() - start) as u64;
        e.sse = sse;
        e.chunks = chunks;
        e.check_chunks = !unframed;
        s.resp.push((start, s.out.len()));
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

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
