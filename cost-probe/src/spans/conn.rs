//! One connection's state machine: HTTP/1 request queue and response framing, or turn-taking.
use std::{collections::VecDeque, net::SocketAddr};

use super::{
    Flags, Limits, Protocol, RequestSpan, SpanSink, Stats,
    detect::{self, Decision},
    http::{self, Framing, HeadParse, Request, RequestParser, ResponseHead, Seg, Upgrade},
    scan::{self, ServerTimings, Usage},
};
use crate::probe::{ConnId, Direction};

/// What a connection needs from the builder while handling one event.
pub(super) struct Ctx<'a> {
    pub conn: ConnId,
    pub next_id: &'a mut u64,
    pub limits: Limits,
    pub stats: &'a mut Stats,
    pub out: &'a mut dyn SpanSink,
}

impl Ctx<'_> {
    fn new_id(&mut self) -> u64 {
        *self.next_id += 1;
        *self.next_id
    }
}

mod response;
mod turn;

use self::{
    response::{JOINED, Response, Write, done_in_write},
    turn::Turn,
};

#[derive(Debug)]
pub(super) struct Conn {
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    proto: Option<Protocol>,
    /// Seen from its accept, so the first inbound byte starts a request.
    accepted: bool,
    parser: RequestParser,
    queue: VecDeque<Request>,
    resp: Option<Response>,
    turn: Option<Turn>,
    /// Flags for the next span (e.g. sync lost between requests).
    pending_flags: Flags,
    /// Reads seen before the protocol could be told (connections first seen mid-stream).
    undecided_reads: u8,
    /// An accepted connection's first bytes, held until they tell its protocol (see `detect`),
    /// and the time of the read that brought the first of them.
    held: Vec<u8>,
    held_ts: u64,
}

impl Conn {
    pub fn new(accepted: bool) -> Self {
        Self {
            local: None,
            peer: None,
            proto: None,
            accepted,
            parser: if accepted {
                RequestParser::default()
            } else {
                RequestParser::mid_stream()
            },
            queue: VecDeque::new(),
            resp: None,
            turn: None,
            pending_flags: Flags::default(),
            undecided_reads: 0,
            held: Vec::new(),
            held_ts: 0,
        }
    }

    pub fn on_data(
        &mut self,
        ctx: &mut Ctx<'_>,
        ts: u64,
        dir: Direction,
        len: u64,
        head: &[u8],
        tail: &[u8],
    ) {
        let proto = match self.proto {
            Some(p) => p,
            None if self.accepted => {
                let whole = tail.is_empty() && head.len() as u64 >= len;
                match self.detect(ctx, ts, dir, head, whole) {
                    Some(p) => p,
                    None => return,
                }
            }
            None => {
                let p = if dir == Direction::In && head.starts_with(http::H2_PREFACE) {
                    Some(Protocol::Http2)
                } else if dir == Direction::In && http::looks_like_request(head) {
                    Some(Protocol::Http1)
                } else if dir == Direction::In {
                    // Seen mid-stream: give a request line a few reads to show up.
                    self.undecided_reads += 1;
                    (self.undecided_reads > 8).then_some(Protocol::Tcp)
                } else {
                    None
                };
                match p {
                    Some(p) => *self.proto.insert(p),
                    None => return,
                }
            }
        };
        let segs = http::segments(head, tail, len);
        match (proto, dir) {
            (Protocol::Http1, Direction::In) => self.http_in(ctx, ts, segs),
            (Protocol::Http1, Direction::Out) => self.http_out(ctx, ts, segs),
            (_, Direction::In) => self.turn_in(ctx, ts, len),
            (_, Direction::Out) => self.turn_out(ctx, ts, len),
        }
    }

    /// Tells an accepted connection's protocol from its client's first bytes, holding back
    /// reads that could still become a request line (`None`: held, nothing more to do).
    fn detect(
        &mut self,
        ctx: &mut Ctx<'_>,
        ts: u64,
        dir: Direction,
        head: &[u8],
        whole: bool,
    ) -> Option<Protocol> {
        let p = if dir == Direction::In {
            let mut seen = std::mem::take(&mut self.held);
            seen.extend_from_slice(head);
            let d = detect::first_bytes(&seen);
            if seen.len() == head.len() {
                self.held_ts = ts;
            }
            match d {
                // Only a read captured whole is held: a longer one's head shows the line.
                Decision::More if whole => {
                    self.held = seen;
                    return None;
                }
                Decision::Is(p) => {
                    seen.truncate(seen.len() - head.len());
                    self.held = seen;
                    p
                }
                Decision::More => {
                    seen.truncate(seen.len() - head.len());
                    self.held = seen;
                    Protocol::Tcp
                }
            }
        } else if !self.held.is_empty() && head.starts_with(b"HTTP/1.") {
            // The server answered the held bytes as HTTP (a request it rejected part-way).
            Protocol::Http1
        } else {
            // The server spoke first, or answered bytes that are no request line.
            Protocol::Tcp
        };
        self.proto = Some(p);
        self.replay_held(ctx);
        Some(p)
    }

    /// Feeds the bytes held back during detection to the protocol chosen.
    fn replay_held(&mut self, ctx: &mut Ctx<'_>) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        let ts = self.held_ts;
        match self.proto {
            Some(Protocol::Http1) => {
                self.http_in(ctx, ts, [Seg::Bytes(&held), Seg::Gap(0), Seg::Bytes(&[])]);
            }
            _ => self.turn_in(ctx, ts, held.len() as u64),
        }
    }

    // -- HTTP/1 ------------------------------------------------------------------------------

    fn http_in(&mut self, ctx: &mut Ctx<'_>, ts: u64, segs: [Seg<'_>; 3]) {
        let first = self.queue.len();
        let mut before = first;
        for seg in segs {
            let r = self.parser.feed(seg, ts, &mut self.queue);
            // Assign ids to the new requests, bounded per connection, segment by segment: a
            // loss in the gap flags the first request after it, not the ones the head held.
            while self.queue.len() > ctx.limits.max_queued {
                self.queue.pop_back();
                ctx.stats.queue_overflow += 1;
            }
            if self.queue.len() > before {
                self.announce(ctx, before);
                before = self.queue.len();
            }
            if r.lost_sync {
                self.pending_flags.set(Flags::TRUNCATED);
            }
        }
        if self.queue.len() <= first {
            return;
        }
        // An unframed response ends when the next request arrives.
        if self
            .resp
            .as_ref()
            .and_then(|r| r.head.as_ref())
            .is_some_and(|h| h.framing == Framing::UntilClose)
            && self.queue.len() > 1
        {
            let end = self.resp.as_ref().map_or(ts, |r| r.last_ts);
            self.finish(ctx, end, Flags::default());
        }
    }

    /// Assigns ids to the requests queued from `from` on and announces them.
    fn announce(&mut self, ctx: &mut Ctx<'_>, from: usize) {
        for i in from..self.queue.len() {
            let id = ctx.new_id();
            let r = &mut self.queue[i];
            r.id = id;
            // Bytes lost before this request may have hidden whole requests: say so on it.
            if std::mem::take(&mut self.pending_flags).contains(Flags::TRUNCATED) {
                r.truncated = true;
            }
            ctx.out.started(id, ctx.conn, r.start);
        }
    }

    fn http_out(&mut self, ctx: &mut Ctx<'_>, ts: u64, segs: [Seg<'_>; 3]) {
        let (Seg::Bytes(head), Seg::Bytes(tail)) = (segs[0], segs[2]) else {
            unreachable!("segments are head bytes, gap, tail bytes")
        };
        // A response whose head could not be read runs until the next request arrives; when
        // the next request is already queued (pipelined), a write that starts a status line
        // starts its response.
        if head.starts_with(b"HTTP/1.")
            && self.queue.len() > 1
            && let Some(r) = &self.resp
            && r.head.as_ref().is_some_and(ResponseHead::is_unknown)
        {
            let end = r.last_ts;
            self.finish(ctx, end, Flags::default());
        }
        // Usage sits at a non-streamed body's end or in a stream's last chunk. Each response
        // reads its own bytes of the write (see `Response::scan`); a write the kernel copied
        // whole in two pieces is read joined: its `usage` may straddle the seam.
        let mut joined = [0u8; JOINED];
        let whole = (matches!(segs[1], Seg::Gap(0))
            && !tail.is_empty()
            && head.len() + tail.len() <= JOINED)
            .then(|| {
                joined[..head.len()].copy_from_slice(head);
                joined[head.len()..head.len() + tail.len()].copy_from_slice(tail);
                &joined[..head.len() + tail.len()]
            });
        let write = Write { head, tail, whole };
        for (i, seg) in segs.into_iter().enumerate() {
            self.out_seg(ctx, ts, i, seg, &write);
            if self.proto != Some(Protocol::Http1) {
                return; // switched protocols: the rest of the write is not HTTP
            }
        }
        let Some(resp) = self.resp.as_mut() else {
            return;
        };
        if let Some(from) = resp.scan_from.take() {
            resp.scan(write.parts(from, write.end()), true);
        }
        let Some(id) = self.queue.front().map(|r| r.id) else {
            return;
        };
        let Some(h) = resp.head.as_mut() else {
            return;
        };
        let last = if tail.is_empty() { head } else { tail };
        let done = match &mut h.framing {
            Framing::Chunked(c) if c.lost() => {
                c.resync_on_tail(last);
                c.done()
            }
            Framing::UntilClose if h.event_stream => {
                // Only this response's own bytes: a `[DONE]` that ended an earlier response in
                // the same write is not this stream's end.
                let from = resp.body_at.filter(|b| b.0 == ts).map(|b| (b.1, b.2));
                done_in_write(head, tail, matches!(segs[1], Seg::Gap(0)), from)
            }
            _ => false,
        };
        if done {
            self.finish(ctx, ts, Flags::default());
        } else {
            resp.progress(id, ctx.out);
        }
    }

    /// Consumes one segment of a write, finishing responses as their framing completes (a
    /// write may end one pipelined response and start the next).
    #[expect(
        clippy::too_many_lines,
        clippy::many_single_char_names,
        reason = "one state machine over header block, then body framing; split, its states would be passed around"
    )]
    fn out_seg(&mut self, ctx: &mut Ctx<'_>, ts: u64, idx: usize, seg: Seg<'_>, write: &Write<'_>) {
        let seg_len = match seg {
            Seg::Bytes(b) => b.len(),
            Seg::Gap(_) => 0,
        };
        let mut seg = seg;
        loop {
            if matches!(seg, Seg::Bytes([]) | Seg::Gap(0)) {
                return;
            }
            if self.resp.is_none() {
                if self.queue.is_empty() {
                    // The server answers bytes we could not frame as a request: still a record.
                    let Some(r) = self.parser.answered() else {
                        ctx.stats.unsolicited_writes += 1;
                        return;
                    };
                    self.queue.push_back(r);
                    self.announce(ctx, 0);
                }
                self.resp = Some(Response {
                    first_byte: ts,
                    ..Response::default()
                });
            }
            let head_req = self.queue.front().is_some_and(|r| r.method == "HEAD");
            let connect = self.queue.front().is_some_and(|r| r.method == "CONNECT");
            let upgrade = self.queue.front().and_then(|r| r.upgrade);
            let resp = self.resp.as_mut().expect("set above");
            if resp.last_ts != ts {
                // First segment of this write for this response.
                resp.last_ts = ts;
                resp.scan_from = Some(pos(idx, seg_len, seg));
            }
            let Some(h) = resp.head.as_mut() else {
                // Still in the header block.
                match seg {
                    Seg::Gap(n) => {
                        resp.bytes_out += n;
                        resp.flags.set(Flags::TRUNCATED);
                        resp.head = Some(ResponseHead::unknown());
                        return;
                    }
                    Seg::Bytes(b) => {
                        let old = resp.buf.len();
                        // A head that starts in this segment is parsed in place: copied only
                        // when it continues in a later write.
                        let parsed = if old == 0 {
                            let h = http::parse_response_head(b, head_req);
                            if !matches!(h, HeadParse::Complete(_)) {
                                resp.buf.extend_from_slice(b);
                            }
                            h
                        } else {
                            resp.buf.extend_from_slice(b);
                            http::parse_response_head(&resp.buf, head_req)
                        };
                        match parsed {
                            HeadParse::Partial => {
                                resp.bytes_out += b.len() as u64;
                                return;
                            }
                            HeadParse::Invalid => {
                                resp.bytes_out += b.len() as u64;
                                resp.flags.set(Flags::MALFORMED);
                                resp.head = Some(ResponseHead::unknown());
                                return;
                            }
                            HeadParse::Complete(h) => {
                                let used = h.len - old;
                                resp.bytes_out += used as u64;
                                resp.buf = Vec::new();
                                if h.malformed {
                                    resp.flags.set(Flags::MALFORMED);
                                }
                                seg = Seg::Bytes(&b[used..]);
                                resp.body_at = Some((ts, idx, seg_len - (b.len() - used)));
                                if h.status == 101 || connect && (200..300).contains(&h.status) {
                                    // Switching Protocols, or a tunnel opened by CONNECT: the
                                    // span ends with this head, and what follows (WebSocket,
                                    // h2c, TLS) is delimited by turn-taking.
                                    resp.head = Some(h);
                                    self.finish_in_write(ctx, ts, write, pos(idx, seg_len, seg));
                                    self.proto =
                                        Some(if upgrade == Some(Upgrade::H2c) && !connect {
                                            Protocol::Http2
                                        } else {
                                            Protocol::Tcp
                                        });
                                    return;
                                }
                                if (100..200).contains(&h.status) {
                                    continue; // 100 Continue: the real head follows
                                }
                                if upgrade.is_some() {
                                    self.parser.upgrade_declined();
                                }
                                let empty = h.framing == Framing::Empty;
                                resp.head = Some(h);
                                if empty {
                                    self.finish_in_write(ctx, ts, write, pos(idx, seg_len, seg));
                                }
                                continue;
                            }
                        }
                    }
                }
            };
            // In the body.
            let n = match seg {
                Seg::Bytes(b) => b.len() as u64,
                Seg::Gap(n) => n,
            };
            match &mut h.framing {
                Framing::Length(rem) => {
                    let k = (*rem).min(n);
                    *rem -= k;
                    resp.bytes_out += k;
                    resp.body.note(ts, k);
                    if *rem == 0 {
                        seg = advance(seg, k);
                        self.finish_in_write(ctx, ts, write, pos(idx, seg_len, seg));
                        continue;
                    }
                    return;
                }
                Framing::Chunked(c) => match seg {
                    Seg::Gap(n) => {
                        c.skip(n);
                        resp.bytes_out += n;
                        if c.lost() {
                            resp.flags.set(Flags::TRUNCATED);
                            resp.body.count(ts, true);
                        }
                        return;
                    }
                    Seg::Bytes(b) => {
                        let before = c.chunks;
                        let k = match c.feed(b) {
                            Ok(k) => k,
                            Err(_) => {
                                resp.flags.set(Flags::MALFORMED);
                                c.skip(u64::MAX);
                                b.len()
                            }
                        };
                        resp.bytes_out += k as u64;
                        if c.chunks > before {
                            resp.body.first.get_or_insert(ts);
                        }
                        if c.lost() {
                            resp.body.count(ts, true);
                        }
                        if c.done() {
                            seg = Seg::Bytes(&b[k..]);
                            self.finish_in_write(ctx, ts, write, pos(idx, seg_len, seg));
                            continue;
                        }
                        return;
                    }
                },
                Framing::UntilClose | Framing::Empty => {
                    resp.bytes_out += n;
                    resp.body.note(ts, n);
                    return;
                }
            }
        }
    }

    /// Finishes the current response at position `at` of `write`, after reading its bytes.
    fn finish_in_write(
        &mut self,
        ctx: &mut Ctx<'_>,
        ts: u64,
        write: &Write<'_>,
        at: (usize, usize),
    ) {
        if let Some(r) = self.resp.as_mut()
            && let Some(from) = r.scan_from.take()
        {
            r.scan(write.parts(from, at), false);
        }
        self.finish(ctx, ts, Flags::default());
    }

    /// Emits the span for the request at the front of the queue with the current response.
    fn finish(&mut self, ctx: &mut Ctx<'_>, end: u64, extra: Flags) {
        let Some(req) = self.queue.pop_front() else {
            self.resp = None;
            return;
        };
        let mut resp = self.resp.take();
        if let Some(r) = resp.as_mut() {
            r.progress(req.id, ctx.out);
        }
        let mut flags = extra;
        if req.truncated {
            flags.set(Flags::TRUNCATED);
        }
        if req.malformed {
            flags.set(Flags::MALFORMED);
        }
        let mut usage = Usage::default();
        let mut timings = None;
        let model = scan::model(&req.body_head);
        let (status, first_byte, first_chunk, chunks, bytes_out, resp_model) = match resp {
            Some(r) => {
                flags.set(r.flags);
                usage = r.usage;
                timings = r.timings;
                let (status, chunks) = match &r.head {
                    Some(h) => {
                        let chunks = r.streamed_chunks();
                        if chunks.is_some() {
                            flags.set(Flags::STREAMED);
                        }
                        ((h.status != 0).then_some(h.status), chunks)
                    }
                    None => {
                        flags.set(Flags::PARTIAL);
                        (None, None)
                    }
                };
                (
                    status,
                    Some(r.first_byte),
                    r.body.first,
                    chunks,
                    r.bytes_out,
                    r.model,
                )
            }
            None => {
                flags.set(Flags::NO_RESPONSE);
                (None, None, None, None, 0, None)
            }
        };
        ctx.out.finished(RequestSpan {
            id: req.id,
            conn: ctx.conn,
            local: self.local,
            peer: self.peer,
            protocol: Protocol::Http1,
            method: Some(req.method),
            path: Some(req.path),
            status,
            start: req.start,
            end: end.max(req.start),
            first_byte,
            first_chunk,
            chunks,
            bytes_in: req.bytes_in,
            bytes_out,
            // What the server says it ran beats what the client asked for (llama.cpp, for one,
            // ignores the requested name).
            model: resp_model.or(model),
            usage,
            timings,
            flags,
            trace_parent: req.trace_parent,
            request_hash: if req.complete && !req.truncated {
                req.hash.digest()
            } else {
                None
            },
        });
    }

    /// Its requests announced and not finished: the queued ones (the front one may be answering),
    /// or the open turn.
    pub fn open_requests(&self, conn: ConnId, f: &mut impl FnMut(super::OpenRequest<'_>)) {
        for r in &self.queue {
            f(super::OpenRequest {
                id: r.id,
                conn,
                local: self.local,
                start: r.start,
                method: Some(&r.method),
                path: Some(&r.path),
                body_head: &r.body_head,
            });
        }
        if let Some(t) = &self.turn {
            f(super::OpenRequest {
                id: t.id,
                conn,
                local: self.local,
                start: t.start,
                method: None,
                path: None,
                body_head: &[],
            });
        }
    }

    /// The connection ended (close, process exit, shutdown). `abrupt` marks in-flight spans
    /// partial even when their framing allowed an end at close.
    pub fn close(
        &mut self,
        conn: ConnId,
        ts: u64,
        abrupt: bool,
        next_id: &mut u64,
        out: &mut dyn SpanSink,
    ) {
        let mut stats = Stats::default();
        let mut ctx = Ctx {
            conn,
            next_id,
            limits: Limits::default(),
            stats: &mut stats,
            out,
        };
        // Bytes held back while the protocol was undecided were still sent: a turn of their own.
        if self.proto.is_none() && !self.held.is_empty() {
            self.proto = Some(Protocol::Tcp);
            self.replay_held(&mut ctx);
        }
        if self.turn.is_some() {
            let flags = if abrupt {
                Flags::PARTIAL
            } else {
                Flags::default()
            };
            self.finish_turn(&mut ctx, Some(ts), flags);
        }
        if let Some(r) = &self.resp {
            let until_close = r
                .head
                .as_ref()
                .is_some_and(|h| h.framing == Framing::UntilClose);
            let flags = if until_close && !abrupt {
                Flags::default()
            } else {
                Flags::PARTIAL
            };
            let end = r.last_ts;
            self.finish(&mut ctx, end, flags);
        }
        while !self.queue.is_empty() {
            self.finish(&mut ctx, ts, Flags::PARTIAL);
        }
    }
}

/// Where the unconsumed rest `seg` of segment `idx` (`seg_len` captured bytes) begins.
fn pos(idx: usize, seg_len: usize, seg: Seg<'_>) -> (usize, usize) {
    match seg {
        Seg::Bytes(b) => (idx, seg_len - b.len()),
        Seg::Gap(_) => (idx, 0),
    }
}

fn advance(seg: Seg<'_>, k: u64) -> Seg<'_> {
    match seg {
        Seg::Bytes(b) => Seg::Bytes(&b[k as usize..]),
        Seg::Gap(n) => Seg::Gap(n - k),
    }
}
