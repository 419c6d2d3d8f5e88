//! What protocol a connection speaks, from the first bytes its client sent.
//!
//! A client may write its first request line in pieces (`GE`, then `T / HTTP/1.1…`), so the
//! first read alone does not always tell. Until the bytes read so far could still become a
//! request line or the HTTP/2 preface, they are held back (bounded by [`MAX_HELD`]) and the
//! decision waits for the next read.
use super::{
    Protocol,
    http::{H2_PREFACE, looks_like_request, starts_http1},
};

/// Bytes held back at most: a first request line longer than this, written in pieces, is not
/// waited for.
pub const MAX_HELD: usize = 1024;
/// Longest method token waited for (the registered methods are at most 17 bytes).
const MAX_METHOD: usize = 32;

/// What the first bytes of an accepted connection say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Is(Protocol),
    /// They could still become a request line or the HTTP/2 preface: read more.
    More,
}

/// Decides from the client's first bytes (all of them, held ones included).
#[must_use]
pub fn first_bytes(b: &[u8]) -> Decision {
    if b.starts_with(H2_PREFACE) {
        return Decision::Is(Protocol::Http2);
    }
    // Accepted: the parser starts at a request line, whatever its method.
    if looks_like_request(b) || starts_http1(b) {
        return Decision::Is(Protocol::Http1);
    }
    if b.len() < MAX_HELD && (H2_PREFACE.starts_with(b) || could_become_request_line(b)) {
        return Decision::More;
    }
    Decision::Is(Protocol::Tcp)
}

/// `b` is a method token, perhaps followed by a space and part of a target, with no line end
/// yet: the start of a request line that has not arrived whole.
fn could_become_request_line(b: &[u8]) -> bool {
    if b.is_empty() || memchr::memchr(b'\n', b).is_some() {
        return false;
    }
    let token = b.iter().take_while(|&&c| is_tchar(c)).count();
    match b.get(token) {
        None => token <= MAX_METHOD,
        Some(b' ') => (1..=MAX_METHOD).contains(&token),
        Some(_) => false,
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #10 (fuzzing): a request line split across reads made the connection TCP turns.
    #[test]
    fn a_request_line_split_across_reads_waits_for_more() {
        for split in 1..b"GET / HTTP/1.1".len() {
            let d = first_bytes(&b"GET / HTTP/1.1"[..split]);
            let want = if split >= 4 {
                Decision::Is(Protocol::Http1)
            } else {
                Decision::More
            };
            assert_eq!(d, want, "split at {split}");
        }
        // An unknown method is HTTP once its line ends in an HTTP/1 version.
        assert_eq!(first_bytes(b"PURGE /x HT"), Decision::More);
        assert_eq!(
            first_bytes(b"PURGE /x HTTP/1.1\r\n"),
            Decision::Is(Protocol::Http1)
        );
        assert_eq!(first_bytes(b"PR"), Decision::More);
        assert_eq!(first_bytes(b"PRI * HTTP/2.0\r\n"), Decision::More);
        assert_eq!(first_bytes(H2_PREFACE), Decision::Is(Protocol::Http2));
    }

    #[test]
    fn what_cannot_become_a_request_line_is_tcp_at_once() {
        for b in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"SSH-2.0-OpenSSH\r\n",
            b"PURGE /x\r\n",
            b" GET",
            &[b'A'; MAX_METHOD + 1],
        ] {
            assert_eq!(first_bytes(b), Decision::Is(Protocol::Tcp), "{b:?}");
        }
        let mut long = b"PURGE /".to_vec();
        long.resize(MAX_HELD, b'a');
        assert_eq!(first_bytes(&long), Decision::Is(Protocol::Tcp));
    }
}
