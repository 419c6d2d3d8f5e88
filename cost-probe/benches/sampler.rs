//! One sampler tick over every source this host can offer without hardware: a fake two-socket
//! RAPL tree (4 zones), the real procfs (host `/proc/stat` and this process's `/proc/PID/stat`)
//! and the CPU power model.
use std::{hint::black_box, time::Duration};

use cost_probe::energy::{
    MilliWatts, Roots,
    cpu_model::{CpuModelParams, CpuModelSource},
    sampler::{SamplerBuilder, SamplerConfig},
};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../tests/support/fake_rapl.rs"]
mod fake_rapl;

fn tick(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let roots = Roots {
        powercap: fake_rapl::two_socket_server(tmp.path()),
        event_source: tmp.path().join("no-event-source"),
        nvml_lib: Some(tmp.path().join("no-libnvidia-ml.so.1")),
        ..Roots::default()
    };
    let model = CpuModelSource::new(CpuModelParams {
        idle_per_cpu: MilliWatts::from_watts(3.0),
        max_per_cpu: MilliWatts::from_watts(12.0),
    });
    let mut sampler = SamplerBuilder::new(roots)
        .config(SamplerConfig {
            liveness_window: Duration::ZERO,
            ..SamplerConfig::default()
        })
        .without_nvml()
        .source(Box::new(model))
        .build();
    sampler.set_targets(&[std::process::id()]);
    assert_eq!(sampler.domains().len(), 5, "{:?}", sampler.status());
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
