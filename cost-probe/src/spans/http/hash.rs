//! The request record's `request_hash`: which requests repeat one another byte for byte, for
//! the report's exact-match cache opportunity.
/// XXH64 of `method SP target LF body`, fed as the bytes arrive (the streaming digest does not
/// depend on how reads split them). Headers are left out: they carry auth tokens and request
/// ids, which would make every request distinct. `None` once any body byte was not seen (a
/// kernel gap, an unframed head): a hash of part of a body would claim repeats that are not.
#[derive(Clone, Default)]
pub struct RequestHash(Option<xxhash_rust::xxh64::Xxh64>);

impl RequestHash {
    pub(super) fn start(method: &[u8], target: &[u8]) -> Self {
        let mut h = xxhash_rust::xxh64::Xxh64::new(0);
        h.update(method);
        h.update(b" ");
        h.update(target);
        h.update(b"\n");
        Self(Some(h))
    }

    /// `n` body bytes, of which `kept` were captured.
    pub(super) fn body(&mut self, kept: &[u8], n: u64) {
        if kept.len() as u64 == n {
            if let Some(h) = &mut self.0 {
                h.update(kept);
            }
        } else {
            self.0 = None;
        }
    }

    /// The digest, for a request whose body was read whole.
    #[must_use]
    pub fn digest(&self) -> Option<u64> {
        self.0.as_ref().map(xxhash_rust::xxh64::Xxh64::digest)
    }
}

impl PartialEq for RequestHash {
    fn eq(&self, o: &Self) -> bool {
        self.digest() == o.digest()
    }
}
impl Eq for RequestHash {}

impl std::fmt::Debug for RequestHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestHash({:x?})", self.digest())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::super::{RequestParser, Seg};

    /// The hash of each request in `reads`, fed one read at a time.
    fn hashes(reads: &[&[u8]]) -> Vec<Option<u64>> {
        let mut p = RequestParser::default();
        let mut q = VecDeque::new();
        for r in reads {
            p.feed(Seg::Bytes(r), 1, &mut q);
        }
        q.iter().map(|r| r.hash.digest()).collect()
    }

    #[test]
    fn same_method_target_and_body_hash_alike_whatever_the_headers_or_reads() {
        let a = hashes(&[
            b"POST /v1/chat HTTP/1.1\r\nAuthorization: Bearer x\r\nContent-Length: 5\r\n\r\nhello",
        ]);
        let b = hashes(&[
            b"POST /v1/chat HTTP/1.1\r\nX-Request-Id: 7\r\nContent-Length: 5\r\n\r\nhe",
            b"llo",
        ]);
        assert!(a[0].is_some());
        assert_eq!(a, b);
        let body = hashes(&[b"POST /v1/chat HTTP/1.1\r\nContent-Length: 5\r\n\r\nhellO"]);
        let path = hashes(&[b"POST /v1/chaT HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"]);
        let query = hashes(&[b"POST /v1/chat?a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"]);
        let method = hashes(&[b"PUT /v1/chat HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"]);
        for other in [body, path, query, method] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn a_body_byte_the_kernel_did_not_copy_leaves_no_hash() {
        let mut p = RequestParser::default();
        let mut q = VecDeque::new();
        p.feed(
            Seg::Bytes(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc"),
            1,
            &mut q,
        );
        p.feed(Seg::Gap(3), 2, &mut q);
        p.feed(Seg::Bytes(b"ghi"), 3, &mut q);
        assert!(q[0].complete);
        assert_eq!(q[0].hash.digest(), None);
    }
}
