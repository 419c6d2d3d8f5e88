//! Request spans from syscall events: one state machine per connection.
//!
//! Pure: events in, spans out; no I/O and no clocks (timestamps come from the events).
//! DESIGN.md "Request boundaries" describes the rules; the per-connection logic is in `conn`.
mod conn;
mod detect;
pub mod http;
mod lenient;
pub mod scan;
mod traceparent;

use std::net::SocketAddr;

pub use compact_str::CompactString;

// Keys are our own ids and kernel values, not attacker-chosen: a fast non-DoS-resistant hash is fine.
use rustc_hash::FxHashMap as HashMap;

use self::conn::Conn;
pub use self::scan::{ServerTimings, Usage};
pub use self::traceparent::TraceParent;
use crate::probe::{ConnId, Event};

/// How a connection's requests were delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    /// Turn-taking: reads after a write start a request, writes until the next read answer it.
    Tcp,
    /// Detected by its preface; delimited by turn-taking, so flagged approximate.
    Http2,
}

/// Quality flags on a span; emitted as the `flags` array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// The span did not end normally (connection closed mid-response, shutdown, target exit).
    pub const PARTIAL: Self = Self(1);
    /// Bytes the kernel did not copy hid framing; boundaries or counts may be off.
    pub const TRUNCATED: Self = Self(2);
    /// The payload did not parse as the protocol claims.
    pub const MALFORMED: Self = Self(4);
    /// Delimited by turn-taking (HTTP/2, unknown TCP protocols).
    pub const APPROXIMATE: Self = Self(8);
    /// The request got no response before the connection ended.
    pub const NO_RESPONSE: Self = Self(16);
    /// Streamed response (chunked or server-sent events).
    pub const STREAMED: Self = Self(32);

    const NAMES: [(Self, &'static str); 6] = [
        (Self::PARTIAL, "partial"),
        (Self::TRUNCATED, "truncated"),
        (Self::MALFORMED, "malformed"),
        (Self::APPROXIMATE, "approximate"),
        (Self::NO_RESPONSE, "no_response"),
        (Self::STREAMED, "streamed"),
    ];

    pub fn set(&mut self, f: Self) {
        self.0 |= f.0;
    }
    #[must_use]
    pub fn contains(self, f: Self) -> bool {
        self.0 & f.0 == f.0
    }
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| n)
    }
}

/// One request and its response.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestSpan {
    /// Unique per builder; the same id was announced in [`SpanEvent::Started`].
    pub id: u64,
    pub conn: ConnId,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub protocol: Protocol,
    pub method: Option<CompactString>,
    pub path: Option<CompactString>,
    pub status: Option<u16>,
    /// Monotonic ns: the read that carried the request's first bytes.
    pub start: u64,
    /// Monotonic ns: the write that carried the response's last byte.
    pub end: u64,
    /// First response byte written.
    pub first_byte: Option<u64>,
    /// First body chunk written (first token of a stream).
    pub first_chunk: Option<u64>,
    /// Body chunks of a streamed response (HTTP chunks, or writes of an unframed event stream).
    pub chunks: Option<u32>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub model: Option<String>,
    pub usage: Usage,
    /// What the server reported it spent on the request (llama.cpp `timings`, Ollama durations).
    pub timings: Option<ServerTimings>,
    pub flags: Flags,
    /// The request's W3C `traceparent`, the one header kept (see [`TraceParent`]).
    pub trace_parent: Option<TraceParent>,
    /// XXH64 of method, target and body (headers left out), when the body was read whole
    /// (`http::request::RequestHash`); the report's exact-match cache opportunity.
    pub request_hash: Option<u64>,
}

/// A request in flight (see [`SpanBuilder::open_requests`]): what is known of it so far.
#[derive(Clone, Copy, Debug)]
pub struct OpenRequest<'a> {
    pub id: u64,
    pub conn: ConnId,
    pub local: Option<SocketAddr>,
    /// Monotonic ns of the read that carried its first bytes.
    pub start: u64,
    /// HTTP only; a turn-taking connection's request has neither.
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    /// The head of the request body (its `"model"` is read from it).
    pub body_head: &'a [u8],
}

/// What the builder reports.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "moved through one reused Vec; boxing would add an allocation per request"
)]
pub enum SpanEvent {
    /// A request began (attribution counts it active from `start`).
    Started {
        id: u64,
        conn: ConnId,
        start: u64,
    },
    /// A write of a streamed response (chunked, or an event stream) carried body chunks: HTTP
    /// chunks, or for an unframed event stream the write itself. Emitted for each such write
    /// from the first on, between the span's `Started` and `Finished`; the `chunks` of one span
    /// sum to its finished `chunks`. Never for a body framed by Content-Length.
    Progress {
        id: u64,
        /// Monotonic ns of the write.
        at: u64,
        /// Chunks the write carried (at least 1).
        chunks: u32,
    },
    Finished(RequestSpan),
}

/// Where the builder reports what it sees: a `Vec<SpanEvent>` collects the events (tests,
/// fuzzing); the tracer hands each one straight to the meter, so a finished span is moved once
/// and a start is not padded to the size of a span.
pub trait SpanSink {
    /// See [`SpanEvent::Started`].
    fn started(&mut self, id: u64, conn: ConnId, start: u64);
    /// See [`SpanEvent::Progress`].
    fn progress(&mut self, id: u64, at: u64, chunks: u32);
    /// See [`SpanEvent::Finished`].
    fn finished(&mut self, span: RequestSpan);
}

impl SpanSink for Vec<SpanEvent> {
    fn started(&mut self, id: u64, conn: ConnId, start: u64) {
        self.push(SpanEvent::Started { id, conn, start });
    }
    fn progress(&mut self, id: u64, at: u64, chunks: u32) {
        self.push(SpanEvent::Progress { id, at, chunks });
    }
    fn finished(&mut self, span: RequestSpan) {
        self.push(SpanEvent::Finished(span));
    }
}

/// Limits that keep memory bounded whatever the traffic.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_conns: usize,
    /// Requests queued on one connection (pipelining) before new ones are dropped.
    pub max_queued: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_conns: 65_536,
            max_queued: 1024,
        }
    }
}

/// Counters of things the builder had to drop or could not parse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections not tracked because the table was full.
    pub conn_overflow: u64,
    /// Requests not tracked because a connection's queue was full.
    pub queue_overflow: u64,
    /// Writes on a connection with no request to answer.
    pub unsolicited_writes: u64,
}

/// Turns a stream of events into request spans.
#[derive(Default)]
pub struct SpanBuilder {
    conns: HashMap<ConnId, Conn>,
    /// Connections closed by their process's exit (no `close(2)` seen), for the caller to drop
    /// from the kernel's connection table.
    ended_by_exit: Vec<ConnId>,
    next_id: u64,
    limits: Limits,
    pub stats: Stats,
}

impl SpanBuilder {
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Connections that ended with their process (see `ended_by_exit`).
    pub fn take_ended_by_exit(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.ended_by_exit)
    }

    /// Connections currently tracked.
    #[must_use]
    pub fn open_conns(&self) -> usize {
        self.conns.len()
    }

    /// Records the local address of a connection (resolved by the caller from its listener).
    pub fn set_local(&mut self, conn: ConnId, local: SocketAddr) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.local = Some(local);
        }
    }

    pub fn on_event(&mut self, ev: &Event<&[u8]>, out: &mut dyn SpanSink) {
        match *ev {
            Event::Accept { conn, peer, .. } => {
                // A new accept on the same (tgid, fd) means the old connection is gone.
                self.close_fd(conn, ev.ts(), out);
                if let Some(c) = self.conn_entry(conn, true) {
                    c.peer = peer;
                }
            }
            Event::Data {
                ts,
                conn,
                dir,
                len,
                head,
                tail,
            } => {
                let limits = self.limits;
                let mut next_id = self.next_id;
                let mut stats = self.stats;
                if let Some(c) = self.conn_entry(conn, false) {
                    let mut ctx = conn::Ctx {
                        conn,
                        next_id: &mut next_id,
                        limits,
                        stats: &mut stats,
                        out,
                    };
                    c.on_data(&mut ctx, ts, dir, len, head, tail);
                }
                self.next_id = next_id;
                self.stats = stats;
            }
            Event::Close { ts, conn } => {
                if let Some(mut c) = self.conns.remove(&conn) {
                    c.close(conn, ts, false, &mut self.next_id, out);
                }
            }
            Event::ProcExit { ts, tgid } => {
                let gone: Vec<ConnId> = self
                    .conns
                    .keys()
                    .filter(|k| k.tgid == tgid)
                    .copied()
                    .collect();
                for k in gone {
                    if let Some(mut c) = self.conns.remove(&k) {
                        c.close(k, ts, true, &mut self.next_id, out);
                        self.ended_by_exit.push(k);
                    }
                }
            }
            // Discovery's business, not a connection's.
            Event::Exec { .. } => {}
        }
    }

    /// Ends every open span (shutdown): in-flight requests are emitted flagged `partial`.
    pub fn flush(&mut self, ts: u64, out: &mut dyn SpanSink) {
        let mut all: Vec<(ConnId, Conn)> = self.conns.drain().collect();
        all.sort_by_key(|(k, _)| *k);
        for (k, mut c) in all {
            c.close(k, ts, true, &mut self.next_id, out);
        }
    }

    /// Sets both addresses of a connection (resolved from /proc when the kernel had none).
    pub fn set_addrs(&mut self, conn: ConnId, local: SocketAddr, peer: SocketAddr) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.local = Some(local);
            c.peer = Some(peer);
        }
    }

    /// Tracks a connection accepted before attach; it starts unsynchronised.
    pub fn adopt(&mut self, conn: ConnId, local: SocketAddr, peer: SocketAddr) {
        if let Some(c) = self.conn_entry(conn, false) {
            c.local = Some(local);
            c.peer = Some(peer);
        }
    }

    /// Every request announced (`Started`) and not yet finished, in no particular order: what a
    /// live view shows as in flight. Walks the connection table; meant for about once a second.
    pub fn open_requests(&self, mut f: impl FnMut(OpenRequest<'_>)) {
        for (&conn, c) in &self.conns {
            c.open_requests(conn, &mut f);
        }
    }

    /// Drops a connection the caller found not to be TCP, without emitting anything.
    pub fn forget(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    fn close_fd(&mut self, conn: ConnId, ts: u64, out: &mut dyn SpanSink) {
        let stale: Vec<ConnId> = self
            .conns
            .keys()
            .filter(|k| k.tgid == conn.tgid && k.fd == conn.fd && k.id != conn.id)
            .copied()
            .collect();
        for k in stale {
            if let Some(mut c) = self.conns.remove(&k) {
                c.close(k, ts, false, &mut self.next_id, out);
            }
        }
    }

    fn conn_entry(&mut self, conn: ConnId, accepted: bool) -> Option<&mut Conn> {
        let full = self.conns.len() >= self.limits.max_conns;
        if full && !self.conns.contains_key(&conn) {
            self.stats.conn_overflow += 1;
            return None;
        }
        Some(
            self.conns
                .entry(conn)
                .or_insert_with(|| Conn::new(accepted)),
        )
    }
}

#[cfg(test)]
mod tests;
