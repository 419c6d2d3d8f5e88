//! The userspace engine on recorded kernel events: span building (HTTP/1 framing, SSE, tokens)
//! and attribution (ledger), as the consumer thread runs them, without I/O.
//!
//! Input: `tests/fixtures/python_asyncio_mixed.ndjson` (47 events, 10 requests recorded from a
//! real server) replayed as 200 concurrent connections, 100 times over, with distinct connection
//! ids and shifted timestamps; three energy domains are attributed every 100 ms of event time.
//! Throughput is kernel events per second.
use std::hint::black_box;

use cost_probe::{
    attribution::{DomainId, DomainInterval, EnergyKind, Ledger, LedgerConfig, Share},
    probe::{ConnId, OwnedEvent},
    spans::{SpanBuilder, SpanEvent},
    units::{MicroJoules, Nanos},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "common/cpu_clock.rs"]
mod cpu_clock;
#[path = "common/fixture.rs"]
mod fixture;

fn fixture() -> Vec<OwnedEvent> {
    fixture::events("python_asyncio_mixed.ndjson")
}

/// The fixture replayed `copies` times side by side, each copy on its own connections, sorted
/// by time like a real ring buffer drain.
fn workload(copies: u64, rounds: u64) -> Vec<OwnedEvent> {
    let base = fixture();
    let t0 = base.iter().map(|e| e.borrowed().ts()).min().unwrap();
    let span = base.iter().map(|e| e.borrowed().ts()).max().unwrap() - t0 + 1;
    let mut out = Vec::new();
    for r in 0..rounds {
        for c in 0..copies {
            let shift = r * span + c * 997;
            for e in &base {
                let mut e = e.clone();
                let remap = |conn: &mut ConnId, ts: &mut u64| {
                    conn.fd += (c as i32) * 16;
                    conn.id = conn.id.wrapping_add(r * 1_000_003 + c);
                    *ts = *ts - t0 + shift;
                };
                match &mut e {
                    OwnedEvent::Accept { ts, conn, .. }
                    | OwnedEvent::Data { ts, conn, .. }
                    | OwnedEvent::Close { ts, conn } => remap(conn, ts),
                    OwnedEvent::ProcExit { ts, .. } | OwnedEvent::Exec { ts, .. } => {
                        *ts = *ts - t0 + shift;
                    }
                }
                out.push(e);
            }
        }
    }
    out.sort_by_key(|e| e.borrowed().ts());
    out
}

fn run(events: &[OwnedEvent]) -> usize {
    let mut builder = SpanBuilder::default();
    let mut ledger = Ledger::new(LedgerConfig::default());
    let mut out = Vec::with_capacity(256);
    let mut finished = 0;
    let step = 100_000_000u64;
    let mut next_tick = events[0].borrowed().ts() + step;
    for e in events {
        let ev = e.borrowed();
        while ev.ts() >= next_tick {
            for d in 0..3u32 {
                ledger.interval(&DomainInterval {
                    domain: DomainId(d),
                    class: [EnergyKind::Gpu, EnergyKind::Cpu, EnergyKind::Dram][d as usize],
                    start: Nanos(next_tick - step),
                    end: Nanos(next_tick),
                    measured: MicroJoules(30_000_000),
                    target_share: Share::new(3, 4),
                    estimated: false,
                    integrated: false,
                    unmeasured: false,
                    device_idle: false,
                    devices: 1,
                });
            }
            finished += ledger.drain_ready().count();
            next_tick += step;
        }
        builder.on_event(&ev, &mut out);
        for s in out.drain(..) {
            match s {
                SpanEvent::Started { id, start, .. } => ledger.span_started(id, Nanos(start)),
                SpanEvent::Progress { id, at, .. } => ledger.span_progress(id, Nanos(at)),
                SpanEvent::Finished(span) => {
                    let tokens = span.usage.completion;
                    ledger.span_ended(span.id, Nanos(span.end), tokens);
                }
            }
        }
    }
    finished + ledger.drain_all().count()
}

fn bench(c: &mut Criterion<cpu_clock::ThreadCpu>) {
    let events = workload(200, 100);
    let requests = run(&events);
    assert_eq!(requests, 200 * 100 * 10, "every recorded request comes out");
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.sample_size(10);
    g.bench_function("spans+attribution (recorded events)", |b| {
        b.iter(|| black_box(run(black_box(&events))));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(cpu_clock::ThreadCpu);
    targets = bench
}
criterion_main!(benches);
