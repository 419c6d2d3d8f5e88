//! The `request` record written without serde's generic machinery.
//!
//! One request record is written per request, so under a tiny-response load its serialization
//! was the largest part of the agent's CPU (~40% in `perf`: an escape scan of every key, a
//! `fmt::Display` round per socket address, a copy call per punctuation byte). This writer emits
//! keys as literals, numbers through `itoa` and `serde_json`'s own float formatting, and escapes
//! only strings that need it (with `serde_json`). Its output is byte-for-byte what
//! `serde_json::to_writer` makes of the same [`RequestRecord`] (a property test holds it to that),
//! and the serde derive stays the schema's reference. Every other record is rare and goes
//! through serde.
use std::{io::Write as _, net::SocketAddr};

use super::records::{Body as _, Kind, RequestRecord, VERSION};
use crate::{attribution::SplitMethod, spans::Protocol};

fn method_name(m: SplitMethod) -> &'static str {
    match m {
        SplitMethod::Timings => "\"timings\"",
        SplitMethod::Stream => "\"stream\"",
        SplitMethod::Overlap => "\"overlap\"",
    }
}

#[inline]
fn lit(out: &mut Vec<u8>, s: &'static str) {
    out.extend_from_slice(s.as_bytes());
}

/// A JSON string: copied as is when nothing in it needs escaping.
#[inline]
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[inline]
fn uint(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `serde_json`'s formatting: `null` when not finite, else the shortest digits that round-trip
/// (`zmij`, the formatter `serde_json` itself calls). Zero, the common value of an unmeasured
/// domain's joules, skips the formatter.
#[inline]
fn float(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        lit(out, "null");
    } else if v == 0.0 && v.is_sign_positive() {
        lit(out, "0.0");
    } else if let Some(n) = millionths(v) {
        fixed6(out, n);
    } else {
        out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    }
}

/// `v` as a whole number of millionths, when it is one and lies in [1e-5, 1e9): most numbers
/// of a request record are (milliseconds from nanoseconds, joules from microjoules, both
/// `n as f64 / 1e6`). For such a value the shortest decimal that round-trips is `n`'s own
/// digits: `v` is the double nearest to n·10⁻⁶ (the check below: IEEE division of two exact
/// integers is correctly rounded), and every other decimal on that grid or a coarser one is at
/// least 10⁻⁶ away, while below 2³⁰ a double's rounding interval is under 1.2·10⁻⁷ wide.
#[inline]
fn millionths(v: f64) -> Option<u64> {
    if !(1e-5..1e9).contains(&v) {
        return None;
    }
    // Rounded by adding a half and truncating (`f64::round` is a libm call here).
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "v·1e6 is in [10, 1e15]"
    )]
    let n = (v * 1e6 + 0.5) as u64;
    #[expect(
        clippy::float_cmp,
        reason = "exact on purpose: only a value that is exactly n/1e6 takes this path"
    )]
    (n as f64 / 1e6 == v).then_some(n)
}

/// `n` millionths as zmij writes numbers in [1e-5, 1e16): the integer part, a point, and the
/// fraction without trailing zeros (at least one digit): `0.000502`, `12.5`, `3.0`.
#[inline]
fn fixed6(out: &mut Vec<u8>, n: u64) {
    uint(out, n / 1_000_000);
    let mut frac = (n % 1_000_000) as u32;
    if frac == 0 {
        lit(out, ".0");
        return;
    }
    let mut len = 6;
    while frac.is_multiple_of(10) {
        frac /= 10;
        len -= 1;
    }
    let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0'];
    for d in digits[1..=len].iter_mut().rev() {
        *d = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    out.extend_from_slice(&digits[..=len]);
}

/// `,"key":value` when the value is present (`key` includes the comma, quotes and colon).
#[inline]
fn opt_float(out: &mut Vec<u8>, key: &'static str, v: Option<f64>) {
    if let Some(v) = v {
        lit(out, key);
        float(out, v);
    }
}

/// Each key fragment followed by its number. A macro, not a loop over pairs: a literal key
/// is copied inline, one from a slice through a `memcpy` call.
macro_rules! floats {
    ($out:expr, $($key:literal => $v:expr),+ $(,)?) => {
        $(
            lit($out, $key);
            float($out, $v);
        )+
    };
}

fn addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            out.push(b'"');
            for (i, o) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                uint(out, o);
            }
            out.push(b':');
            uint(out, v4.port());
            out.push(b'"');
        }
        // Display writes no character that needs escaping.
        SocketAddr::V6(_) => {
            let _ = write!(out, "\"{a}\"");
        }
    }
}

const fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Request => "\"request\"",
        Kind::Interval => "\"interval\"",
        Kind::Lost => "\"lost\"",
        Kind::Alert => "\"alert\"",
        Kind::Summary => "\"summary\"",
    }
}

const fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http1 => "\"http1\"",
        Protocol::Tcp => "\"tcp\"",
        Protocol::Http2 => "\"http2\"",
    }
}

impl RequestRecord<'_> {
    /// Appends the record as one JSON object (no newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_request(out);
        self.write_response(out);
        self.write_price(out);
        self.write_labels(out);
    }

    /// From `v` to `http`.
    fn write_request(&self, out: &mut Vec<u8>) {
        lit(out, "{\"v\":");
        uint(out, VERSION);
        lit(out, ",\"type\":");
        lit(out, kind_name(Self::KIND));
        lit(out, ",\"start\":\"");
        out.extend_from_slice(self.start.as_bytes());
        lit(out, "\",\"end\":\"");
        out.extend_from_slice(self.end.as_bytes());
        lit(out, "\",\"duration_ms\":");
        float(out, self.duration_ms);
        lit(out, ",\"pid\":");
        uint(out, self.pid);
        lit(out, ",\"comm\":");
        string(out, self.comm);
        lit(out, ",\"conn\":{");
        if let Some(a) = &self.conn.local {
            lit(out, "\"local\":");
            addr(out, a);
        }
        if let Some(a) = &self.conn.peer {
            lit(
                out,
                if self.conn.local.is_some() {
                    ",\"peer\":"
                } else {
                    "\"peer\":"
                },
            );
            addr(out, a);
        }
        lit(out, "},\"protocol\":");
        lit(out, protocol_name(self.protocol));
        if let Some(h) = &self.http {
            lit(out, ",\"http\":{\"method\":");
            string(out, h.method);
            lit(out, ",\"path\":");
            string(out, h.path);
            if let Some(s) = h.status {
                lit(out, ",\"status\":");
                uint(out, s);
            }
            out.push(b'}');
        }
        if let Some(h) = self.request_hash {
            lit(out, ",\"request_hash\":\"");
            out.extend_from_slice(&h.hex());
            out.push(b'"');
        }
    }

    /// From `bytes` to `tokens`.
    fn write_response(&self, out: &mut Vec<u8>) {
        lit(out, ",\"bytes\":{\"in\":");
        uint(out, self.bytes.input);
        lit(out, ",\"out\":");
        uint(out, self.bytes.out);
        out.push(b'}');
        opt_float(out, ",\"ttfb_ms\":", self.ttfb_ms);
        opt_float(out, ",\"first_chunk_ms\":", self.first_chunk_ms);
        if let Some(v) = self.chunks {
            lit(out, ",\"chunks\":");
            uint(out, v);
        }
        if let Some(m) = self.model {
            lit(out, ",\"model\":");
            string(out, m);
        }
        if let Some(t) = &self.tokens {
            lit(out, ",\"tokens\":{");
            if let Some(p) = t.prompt {
                lit(out, "\"prompt\":");
                uint(out, p);
            }
            if let Some(c) = t.completion {
                lit(
                    out,
                    if t.prompt.is_some() {
                        ",\"completion\":"
                    } else {
                        "\"completion\":"
                    },
                );
                uint(out, c);
            }
            out.push(b'}');
        }
    }

    /// From `energy_j` to `usd_per_1k_tokens`.
    fn write_price(&self, out: &mut Vec<u8>) {
        if let Some(e) = &self.energy_j {
            floats!(out,
                ",\"energy_j\":{\"gpu\":" => e.gpu,
                ",\"cpu\":" => e.cpu,
                ",\"dram\":" => e.dram,
                ",\"total\":" => e.total,
            );
            out.push(b'}');
        }
        if let Some(a) = &self.attribution {
            lit(out, ",\"attribution\":{\"method\":");
            lit(out, method_name(a.method));
            opt_float(out, ",\"queue_ms\":", a.queue_ms);
            opt_float(out, ",\"prefill_ms\":", a.prefill_ms);
            opt_float(out, ",\"prefill_j\":", a.prefill_j);
            opt_float(out, ",\"decode_j\":", a.decode_j);
            out.push(b'}');
        }
        if let Some(c) = &self.cost_usd {
            floats!(out,
                ",\"cost_usd\":{\"energy\":" => c.energy,
                ",\"capacity\":" => c.capacity,
                ",\"egress\":" => c.egress,
                ",\"total\":" => c.total,
            );
            out.push(b'}');
        }
        opt_float(out, ",\"co2_g\":", self.co2_g);
        opt_float(out, ",\"usd_per_1k_tokens\":", self.usd_per_1k_tokens);
    }

    /// `tags`, `flags` and the closing brace.
    fn write_labels(&self, out: &mut Vec<u8>) {
        if !self.tags.is_empty() {
            lit(out, ",\"tags\":{");
            for (i, (k, v)) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, k);
                out.push(b':');
                string(out, v);
            }
            out.push(b'}');
        }
        lit(out, ",\"flags\":[");
        for (i, f) in self.flags.as_slice().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, f);
        }
        lit(out, "]}");
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, collections::BTreeMap};

    use proptest::prelude::*;

    use super::*;
    use crate::{
        attribution::EnergyJoules,
        output::{
            SecondCache, WallClock,
            records::{Attribution, Bytes, Conn, Envelope, FlagList, Http, RequestHash, Tokens},
        },
        pricing::CostUsd,
    };

    fn addr_strategy() -> impl Strategy<Value = Option<SocketAddr>> {
        prop_oneof![
            Just(None),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| Some(SocketAddr::from((ip, p)))),
            (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, p)| Some(SocketAddr::from((ip, p)))),
        ]
    }

    fn float_strategy() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            0.0..1e6f64,
            any::<f64>(), // NaN and infinities included: serde_json writes null
            millionths_strategy(),
        ]
    }

    /// Whole numbers of millionths (`ns as f64 / 1e6`, `µJ as f64 / 1e6`), around every
    /// boundary of the fast path: below 1e-5, up to and past 1e9.
    fn millionths_strategy() -> impl Strategy<Value = f64> {
        prop_oneof![
            (0u64..100).prop_map(|n| n as f64 / 1e6),
            (0u64..10_000_000).prop_map(|n| n as f64 / 1e6),
            (0u64..2_000_000_000_000_000).prop_map(|n| n as f64 / 1e6),
            (999_000_000_000_000u64..1_001_000_000_000_000).prop_map(|n| n as f64 / 1e6),
            any::<u64>().prop_map(|n| n as f64 / 1e6),
        ]
    }

    #[test]
    fn millionths_are_written_as_serde_json_writes_them_at_the_edges() {
        let small = [1u64, 9, 10, 11, 99, 100];
        let mid = [999_999u64, 1_000_000, 1_000_001, 1_500_000, 123_456_789];
        let top = [
            999_999_999_999_999u64,
            1_000_000_000_000_000,
            1_000_000_000_000_001,
        ];
        for n in small.into_iter().chain(mid).chain(top) {
            let v = n as f64 / 1e6;
            let mut ours = Vec::new();
            float(&mut ours, v);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                serde_json::to_string(&v).unwrap(),
                "{n} millionths"
            );
        }
    }

    /// Strings with quotes, backslashes, control bytes and non-ASCII mixed in.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z/?=._-]{1,12}",
            any::<String>(),
            "[\"\\\\\\x00-\\x1f é😀]{0,6}"
        ]
    }

    // Three groups, each boxed: one strategy over all twenty fields overflowed the 2 MiB stack
    // of a debug-build test thread.
    #[derive(Debug)]
    struct Head {
        start: u64,
        dur: u64,
        pid: u32,
        comm: String,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        proto: u8,
        http: Option<(String, String, Option<u16>)>,
        hash: Option<u64>,
    }

    prop_compose! {
        fn head()(
            start in 0u64..4_000_000_000_000_000_000,
            dur in 0u64..10_000_000_000,
            pid in any::<u32>(),
            comm in text(),
            local in addr_strategy(),
            peer in addr_strategy(),
            proto in 0u8..3,
            http in proptest::option::of((text(), text(), proptest::option::of(any::<u16>()))),
            hash in proptest::option::of(any::<u64>()),
        ) -> Head {
            Head { start, dur, pid, comm, local, peer, proto, http, hash }
        }
    }

    #[derive(Debug)]
    struct Body {
        bytes: (u64, u64),
        ttfb: Option<f64>,
        first_chunk: Option<f64>,
        chunks: Option<u32>,
        model: Option<String>,
        tokens: Option<(Option<u64>, Option<u64>)>,
    }

    prop_compose! {
        fn body()(
            bytes in (any::<u64>(), any::<u64>()),
            ttfb in proptest::option::of(float_strategy()),
            first_chunk in proptest::option::of(float_strategy()),
            chunks in proptest::option::of(any::<u32>()),
            model in proptest::option::of(text()),
            tokens in proptest::option::of(
                (proptest::option::of(any::<u64>()), proptest::option::of(any::<u64>()))
            ),
        ) -> Body {
            Body { bytes, ttfb, first_chunk, chunks, model, tokens }
        }
    }

    #[derive(Debug)]
    struct Price {
        energy: Option<[f64; 4]>,
        attribution: Option<(u8, [Option<f64>; 4])>,
        cost: Option<[f64; 4]>,
        co2: Option<f64>,
        per_1k: Option<f64>,
        tags: BTreeMap<String, String>,
        nflags: usize,
    }

    prop_compose! {
        fn price()(
            energy in proptest::option::of(proptest::array::uniform4(float_strategy())),
            attribution in proptest::option::of(
                (0u8..3, proptest::array::uniform4(proptest::option::of(float_strategy())))
            ),
            cost in proptest::option::of(proptest::array::uniform4(float_strategy())),
            co2 in proptest::option::of(float_strategy()),
            per_1k in proptest::option::of(float_strategy()),
            tags in proptest::collection::btree_map(text(), text(), 0..4),
            nflags in 0usize..4,
        ) -> Price {
            Price { energy, attribution, cost, co2, per_1k, tags, nflags }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn a_number_is_written_as_serde_json_writes_it(v in float_strategy()) {
            let mut ours = Vec::new();
            float(&mut ours, v);
            prop_assert_eq!(String::from_utf8_lossy(&ours), serde_json::to_string(&v).unwrap());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn same_bytes_as_serde_json(h in head().boxed(), b in body().boxed(), p in price().boxed()) {
            let clock = WallClock::fixed(1_700_000_000_000_000_000);
            let mut cache = SecondCache::default();
            let rec = RequestRecord {
                start: clock.stamp(h.start, &mut cache),
                end: clock.stamp(h.start + h.dur, &mut cache),
                duration_ms: h.dur as f64 / 1e6,
                pid: h.pid,
                comm: &h.comm,
                conn: Conn { local: h.local, peer: h.peer },
                protocol: [Protocol::Http1, Protocol::Tcp, Protocol::Http2][usize::from(h.proto)],
                http: h.http.as_ref().map(|(m, p, s)| Http { method: m, path: p, status: *s }),
                request_hash: h.hash.map(RequestHash),
                bytes: Bytes { input: b.bytes.0, out: b.bytes.1 },
                ttfb_ms: b.ttfb,
                first_chunk_ms: b.first_chunk,
                chunks: b.chunks,
                model: b.model.as_deref(),
                tokens: b.tokens.map(|(prompt, completion)| Tokens { prompt, completion }),
                energy_j: p.energy.map(|[gpu, cpu, dram, total]| EnergyJoules { gpu, cpu, dram, total }),
                attribution: p.attribution.map(|(m, [q, pm, pj, dj])| Attribution {
                    method: [SplitMethod::Timings, SplitMethod::Stream, SplitMethod::Overlap][usize::from(m)],
                    queue_ms: q,
                    prefill_ms: pm,
                    prefill_j: pj,
                    decode_j: dj,
                }),
                cost_usd: p.cost.map(|[energy, capacity, egress, total]| CostUsd { energy, capacity, egress, total }),
                co2_g: p.co2,
                usd_per_1k_tokens: p.per_1k,
                tags: Cow::Owned(p.tags),
                flags: {
                    let mut f = FlagList::default();
                    f.extend(["partial", "estimated_cpu", "streamed"].into_iter().take(p.nflags));
                    f
                },
            };
            let mut ours = Vec::new();
            rec.write_json(&mut ours);
            let theirs = serde_json::to_vec(&Envelope::new(&rec)).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        }
    }
}
