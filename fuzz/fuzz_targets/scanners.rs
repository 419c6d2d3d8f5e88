//! The payload scanners (`spans::scan`: usage, server timings, model, the SSE terminator) and the framing
//! parsers a response body meets (`spans::http`: chunked coding, response heads).
//!
//! The first input byte picks the check:
//!
//! - 0: every scanner and parser on the rest as raw bytes: no panic, `sse_done` agrees with
//!   a plain substring search, and the server timings found are finite and non-negative.
//! - 1, 2: **usage differential**. A JSON-ish body: arbitrary bytes, then a `usage` object with
//!   arbitrary numbers as `prompt_tokens` (1) or `prompt_eval_count` (2), with JSON whitespace
//!   around the colons, then arbitrary bytes. `usage` must return exactly those numbers (unless
//!   the surrounding bytes name the same keys later, when a later value rightly wins).
//! - 3: **model differential**: `"model":"NAME"` between arbitrary bytes yields NAME when NAME is
//!   a name the scanner reports (non-empty, at most 128 bytes, no quote or backslash).
//! - 4: **chunked differential**: arbitrary chunks encoded with `Transfer-Encoding: chunked`,
//!   fed in arbitrary pieces, must end exactly at the terminal chunk with the right chunk count.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cost_probe::spans::{
    Usage,
    http::{Chunked, parse_response_head},
    scan,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    match mode % 5 {
        0 => raw(rest),
        1 | 2 => {
            if let Ok(d) = UsageDoc::arbitrary_take_rest(u) {
                usage(&d, mode % 5 == 2);
            }
        }
        3 => {
            if let Ok(d) = ModelDoc::arbitrary(&mut u) {
                model(&d);
            }
        }
        _ => {
            if let Ok(d) = ChunkedDoc::arbitrary_take_rest(u) {
                chunked(&d);
            }
        }
    }
});

/// The usage keys, OpenAI-compatible first.
const KEYS: [&[u8]; 4] = [
    b"\"prompt_tokens\"",
    b"\"completion_tokens\"",
    b"\"prompt_eval_count\"",
    b"\"eval_count\"",
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn raw(b: &[u8]) {
    let u = scan::usage(b);
    let _ = (u.total(), u.is_empty());
    let _ = scan::model(b);
    if let Some(t) = scan::timings(b) {
        assert!(!t.is_empty(), "empty timings reported: {t:?}");
        for v in [t.prompt_ms, t.predicted_ms].into_iter().flatten() {
            assert!(v.is_finite() && v >= 0.0, "timings: {t:?}");
        }
    }
    assert_eq!(scan::sse_done(b), contains(b, b"data: [DONE]"));
    let _ = parse_response_head(b, false);
    let _ = parse_response_head(b, true);
    let mut c = Chunked::default();
    match c.feed(b) {
        Ok(k) => assert!(k <= b.len()),
        Err(_) => c.skip(u64::MAX),
    }
    c.resync_on_tail(b);
    let _ = (c.done(), c.lost());
}

/// JSON whitespace from a byte.
fn ws(n: u8) -> &'static [u8] {
    [&b""[..], b" ", b"\n  ", b"\t", b"\r\n", b"  "][usize::from(n) % 6]
}

#[derive(Arbitrary, Debug)]
struct UsageDoc {
    before: Vec<u8>,
    prompt: Option<u64>,
    completion: Option<u64>,
    total: u64,
    /// Whitespace before and after each colon.
    spaces: [u8; 6],
    after: Vec<u8>,
}

fn usage(d: &UsageDoc, ollama: bool) {
    let (pk, ck): (&[u8], &[u8]) = if ollama {
        (b"\"prompt_eval_count\"", b"\"eval_count\"")
    } else {
        (b"\"prompt_tokens\"", b"\"completion_tokens\"")
    };
    let field = |out: &mut Vec<u8>, key: &[u8], v: u64, s: &[u8]| {
        out.extend_from_slice(key);
        out.extend_from_slice(ws(s[0]));
        out.push(b':');
        out.extend_from_slice(ws(s[1]));
        out.extend_from_slice(v.to_string().as_bytes());
        out.push(b',');
    };
    let mut body = d.before.clone();
    body.extend_from_slice(br#"{"usage":{"#);
    if let Some(p) = d.prompt {
        field(&mut body, pk, p, &d.spaces[0..2]);
    }
    if let Some(c) = d.completion {
        field(&mut body, ck, c, &d.spaces[2..4]);
    }
    field(&mut body, b"\"total_tokens\"", d.total, &d.spaces[4..6]);
    body.pop();
    body.extend_from_slice(b"}}");
    body.extend_from_slice(&d.after);
    let got = scan::usage(&body);

    // What the scanner promises: the last `"key"` followed by a colon counts, OpenAI keys before
    // Ollama ones. No key can form across a seam with our bytes (they start with `{` and end
    // with `}`), so only keys named in the bytes around ours can change the answer: later ones
    // (skipped), or earlier ones standing in for a key we left out.
    let named = |b: &[u8], keys: &[&[u8]]| keys.iter().any(|k| contains(b, k));
    let show = || String::from_utf8_lossy(&body).into_owned();
    if named(&d.after, &KEYS) {
        return;
    }
    if !named(&d.before, &KEYS) {
        let want = Usage {
            prompt: d.prompt,
            completion: d.completion,
        };
        assert_eq!(got, want, "{}", show());
        assert_eq!(
            got.total(),
            d.prompt.zip(d.completion).map(|(p, c)| p.saturating_add(c))
        );
    } else if !ollama || !named(&d.before, &KEYS[..2]) {
        if d.prompt.is_some() {
            assert_eq!(got.prompt, d.prompt, "{}", show());
        }
        if d.completion.is_some() {
            assert_eq!(got.completion, d.completion, "{}", show());
        }
    }
}

#[derive(Arbitrary, Debug)]
struct ModelDoc {
    before: Vec<u8>,
    name: String,
    spaces: [u8; 2],
    after: Vec<u8>,
}

fn model(d: &ModelDoc) {
    let name: String = d.name.chars().filter(|&c| c != '"').collect();
    let mut body = d.before.clone();
    body.extend_from_slice(b"\"model\"");
    body.extend_from_slice(ws(d.spaces[0]));
    body.push(b':');
    body.extend_from_slice(ws(d.spaces[1]));
    let value_at = body.len();
    body.push(b'"');
    body.extend_from_slice(name.as_bytes());
    body.push(b'"');
    body.extend_from_slice(&d.after);
    let got = scan::model(&body);
    // A later `"model"` wins: one in the bytes after ours, or formed by our value's quotes
    // (`"model"` itself, or our closing quote and the bytes after it).
    if contains(&body[value_at..], b"\"model\"") {
        return;
    }
    let reportable = !name.is_empty() && name.len() <= 128 && !name.contains('\\');
    assert_eq!(
        got.as_deref(),
        reportable.then_some(name.as_str()),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[derive(Arbitrary, Debug)]
struct ChunkedDoc {
    chunks: Vec<(Vec<u8>, Option<String>)>,
    trailers: Vec<String>,
    /// Feed sizes (cyclic).
    splits: Vec<u8>,
    after: Vec<u8>,
}

fn chunked(d: &ChunkedDoc) {
    let mut body = Vec::new();
    let mut nonempty = 0;
    for (data, ext) in d.chunks.iter().filter(|c| !c.0.is_empty()) {
        nonempty += 1;
        body.extend_from_slice(format!("{:x}", data.len()).as_bytes());
        if let Some(e) = ext {
            body.push(b';');
            body.extend(
                e.bytes()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == b'=')
                    .take(40),
            );
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n");
    for t in &d.trailers {
        let t: String = t.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
        body.extend_from_slice(b"X-T: ");
        body.extend_from_slice(t.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"\r\n");
    let end = body.len();
    body.extend_from_slice(&d.after);

    let mut parser = Chunked::default();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() && !parser.done() {
        let step = if d.splits.is_empty() {
            body.len()
        } else {
            usize::from(d.splits[i % d.splits.len()]) + 1
        };
        i += 1;
        let piece = &body[at..(at + step).min(body.len())];
        let k = parser.feed(piece).expect("well-formed chunked body");
        assert!(k <= piece.len());
        at += k;
        if k < piece.len() {
            assert!(parser.done(), "stopped early without finishing");
        }
    }
    assert!(parser.done(), "never finished");
    assert_eq!(at, end, "finished at the wrong byte");
    assert_eq!(parser.chunks, nonempty);
}
