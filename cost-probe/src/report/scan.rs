//! The fast path of [`super::record::Line`]: one pass over the line that reads the fields the
//! report uses and jumps over the rest (a string to its quote, an object or array by counting
//! brackets, both 8 bytes at a time), without parsing the numbers it skips. `serde_json`'s `IgnoredAny` parses
//! and checks every skipped value, which held `report` to about a quarter of its target.
//!
//! Anything this path does not expect (an escaped key, trailing bytes, a value of the wrong
//! type) makes it give up, and the line goes through `serde_json`, which either reads it or says
//! precisely what is wrong. Values the report does not read are skipped, not validated.
use std::borrow::Cow;

use super::record::{Bytes, Cost, Energy, Http, Line, Tokens};

struct Scan<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

#[expect(
    clippy::option_option,
    reason = "outer None: the fast path gives up; inner None: the value was null"
)]
impl<'a> Scan<'a> {
    /// Text the report keeps. The line was checked to be UTF-8 once, and every cut is at an
    /// ASCII quote, bracket or number byte, so no cut fails.
    fn text(&self, r: std::ops::Range<usize>) -> Option<&'a str> {
        self.s.get(r)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn null(&mut self) -> bool {
        self.ws();
        let n = self.b[self.i..].starts_with(b"null");
        if n {
            self.i += 4;
        }
        n
    }

    /// A string's raw contents and whether it holds an escape; `i` ends past its closing quote.
    fn raw_string(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let (end, escaped) = string_end(self.b, start)?;
        self.i = end + 1;
        Some((start, end, escaped))
    }

    fn string(&mut self) -> Option<Cow<'a, str>> {
        let (s, e, escaped) = self.raw_string()?;
        if escaped {
            serde_json::from_slice::<String>(&self.b[s - 1..=e])
                .ok()
                .map(Cow::Owned)
        } else {
            self.text(s..e).map(Cow::Borrowed)
        }
    }

    fn opt_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.null() {
            return Some(None);
        }
        self.string().map(Some)
    }

    fn token(&mut self) -> Option<&'a str> {
        self.ws();
        let s = self.i;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
        }
        self.text(s..self.i).filter(|t| !t.is_empty())
    }

    fn opt_f64(&mut self) -> Option<Option<f64>> {
        if self.null() {
            return Some(None);
        }
        self.token()?.parse().ok().map(Some)
    }

    fn opt_u64(&mut self) -> Option<Option<u64>> {
        if self.null() {
            return Some(None);
        }
        self.token()?.parse().ok().map(Some)
    }

    /// Jumps over one value of any type. Most of a line is skipped, so this is the hot loop:
    /// strings and nested values go 8 bytes at a time ([`swar`]), scalars a byte at a time.
    fn skip(&mut self) -> Option<()> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        match *b.get(i)? {
            b'"' => i = string_end(b, i + 1)?.0 + 1,
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    i = swar::structural(b, i)?;
                    match b[i] {
                        b'"' => i = string_end(b, i + 1)?.0,
                        b'{' | b'[' => depth += 1,
                        _ => depth -= 1,
                    }
                    i += 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
            // A scalar ends at a comma, a closing bracket or white space.
            _ => {
                while !matches!(
                    *b.get(i)?,
                    b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                ) {
                    i += 1;
                }
            }
        }
        self.i = i;
        (i > start).then_some(())
    }

    fn raw(&mut self) -> Option<Option<&'a str>> {
        if self.null() {
            return Some(None);
        }
        self.ws();
        let s = self.i;
        self.skip()?;
        self.text(s..self.i).map(Some)
    }

    /// Calls `field` with each key of an object, positioned at its value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let (s, e, escaped) = self.raw_string()?;
            if escaped {
                return None;
            }
            self.eat(b':')?;
            let key = &self.b[s..e];
            field(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `energy_j` or `cost_usd`: its `total` (required) and `egress`, or `null`.
    fn total_and_egress(&mut self) -> Option<Option<(f64, Option<f64>)>> {
        let (mut total, mut egress) = (None, None);
        let present = self.object_or_null(|s, k| {
            match k {
                b"total" => total = Some(s.opt_f64()??),
                b"egress" => egress = s.opt_f64()?,
                _ => s.skip()?,
            }
            Some(())
        })?;
        Some(if present {
            Some((total?, egress))
        } else {
            None
        })
    }

    /// An object (`Some(true)`) or `null` (`Some(false)`).
    fn object_or_null(
        &mut self,
        field: impl FnMut(&mut Self, &[u8]) -> Option<()>,
    ) -> Option<bool> {
        if self.null() {
            return Some(false);
        }
        self.object(field).map(|()| true)
    }
}

/// The index of the quote that closes a string whose contents start at `i`, and whether the
/// string holds an escape.
fn string_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        i = swar::quote_or_backslash(b, i)?;
        if b[i] == b'"' {
            return Some((i, escaped));
        }
        escaped = true;
        i += 2;
    }
}

/// Byte searches a word (8 bytes) at a time: a record line is mostly skipped text, and a
/// byte-at-a-time loop over it held `report` below its target. Each search returns the index
/// of the first byte that matches, or `None` at the end of the slice.
mod swar {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;

    /// High bit set in each byte of `x` that is zero. Borrows can set bits above the first
    /// zero byte, never below it, so the lowest set bit is exact.
    const fn zero(x: u64) -> u64 {
        x.wrapping_sub(LO) & !x & HI
    }

    const fn eq(w: u64, c: u8) -> u64 {
        zero(w ^ (LO * c as u64))
    }

    fn find(
        b: &[u8],
        mut i: usize,
        word: impl Fn(u64) -> u64,
        byte: impl Fn(u8) -> bool,
    ) -> Option<usize> {
        while let Some(chunk) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let m = word(w);
            if m != 0 {
                return Some(i + (m.trailing_zeros() / 8) as usize);
            }
            i += 8;
        }
        b.get(i..)?.iter().position(|&c| byte(c)).map(|p| i + p)
    }

    pub(super) fn quote_or_backslash(b: &[u8], i: usize) -> Option<usize> {
        find(
            b,
            i,
            |w| eq(w, b'"') | eq(w, b'\\'),
            |c| c == b'"' || c == b'\\',
        )
    }

    /// A quote or any bracket. `[`/`{` and `]`/`}` differ only in bit 5 (0x20), so one OR
    /// folds each pair into one comparison.
    pub(super) fn structural(b: &[u8], i: usize) -> Option<usize> {
        find(
            b,
            i,
            |w| {
                let folded = w | (LO * 0x20);
                eq(w, b'"') | eq(folded, b'{') | eq(folded, b'}')
            },
            |c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']'),
        )
    }
}

/// The record on one line, or `None` where `serde_json` must decide.
pub fn line(b: &[u8]) -> Option<Line<'_>> {
    let text = std::str::from_utf8(b).ok()?;
    let mut s = Scan { s: text, b, i: 0 };
    let mut l = Line::default();
    let mut kind = None;
    s.object(|s, k| {
        match k {
            b"type" => kind = Some(s.string()?),
            b"start" => l.start = s.opt_string()?,
            b"end" => l.end = s.opt_string()?,
            b"time" => l.time = s.opt_string()?,
            b"comm" => l.comm = s.opt_string()?,
            b"model" => l.model = s.opt_string()?,
            b"duration_ms" => l.duration_ms = s.opt_f64()?,
            b"first_chunk_ms" => l.first_chunk_ms = s.opt_f64()?,
            b"co2_g" => l.co2_g = s.opt_f64()?,
            b"attributed_j" => l.attributed_j = s.opt_f64()?,
            b"idle_j" => l.idle_j = s.opt_f64()?,
            b"other_j" => l.other_j = s.opt_f64()?,
            b"events" => l.events = s.opt_u64()?,
            b"tags" => l.tags = s.raw()?,
            b"request_hash" => {
                l.request_hash = match s.opt_string()? {
                    Some(h) => Some(super::record::parse_hash(&h)?),
                    None => None,
                };
            }
            b"flags" => l.flags = s.raw()?,
            b"http" => {
                let (mut method, mut path, mut status) = (None, None, None);
                let present = s.object_or_null(|s, k| {
                    match k {
                        b"method" => method = Some(s.string()?),
                        b"path" => path = Some(s.string()?),
                        b"status" => {
                            status = s.opt_u64()?.map(u16::try_from).transpose().ok()?;
                        }
                        _ => s.skip()?,
                    }
                    Some(())
                })?;
                l.http = if present {
                    Some(Http {
                        method: method?,
                        path: path?,
                        status,
                    })
                } else {
                    None
                };
            }
            b"bytes" => {
                let mut out = None;
                let present = s.object_or_null(|s, k| {
                    if k == b"out" {
                        out = Some(s.opt_u64()??);
                        Some(())
                    } else {
                        s.skip()
                    }
                })?;
                l.bytes = if present {
                    Some(Bytes { out: out? })
                } else {
                    None
                };
            }
            b"tokens" => {
                let (mut prompt, mut completion) = (None, None);
                let present = s.object_or_null(|s, k| {
                    match k {
                        b"prompt" => prompt = s.opt_u64()?,
                        b"completion" => completion = s.opt_u64()?,
                        _ => s.skip()?,
                    }
                    Some(())
                })?;
                l.tokens = present.then_some(Tokens { prompt, completion });
            }
            b"energy_j" => l.energy_j = s.total_and_egress()?.map(|(total, _)| Energy { total }),
            b"cost_usd" => {
                l.cost_usd = s
                    .total_and_egress()?
                    .map(|(total, egress)| Cost { total, egress });
            }
            _ => s.skip()?,
        }
        Some(())
    })?;
    s.ws();
    if s.i != b.len() {
        return None;
    }
    l.kind = kind?;
    Some(l)
}

/// The string value of `key` in a JSON object's text (a record's `tags`).
pub fn object_string<'a>(obj: &'a str, key: &str) -> Option<Cow<'a, str>> {
    let mut s = Scan {
        s: obj,
        b: obj.as_bytes(),
        i: 0,
    };
    let mut found = None;
    s.object(|s, k| {
        if found.is_none() && k == key.as_bytes() {
            found = Some(s.string()?);
            Some(())
        } else {
            s.skip()
        }
    })?;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields, floats to the bit: std's `parse` and `serde_json` with `float_roundtrip` (the
    /// workspace turns it on) are both correctly rounded.
    fn fields(l: &Line) -> String {
        let f = |x: Option<f64>| x.map(f64::to_bits);
        format!(
            "{:?}",
            (
                (
                    &l.kind, &l.start, &l.end, &l.time, &l.comm, &l.model, &l.tags, &l.flags
                ),
                l.http.as_ref().map(|h| (&h.method, &h.path, h.status)),
                l.bytes.map(|b| b.out),
                l.tokens.map(|t| (t.prompt, t.completion)),
                (f(l.duration_ms), f(l.first_chunk_ms), f(l.co2_g), l.events),
                (
                    f(l.energy_j.map(|e| e.total)),
                    f(l.cost_usd.map(|c| c.total)),
                    f(l.cost_usd.and_then(|c| c.egress)),
                    l.request_hash,
                ),
                (f(l.attributed_j), f(l.idle_j), f(l.other_j)),
            )
        )
    }

    fn same(text: &str) {
        let fast = line(text.as_bytes());
        let slow: Option<Line> = serde_json::from_str(text).ok();
        assert_eq!(
            fast.as_ref().map(fields),
            slow.as_ref().map(fields),
            "{text}"
        );
    }

    #[test]
    fn the_fast_path_reads_what_serde_reads() {
        let fixture = include_str!("../../tests/fixtures/report/demo.ndjson");
        for l in fixture.lines() {
            assert!(line(l.as_bytes()).is_some(), "{l}");
            same(l);
        }
        for l in [
            r#" { "type" : "request" , "model" : "a\"b\u00e9" , "tags" : { "team" : "x" } , "http" : { "path" : "/p" , "method" : "GET" , "status" : null } } "#,
            r#"{"type":"request","x":[{"y":"]}"},[[]]],"duration_ms":1e3,"tokens":{"prompt":3},"cost_usd":null}"#,
            r#"{"type":"lost","time":"t","events":12}"#,
            r#"{"z":true, "w":[1, 2 ,{"a" : "b\"]}"}] ,"q":false,"type":"lost","events":3 }"#,
            r#"{"type":"lost","w":[1,2"#,
            r#"{"type":"interval","measured_j":{"gpu:0":1.5},"idle_j":-0.0,"domains":[]}"#,
            r#"{"type":"request","cost_usd":{"energy":1}}"#,
            r#"{"type":"request","http":{"method":"GET","path":"/","status":70000}}"#,
            r#"{"type":"request"} trailing"#,
            r#"{"type":"request","request_hash":"00ff00ff00ff00fF","cost_usd":{"egress":2.5e-3,"total":1}}"#,
            r#"{"type":"request","request_hash":null,"cost_usd":{"egress":null,"total":1}}"#,
            r#"{"type":"request","request_hash":"+0ff00ff00ff00ff"}"#,
            r#"{"type":"request","request_hash":"0ff"}"#,
            r#"{"type":"request","model":"#,
            r#"{"model":"m"}"#,
        ] {
            same(l);
        }
    }

    #[test]
    fn tag_values_are_found_by_key() {
        let t = r#"{"endpoint":"chat","team":"a\"b","n":{"team":"no"}}"#;
        assert_eq!(object_string(t, "team").as_deref(), Some("a\"b"));
        assert_eq!(object_string(t, "endpoint").as_deref(), Some("chat"));
        assert_eq!(object_string(t, "region"), None);
        assert_eq!(object_string(t, "n"), None);
    }

    proptest::proptest! {
        #[test]
        fn word_searches_find_what_a_byte_loop_finds(
            b in proptest::collection::vec(proptest::sample::select(
                b"\"\\{}[]a:,0\x7b\x5b\x7d\x5d\x22\x5c\xfb\xdb\x02\x01".to_vec()), 0..40),
            at in 0usize..40,
        ) {
            let at = at.min(b.len());
            let naive = |p: fn(u8) -> bool| b[at..].iter().position(|&c| p(c)).map(|i| at + i);
            proptest::prop_assert_eq!(
                swar::structural(&b, at),
                naive(|c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']'))
            );
            proptest::prop_assert_eq!(
                swar::quote_or_backslash(&b, at),
                naive(|c| c == b'"' || c == b'\\')
            );
        }
    }
}
