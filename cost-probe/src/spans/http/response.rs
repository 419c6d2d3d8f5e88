//! Response heads (outbound): status and body framing.
use super::{Chunked, HeaderInfo, MAX_HEADER_BYTES, MAX_HEADERS};
use crate::spans::lenient;

/// How the end of a response body is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// No framing: the body ends at close, or at `data: [DONE]` for an event stream.
    UntilClose,
    /// Nothing follows the headers (HEAD, 204, 304).
    Empty,
}

/// A parsed response header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    pub event_stream: bool,
    /// Bytes of the header block.
    pub len: usize,
    /// Read leniently, or its framing header did not parse.
    pub malformed: bool,
}

impl ResponseHead {
    /// A header block that could not be read (hidden by a kernel gap, or malformed): no status,
    /// and no framing but the end of the connection or the next request.
    #[must_use]
    pub fn unknown() -> Self {
        Self {
            status: 0,
            framing: Framing::UntilClose,
            event_stream: false,
            len: 0,
            malformed: false,
        }
    }

    /// Whether this is [`ResponseHead::unknown`]: nothing says where the body ends.
    #[must_use]
    pub fn is_unknown(&self) -> bool {
        self.status == 0 && self.framing == Framing::UntilClose
    }

    fn new(status: u16, info: &HeaderInfo<'_>, len: usize, head_request: bool) -> Self {
        let mut malformed = false;
        let framing = if head_request || status == 204 || status == 304 || status < 200 {
            Framing::Empty
        } else if info.is_chunked() {
            Framing::Chunked(Chunked::default())
        } else {
            match info.content_length() {
                Ok(Some(0)) => Framing::Empty,
                Ok(Some(n)) => Framing::Length(n),
                Ok(None) => Framing::UntilClose,
                Err(()) => {
                    // The status still stands; the body ends with the connection or the next
                    // request.
                    malformed = true;
                    Framing::UntilClose
                }
            }
        };
        Self {
            status,
            framing,
            event_stream: info.event_stream(),
            len,
            malformed,
        }
    }
}

/// Outcome of parsing a response header block from accumulated bytes.
pub enum HeadParse {
    Complete(ResponseHead),
    Partial,
    Invalid,
}

/// Parses a response header block; `head_request` for responses to HEAD. Strictly with
/// httparse, else leniently (flagged `malformed`): a server's odd bytes should not cost the
/// response its status and framing.
#[must_use]
pub fn parse_response_head(buf: &[u8], head_request: bool) -> HeadParse {
    // Uninitialised: zeroing 64 headers (2 KiB) cost more than parsing a small head.
    let mut hs = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut hs);
    let err = match parsed {
        Ok(httparse::Status::Complete(n)) => {
            let status = resp.code.unwrap_or(0);
            let info = HeaderInfo::strict(resp.headers);
            return HeadParse::Complete(ResponseHead::new(status, &info, n, head_request));
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER_BYTES => {
            return HeadParse::Partial;
        }
        Ok(httparse::Status::Partial) => return HeadParse::Invalid,
        Err(e) => e,
    };
    match lenient::response(buf) {
        lenient::Parse::Complete(h) => {
            let info = HeaderInfo::of(h.headers.iter().copied());
            let mut head = ResponseHead::new(h.status, &info, h.len, head_request);
            head.malformed |= err != httparse::Error::TooManyHeaders;
            HeadParse::Complete(head)
        }
        lenient::Parse::Partial if buf.len() < MAX_HEADER_BYTES => HeadParse::Partial,
        lenient::Parse::Partial | lenient::Parse::Invalid => HeadParse::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_bytes_in_a_response_head_keep_its_status_and_framing() {
        let HeadParse::Complete(h) = parse_response_head(
            b"HTTP/1.1 200 O\x01K\r\nX-Echo: a\x01b\r\nContent-Length: 5\r\n\r\nhello",
            false,
        ) else {
            panic!()
        };
        assert_eq!(
            (h.status, h.framing, h.malformed),
            (200, Framing::Length(5), true)
        );
        let HeadParse::Complete(h) =
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false)
        else {
            panic!()
        };
        assert_eq!(
            (h.status, h.framing, h.malformed),
            (200, Framing::UntilClose, true)
        );
        let HeadParse::Complete(h) = parse_response_head(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            false,
        ) else {
            panic!()
        };
        assert_eq!(
            (h.status, h.framing, h.malformed),
            (101, Framing::Empty, false)
        );
    }

    #[test]
    fn response_heads() {
        let HeadParse::Complete(h) = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        ) else {
            panic!()
        };
        assert!(h.event_stream);
        assert!(matches!(h.framing, Framing::Chunked(_)));
        let HeadParse::Complete(h) = parse_response_head(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            false,
        ) else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Empty);
        assert!(matches!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            HeadParse::Partial
        ));
        assert!(matches!(
            parse_response_head(b"\x00\x01garbage\r\n\r\n", false),
            HeadParse::Invalid
        ));
    }
}
