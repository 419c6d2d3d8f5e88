//! Ledger throughput on a recorded-like stream: 64 concurrent requests (each slot starts a new
//! request shortly after its previous one ends), three domains (GPU, CPU package, DRAM) sampled
//! at 10 Hz with different phases, finished requests drained after every interval.
//! Throughput is counted in span events (starts + ends); interval work is included in the time.

use std::hint::black_box;

use cost_probe::attribution::{
    DomainId, DomainInterval, EnergyKind, Ledger, LedgerConfig, Share, SplitMode,
};
use cost_probe::units::{MicroJoules, Nanos};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MS: u64 = 1_000_000;

enum Event {
    Start(u64, u64),
    End(u64, u64, u64),
    Interval(DomainInterval),
}

fn stream(seconds: u64, concurrency: u64, max_ms: u64) -> (Vec<Event>, u64) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let horizon = seconds * 1_000 * MS;
    let mut ev: Vec<(u64, u8, Event)> = Vec::new();
    let mut id = 0;
    let mut span_events = 0;
    for _ in 0..concurrency {
        let mut t = rand(100 * MS);
        while t < horizon {
            let end = t + 10 * MS + rand(max_ms * MS);
            ev.push((t, 0, Event::Start(id, t)));
            ev.push((end, 1, Event::End(id, end, 50 + rand(500))));
            span_events += 2;
            id += 1;
            t = end + rand(5 * MS);
        }
    }
    for (d, (class, phase, devices)) in [
        (EnergyKind::Gpu, 0, 1),
        (EnergyKind::Cpu, 37 * MS, 32),
        (EnergyKind::Dram, 61 * MS, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let mut t = phase;
        while t < horizon + 500 * MS {
            ev.push((
                t + 100 * MS,
                2,
                Event::Interval(DomainInterval {
                    domain: DomainId(d as u32),
                    class,
                    start: Nanos(t),
                    end: Nanos(t + 100 * MS),
                    measured: MicroJoules(20_000_000 + rand(30_000_000)),
                    target_share: Share::new(7 + rand(3), 10),
                    estimated: false,
                    integrated: false,
                    unmeasured: false,
                    device_idle: false,
                    devices,
                }),
            ));
            t += 100 * MS;
        }
    }
    ev.sort_by_key(|(t, o, _)| (*t, *o));
    (ev.into_iter().map(|(_, _, e)| e).collect(), span_events)
}

fn replay(events: &[Event], cfg: &LedgerConfig) -> u64 {
    let mut l = Ledger::new(cfg.clone());
    l.set_domain_idle_watts(DomainId(0), 60.0);
    let mut drained = 0;
    for e in events {
        match e {
            Event::Start(id, t) => l.span_started(*id, Nanos(*t)),
            Event::End(id, t, tok) => l.span_ended(*id, Nanos(*t), Some(*tok)),
            Event::Interval(iv) => {
                black_box(l.interval(iv));
                drained += l.drain_ready().map(|(_, e)| e.total().0).sum::<u64>();
            }
        }
    }
    drained
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger");
    for (name, max_ms, split) in [
        ("64x_short_time", 200, SplitMode::Time),
        ("64x_long_time", 2_000, SplitMode::Time),
        ("64x_short_tokens", 200, SplitMode::Tokens),
    ] {
        let (events, span_events) = stream(60, 64, max_ms);
        let cfg = LedgerConfig {
            split,
            ..LedgerConfig::default()
        };
        g.throughput(Throughput::Elements(span_events));
        g.bench_function(name, |b| b.iter(|| replay(black_box(&events), &cfg)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
