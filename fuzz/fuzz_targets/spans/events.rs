//! Generated traffic as kernel events: reads and writes cut from the streams, interleaved as a
//! server could see them, run through the builder and checked.
use cost_probe::{
    probe::{ConnId, Direction, OwnedEvent},
    spans::{Flags, Limits, RequestSpan},
};

use crate::{
    DUMP, STATS, run,
    traffic::{
        Conversation, End, MAX_CONNS, MAX_PIECES, Ranges, Split, Streams, Traffic, build, find,
    },
};

/// A read or write: `[start, end)` of its stream, `head` and `tail` bytes of it captured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) head: usize,
    pub(crate) tail: usize,
}

/// Splits `len` bytes into reads or writes: at `natural` boundaries when `splits` is empty, else
/// by the split sizes in turn; the first piece reaches at least `min_first` bytes, and the
/// captured head of every piece that starts before `head_to` reaches it.
pub(crate) fn pieces(
    len: usize,
    splits: &[Split],
    natural: &[usize],
    gaps: bool,
    (min_first, head_to): (usize, usize),
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
        // As the kernel copies: the head first (at least a byte), the tail only past it. A read
        // that carries part of the first request line has the rest of the line in its head, as
        // every record size's head does (protocol detection reads it; the smallest head is 512
        // bytes, longer than any generated request line).
        let (head, tail) = match split {
            Some(s) if gaps => {
                let mut cap = usize::from(s.head).max(1);
                if at < head_to {
                    cap = cap.max(head_to - at);
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
pub(crate) fn gap_safe(p: &Piece, safe: &Ranges) -> bool {
    let (a, b) = (p.start + p.head, p.end - p.tail);
    a == b || safe.iter().any(|&(s, e)| s <= a && b <= e)
}

/// One connection's events in order, without timestamps.
/// A connection seen from its accept may get its first request line in pieces (the builder
/// holds them back until they decide the protocol); one first seen mid-stream finds its first
/// request by a known method at the start of a read, so its first read holds the whole line.
pub(crate) fn conversation(c: &Conversation, s: &Streams) -> (Vec<Ev>, bool, Vec<Piece>) {
    let first = if c.accepted { 0 } else { s.first_line };
    let reads = pieces(
        s.inb.len(),
        &c.reads,
        &s.req_end,
        c.gaps,
        (first, s.first_line),
    );
    let writes = pieces(
        s.out.len(),
        &c.writes,
        &s.resp.iter().map(|r| r.1).collect::<Vec<_>>(),
        c.gaps,
        (0, 0),
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
    (evs, clean, writes)
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Ev {
    Accept,
    Data(Direction, Piece),
    Close,
    Exit,
}

pub(crate) fn traffic(t: &Traffic) {
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
        let (evs, clean, writes) = conversation(c, &s);
        lists.push((conn, evs, 0usize));
        streams.push((conn, s, clean, writes));
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
    for (conn, s, clean, writes) in &streams {
        let mine: Vec<&RequestSpan> = spans.iter().filter(|sp| sp.conn == *conn).collect();
        if *clean {
            check_exact(s, writes, &mine);
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
/// chunk count. An unanswered request is a span flagged `no_response`; none is `truncated`. An
/// unframed event stream ends at the first write whose captured bytes of that stream hold a
/// whole `data: [DONE]` (bytes after it in later writes are not the response's).
///
/// Why the builder owes exactly this: with every head byte captured and no junk, the request
/// parser never loses sync (a gap inside a Content-Length body or inside one chunk's data only
/// counts down), so it queues one request per request sent, in order. Responses never add or
/// drop queued requests (only `answered()` adds one, and only while the parser holds bytes it
/// could not frame: never here), and every queued request is finished once: by its response's
/// framing, at the close or exit, or by the final flush.
///
/// What the generator keeps to for that (each a property of HTTP/1.1 or of the kernel's
/// capture, not a way around the builder): a read that carries part of the first request line
/// has the rest of the line in its captured head (a read of a connection first seen mid-stream
/// holds it whole); a CONNECT is refused (a 2xx makes a tunnel); a response starts after its
/// request's head was read and ends after the whole request was; an unframed response (ended by
/// the close) is the connection's last; only the generator writes framing and upgrade headers.
///
/// Damaged traffic (a gap hiding framing, junk, a cut request stream) is held only to [`run`]'s
/// bounds: a request can hide wholly in a gap, a lost sync is regained only at a known method
/// at a line start, and after one, bytes that look like a request line or a response start a
/// span of their own. So no exact count is owed there, but pairing, order of times and the byte
/// totals are.
pub(crate) fn check_exact(s: &Streams, writes: &[Piece], spans: &[&RequestSpan]) {
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
    for (i, (sp, e)) in spans.iter().zip(&s.expect).enumerate() {
        let ctx = || format!("{e:?}\n{sp:?}");
        assert!(!sp.flags.contains(Flags::TRUNCATED), "{}", ctx());
        assert_eq!(sp.bytes_in, e.bytes_in, "bytes in: {}", ctx());
        let bytes_out = match e.sse {
            Some((start, body)) => done_end(&s.out, writes, body, s.resp[i].1)
                .map_or(e.bytes_out, |end| (end - start) as u64),
            None => e.bytes_out,
        };
        assert_eq!(sp.bytes_out, bytes_out, "bytes out: {}", ctx());
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

/// Where a `data: [DONE]` ends an unframed event stream whose body is `[body, end)` of `out`:
/// the end of the first write whose captured bytes of the body hold one whole (a write copied
/// without a gap is one run; else its head and its tail are two).
fn done_end(out: &[u8], writes: &[Piece], body: usize, end: usize) -> Option<usize> {
    writes
        .iter()
        .filter(|w| w.end > body && w.start < end)
        .find(|w| {
            let runs = if w.head + w.tail >= w.end - w.start {
                [(w.start, w.end), (0, 0)]
            } else {
                [(w.start, w.start + w.head), (w.end - w.tail, w.end)]
            };
            runs.into_iter().any(|(a, b)| {
                let (a, b) = (a.max(body), b.min(end));
                a < b && find(&out[a..b], b"data: [DONE]").is_some()
            })
        })
        .map(|w| w.end.min(end))
}
