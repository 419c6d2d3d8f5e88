//! The fast path of [`super::record::Line`]: one pass over the line that reads the fields the
//! report uses and jumps over the rest (a string by `memchr` to its quote, an object or array by
//! counting brackets), without parsing the numbers it skips. `serde_json`'s `IgnoredAny` parses
//! and checks every skipped value, which held `report` to about a quarter of its target.
//!
//! Anything this path does not expect (an escaped key, trailing bytes, a value of the wrong
//! type) makes it give up, and the line goes through `serde_json`, which either reads it or says
//! precisely what is wrong. Values the report does not read are skipped, not validated.
use std::borrow::Cow;

use super::record::{Bytes, Cost, Energy, Http, Line, Tokens};

/// Over the line as `&str` (checked once), so that slicing out strings and numbers needs no
/// UTF-8 check of its own: every cut is at an ASCII quote, bracket or number byte.
struct Scan<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

const OTHER: u8 = 0;
const QUOTE: u8 = 1;
const OPEN: u8 = 2;
const CLOSE: u8 = 3;
const END: u8 = 4;

/// What each byte is to [`Scan::skip`].
static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    t[b'"' as usize] = QUOTE;
    t[b'{' as usize] = OPEN;
    t[b'[' as usize] = OPEN;
    t[b'}' as usize] = CLOSE;
    t[b']' as usize] = CLOSE;
    t[b',' as usize] = END;
    t[b' ' as usize] = END;
    t[b'\t' as usize] = END;
    t[b'\n' as usize] = END;
    t[b'\r' as usize] = END;
    t
};

#[expect(
    clippy::option_option,
    reason = "outer None: the fast path gives up; inner None: the value was null"
)]
impl<'a> Scan<'a> {
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
        let mut escaped = false;
        // A byte loop, not memchr: keys and most values are a few bytes long, shorter than
        // memchr's set-up.
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some((start, self.i - 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                _ => self.i += 1,
            }
        }
    }

    fn string(&mut self) -> Option<Cow<'a, str>> {
        let (s, e, escaped) = self.raw_string()?;
        if escaped {
            serde_json::from_slice::<String>(&self.b[s - 1..=e])
                .ok()
                .map(Cow::Owned)
        } else {
            self.s.get(s..e).map(Cow::Borrowed)
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
        self.s.get(s..self.i).filter(|t| !t.is_empty())
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
    /// the position lives in a local and each byte costs one table look-up.
    fn skip(&mut self) -> Option<()> {
        let b = self.b;
        let start = {
            self.ws();
            self.i
        };
        let mut i = start;
        let mut depth = 0usize;
        loop {
            match CLASS[*b.get(i)? as usize] {
                QUOTE => {
                    i += 1;
                    loop {
                        match *b.get(i)? {
                            b'"' => break,
                            b'\\' => i += 2,
                            _ => i += 1,
                        }
                    }
                    i += 1;
                }
                OPEN => {
                    depth += 1;
                    i += 1;
                    continue;
                }
                CLOSE if depth > 0 => {
                    depth -= 1;
                    i += 1;
                }
                END if depth > 0 => {
                    i += 1;
                    continue;
                }
                // At the top, a scalar ends at a comma, a closing bracket or white space.
                CLOSE | END => {}
                _ => {
                    i += 1;
                    continue;
                }
            }
            if depth == 0 {
                self.i = i;
                return (i > start).then_some(());
            }
        }
    }

    fn raw(&mut self) -> Option<Option<&'a str>> {
        if self.null() {
            return Some(None);
        }
        self.ws();
        let s = self.i;
        self.skip()?;
        self.s.get(s..self.i).map(Some)
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
            b"energy_j" | b"cost_usd" => {
                let mut total = None;
                let present = s.object_or_null(|s, k| {
                    if k == b"total" {
                        total = Some(s.opt_f64()??);
                        Some(())
                    } else {
                        s.skip()
                    }
                })?;
                let got = if present { Some(total?) } else { None };
                if k == b"energy_j" {
                    l.energy_j = got.map(|total| Energy { total });
                } else {
                    l.cost_usd = got.map(|total| Cost { total });
                }
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

    /// The fields, with floats to 12 digits: `serde_json`'s default float parser is not
    /// correctly rounded (its `float_roundtrip` feature is off), std's `parse` is, so the two can
    /// differ in the last bit.
    fn fields(l: &Line) -> String {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.12e}"));
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
                    f(l.cost_usd.map(|c| c.total))
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
}
