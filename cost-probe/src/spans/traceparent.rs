//! The W3C Trace Context `traceparent` header (<https://www.w3.org/TR/trace-context/>), read
//! from a request head so an exported span can join the caller's trace.
//!
//! Only this header is kept, and only once it validates: a fixed-size value, never a string the
//! client chose.

/// `version-traceid-parentid-flags`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span: our span's parent.
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// `00-` + 32 + `-` + 16 + `-` + 2.
const LEN_V00: usize = 55;

impl TraceParent {
    /// Parses a header value. Version 00 must be exactly 55 characters; a later version may
    /// append `-`-separated fields, which are ignored (the spec's forward compatibility rule).
    /// Hex must be lower case; an all-zero trace or parent id, or version `ff`, is invalid.
    #[must_use]
    pub fn parse(value: &[u8]) -> Option<Self> {
        let v = value.trim_ascii();
        if v.len() < LEN_V00 {
            return None;
        }
        let version = hex_byte(&v[0..2])?;
        if version == 0xff || (version == 0 && v.len() != LEN_V00) {
            return None;
        }
        if version != 0 && v.len() > LEN_V00 && v[LEN_V00] != b'-' {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&v[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The `sampled` flag (bit 0).
    #[must_use]
    pub fn sampled(self) -> bool {
        self.flags & 1 == 1
    }
}

/// Two lower-case hex digits (the spec forbids upper case).
fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(two[0])? << 4 | d(two[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let t = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.trace_id[15], 0x36);
        assert_eq!(
            t.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(t.sampled());
        assert!(TraceParent::parse(format!(" {GOOD} ").as_bytes()).is_some());
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever";
        let t = TraceParent::parse(v.as_bytes()).unwrap();
        assert!(!t.sampled());
    }

    /// The parser keeps a valid header from a strict head and from a lenient one, drops an
    /// invalid one, and keeps the first of two.
    #[test]
    fn the_request_parser_keeps_only_a_valid_traceparent() {
        use std::collections::VecDeque;

        use crate::spans::http::{RequestParser, Seg};
        let mut p = RequestParser::default();
        let mut q = VecDeque::new();
        let heads = format!(
            "GET /a HTTP/1.1\r\ntraceparent: {GOOD}\r\ntraceparent: 00-11111111111111111111111111111111-1111111111111111-00\r\n\r\n\
             GET /b HTTP/1.1\r\nTraceParent: 00-zz-00f067aa0ba902b7-01\r\n\r\n\
             GET /c\x01 HTTP/1.1\r\ntraceparent: {GOOD}\r\n\r\n"
        );
        p.feed(Seg::Bytes(heads.as_bytes()), 1, &mut q);
        assert_eq!(q.len(), 3);
        let good = TraceParent::parse(GOOD.as_bytes());
        assert_eq!(q[0].trace_parent, good);
        assert_eq!(q[1].trace_parent, None);
        assert!(q[2].malformed);
        assert_eq!(q[2].trace_parent, good);
    }
}
