//! The request-record writer: `RequestRecord::write_json` for arbitrary field values.
//!
//! Invariants: its bytes equal `serde_json::to_vec(&Envelope::new(&record))` (the schema's
//! reference), and they parse as one JSON object.
#![no_main]

use std::{borrow::Cow, collections::BTreeMap, net::SocketAddr};

use arbitrary::Arbitrary;
use cost_probe::{
    attribution::{EnergyJoules, SplitMethod},
    output::{
        SecondCache, WallClock,
        records::{
            Attribution, Bytes, Conn, Envelope, FlagList, Http, RequestHash, RequestRecord, Tokens,
        },
    },
    pricing::CostUsd,
    spans::Protocol,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    offset: i64,
    start: u64,
    dur: u32,
    pid: u32,
    comm: String,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    protocol: u8,
    http: Option<(String, String, Option<u16>)>,
    bytes: (u64, u64),
    ttfb: Option<f64>,
    first_chunk: Option<f64>,
    chunks: Option<u32>,
    model: Option<String>,
    tokens: Option<(Option<u64>, Option<u64>)>,
    energy: Option<[f64; 4]>,
    cost: Option<[f64; 3]>,
    co2: Option<f64>,
    per_1k: Option<f64>,
    tags: BTreeMap<String, String>,
    flags: u16,
    /// Last, so the committed corpus keeps its meaning for the fields before it.
    attribution: Option<(u8, [Option<f64>; 4])>,
    egress: f64,
    request_hash: Option<u64>,
}

const FLAGS: [&str; 8] = [
    "partial",
    "truncated",
    "malformed",
    "approximate",
    "no_response",
    "streamed",
    "estimated_cpu",
    "evicted",
];

fuzz_target!(|i: Input| {
    // Monotonic times of a run: well inside what u64 ns and the wall clock hold.
    let start = i.start % (1 << 62);
    let clock = WallClock::fixed(1_700_000_000_000_000_000 + i128::from(i.offset));
    let mut cache = SecondCache::default();
    let rec = RequestRecord {
        start: clock.stamp(start, &mut cache),
        end: clock.stamp(start + u64::from(i.dur), &mut cache),
        duration_ms: f64::from(i.dur) / 1e6,
        pid: i.pid,
        comm: &i.comm,
        conn: Conn {
            local: i.local,
            peer: i.peer,
        },
        protocol: [Protocol::Http1, Protocol::Tcp, Protocol::Http2][usize::from(i.protocol % 3)],
        http: i.http.as_ref().map(|(m, p, s)| Http {
            method: m,
            path: p,
            status: *s,
        }),
        bytes: Bytes {
            input: i.bytes.0,
            out: i.bytes.1,
        },
        ttfb_ms: i.ttfb,
        first_chunk_ms: i.first_chunk,
        chunks: i.chunks,
        model: i.model.as_deref(),
        tokens: i
            .tokens
            .map(|(prompt, completion)| Tokens { prompt, completion }),
        energy_j: i.energy.map(|[gpu, cpu, dram, total]| EnergyJoules {
            gpu,
            cpu,
            dram,
            total,
        }),
        cost_usd: i.cost.map(|[energy, capacity, total]| CostUsd {
            energy,
            capacity,
            egress: i.egress,
            total,
        }),
        request_hash: i.request_hash.map(RequestHash),
        attribution: i
            .attribution
            .map(
                |(m, [queue_ms, prefill_ms, prefill_j, decode_j])| Attribution {
                    method: [
                        SplitMethod::Timings,
                        SplitMethod::Stream,
                        SplitMethod::Overlap,
                    ][usize::from(m % 3)],
                    queue_ms,
                    prefill_ms,
                    prefill_j,
                    decode_j,
                },
            ),
        co2_g: i.co2,
        usd_per_1k_tokens: i.per_1k,
        tags: Cow::Borrowed(&i.tags),
        flags: {
            let mut f = FlagList::default();
            f.extend(
                (0..16)
                    .filter(|b| i.flags & (1 << b) != 0)
                    .map(|b| FLAGS[b % FLAGS.len()]),
            );
            f
        },
    };
    let mut ours = Vec::new();
    rec.write_json(&mut ours);
    let theirs = serde_json::to_vec(&Envelope::new(&rec)).expect("serializes");
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&theirs)
    );
    assert_eq!(ours, theirs);
    let v: serde_json::Value = serde_json::from_slice(&ours).expect("parses as JSON");
    assert!(v.is_object());
    assert_eq!(v["type"], "request");
});
