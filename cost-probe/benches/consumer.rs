//! The whole consumer thread per request, as `attach` runs it, on a tiny-request load: ring
//! events → spans → meter (energy, ledger) → pricing, tags → NDJSON (to /dev/null, so the
//! `write(2)` calls are counted but no disk) and the summary.
//!
//! `cargo xtask bench overhead` measures the same thing against a real nginx, but its figure
//! moves with everything else on the VM (±10 % between rounds); this one counts only the
//! thread's own CPU time, so a change to the hot path can be judged by it before the end-to-end
//! run.
//!
//! Input: `tests/fixtures/nginx_keepalive.ndjson` (200 requests on 4 keep-alive connections,
//! recorded from nginx) replayed on 64 connections as fast as the consumer takes them, stamped
//! with the monotonic clock, with energy sampled every 100 ms from a steady 100 W domain. One
//! iteration is 3,200 requests; throughput is requests per second of the thread's CPU.
//!
//! A second function runs the span builder alone on the same events ([`Stage::Spans`]): what
//! the consumer spends before the meter, which splits the whole into its two halves.
use std::time::Duration;

use cost_probe::{
    energy::{
        Domain, DomainClass, DomainIdx, EnergySource, Reading, ReadingFlags, Roots, SourceKind,
        TickCtx,
        sampler::{SamplerBuilder, SamplerConfig},
    },
    host::{ProcFs, Processes},
    output::{OutputTarget, Outputs, ndjson::NdjsonSink},
    probe::{ConnId, OwnedEvent},
    rules::Rules,
    runtime::{Tracer, meter::Meter},
    spans::{Limits, RequestSpan, SpanBuilder, SpanSink},
    units::{MicroJoules, Nanos, monotonic_now},
};
use criterion::{Criterion, Throughput, criterion_group};

#[path = "common/cpu_clock.rs"]
mod cpu_clock;
#[path = "common/fixture.rs"]
mod fixture;

const CONNS: i32 = 64;
const INTERVAL: Duration = Duration::from_millis(100);

fn fixture() -> Vec<OwnedEvent> {
    fixture::events("nginx_keepalive.ndjson")
}

/// The requests of the fixture's connections, spread over `CONNS` connections: data events
/// only (the connections are accepted once, before the measurement), in recorded order.
fn workload() -> (Vec<OwnedEvent>, Vec<OwnedEvent>) {
    let base = fixture();
    let (mut accepts, mut data) = (Vec::new(), Vec::new());
    for copy in 0..CONNS / 4 {
        for e in &base {
            let mut e = e.clone();
            match &mut e {
                OwnedEvent::Accept { conn, .. } => {
                    conn.fd += copy * 16;
                    conn.id += copy as u64;
                    accepts.push(e);
                }
                OwnedEvent::Data { conn, .. } => {
                    conn.fd += copy * 16;
                    conn.id += copy as u64;
                    data.push(e);
                }
                _ => {}
            }
        }
    }
    (accepts, data)
}

fn set_ts(e: &mut OwnedEvent, t: u64) {
    match e {
        OwnedEvent::Accept { ts, .. }
        | OwnedEvent::Data { ts, .. }
        | OwnedEvent::Close { ts, .. }
        | OwnedEvent::ProcExit { ts, .. }
        | OwnedEvent::Exec { ts, .. } => *ts = t,
    }
}

/// A steady 100 W GPU-like domain (1 µJ per 10 ns between samples).
struct Steady {
    domains: Vec<Domain>,
    total: u64,
    last: Option<Nanos>,
}

impl EnergySource for Steady {
    fn kind(&self) -> SourceKind {
        SourceKind::Nvml
    }
    fn domains(&self) -> &[Domain] {
        &self.domains
    }
    fn sample(&mut self, ctx: &TickCtx<'_>, out: &mut Vec<Reading>) {
        let delta = self.last.map_or(0, |l| (ctx.now.0 - l.0) / 10);
        self.last = Some(ctx.now);
        self.total += delta;
        out.push(Reading {
            domain: DomainIdx(0),
            at: ctx.now,
            total: MicroJoules(self.total),
            delta: MicroJoules(delta),
            flags: ReadingFlags::default(),
        });
    }
}

/// What a pass runs the events through.
enum Stage {
    /// The consumer thread's whole work, as `attach` does it.
    Whole(Box<Tracer>),
    /// The span builder alone (HTTP parsing, framing, payload scanners), its spans dropped:
    /// the part of the consumer's work that comes before the meter.
    /// `COST_PROBE_BENCH_STAGE=spans` counts it.
    Spans(SpanBuilder, Finished),
}

/// Counts the spans the builder finishes, and drops them.
#[derive(Default)]
struct Finished(u64);

impl SpanSink for Finished {
    fn started(&mut self, _: u64, _: ConnId, _: u64) {}
    fn progress(&mut self, _: u64, _: u64, _: u32) {}
    fn finished(&mut self, span: RequestSpan) {
        self.0 += 1;
        drop(span);
    }
}

impl Stage {
    fn on_event(&mut self, e: &OwnedEvent) {
        match self {
            Self::Whole(t) => t.on_event(&e.borrowed()),
            Self::Spans(s, finished) => s.on_event(&e.borrowed(), finished),
        }
    }
}

const WARM_UP_PASSES: u64 = 20;

struct Replay {
    stage: Stage,
    data: Vec<OwnedEvent>,
    now: u64,
}

impl Replay {
    fn new(spans_only: bool) -> Self {
        let (accepts, data) = workload();
        let now = monotonic_now().0;
        let mut stage = if spans_only {
            Stage::Spans(SpanBuilder::new(Limits::default()), Finished::default())
        } else {
            let mut tracer = Self::tracer();
            tracer.baseline(now);
            Stage::Whole(Box::new(tracer))
        };
        for mut e in accepts {
            set_ts(&mut e, now);
            stage.on_event(&e);
        }
        Self { stage, data, now }
    }

    /// The whole consumer: a steady energy source, the built-in rules, NDJSON to /dev/null.
    fn tracer() -> Tracer {
        let rules = Rules::builtin().expect("built-in rules");
        let none = std::path::PathBuf::from("/nonexistent");
        let sampler = SamplerBuilder::new(Roots {
            proc: none.clone(),
            powercap: none.clone(),
            event_source: none.clone(),
            nvml_lib: None,
        })
        .without_nvml()
        .config(SamplerConfig {
            interval: INTERVAL,
            ..SamplerConfig::default()
        })
        .source(Box::new(Steady {
            domains: vec![Domain {
                id: "gpu:0".into(),
                class: DomainClass::Gpu,
                source: SourceKind::Nvml,
                label: "bench GPU".into(),
                flags: ReadingFlags::default(),
                note: None,
            }],
            total: 0,
            last: None,
        }))
        .build();
        let meter = Meter::with_sampler(&rules, INTERVAL, sampler);
        // COST_PROBE_BENCH_RECORDS=FILE keeps the records, to check what the bench produces.
        let out = std::env::var_os("COST_PROBE_BENCH_RECORDS")
            .map_or_else(|| "/dev/null".into(), Into::into);
        let sink = NdjsonSink::new(OutputTarget::File(out)).expect("opening the output");
        let outputs = Outputs::new(&rules, vec![Box::new(sink)], false);
        Tracer::new(
            &rules,
            meter,
            Processes::new(ProcFs::new(&none)),
            outputs,
            None,
        )
    }

    /// One pass, counted: `cargo xtask bench instructions` has callgrind collect inside this
    /// function only (never inlined, so it stays a symbol to toggle on).
    #[inline(never)]
    fn pass(&mut self) {
        self.run();
    }

    /// Past the first intervals (the ledger's learning, the first releases), uncounted.
    fn warm_up(&mut self) {
        for _ in 0..WARM_UP_PASSES {
            self.run();
        }
    }

    /// One pass over the workload, as the consumer loop runs it: a drain of up to 256 events
    /// (spans go to the meter as they finish), then a tick (which samples when an interval is
    /// due). Events are stamped with the monotonic clock the kernel's would read (the sampler
    /// reads it too), spread evenly since the previous drain.
    fn run(&mut self) {
        for chunk in self.data.chunks_mut(256) {
            let (from, to) = (self.now, monotonic_now().0);
            let n = chunk.len() as u64;
            for (i, e) in (1..).zip(chunk.iter_mut()) {
                self.now = from + (to - from) * i / n;
                set_ts(e, self.now);
                self.stage.on_event(e);
            }
            if let Stage::Whole(t) = &mut self.stage {
                t.tick(self.now).expect("writing the records");
            }
        }
        if let Stage::Whole(t) = &mut self.stage {
            t.flush().expect("writing the records");
        }
    }
}

fn bench(c: &mut Criterion<cpu_clock::ThreadCpu>) {
    let mut g = c.benchmark_group("consumer");
    g.sample_size(20);
    for (name, spans_only) in [
        ("nginx tiny requests (spans+meter+records)", false),
        ("nginx tiny requests (spans alone)", true),
    ] {
        let mut replay = Replay::new(spans_only);
        replay.warm_up();
        g.throughput(Throughput::Elements(replay.data.len() as u64 / 2));
        g.bench_function(name, |b| b.iter(|| replay.pass()));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(cpu_clock::ThreadCpu);
    targets = bench
}
/// Passes to count after the warm-up with `COST_PROBE_BENCH_PASSES=N` (see [`main`]).
const PASSES: &str = "COST_PROBE_BENCH_PASSES";

/// With [`PASSES`], `spans` counts the span builder alone (see [`Stage::Spans`]).
const STAGE: &str = "COST_PROBE_BENCH_STAGE";

/// Criterion's main, unless `COST_PROBE_BENCH_PASSES=N`: then a warm-up and N passes without
/// criterion, printing the requests they carried, for `cargo xtask bench instructions` to run
/// under callgrind.
fn main() {
    if let Some(n) = std::env::var(PASSES)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let spans_only = match std::env::var(STAGE).as_deref() {
            Ok("spans") => true,
            Ok("whole") | Err(_) => false,
            Ok(other) => {
                eprintln!("{STAGE}={other:?}: expected spans or whole");
                std::process::exit(2);
            }
        };
        let mut replay = Replay::new(spans_only);
        replay.warm_up();
        for _ in 0..n {
            replay.pass();
        }
        let per_pass = replay.data.len() as u64 / 2;
        if let Stage::Spans(_, Finished(spans)) = &replay.stage {
            assert_eq!(
                *spans,
                (WARM_UP_PASSES + n) * per_pass,
                "the span builder finished a span per request"
            );
        }
        println!("requests {}", n * per_pass);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
