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

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use cost_probe::{
    probe::{ConnId, Direction, OwnedEvent},
    spans::{Flags, Limits, RequestSpan, SpanBuilder, SpanEvent, http::segments},
};
use libfuzzer_sys::fuzz_target;

#[path = "spans/events.rs"]
mod events;
#[path = "spans/traffic.rs"]
mod traffic;

use self::{events::traffic, traffic::Traffic};

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
pub(crate) static DUMP: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("FUZZ_DUMP").is_some());

/// `FUZZ_STATS=1`: one line per connection: requests, spans, and which invariant was checked.
pub(crate) static STATS: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("FUZZ_STATS").is_some());

// ------------------------------------------------------------------------------------------
// What every event stream keeps.
// ------------------------------------------------------------------------------------------

/// Runs the builder over `events`, flushes it, and checks what holds for any input: no panic;
/// every `Started` id is announced once and finished exactly once, and nothing is finished
/// that was not started; no span ends before it starts; per connection, the spans count no more
/// bytes in either direction than its reads and writes carried. `Progress` comes only for a
/// started, unfinished span, at or after its start and not after its end, and only for a
/// streamed one, whose chunks it sums to; the server timings found are finite and non-negative.
pub(crate) fn run(limits: Limits, events: &[OwnedEvent]) -> Vec<RequestSpan> {
    let mut b = SpanBuilder::new(limits);
    let mut out = Vec::new();
    let mut end = 0;
    for e in events {
        b.on_event(&e.borrowed(), &mut out);
        end = end.max(e.ts());
    }
    b.flush(end + 1, &mut out);
    assert_eq!(b.open_conns(), 0, "flush left connections open");

    // Started spans not yet finished: their start, the chunks and last time of their progress.
    let mut open: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    let mut spans = Vec::new();
    for e in out {
        match e {
            SpanEvent::Started { id, start, .. } => {
                assert!(
                    open.insert(id, (start, 0, 0)).is_none(),
                    "span {id} started twice"
                );
            }
            SpanEvent::Progress { id, at, chunks } => {
                let Some((start, sum, last)) = open.get_mut(&id) else {
                    panic!("progress of span {id}, not started or finished");
                };
                assert!(
                    at >= *start,
                    "progress of span {id} at {at} before its start {start}"
                );
                assert!(chunks > 0, "progress of span {id} with no chunks");
                *sum += u64::from(chunks);
                *last = at;
            }
            SpanEvent::Finished(s) => {
                let Some((_, sum, last)) = open.remove(&s.id) else {
                    panic!("span {} finished twice or never started", s.id);
                };
                assert!(s.end >= s.start, "span ends before it starts: {s:?}");
                if s.flags.contains(Flags::STREAMED) {
                    assert_eq!(Some(sum), s.chunks.map(u64::from), "progress chunks: {s:?}");
                    assert!(last <= s.end, "progress after the end: {s:?}");
                } else {
                    assert_eq!(sum, 0, "progress of a span not streamed: {s:?}");
                }
                if let Some(t) = s.timings {
                    for v in [t.prompt_ms, t.predicted_ms].into_iter().flatten() {
                        assert!(v.is_finite() && v >= 0.0, "timings: {s:?}");
                    }
                }
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
