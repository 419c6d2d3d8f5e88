//! The sampler: reads every enabled source into a recycled [`Snapshot`] on each tick.
//!
//! The default rate is 10 Hz, NVML's energy-counter update period. A tick writes into a
//! recycled snapshot, so after warm-up sampling allocates nothing (NVML's real backend aside:
//! nvml-wrapper allocates inside its calls). The consumer thread ticks it after each ring drain
//! (`runtime::meter`), so every event stamped before a tick is already a span.
use std::{sync::Arc, time::Duration};

use serde::Serialize;

use super::{
    Domain, DomainIdx, EnergySource, Reading, Roots, TickCtx,
    cpu_model::{CpuModelParams, CpuModelSource},
    cputime::{CpuSample, CpuTimeSource},
    nvml::{GpuInfo, GpuShare, NvmlBackend, NvmlSource, RealNvml, TargetShare, explain_init_error},
    perf_power::{self, PerfPowerSource},
    rapl::{self, RaplSource},
};
use crate::units::{Nanos, monotonic_now};

/// Sampler settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SamplerConfig {
    /// Time between ticks (default 100 ms).
    pub interval: Duration,
    /// CPU power model for hosts without RAPL; `None` leaves CPU energy unmeasured there.
    pub cpu_model: Option<CpuModelParams>,
    /// How long RAPL counters are watched at start-up to reject ones that never move (default
    /// 50 ms). Zero skips the check (fake sysfs trees in tests and benchmarks).
    pub liveness_window: Duration,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            cpu_model: None,
            liveness_window: rapl::LIVENESS_WINDOW,
        }
    }
}

/// Whether a source is used, and why (not), in words for records and the doctor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    /// `nvml`, `powercap`, `perf-power`, `cpu-model`, `cputime`, or `extra` (added by the caller).
    pub source: &'static str,
    pub used: bool,
    pub message: String,
}

/// Everything read on one tick.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Tick number, from 0.
    pub seq: u64,
    /// `CLOCK_MONOTONIC` at the start of the tick.
    pub at: Nanos,
    /// The domain table readings index into (shared, fixed for the sampler's life).
    #[serde(skip)]
    pub domains: Arc<[Domain]>,
    /// One reading per domain that could be read this tick.
    pub readings: Vec<Reading>,
    /// Host and target CPU time, when procfs is readable.
    pub cpu: Option<CpuSample>,
    /// The target's share of each GPU over this tick.
    pub gpu_shares: Vec<GpuShare>,
    /// What this tick cost the sampler.
    pub tick_cost: Nanos,
}

impl Snapshot {
    /// The reading of domain `id` (`gpu:0`, `rapl:package-0`, …), if read this tick.
    #[must_use]
    pub fn reading(&self, id: &str) -> Option<&Reading> {
        self.readings.iter().find(|r| {
            self.domains
                .get(usize::from(r.domain.0))
                .is_some_and(|d| d.id == id)
        })
    }

    /// GPUs the target used this tick (compute context or utilisation samples).
    pub fn target_gpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.gpu_shares
            .iter()
            .filter(|s| s.target_share() != TargetShare::None)
            .map(|s| s.gpu)
    }

    /// The domain a reading belongs to.
    #[must_use]
    pub fn domain(&self, r: &Reading) -> &Domain {
        &self.domains[usize::from(r.domain.0)]
    }
}

enum NvmlChoice {
    Real,
    Backend(Box<dyn NvmlBackend>),
    Off,
}

/// Builds a [`Sampler`] from [`Roots`]; never fails: each missing source is recorded in
/// [`Sampler::status`] with the reason.
pub struct SamplerBuilder {
    roots: Roots,
    config: SamplerConfig,
    nvml: NvmlChoice,
    extra: Vec<Box<dyn EnergySource>>,
}

impl SamplerBuilder {
    #[must_use]
    pub fn new(roots: Roots) -> Self {
        Self {
            roots,
            config: SamplerConfig::default(),
            nvml: NvmlChoice::Real,
            extra: Vec::new(),
        }
    }

    /// Adds a source beyond those found from the roots (sampled after them).
    #[must_use]
    pub fn source(mut self, source: Box<dyn EnergySource>) -> Self {
        self.extra.push(source);
        self
    }

    #[must_use]
    pub fn config(mut self, config: SamplerConfig) -> Self {
        self.config = config;
        self
    }

    /// Uses `backend` instead of loading the real NVML.
    #[must_use]
    pub fn nvml_backend(mut self, backend: Box<dyn NvmlBackend>) -> Self {
        self.nvml = NvmlChoice::Backend(backend);
        self
    }

    /// Does not look for GPUs.
    #[must_use]
    pub fn without_nvml(mut self) -> Self {
        self.nvml = NvmlChoice::Off;
        self
    }

    #[must_use]
    pub fn build(self) -> Sampler {
        let mut st = Status(Vec::new());
        let nvml = open_nvml(self.nvml, &self.roots, &mut st);
        let mut sources = open_rapl(&self.roots, self.config.liveness_window, &mut st);
        let cputime = match CpuTimeSource::open(&self.roots.proc) {
            Ok(c) => {
                st.note("cputime", true, c.describe());
                Some(c)
            }
            Err(e) => {
                st.note("cputime", false, e.to_string());
                None
            }
        };
        let have_cpu_energy = !sources.is_empty();
        match (have_cpu_energy, self.config.cpu_model, &cputime) {
            (true, _, _) => st.note("cpu-model", false, "RAPL measures CPU energy".to_owned()),
            (false, Some(p), Some(_)) => {
                let src = CpuModelSource::new(p);
                let msg = format!("no RAPL; {}", src.domains()[0].label);
                st.note("cpu-model", true, msg);
                sources.push(Box::new(src));
            }
            (false, None, _) => st.note(
                "cpu-model",
                false,
                "No CPU energy: no RAPL and no CPU power model parameters".to_owned(),
            ),
            (false, Some(_), None) => st.note(
                "cpu-model",
                false,
                "No CPU energy: no RAPL and /proc/stat unreadable".to_owned(),
            ),
        }
        for s in self.extra {
            let msg = format!("{} domain(s) from {:?}", s.domains().len(), s.kind());
            st.note("extra", true, msg);
            sources.push(s);
        }
        Sampler::assemble(self.config, nvml, sources, cputime, st.0)
    }
}

struct Status(Vec<SourceStatus>);

impl Status {
    fn note(&mut self, source: &'static str, used: bool, message: String) {
        if used {
            log::info!("energy: {source}: {message}");
        } else {
            log::info!("energy: {source} not used: {message}");
        }
        self.0.push(SourceStatus {
            source,
            used,
            message,
        });
    }
}

fn open_nvml(choice: NvmlChoice, roots: &Roots, st: &mut Status) -> Option<NvmlSource> {
    let backend = match choice {
        NvmlChoice::Real => RealNvml::init(roots.nvml_lib.as_deref())
            .map(|b| Box::new(b) as Box<dyn NvmlBackend>)
            .map_err(|e| explain_init_error(&e)),
        NvmlChoice::Backend(b) => Ok(b),
        NvmlChoice::Off => Err("GPU sampling switched off".to_owned()),
    };
    let (src, msg) = match backend.map(|b| NvmlSource::new(b, monotonic_now())) {
        Ok(Ok(src)) if !src.domains().is_empty() => {
            let msg = format!("{} GPU(s) measured", src.domains().len());
            (Some(src), msg)
        }
        Ok(Ok(src)) if src.gpus().len() == 0 => {
            (None, "NVML loaded but reports no GPUs".to_owned())
        }
        Ok(Ok(_)) => (None, "no GPU exposes energy or power".to_owned()),
        Ok(Err(e)) => (None, format!("NVML failed to list GPUs: {e}")),
        Err(msg) => (None, msg),
    };
    st.note("nvml", src.is_some(), msg);
    src
}

/// RAPL through powercap, else through the perf power PMU (never both: same counters).
fn open_rapl(roots: &Roots, window: Duration, st: &mut Status) -> Vec<Box<dyn EnergySource>> {
    let rapl = rapl::discover(&roots.powercap).and_then(|mut d| {
        rapl::check_advancing(&mut d, window);
        RaplSource::open(&d)
    });
    match rapl {
        Ok(src) => {
            st.note(
                "powercap",
                true,
                format!("{} RAPL zone(s)", src.domains().len()),
            );
            st.note(
                "perf-power",
                false,
                "RAPL already read through powercap".to_owned(),
            );
            return vec![Box::new(src)];
        }
        Err(e) => st.note("powercap", false, e.to_string()),
    }
    match perf_power::discover(&roots.event_source).and_then(|p| PerfPowerSource::open(&p, window))
    {
        Ok(src) => {
            st.note(
                "perf-power",
                true,
                format!("{} RAPL event(s)", src.domains().len()),
            );
            vec![Box::new(src)]
        }
        Err(e) => {
            st.note("perf-power", false, e.to_string());
            Vec::new()
        }
    }
}

/// Reads all enabled sources; the consumer thread calls [`Sampler::tick`] once per interval.
pub struct Sampler {
    config: SamplerConfig,
    nvml: Option<NvmlSource>,
    sources: Vec<Box<dyn EnergySource>>,
    /// First domain index of each source in `sources` (NVML's start at 0).
    bases: Vec<u16>,
    cputime: Option<CpuTimeSource>,
    domains: Arc<[Domain]>,
    status: Vec<SourceStatus>,
    seq: u64,
}

impl Sampler {
    fn assemble(
        config: SamplerConfig,
        nvml: Option<NvmlSource>,
        sources: Vec<Box<dyn EnergySource>>,
        cputime: Option<CpuTimeSource>,
        status: Vec<SourceStatus>,
    ) -> Self {
        let mut domains: Vec<Domain> = nvml
            .as_ref()
            .map(|n| n.domains().to_vec())
            .unwrap_or_default();
        let mut bases = Vec::with_capacity(sources.len());
        for s in &sources {
            bases.push(domains.len() as u16);
            domains.extend_from_slice(s.domains());
        }
        Self {
            config,
            nvml,
            sources,
            bases,
            cputime,
            domains: domains.into(),
            status,
            seq: 0,
        }
    }

    /// All domains, in the order readings index them.
    #[must_use]
    pub fn domains(&self) -> &Arc<[Domain]> {
        &self.domains
    }

    /// Which sources are used and why the others are not.
    #[must_use]
    pub fn status(&self) -> &[SourceStatus] {
        &self.status
    }

    /// The GPUs NVML listed (empty without NVML), with how each is measured.
    pub fn gpus(&self) -> impl Iterator<Item = &GpuInfo> {
        self.nvml.iter().flat_map(NvmlSource::gpus)
    }

    #[must_use]
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The target's tgids, for CPU time and GPU shares.
    pub fn set_targets(&mut self, tgids: &[u32]) {
        if let Some(c) = &mut self.cputime {
            c.set_targets(tgids);
        }
        if let Some(n) = &mut self.nvml {
            n.set_targets(tgids);
        }
    }

    /// An empty snapshot sized for this sampler (allocates; reuse it).
    #[must_use]
    pub fn new_snapshot(&self) -> Snapshot {
        Snapshot {
            seq: 0,
            at: Nanos::ZERO,
            domains: Arc::clone(&self.domains),
            readings: Vec::with_capacity(self.domains.len()),
            cpu: None,
            gpu_shares: Vec::with_capacity(self.nvml.as_ref().map_or(0, |n| n.gpus().len())),
            tick_cost: Nanos::ZERO,
        }
    }

    /// Reads every source once into `snap`.
    pub fn tick(&mut self, snap: &mut Snapshot) {
        let start = monotonic_now();
        snap.readings.clear();
        snap.gpu_shares.clear();
        snap.cpu = match self.cputime.as_mut().map(|c| c.sample(start)) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                log::warn!("CPU time unreadable, CPU split and CPU model stop: {e}");
                self.cputime = None;
                None
            }
            None => None,
        };
        let host = snap.cpu.as_ref().map(|c| c.host);
        if let Some(n) = &mut self.nvml {
            let ctx = TickCtx {
                now: monotonic_now(),
                cpu: host.as_ref(),
            };
            n.sample(&ctx, &mut snap.readings);
            snap.gpu_shares.extend(n.shares().copied());
        }
        for (src, &base) in self.sources.iter_mut().zip(&self.bases) {
            let ctx = TickCtx {
                now: monotonic_now(),
                cpu: host.as_ref(),
            };
            let from = snap.readings.len();
            src.sample(&ctx, &mut snap.readings);
            for r in &mut snap.readings[from..] {
                r.domain = DomainIdx(r.domain.0 + base);
            }
        }
        snap.seq = self.seq;
        self.seq += 1;
        snap.at = start;
        if !Arc::ptr_eq(&snap.domains, &self.domains) {
            snap.domains = Arc::clone(&self.domains);
        }
        snap.tick_cost = monotonic_now().saturating_sub(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::{MilliWatts, SourceKind, nvml::replay::ReplayNvml};

    fn no_hw_roots() -> Roots {
        Roots {
            proc: "/proc".into(),
            powercap: "/nonexistent/powercap".into(),
            event_source: "/nonexistent/event_source".into(),
            nvml_lib: Some("/nonexistent/libnvidia-ml.so.1".into()),
        }
    }

    fn model() -> SamplerConfig {
        SamplerConfig {
            cpu_model: Some(CpuModelParams {
                idle_per_cpu: MilliWatts::from_watts(3.0),
                max_per_cpu: MilliWatts::from_watts(12.0),
            }),
            ..SamplerConfig::default()
        }
    }

    #[test]
    fn host_without_hardware_falls_back_to_model_and_says_why() {
        let s = SamplerBuilder::new(no_hw_roots()).config(model()).build();
        let by = |n: &str| s.status().iter().find(|x| x.source == n).unwrap().clone();
        assert!(!by("nvml").used);
        assert!(
            by("nvml")
                .message
                .starts_with("No NVIDIA GPU: libnvidia-ml.so.1 not found")
        );
        assert!(by("powercap").message.contains("No RAPL"));
        assert!(by("perf-power").message.contains("No perf power PMU"));
        assert!(by("cpu-model").used);
        let ids: Vec<_> = s.domains().iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["cpu:model"]);
    }

    #[test]
    fn without_model_params_cpu_energy_is_reported_missing() {
        let s = SamplerBuilder::new(no_hw_roots()).build();
        assert!(s.domains().is_empty());
        let m = &s
            .status()
            .iter()
            .find(|x| x.source == "cpu-model")
            .unwrap()
            .message;
        assert!(m.starts_with("No CPU energy"), "{m}");
    }

    #[test]
    fn ticks_combine_gpus_and_cpu_model_with_global_indices() {
        let replay = ReplayNvml::fixture("h100x2_shared_gpu_lost.ndjson");
        let cursor = replay.cursor();
        let mut s = SamplerBuilder::new(no_hw_roots())
            .config(model())
            .nvml_backend(Box::new(replay))
            .build();
        s.set_targets(&[4242, std::process::id()]);
        let ids: Vec<_> = s.domains().iter().map(|d| d.id.clone()).collect();
        assert_eq!(ids, ["gpu:0", "gpu:1", "cpu:model"]);
        let mut snap = s.new_snapshot();
        s.tick(&mut snap);
        cursor.store(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        s.tick(&mut snap);
        assert_eq!(snap.seq, 1);
        assert_eq!(snap.reading("gpu:1").unwrap().delta.0, 30_000_000);
        let model = snap.reading("cpu:model").unwrap();
        assert!(model.flags.estimated && model.delta.0 > 0);
        assert_eq!(snap.domain(model).source, SourceKind::CpuModel);
        assert_eq!(snap.gpu_shares.len(), 2);
        assert_eq!(snap.target_gpus().collect::<Vec<_>>(), [0]);
        assert!(snap.cpu.unwrap().target_alive >= 1);
    }
}
