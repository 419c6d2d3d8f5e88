//! `report`'s reader on one core: records/s over the lines of a real run (the fixture's mix of
//! request and interval records, about 780 bytes a line), grouped by a tag and the model.
//! Timed in the thread's CPU time (`common/cpu_clock.rs`).
use std::hint::black_box;

use cost_probe::{
    pricing::Prices,
    report::{Aggregator, ReportConfig, read_from},
    rules::Rules,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "common/cpu_clock.rs"]
mod cpu_clock;

fn lines() -> Vec<u8> {
    let fixture = include_str!("../tests/fixtures/report/demo.ndjson");
    let mut out = Vec::new();
    while out.len() < 32 << 20 {
        for l in fixture.lines() {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
    }
    out
}

fn report(c: &mut Criterion<cpu_clock::ThreadCpu>) {
    let buf = lines();
    let n = memchr::memchr_iter(b'\n', &buf).count() as u64;
    let prices = Prices::from_rules(&Rules::builtin().unwrap(), None);
    let mut g = c.benchmark_group("report");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.bench_function("records_by_team_model", |b| {
        b.iter(|| {
            let mut agg = Aggregator::new(ReportConfig {
                by: vec!["team".parse().unwrap(), "model".parse().unwrap()],
                since: None,
                until: None,
                top: 5,
                prices,
                budgets: Vec::new(),
            });
            read_from("bench", &buf[..], &mut agg).unwrap();
            black_box(agg.finish())
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(cpu_clock::ThreadCpu);
    targets = report
}
criterion_main!(benches);
