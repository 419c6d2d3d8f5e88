//! HTTP/1.x framing over partially captured streams.
//!
//! Each syscall contributes its head bytes, a gap of bytes we did not copy, and its tail bytes
//! ([`Seg`]). Framing needs lengths more than contents: a gap inside a body just counts down the
//! remaining length; a gap inside headers or a chunk-size line loses sync, which is flagged and
//! recovered from at the next recognisable boundary.
mod hash;
mod request;
mod response;

pub use self::hash::RequestHash;
pub use self::request::{ReqOutput, Request, RequestParser};
pub use self::response::{Framing, HeadParse, ResponseHead, parse_response_head};

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

/// Whether the first bytes of a connection are an HTTP/1 request: a known method, or a first
/// line that ends in an HTTP/1 version (another method, or bytes a server still answers).
#[must_use]
pub fn starts_http1(b: &[u8]) -> bool {
    looks_like_request(b)
        || memchr::memchr(b'\n', b).is_some_and(|i| {
            let l = &b[..i];
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            l.ends_with(b" HTTP/1.1") || l.ends_with(b" HTTP/1.0")
        })
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request's wish to switch protocols (`Connection: upgrade` with `Upgrade: ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// HTTP/2 over cleartext.
    H2c,
    /// WebSocket, or anything else.
    Other,
}

/// What the headers of a head say about framing, from one pass over them (the first of each
/// header counts, as before).
#[derive(Debug, Default)]
struct HeaderInfo<'h> {
    content_length: Option<&'h [u8]>,
    transfer_encoding: Option<&'h [u8]>,
    content_type: Option<&'h [u8]>,
    upgrade: Option<&'h [u8]>,
    connection_upgrade: bool,
    traceparent: Option<&'h [u8]>,
}

impl<'h> HeaderInfo<'h> {
    fn of(headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>) -> Self {
        let mut i = Self::default();
        for (name, value) in headers {
            let slot = if name.eq_ignore_ascii_case(b"content-length") {
                &mut i.content_length
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                &mut i.transfer_encoding
            } else if name.eq_ignore_ascii_case(b"content-type") {
                &mut i.content_type
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                &mut i.upgrade
            } else if name.eq_ignore_ascii_case(b"traceparent") {
                &mut i.traceparent
            } else {
                if name.eq_ignore_ascii_case(b"connection") {
                    i.connection_upgrade |= value
                        .split(|&c| c == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
                }
                continue;
            };
            slot.get_or_insert(value);
        }
        i
    }

    fn strict(headers: &'h [httparse::Header<'_>]) -> Self {
        Self::of(headers.iter().map(|h| (h.name.as_bytes(), h.value)))
    }

    fn content_length(&self) -> Result<Option<u64>, ()> {
        match self.content_length {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(Some)
                .ok_or(()),
        }
    }

    fn is_chunked(&self) -> bool {
        self.transfer_encoding.is_some_and(|v| {
            v.split(|&c| c == b',')
                .next_back()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        })
    }

    fn event_stream(&self) -> bool {
        self.content_type
            .is_some_and(|v| v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream"))
    }

    fn upgrade(&self) -> Option<Upgrade> {
        let v = self.upgrade.filter(|_| self.connection_upgrade)?;
        let first = v.split(|&c| c == b',').next().unwrap_or(b"").trim_ascii();
        Some(if first.eq_ignore_ascii_case(b"h2c") {
            Upgrade::H2c
        } else {
            Upgrade::Other
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
