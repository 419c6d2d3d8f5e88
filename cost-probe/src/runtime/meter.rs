//! Metering: energy samples + spans → joules per request.
//!
//! Runs on the consumer thread, after each ring drain: the sampler ticks at `interval`, so every
//! event up to the tick has already been turned into spans when the interval ending at the tick
//! is attributed. A finished span waits here until the ledger has seen the interval holding its
//! end, then comes out with its energy (pricing and tags are the tracer's).
use std::time::Duration;

use crate::{
    attribution::{
        DomainId, DomainInterval, DomainSplit, EnergyKind, IdMap, IntervalReport, Ledger,
        RequestEnergy, ServerWork, Share, WorkHints,
    },
    energy::{
        DomainClass, Roots,
        cpu_model::CpuModelParams,
        cputime::CpuSample,
        nvml::TargetShare,
        sampler::{Sampler, SamplerBuilder, SamplerConfig, Snapshot},
    },
    rules::Rules,
    spans::{RequestSpan, ServerTimings},
    units::{MicroJoules, Nanos},
};

/// Run totals for the summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct MeterTotals {
    pub idle: MicroJoules,
    pub other: MicroJoules,
    pub attributed: MicroJoules,
}

pub struct Meter {
    sampler: Sampler,
    snap: Snapshot,
    interval: Nanos,
    last_tick: Nanos,
    /// Previous reading time per domain (interval starts).
    last_at: Vec<Option<Nanos>>,
    /// Per domain: read this tick; and gone silent (warned once).
    read_now: Vec<bool>,
    silent: Vec<bool>,
    prev_cpu: Option<CpuSample>,
    ledger: Ledger,
    /// The CPU power model's idle watts per CPU (rules `[cpu] idle_watts_per_core`).
    model_idle_per_cpu: f64,
    /// Finished spans waiting for their energy: slot by id, the spans themselves in `slab`.
    /// A span is ~400 bytes; kept out of the map, an insert or remove moves 16 bytes, and a
    /// freed slot is reused warm (`free`) instead of a hash table of spans growing cold.
    held: IdMap<u32>,
    slab: Vec<Option<RequestSpan>>,
    free: Vec<u32>,
    targets: Vec<u32>,
    targets_dirty: bool,
    pub totals: MeterTotals,
    scratch: Vec<(u64, RequestEnergy)>,
    /// (end, id, slot, index in `scratch`): the release order of a tick.
    order: Vec<(u64, u64, u32, usize)>,
    /// Released requests, in the order they ended: slot in `slab`, and energy. They stay in
    /// the slab until [`Meter::drain_released`] hands them out by reference.
    released: Vec<(u32, RequestEnergy)>,
}

fn kind_of(c: DomainClass) -> Option<EnergyKind> {
    match c {
        DomainClass::Gpu => Some(EnergyKind::Gpu),
        DomainClass::CpuPackage | DomainClass::Psys | DomainClass::CpuModel => {
            Some(EnergyKind::Cpu)
        }
        DomainClass::Dram => Some(EnergyKind::Dram),
        // Core and uncore are inside the package: counting them too would double-count.
        DomainClass::Core | DomainClass::Uncore => None,
    }
}

impl Meter {
    /// Builds the real sampler (NVML, RAPL, procfs, CPU model) under `roots`.
    #[must_use]
    pub fn new(rules: &Rules, interval: Duration, roots: Roots) -> Self {
        let cpu_model = CpuModelParams {
            idle_per_cpu: crate::energy::MilliWatts((rules.cpu.idle_watts_per_core * 1e3) as u64),
            max_per_cpu: crate::energy::MilliWatts((rules.cpu.max_watts_per_core * 1e3) as u64),
        };
        let sampler = SamplerBuilder::new(roots)
            .config(SamplerConfig {
                interval,
                cpu_model: Some(cpu_model),
                ..SamplerConfig::default()
            })
            .build();
        for s in sampler.status() {
            if s.used {
                log::info!("energy source {}: {}", s.source, s.message);
            } else {
                log::debug!("energy source {} not used: {}", s.source, s.message);
            }
        }
        Self::with_sampler(rules, interval, sampler)
    }

    /// With a given sampler (tests use replayed sources).
    #[must_use]
    pub fn with_sampler(rules: &Rules, interval: Duration, sampler: Sampler) -> Self {
        let mut ledger = Ledger::new(rules.ledger_config());
        for (i, d) in sampler.domains().iter().enumerate() {
            if d.class == DomainClass::Gpu
                && let Some(w) = rules.gpu_for(&d.label).1.idle_watts
            {
                ledger.set_domain_idle_watts(DomainId(i as u32), w);
            }
        }
        let snap = sampler.new_snapshot();
        let n = sampler.domains().len();
        Self {
            sampler,
            snap,
            interval: Nanos(interval.as_nanos() as u64),
            last_tick: Nanos(0),
            last_at: vec![None; n],
            read_now: vec![false; n],
            silent: vec![false; n],
            prev_cpu: None,
            ledger,
            model_idle_per_cpu: rules.cpu.idle_watts_per_core,
            held: IdMap::default(),
            slab: Vec::new(),
            free: Vec::new(),
            targets: Vec::new(),
            targets_dirty: false,
            totals: MeterTotals::default(),
            scratch: Vec::new(),
            order: Vec::new(),
            released: Vec::new(),
        }
    }

    /// What each energy source is doing, in words.
    #[must_use]
    pub fn sources(&self) -> &[crate::energy::sampler::SourceStatus] {
        self.sampler.status()
    }

    pub fn add_target(&mut self, tgid: u32) {
        if !self.targets.contains(&tgid) {
            self.targets.push(tgid);
            self.targets_dirty = true;
        }
    }

    pub fn started(&mut self, id: u64, start: u64) {
        self.ledger.span_started(id, Nanos(start));
    }

    /// A streamed response wrote body chunks: the request is being computed, not queued.
    pub fn progress(&mut self, id: u64, at: u64) {
        self.ledger.span_progress(id, Nanos(at));
    }

    pub fn finished(&mut self, span: RequestSpan) {
        let hints = WorkHints {
            tokens: span.usage.total(),
            prompt_tokens: span.usage.prompt,
            bytes_in: span.bytes_in,
            server: span.timings.as_ref().and_then(server_work),
        };
        self.ledger.span_finished(span.id, Nanos(span.end), hints);
        let id = span.id;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(span);
                slot
            }
            None => {
                self.slab.push(Some(span));
                (self.slab.len() - 1) as u32
            }
        };
        if let Some(old) = self.held.insert(id, slot) {
            // A duplicate id (the ledger counted it): the earlier span is dropped, as the map
            // of spans did.
            self.slab[old as usize] = None;
            self.free.push(old);
        }
    }

    /// Requests still waiting for their energy.
    #[must_use]
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Samples when an interval has passed; returns the interval's split, and releases the
    /// requests whose energy is now final (see [`Self::drain_released`]).
    pub fn tick_if_due(&mut self, now: Nanos) -> Option<IntervalReport> {
        if now.0 < self.last_tick.0 + self.interval.0 {
            return None;
        }
        // Intervals that came due while the consumer was busy are merged into this one.
        let late = if self.last_tick.0 == 0 {
            0
        } else {
            (now.0 - self.last_tick.0) / self.interval.0.max(1) - 1
        };
        self.last_tick = now;
        let mut report = self.tick(false);
        report.late_ticks = late;
        Some(report)
    }

    /// Takes the first sample now, when tracing starts: the first interval then begins before
    /// the first request instead of at the first tick of the loop (a request in between would
    /// be in no interval at all, priced 0 J).
    pub fn baseline(&mut self, now: Nanos) {
        if self.last_tick.0 == 0 {
            self.tick_if_due(now);
            debug_assert!(self.released.is_empty(), "a first sample releases nothing");
        }
    }

    /// A last sample, then releases every held request (shutdown).
    pub fn finish(&mut self) -> IntervalReport {
        self.tick(true)
    }

    /// Hands each released request to `f` with its energy, in the order they ended, and
    /// forgets it. By reference: a span is not moved out of the slab it was finished into.
    pub fn drain_released(&mut self, mut f: impl FnMut(&RequestSpan, &RequestEnergy)) {
        for (slot, energy) in self.released.drain(..) {
            let held = &mut self.slab[slot as usize];
            if let Some(span) = held.as_ref() {
                f(span, &energy);
            }
            *held = None;
            self.free.push(slot);
        }
    }

    fn tick(&mut self, all: bool) -> IntervalReport {
        if std::mem::take(&mut self.targets_dirty) {
            self.sampler.set_targets(&self.targets);
        }
        self.sampler.tick(&mut self.snap);
        let cpu_share = self.cpu_share();
        let mut rec = IntervalReport {
            end: self.snap.at,
            sampler_cost: self.snap.tick_cost,
            ..IntervalReport::default()
        };
        let mut earliest = self.snap.at;
        self.read_now.fill(false);
        for r in &self.snap.readings {
            let idx = usize::from(r.domain.0);
            let d = &self.snap.domains[idx];
            self.read_now[idx] = true;
            if std::mem::take(&mut self.silent[idx]) {
                log::warn!("energy domain {} reports again", d.id);
            }
            let prev = self.last_at[idx].replace(r.at);
            let (Some(class), Some(start)) = (kind_of(d.class), prev) else {
                continue;
            };
            let share = match class {
                EnergyKind::Gpu => gpu_share(&self.snap, r.domain),
                EnergyKind::Cpu | EnergyKind::Dram => cpu_share,
            };
            if d.class == DomainClass::CpuModel
                && let Some(c) = self.snap.cpu
            {
                // The model's idle is known from the first interval: nothing to learn.
                let watts = self.model_idle_per_cpu * f64::from(c.host.cpus.max(1));
                self.ledger
                    .set_domain_model_idle_watts(DomainId(u32::from(r.domain.0)), watts);
            }
            let iv = DomainInterval {
                domain: DomainId(u32::from(r.domain.0)),
                class,
                start,
                end: r.at,
                measured: r.delta,
                target_share: share,
                estimated: r.flags.estimated,
                integrated: r.flags.integrated,
                unmeasured: false,
                device_idle: class == EnergyKind::Gpu && gpu_idle(&self.snap, r.domain),
                devices: match class {
                    EnergyKind::Gpu => 1,
                    _ => self.snap.cpu.map_or(1, |c| c.host.cpus.max(1)),
                },
            };
            let ir = self.ledger.interval(&iv);
            earliest = earliest.min(start);
            self.totals.idle += ir.idle;
            self.totals.other += ir.other;
            self.totals.attributed += ir.attributed;
            rec.domains.push(DomainSplit {
                id: d.id.clone(),
                split: ir,
                estimated: r.flags.estimated,
                integrated: r.flags.integrated,
            });
        }
        self.close_silent_domains();
        rec.start = earliest;
        self.scratch.clear();
        if all {
            self.scratch.extend(self.ledger.drain_all());
        } else {
            self.scratch.extend(self.ledger.drain_ready());
        }
        self.release();
        rec
    }

    /// Queues the requests the ledger released (in `scratch`) in the order they ended.
    fn release(&mut self) {
        // The ledger releases in start order; records go out in the order requests
        // ended (pipelined requests: in pipeline order). Small keys are sorted, not the
        // records: at 100k requests/s a tick releases thousands of them.
        let ready = std::mem::take(&mut self.scratch);
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend(ready.iter().enumerate().filter_map(|(i, (id, _))| {
            let slot = self.held.remove(id)?;
            let end = self.slab[slot as usize].as_ref().map_or(0, |s| s.end);
            Some((end, *id, slot, i))
        }));
        order.sort_unstable();
        self.released
            .extend(order.iter().map(|&(_, _, slot, i)| (slot, ready[i].1)));
        self.order = order;
        self.scratch = ready;
        self.scratch.clear();
    }

    /// A domain that stopped reporting (a GPU lost, a counter gone) would hold every request
    /// back forever, since a request is released only once every domain has covered its end.
    /// After three silent intervals its gap is closed with an unmeasured interval: no energy,
    /// the requests in it flagged `partial_energy`.
    fn close_silent_domains(&mut self) {
        let now = self.snap.at;
        for idx in 0..self.last_at.len() {
            let Some(prev) = self.last_at[idx] else {
                continue;
            };
            if self.read_now[idx] || now.0.saturating_sub(prev.0) < 3 * self.interval.0 {
                continue;
            }
            let d = &self.snap.domains[idx];
            let Some(class) = kind_of(d.class) else {
                continue;
            };
            if !self.silent[idx] {
                log::warn!(
                    "energy domain {} stopped reporting: its energy is not counted until it returns",
                    d.id
                );
                self.silent[idx] = true;
            }
            self.ledger.interval(&DomainInterval {
                domain: DomainId(idx as u32),
                class,
                start: prev,
                end: now,
                measured: MicroJoules(0),
                target_share: Share::new(0, 1),
                estimated: false,
                integrated: false,
                unmeasured: true,
                device_idle: false,
                devices: 1,
            });
            self.last_at[idx] = Some(now);
        }
    }

    /// Target CPU time ÷ host busy time since the previous tick.
    fn cpu_share(&mut self) -> Share {
        let cur = self.snap.cpu;
        let prev = std::mem::replace(&mut self.prev_cpu, cur);
        match (prev, cur) {
            (Some(p), Some(c)) => {
                let busy = c.host.busy.0.saturating_sub(p.host.busy.0);
                let target = c.target.0.saturating_sub(p.target.0);
                // The two figures come from different clocks (the process CPU clock in ns, host
                // busy from cpuidle in µs or /proc/stat in ticks, each read at its own instant),
                // so the target can read a little above the host. The target's CPU time is the
                // better-resolved figure: the host was busy at least that long.
                let busy = busy.max(target);
                if busy == 0 {
                    Share::new(0, 1)
                } else {
                    Share::new(target, busy)
                }
            }
            _ => Share::new(0, 1),
        }
    }

    /// The model name of the first GPU, for GPU prices.
    #[must_use]
    pub fn gpu_model(&self) -> Option<&str> {
        self.sampler.gpus().next().and_then(|g| g.name.as_deref())
    }
}

/// The server's own account of its work, when it gave both phases (llama.cpp `timings`, Ollama
/// durations). Only one of them says nothing of where a non-streamed request's work began.
fn server_work(t: &ServerTimings) -> Option<ServerWork> {
    let ms = |x: f64| Nanos((x * 1e6) as u64);
    Some(ServerWork {
        prefill: ms(t.prompt_ms?),
        decode: ms(t.predicted_ms?),
        prefill_tokens: t.prompt_n,
    })
}

/// NVML said the GPU did nothing over its last sample period: its power is idle power.
fn gpu_idle(snap: &Snapshot, domain: crate::energy::DomainIdx) -> bool {
    snap.gpu_shares
        .iter()
        .find(|g| g.domain == Some(domain))
        .is_some_and(|g| g.gpu_util == Some(0))
}

fn gpu_share(snap: &Snapshot, domain: crate::energy::DomainIdx) -> Share {
    let share = snap
        .gpu_shares
        .iter()
        .find(|g| g.domain == Some(domain))
        .map_or(
            TargetShare::Unknown,
            crate::energy::nvml::GpuShare::target_share,
        );
    match share {
        TargetShare::None => Share::new(0, 1),
        // Unknown: per-process samples unavailable; the target is assumed to own the GPU.
        TargetShare::All | TargetShare::Unknown => Share::new(1, 1),
        TargetShare::Fraction { target, total } => Share::new(target, total.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;
    use crate::{
        energy::{Domain, DomainIdx, EnergySource, Reading, ReadingFlags, SourceKind, TickCtx},
        probe::ConnId,
        spans::{Flags, Protocol, Usage},
    };

    /// A GPU-like domain drawing 100 W until `lost` is set, then silent (like NVML `GpuLost`).
    struct Flaky {
        domains: Vec<Domain>,
        lost: Arc<AtomicBool>,
        total: u64,
        last: Option<Nanos>,
    }

    impl EnergySource for Flaky {
        fn kind(&self) -> SourceKind {
            SourceKind::Nvml
        }
        fn domains(&self) -> &[Domain] {
            &self.domains
        }
        fn sample(&mut self, ctx: &TickCtx<'_>, out: &mut Vec<Reading>) {
            if self.lost.load(Ordering::Relaxed) {
                return;
            }
            let delta = self.last.map_or(0, |l| (ctx.now.0 - l.0) / 10_000); // 100 W in µJ/ns
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

    fn span(id: u64, start: u64, end: u64) -> RequestSpan {
        RequestSpan {
            id,
            conn: ConnId {
                tgid: 1,
                fd: 3,
                id: 1,
            },
            local: None,
            peer: None,
            protocol: Protocol::Http1,
            method: Some("GET".into()),
            path: Some("/".into()),
            status: Some(200),
            start,
            end,
            first_byte: None,
            first_chunk: None,
            chunks: None,
            bytes_in: 0,
            bytes_out: 0,
            model: None,
            usage: Usage::default(),
            timings: None,
            flags: Flags::default(),
            trace_parent: None,
            request_hash: None,
        }
    }

    /// Regression: a domain that went silent held every later request back forever.
    #[test]
    fn a_domain_that_goes_silent_does_not_hold_requests_back() {
        let lost = Arc::new(AtomicBool::new(false));
        let sampler = SamplerBuilder::new(Roots {
            proc: "/nonexistent".into(),
            powercap: "/nonexistent".into(),
            event_source: "/nonexistent".into(),
            nvml_lib: None,
        })
        .without_nvml()
        .config(SamplerConfig {
            liveness_window: Duration::ZERO,
            ..SamplerConfig::default()
        })
        .source(Box::new(Flaky {
            domains: vec![Domain {
                id: "gpu:0".into(),
                class: DomainClass::Gpu,
                source: SourceKind::Nvml,
                label: "test GPU".into(),
                flags: ReadingFlags::default(),
                note: None,
            }],
            lost: lost.clone(),
            total: 0,
            last: None,
        }))
        .build();
        let rules = Rules::builtin().unwrap();
        let interval = Duration::from_millis(5);
        let mut m = Meter::with_sampler(&rules, interval, sampler);
        let t0 = crate::units::monotonic_now().0;
        m.tick(false); // baseline
        m.started(1, t0);
        std::thread::sleep(Duration::from_millis(6));
        m.tick(false);
        lost.store(true, Ordering::Relaxed);
        let end = crate::units::monotonic_now().0;
        m.finished(span(1, t0, end));
        // Silent for more than three intervals: the gap is closed and the request released.
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(6));
            m.tick(false);
        }
        let mut out = Vec::new();
        m.drain_released(|span, energy| out.push((span.id, *energy)));
        assert_eq!(
            out.len(),
            1,
            "the request is released without waiting for shutdown"
        );
        assert!(out[0].1.flags.partial_energy);
        assert!(out[0].1.energy.gpu.0 > 0, "energy before the loss is kept");
        assert_eq!(m.held(), 0);
    }
}
