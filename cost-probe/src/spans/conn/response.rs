//! A response being written: its head, body accounting and what the writes carried.
use super::{Flags, Framing, ResponseHead, ServerTimings, SpanSink, Usage, scan};

/// A response being written.
#[derive(Debug, Default)]
pub(super) struct Response {
    /// Header bytes until the header block is complete.
    pub(super) buf: Vec<u8>,
    pub(super) head: Option<ResponseHead>,
    pub(super) first_byte: u64,
    pub(super) body: BodyWrites,
    pub(super) bytes_out: u64,
    pub(super) last_ts: u64,
    pub(super) usage: Usage,
    pub(super) timings: Option<ServerTimings>,
    pub(super) model: Option<String>,
    pub(super) flags: Flags,
    /// Where the body began, when its head completed in a write: (ts, segment, offset).
    pub(super) body_at: Option<(u64, usize, usize)>,
    /// Chunks already announced with [`super::SpanSink::progress`].
    pub(super) announced: u32,
    /// Where this response's bytes began in the current write, (segment, offset): they are
    /// scanned for `usage`, `timings` and `model` when the response ends in the write or the
    /// write ends, so pipelined responses in one write never trade figures.
    pub(super) scan_from: Option<(usize, usize)>,
    /// The last bytes of the previous write's part of this response: a `usage` or `timings`
    /// object a write boundary cut is read across the seam.
    pub(super) carry: Vec<u8>,
}

impl Response {
    /// Chunks so far of a streamed body (HTTP chunks, or writes of an unframed event stream);
    /// `None` when the body is not streamed.
    pub(super) fn streamed_chunks(&self) -> Option<u32> {
        let h = self.head.as_ref()?;
        match &h.framing {
            Framing::Chunked(c) => Some(c.chunks + self.body.lost_writes),
            Framing::UntilClose if h.event_stream => Some(self.body.writes),
            _ => None,
        }
    }

    /// Announces the chunks counted since the last announcement (all in the last write).
    pub(super) fn progress(&mut self, id: u64, out: &mut dyn SpanSink) {
        let Some(n) = self.streamed_chunks() else {
            return;
        };
        let new = n.saturating_sub(self.announced);
        if new > 0 {
            self.announced = n;
            out.progress(id, self.last_ts, new);
        }
    }
}

/// One write's captured bytes, scanned per response (see [`Response::scan_from`]).
pub(super) struct Write<'a> {
    pub(super) head: &'a [u8],
    pub(super) tail: &'a [u8],
    /// The whole write when head and tail are contiguous (the small record's 512 + 384 bytes
    /// cover it): scanned as one, so a `usage` or `model` that straddles the seam is found.
    pub(super) whole: Option<&'a [u8]>,
}

impl<'a> Write<'a> {
    /// The captured bytes between two positions, (segment, offset) with segment 0 the head,
    /// 1 the gap and 2 the tail: one slice when the write is whole, else the head's and the
    /// tail's parts (either may be empty; bytes in the gap were not captured).
    pub(super) fn parts(&self, from: (usize, usize), to: (usize, usize)) -> [&'a [u8]; 2] {
        if let Some(w) = self.whole {
            let at = |(seg, off): (usize, usize)| match seg {
                0 => off,
                1 => self.head.len(),
                _ => self.head.len() + off,
            };
            let (a, b) = (at(from), at(to));
            return [w.get(a..b.max(a)).unwrap_or_default(), &[]];
        }
        let head = if from.0 == 0 {
            let end = if to.0 == 0 { to.1 } else { self.head.len() };
            self.head.get(from.1..end.max(from.1)).unwrap_or_default()
        } else {
            &[]
        };
        let tail = if to.0 == 2 {
            let start = if from.0 == 2 { from.1 } else { 0 };
            self.tail.get(start..to.1.max(start)).unwrap_or_default()
        } else {
            &[]
        };
        [head, tail]
    }

    /// The position after the write's last captured byte.
    pub(super) fn end(&self) -> (usize, usize) {
        (2, self.tail.len())
    }
}

/// Head and tail of the small data record, joined (see [`Write::whole`]).
pub(super) const JOINED: usize = 512 + 384;

/// Bytes kept on each side of a write boundary: more than llama.cpp's `timings` object
/// (about 250 bytes) or an `OpenAI` `usage` object.
const CARRY: usize = 320;

impl Response {
    /// Reads `usage`, `timings` and `model` from this response's bytes of one write: first
    /// across the seam with the previous write, then the bytes themselves (the later figure
    /// wins). `continues`: the response goes on past this write, so its last bytes are kept
    /// for the next write's seam.
    pub(super) fn scan(&mut self, parts: [&[u8]; 2], continues: bool) {
        let first = if parts[0].is_empty() {
            parts[1]
        } else {
            parts[0]
        };
        if !self.carry.is_empty() && !first.is_empty() {
            let keep = self.carry.len();
            self.carry
                .extend_from_slice(&first[..first.len().min(CARRY)]);
            let seam = std::mem::take(&mut self.carry);
            self.read(&seam);
            self.carry = seam;
            self.carry.truncate(keep);
        }
        // A write whose head and tail are apart: each is read on its own (the gap between
        // them was not captured).
        for p in parts {
            if !p.is_empty() {
                self.read(p);
            }
        }
        self.carry.clear();
        let last = if parts[1].is_empty() {
            parts[0]
        } else {
            parts[1]
        };
        if continues {
            self.carry
                .extend_from_slice(&last[last.len().saturating_sub(CARRY)..]);
        }
    }

    fn read(&mut self, bytes: &[u8]) {
        // One pass over the quotes first: most writes carry none of the keys scanned for.
        let keys = scan::Keys::of(bytes);
        if keys.usage {
            self.usage.merge(scan::usage(bytes));
        }
        if keys.timings
            && let Some(t) = scan::timings(bytes)
        {
            self.timings.get_or_insert_default().merge(t);
        }
        if keys.model && self.model.is_none() {
            self.model = scan::model(bytes);
        }
    }
}

/// Per-write accounting of a response body.
#[derive(Debug, Default)]
pub(super) struct BodyWrites {
    /// First write carrying body bytes (first token of a stream).
    pub(super) first: Option<u64>,
    /// Writes carrying body bytes (the chunk count of an unframed event stream).
    pub(super) writes: u32,
    /// Writes while chunk framing was lost (added to the chunk count, which is then approximate).
    pub(super) lost_writes: u32,
    /// Timestamp of the last write counted, so a write's head and tail count once.
    pub(super) counted_ts: u64,
}

impl BodyWrites {
    pub(super) fn note(&mut self, ts: u64, n: u64) {
        if n > 0 {
            self.count(ts, false);
            self.first.get_or_insert(ts);
        }
    }

    pub(super) fn count(&mut self, ts: u64, lost: bool) {
        if self.counted_ts != ts {
            self.counted_ts = ts;
            if lost {
                self.lost_writes += 1;
            } else {
                self.writes += 1;
            }
        }
    }
}

/// Whether `data: [DONE]` lies in a write's bytes that belong to the response: all of them, or
/// those from `from` (segment, offset) on when its body began in this write. `contiguous`: no
/// gap between head and tail, so the terminator may straddle them.
pub(super) fn done_in_write(
    head: &[u8],
    tail: &[u8],
    contiguous: bool,
    from: Option<(usize, usize)>,
) -> bool {
    const SIDE: usize = b"data: [DONE]".len() - 1;
    let (h, t) = match from {
        None => (head, tail),
        Some((0, off)) => (&head[off..], tail),
        Some((_, off)) => (&[][..], &tail[off..]),
    };
    if scan::sse_done(h) || scan::sse_done(t) {
        return true;
    }
    if !contiguous || h.is_empty() || t.is_empty() {
        return false;
    }
    let mut seam = [0u8; 2 * SIDE];
    let a = &h[h.len().saturating_sub(SIDE)..];
    let b = &t[..t.len().min(SIDE)];
    seam[..a.len()].copy_from_slice(a);
    seam[a.len()..a.len() + b.len()].copy_from_slice(b);
    scan::sse_done(&seam[..a.len() + b.len()])
}
