//! One sampler tick over every source this host can offer without hardware: a fake two-socket
//! RAPL tree (4 zones), the real procfs (host `/proc/stat` and this process's `/proc/PID/stat`)
//! and the CPU power model.
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../tests/support/fake_rapl.rs"]
mod fake_rapl;

fn tick(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let mut sampler = fake_rapl::sampler_over_fake_rapl(tmp.path());
    let mut snap = sampler.new_snapshot();
    c.bench_function("sampler_tick/rapl4+procfs+cpu_model", |b| {
        b.iter(|| {
            sampler.tick(&mut snap);
            black_box(&snap);
        });
    });
}

criterion_group!(benches, tick);
criterion_main!(benches);
