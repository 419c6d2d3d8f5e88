//! Finding the few JSON values we need (model, token usage) in partial payload bytes.
//!
//! Bodies arrive as bounded head/tail slices, so a full JSON parse is usually impossible; a key
//! scan tolerates truncation. Only exact keys of the OpenAI-compatible, llama.cpp and Ollama
//! schemas count.
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Searchers built once: building one costs more than the search over a few hundred bytes, and
/// every write of every response is scanned.
struct Finders {
    tokens_gate: Finder<'static>,
    eval_gate: Finder<'static>,
    prompt_tokens: Finder<'static>,
    completion_tokens: Finder<'static>,
    prompt_eval_count: Finder<'static>,
    eval_count: Finder<'static>,
    model: Finder<'static>,
    done: Finder<'static>,
    timings: Finder<'static>,
    duration_gate: Finder<'static>,
    prompt_n: Finder<'static>,
    prompt_ms: Finder<'static>,
    predicted_n: Finder<'static>,
    predicted_ms: Finder<'static>,
    cache_n: Finder<'static>,
    prompt_eval_duration: Finder<'static>,
    eval_duration: Finder<'static>,
}

static FIND: LazyLock<Finders> = LazyLock::new(|| Finders {
    tokens_gate: Finder::new(b"_tokens\""),
    eval_gate: Finder::new(b"eval_count\""),
    prompt_tokens: Finder::new(b"\"prompt_tokens\""),
    completion_tokens: Finder::new(b"\"completion_tokens\""),
    prompt_eval_count: Finder::new(b"\"prompt_eval_count\""),
    eval_count: Finder::new(b"\"eval_count\""),
    model: Finder::new(b"\"model\""),
    done: Finder::new(b"data: [DONE]"),
    timings: Finder::new(b"\"timings\""),
    duration_gate: Finder::new(b"eval_duration\""),
    prompt_n: Finder::new(b"\"prompt_n\""),
    prompt_ms: Finder::new(b"\"prompt_ms\""),
    predicted_n: Finder::new(b"\"predicted_n\""),
    predicted_ms: Finder::new(b"\"predicted_ms\""),
    cache_n: Finder::new(b"\"cache_n\""),
    prompt_eval_duration: Finder::new(b"\"prompt_eval_duration\""),
    eval_duration: Finder::new(b"\"eval_duration\""),
});

/// Which scanners could find something in some bytes. Every key they look for ends with a
/// quote, so one pass over the quotes tells; a write with none of them (a static file, a
/// response head whose only quotes are an `ETag`) skips the searches, which cost more than the
/// pass when repeated for every key over every write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    /// `_tokens"` or `eval_count"` (the gates of [`usage`]).
    pub usage: bool,
    /// `"timings"` or `eval_duration"` (what [`timings`] needs).
    pub timings: bool,
    /// `"model"`.
    pub model: bool,
}

impl Keys {
    /// Every scanner may find something (bytes not looked at).
    pub const ALL: Self = Self {
        usage: true,
        timings: true,
        model: true,
    };

    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        let mut k = Self::default();
        for i in memchr::memchr_iter(b'"', bytes) {
            let b = &bytes[..=i];
            // The byte before the quote picks the keys that can end here.
            match i.checked_sub(1).map(|j| bytes[j]) {
                Some(b's') => {
                    k.usage |= b.ends_with(b"_tokens\"");
                    k.timings |= b.ends_with(b"\"timings\"");
                }
                Some(b't') => k.usage |= b.ends_with(b"eval_count\""),
                Some(b'n') => k.timings |= b.ends_with(b"eval_duration\""),
                Some(b'l') => k.model |= b.ends_with(b"\"model\""),
                _ => {}
            }
            if k == Self::ALL {
                break;
            }
        }
        k
    }

    /// Either's keys (bytes scanned in two pieces).
    #[must_use]
    pub fn or(self, other: Self) -> Self {
        Self {
            usage: self.usage || other.usage,
            timings: self.timings || other.timings,
            model: self.model || other.model,
        }
    }
}

/// Token counts reported by the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
}

impl Usage {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.prompt.is_none() && self.completion.is_none()
    }
    /// Prompt plus completion, when both are known (saturating: the server chooses the numbers).
    #[must_use]
    pub fn total(&self) -> Option<u64> {
        self.prompt
            .zip(self.completion)
            .map(|(p, c)| p.saturating_add(c))
    }

    /// Later values win (the last chunk of a stream carries the totals).
    pub fn merge(&mut self, newer: Usage) {
        if newer.prompt.is_some() {
            self.prompt = newer.prompt;
        }
        if newer.completion.is_some() {
            self.completion = newer.completion;
        }
    }
}

/// The value after `"key"` and a colon, with JSON whitespace skipped.
fn value_after<'a>(bytes: &'a [u8], key: &Finder<'_>) -> Option<&'a [u8]> {
    let mut from = 0;
    // The last occurrence is the one that counts (e.g. a cumulative count in the last chunk).
    let mut found = None;
    while let Some(i) = key.find(&bytes[from..]) {
        let at = from + i + key.needle().len();
        let rest = &bytes[at..];
        let rest = trim_ws(rest);
        if let Some(rest) = rest.strip_prefix(b":") {
            found = Some(trim_ws(rest));
        }
        from = at;
    }
    found
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    &b[n..]
}

fn int_after(bytes: &[u8], key: &Finder<'_>) -> Option<u64> {
    let v = value_after(bytes, key)?;
    let n = v.iter().take_while(|c| c.is_ascii_digit()).count();
    // A number cut off by the end of the captured bytes is not trusted.
    if n == 0 || n == v.len() {
        return None;
    }
    std::str::from_utf8(&v[..n]).ok()?.parse().ok()
}

/// Token usage in OpenAI-compatible (`prompt_tokens`, `completion_tokens`) or Ollama
/// (`prompt_eval_count`, `eval_count`) form.
#[must_use]
pub fn usage(bytes: &[u8]) -> Usage {
    // Cheap gate: most writes of a stream carry no usage at all.
    let f = &*FIND;
    if f.tokens_gate.find(bytes).is_none() && f.eval_gate.find(bytes).is_none() {
        return Usage::default();
    }
    Usage {
        prompt: int_after(bytes, &f.prompt_tokens)
            .or_else(|| int_after(bytes, &f.prompt_eval_count)),
        completion: int_after(bytes, &f.completion_tokens)
            .or_else(|| int_after(bytes, &f.eval_count)),
    }
}

/// What the server says it spent on a request: llama.cpp's `timings` object, or Ollama's
/// `prompt_eval_*` and `eval_*` counts and durations. Each figure is finite and non-negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ServerTimings {
    /// Prompt tokens evaluated (llama.cpp: not counting those reused from its cache).
    pub prompt_n: Option<u64>,
    pub prompt_ms: Option<f64>,
    /// Tokens generated.
    pub predicted_n: Option<u64>,
    pub predicted_ms: Option<f64>,
    /// Prompt tokens reused from the server's cache (llama.cpp `cache_n`).
    pub cached_n: Option<u64>,
}

impl ServerTimings {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Later values win, field by field (a stream's last chunk carries the totals).
    pub fn merge(&mut self, newer: ServerTimings) {
        fn take<T>(old: &mut Option<T>, new: Option<T>) {
            if new.is_some() {
                *old = new;
            }
        }
        take(&mut self.prompt_n, newer.prompt_n);
        take(&mut self.prompt_ms, newer.prompt_ms);
        take(&mut self.predicted_n, newer.predicted_n);
        take(&mut self.predicted_ms, newer.predicted_ms);
        take(&mut self.cached_n, newer.cached_n);
    }
}

/// A non-negative finite number after `"key":`; like [`int_after`], one cut off by the end of
/// the bytes is not trusted.
fn float_after(bytes: &[u8], key: &Finder<'_>) -> Option<f64> {
    let v = value_after(bytes, key)?;
    let n = v
        .iter()
        .take_while(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
        .count();
    if n == 0 || n == v.len() {
        return None;
    }
    let x: f64 = std::str::from_utf8(&v[..n]).ok()?.parse().ok()?;
    (x.is_finite() && x >= 0.0).then_some(x)
}

/// Server-reported timings in these bytes, if any (see [`ServerTimings`]).
#[must_use]
pub fn timings(bytes: &[u8]) -> Option<ServerTimings> {
    let f = &*FIND;
    let mut t = ServerTimings::default();
    // llama.cpp: the last `"timings":{...}` object (flat: no nested object ends it early).
    let mut from = None;
    let mut at = 0;
    while let Some(i) = f.timings.find(&bytes[at..]) {
        at += i + f.timings.needle().len();
        from = Some(at);
    }
    if let Some(from) = from {
        let obj = &bytes[from..];
        let obj = match memchr::memchr(b'}', obj) {
            // Keep the brace: a number must be followed by something to be trusted.
            Some(end) => &obj[..=end],
            None => obj,
        };
        t.prompt_n = int_after(obj, &f.prompt_n);
        t.prompt_ms = float_after(obj, &f.prompt_ms);
        t.predicted_n = int_after(obj, &f.predicted_n);
        t.predicted_ms = float_after(obj, &f.predicted_ms);
        t.cached_n = int_after(obj, &f.cache_n);
    }
    // Ollama: durations in ns, next to the counts `usage` reads.
    if t.is_empty() && f.duration_gate.find(bytes).is_some() {
        let ms = |key| float_after(bytes, key).map(|ns| ns / 1e6);
        t.prompt_n = int_after(bytes, &f.prompt_eval_count);
        t.prompt_ms = ms(&f.prompt_eval_duration);
        t.predicted_n = int_after(bytes, &f.eval_count);
        t.predicted_ms = ms(&f.eval_duration);
    }
    (!t.is_empty()).then_some(t)
}

/// The `"model"` string value, if complete in these bytes.
#[must_use]
pub fn model(bytes: &[u8]) -> Option<String> {
    let v = value_after(bytes, &FIND.model)?;
    let v = v.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', v)?;
    let s = std::str::from_utf8(&v[..end]).ok()?;
    // Model names are identifiers; anything else is not a model name we report.
    (!s.is_empty() && s.len() <= 128 && !s.contains('\\')).then(|| s.to_owned())
}

/// Whether an SSE stream's terminator is in these bytes.
#[must_use]
pub fn sse_done(bytes: &[u8]) -> bool {
    FIND.done.find(bytes).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_last_chunk_has_usage_before_timings() {
        // Shape of llama.cpp server's final streamed chunk (usage, then timings).
        let b = br#"data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1,"model":"smollm2","object":"chat.completion.chunk","usage":{"completion_tokens":12,"prompt_tokens":31,"total_tokens":43},"timings":{"prompt_n":31,"prompt_ms":40.1,"predicted_n":12,"predicted_ms":100.2}}"#;
        assert_eq!(
            usage(b),
            Usage {
                prompt: Some(31),
                completion: Some(12)
            }
        );
        assert_eq!(model(b).as_deref(), Some("smollm2"));
    }

    #[test]
    fn ollama_counts() {
        let b = br#"{"model":"llama3","done":true,"prompt_eval_count": 26,"eval_count": 290}"#;
        assert_eq!(
            usage(b),
            Usage {
                prompt: Some(26),
                completion: Some(290)
            }
        );
    }

    #[test]
    fn truncated_numbers_and_strings_are_not_trusted() {
        assert_eq!(usage(br#""prompt_tokens":12"#).prompt, None);
        assert_eq!(model(br#"{"model":"llam"#), None);
        assert_eq!(model(br#"{"model": 3}"#), None);
    }

    /// Found by the `scanners` fuzz target: counts near `u64::MAX` overflowed the total (a
    /// panic in debug builds, a wrapped total in release).
    #[test]
    fn total_of_huge_counts_saturates() {
        let b = br#"{"prompt_tokens":18446744073709551615,"completion_tokens":2}"#;
        assert_eq!(usage(b).total(), Some(u64::MAX));
    }

    /// Ollama's final object (its API docs' shape): durations in ns become ms.
    #[test]
    fn ollama_durations_become_timings() {
        let b = br#"{"model":"llama3","done":true,"total_duration":5589157167,"prompt_eval_count":26,"prompt_eval_duration":130079000,"eval_count":259,"eval_duration":4232710000}"#;
        assert_eq!(
            timings(b),
            Some(ServerTimings {
                prompt_n: Some(26),
                prompt_ms: Some(130.079),
                predicted_n: Some(259),
                predicted_ms: Some(4232.71),
                cached_n: None,
            })
        );
    }

    /// Only finite, non-negative figures count; a number cut by the capture's end is dropped.
    #[test]
    fn timings_that_are_not_finite_non_negative_numbers_are_dropped() {
        let b = br#""timings":{"cache_n":-1,"prompt_n":3,"prompt_ms":-4.5,"predicted_n":2,"predicted_ms":1e999}"#;
        let t = timings(b).unwrap();
        assert_eq!(
            (t.cached_n, t.prompt_n, t.predicted_n),
            (None, Some(3), Some(2))
        );
        assert_eq!((t.prompt_ms, t.predicted_ms), (None, None));
        assert_eq!(timings(br#""timings":{"prompt_ms":12.5"#), None);
        assert_eq!(timings(br#""timings":{"prompt_ms":nan,"x":1}"#), None);
        assert_eq!(timings(b"no timings here"), None);
        // A `prompt_n` outside the object is not the object's.
        let t = timings(br#"{"prompt_n":9,"timings":{"predicted_n":4}}"#).unwrap();
        assert_eq!((t.prompt_n, t.predicted_n), (None, Some(4)));
    }

    proptest::proptest! {
        /// The quote pass may only skip a scanner that would have found nothing: bytes built
        /// from key fragments, quotes, colons, digits and noise, cut anywhere.
        #[test]
        fn keys_never_hide_what_a_scanner_finds(
            parts in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(&b"\"prompt_tokens\""[..]),
                proptest::strategy::Just(&b"\"completion_tokens\""[..]),
                proptest::strategy::Just(&b"\"eval_count\""[..]),
                proptest::strategy::Just(&b"\"prompt_eval_count\""[..]),
                proptest::strategy::Just(&b"\"timings\""[..]),
                proptest::strategy::Just(&b"\"eval_duration\""[..]),
                proptest::strategy::Just(&b"\"prompt_eval_duration\""[..]),
                proptest::strategy::Just(&b"\"prompt_n\""[..]),
                proptest::strategy::Just(&b"\"predicted_ms\""[..]),
                proptest::strategy::Just(&b"\"model\""[..]),
                proptest::strategy::Just(&b"\"llama\""[..]),
                proptest::strategy::Just(&b":"[..]),
                proptest::strategy::Just(&b" "[..]),
                proptest::strategy::Just(&b"12"[..]),
                proptest::strategy::Just(&b"3.5,"[..]),
                proptest::strategy::Just(&b"{"[..]),
                proptest::strategy::Just(&b"}"[..]),
                proptest::strategy::Just(&b"\""[..]),
                proptest::strategy::Just(&b"tokens"[..]),
            ], 0..24),
            cut in 0usize..4,
        ) {
            let mut b: Vec<u8> = parts.concat();
            // Cut a few bytes off either end, so keys are split too.
            let n = b.len();
            b.truncate(n.saturating_sub(cut));
            let b = &b[cut.min(b.len())..];
            let k = Keys::of(b);
            if !k.usage {
                proptest::prop_assert_eq!(usage(b), Usage::default());
            }
            if !k.timings {
                proptest::prop_assert_eq!(timings(b), None);
            }
            if !k.model {
                proptest::prop_assert_eq!(model(b), None);
            }
        }
    }

    #[test]
    fn keys_see_each_key_and_skip_a_plain_response_head() {
        let head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nETag: \"6745f0c1-2\"\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(Keys::of(head), Keys::default());
        assert!(Keys::of(br#"{"usage":{"prompt_tokens":3"#).usage);
        assert!(Keys::of(br#"{"eval_count":3"#).usage);
        assert!(Keys::of(br#""timings":{"#).timings);
        assert!(Keys::of(br#""prompt_eval_duration":1"#).timings);
        assert!(Keys::of(br#"{"model":"x"}"#).model);
        // A key cut at the quote is not the key.
        assert_eq!(Keys::of(br#"{"model"#), Keys::default());
    }

    #[test]
    fn whitespace_and_last_occurrence() {
        let b = b"{\"completion_tokens\" :\n 1, \"completion_tokens\": 7 }";
        assert_eq!(usage(b).completion, Some(7));
    }
}
