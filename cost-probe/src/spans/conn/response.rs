//! A response being written: its head, body accounting and what the writes carried.
use super::{Flags, Framing, ResponseHead, ServerTimings, SpanEvent, Usage, scan};

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
    /// Chunks already announced with [`SpanEvent::Progress`].
    pub(super) announced: u32,
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
    pub(super) fn progress(&mut self, id: u64, out: &mut Vec<SpanEvent>) {
        let Some(n) = self.streamed_chunks() else {
            return;
        };
        let new = n.saturating_sub(self.announced);
        if new > 0 {
            self.announced = n;
            out.push(SpanEvent::Progress {
                id,
                at: self.last_ts,
                chunks: new,
            });
        }
    }
}

/// What a scan of one write found, applied to the responses it touches.
pub(super) struct Write<'a> {
    pub(super) usage: Usage,
    pub(super) timings: Option<ServerTimings>,
    pub(super) head: &'a [u8],
    pub(super) tail: &'a [u8],
    /// The whole write when head and tail are contiguous (the small record's 512 + 384 bytes
    /// cover it): scanned as one, so a `usage` or `model` that straddles the seam is found.
    pub(super) whole: Option<&'a [u8]>,
}

/// Head and tail of the small data record, joined (see [`Write::whole`]).
pub(super) const JOINED: usize = 512 + 384;

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
