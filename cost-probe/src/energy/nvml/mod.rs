//! NVIDIA GPUs through NVML (nvml-wrapper), behind the small [`NvmlBackend`] trait so tests can
//! replay recorded values.
//!
//! Per GPU the total-energy counter (Volta and newer, mJ since driver load) is primary. Where it
//! is not supported the power reading is integrated over time (trapezoid on `CLOCK_MONOTONIC`)
//! and readings are flagged `integrated`. A GPU that is lost or unsupported mid-run is disabled
//! with one warning; the others keep going.
//!
//! The real backend allocates inside nvml-wrapper (it returns `Vec`s and `String`s); the
//! source's own bookkeeping reuses buffers.
use std::path::Path;

use nvml_wrapper::Nvml;
pub use nvml_wrapper::error::NvmlError;
use serde::Serialize;

use super::{
    Counter, CounterRange, Domain, DomainClass, DomainIdx, EnergyError, EnergySource, MilliWatts,
    Reading, ReadingFlags, SourceKind, TickCtx,
};
use crate::units::{MicroJoules, Nanos};

/// One per-process utilisation sample (`nvmlProcessUtilizationSample_t`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessSample {
    pub pid: u32,
    /// NVML's CPU timestamp in µs (wall clock); only used as the "seen up to" cursor.
    pub timestamp_us: u64,
    /// SM (compute) utilisation percent.
    pub sm_util: u32,
}

/// Device utilisation percent over NVML's last sample period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GpuUtilization {
    pub gpu: u32,
    pub memory: u32,
}

/// The NVML calls cost-probe needs. Methods take `&mut self` so replay backends can advance.
pub trait NvmlBackend: Send {
    fn device_count(&mut self) -> Result<u32, NvmlError>;
    fn name(&mut self, index: u32) -> Result<String, NvmlError>;
    fn uuid(&mut self, index: u32) -> Result<String, NvmlError>;
    /// Enforced power limit.
    fn power_limit(&mut self, index: u32) -> Result<MilliWatts, NvmlError>;
    /// Total energy in millijoules since the driver was loaded (Volta and newer).
    fn total_energy_mj(&mut self, index: u32) -> Result<u64, NvmlError>;
    /// Board power. On Ampere (except GA100) and newer this is a 1 s average.
    fn power_usage(&mut self, index: u32) -> Result<MilliWatts, NvmlError>;
    fn utilization(&mut self, index: u32) -> Result<GpuUtilization, NvmlError>;
    /// Appends the per-process samples newer than `last_seen_us`; none is not an error.
    fn process_utilization(
        &mut self,
        index: u32,
        last_seen_us: u64,
        out: &mut Vec<ProcessSample>,
    ) -> Result<(), NvmlError>;
    /// Appends the pids with a compute context on the device.
    fn running_compute_pids(&mut self, index: u32, out: &mut Vec<u32>) -> Result<(), NvmlError>;
}

/// NVML through nvml-wrapper, loaded at run time (no link-time dependency on the driver).
pub struct RealNvml {
    nvml: Nvml,
}

impl RealNvml {
    /// Loads `lib` (default `libnvidia-ml.so.1`) and initialises NVML.
    pub fn init(lib: Option<&Path>) -> Result<Self, NvmlError> {
        let nvml = match lib {
            Some(p) => Nvml::builder().lib_path(p.as_os_str()).init()?,
            None => Nvml::init()?,
        };
        Ok(Self { nvml })
    }
}

impl NvmlBackend for RealNvml {
    fn device_count(&mut self) -> Result<u32, NvmlError> {
        self.nvml.device_count()
    }
    fn name(&mut self, index: u32) -> Result<String, NvmlError> {
        self.nvml.device_by_index(index)?.name()
    }
    fn uuid(&mut self, index: u32) -> Result<String, NvmlError> {
        self.nvml.device_by_index(index)?.uuid()
    }
    fn power_limit(&mut self, index: u32) -> Result<MilliWatts, NvmlError> {
        Ok(MilliWatts(u64::from(
            self.nvml.device_by_index(index)?.enforced_power_limit()?,
        )))
    }
    fn total_energy_mj(&mut self, index: u32) -> Result<u64, NvmlError> {
        self.nvml.device_by_index(index)?.total_energy_consumption()
    }
    fn power_usage(&mut self, index: u32) -> Result<MilliWatts, NvmlError> {
        Ok(MilliWatts(u64::from(
            self.nvml.device_by_index(index)?.power_usage()?,
        )))
    }
    fn utilization(&mut self, index: u32) -> Result<GpuUtilization, NvmlError> {
        let u = self.nvml.device_by_index(index)?.utilization_rates()?;
        Ok(GpuUtilization {
            gpu: u.gpu,
            memory: u.memory,
        })
    }
    fn process_utilization(
        &mut self,
        index: u32,
        last_seen_us: u64,
        out: &mut Vec<ProcessSample>,
    ) -> Result<(), NvmlError> {
        match self
            .nvml
            .device_by_index(index)?
            .process_utilization_stats(last_seen_us)
        {
            Ok(samples) => {
                out.extend(samples.into_iter().map(|s| ProcessSample {
                    pid: s.pid,
                    timestamp_us: s.timestamp,
                    sm_util: s.sm_util,
                }));
                Ok(())
            }
            // NVML's way of saying "no samples since last_seen".
            Err(NvmlError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
    fn running_compute_pids(&mut self, index: u32, out: &mut Vec<u32>) -> Result<(), NvmlError> {
        let procs = self
            .nvml
            .device_by_index(index)?
            .running_compute_processes()?;
        out.extend(procs.iter().map(|p| p.pid));
        Ok(())
    }
}

/// Why NVML is not there, in a user's words.
#[must_use]
pub fn explain_init_error(e: &NvmlError) -> String {
    let why = match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => {
            "No NVIDIA GPU: libnvidia-ml.so.1 not found"
        }
        NvmlError::DriverNotLoaded => {
            "No NVIDIA GPU: libnvidia-ml.so.1 is installed but the NVIDIA driver is not loaded"
        }
        NvmlError::NoPermission => "NVIDIA driver refused access to NVML (permission denied)",
        NvmlError::LibRmVersionMismatch => {
            "NVML library and NVIDIA kernel driver versions differ (reload the driver or reboot)"
        }
        NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound => {
            "libnvidia-ml.so.1 is too old for this program"
        }
        other => return format!("NVML could not start ({other}), so GPU energy is not measured"),
    };
    format!("{why}, so GPU energy is not measured")
}

/// How a GPU's energy is measured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", content = "reason", rename_all = "snake_case")]
pub enum GpuEnergyMode {
    /// Total-energy counter.
    Counter,
    /// Power integrated over time.
    IntegratedPower,
    /// Not measured, with the reason.
    Disabled(String),
}

/// What we know about one GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub power_limit: Option<MilliWatts>,
    pub mode: GpuEnergyMode,
    /// Per-process utilisation is available (needed to split a shared GPU).
    pub process_stats: bool,
    #[serde(skip)]
    pub domain: Option<DomainIdx>,
}

/// The target's use of one GPU over the last tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GpuShare {
    pub gpu: u32,
    /// The GPU's energy domain, if its energy is measured.
    pub domain: Option<DomainIdx>,
    /// Sum of SM-utilisation samples of target pids since the previous tick.
    pub target_sm: u64,
    /// Same for every other process.
    pub other_sm: u64,
    pub samples: u32,
    /// A target pid has a compute context on this GPU.
    pub target_running: bool,
    /// Some other pid has a compute context on this GPU.
    pub others_running: bool,
    /// Device utilisation percent, when readable.
    pub gpu_util: Option<u32>,
}

/// How much of a GPU's energy belongs to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetShare {
    /// The target does not use this GPU.
    None,
    /// Only the target uses it.
    All,
    /// Shared: the target's part of the SM-utilisation samples.
    Fraction { target: u64, total: u64 },
    /// Shared, but no samples tell how (idle, or per-process stats unsupported).
    Unknown,
}

impl GpuShare {
    #[must_use]
    pub fn target_share(&self) -> TargetShare {
        if !(self.target_running || self.target_sm > 0) {
            return TargetShare::None;
        }
        if !(self.others_running || self.other_sm > 0) {
            return TargetShare::All;
        }
        let total = self.target_sm + self.other_sm;
        if total == 0 {
            TargetShare::Unknown
        } else {
            TargetShare::Fraction {
                target: self.target_sm,
                total,
            }
        }
    }
}

struct GpuState {
    info: GpuInfo,
    counter: Counter,
    last_power: Option<(Nanos, u64)>,
    /// Integrated energy in half-picojoules ((mW + mW) × ns), exact.
    acc_half_pj: u128,
    total: MicroJoules,
    failures: u32,
    last_seen_us: u64,
    share: GpuShare,
}

/// Consecutive transient failures before a GPU is given up on.
const MAX_FAILURES: u32 = 10;

const INTEGRATED: ReadingFlags = ReadingFlags {
    integrated: true,
    estimated: false,
};

/// All GPUs NVML reports.
pub struct NvmlSource {
    backend: Box<dyn NvmlBackend>,
    gpus: Vec<GpuState>,
    domains: Vec<Domain>,
    targets: Vec<u32>,
    samples: Vec<ProcessSample>,
    pids: Vec<u32>,
}

impl NvmlSource {
    /// Enumerates the GPUs and picks each one's energy method. `now` starts power integration.
    pub fn new(mut backend: Box<dyn NvmlBackend>, now: Nanos) -> Result<Self, EnergyError> {
        let count = backend.device_count()?;
        let mut gpus = Vec::with_capacity(count as usize);
        let mut domains = Vec::new();
        let mut samples = Vec::new();
        for index in 0..count {
            let name = backend.name(index).ok();
            let uuid = backend.uuid(index).ok();
            let power_limit = backend.power_limit(index).ok();
            let mut counter = Counter::new(CounterRange::Monotonic);
            let mut last_power = None;
            let mode = match backend.total_energy_mj(index) {
                Ok(mj) => {
                    counter.observe(mj);
                    GpuEnergyMode::Counter
                }
                Err(NvmlError::NotSupported) => match backend.power_usage(index) {
                    Ok(p) => {
                        last_power = Some((now, p.0));
                        GpuEnergyMode::IntegratedPower
                    }
                    Err(e) => GpuEnergyMode::Disabled(format!(
                        "no energy counter and no power reading ({e})"
                    )),
                },
                Err(e) => GpuEnergyMode::Disabled(e.to_string()),
            };
            // Prime the per-process cursor so the first tick sees only new samples.
            samples.clear();
            let mut last_seen_us = 0;
            let process_stats = match backend.process_utilization(index, 0, &mut samples) {
                Ok(()) => {
                    last_seen_us = samples.iter().map(|s| s.timestamp_us).max().unwrap_or(0);
                    true
                }
                Err(_) => false,
            };
            let domain = (!matches!(mode, GpuEnergyMode::Disabled(_))).then(|| {
                let idx = DomainIdx(domains.len() as u16);
                domains.push(gpu_domain(index, name.as_deref(), uuid.as_deref(), &mode));
                idx
            });
            if let GpuEnergyMode::Disabled(why) = &mode {
                log::warn!("GPU {index}: energy not measured: {why}");
            }
            gpus.push(GpuState {
                info: GpuInfo {
                    index,
                    name,
                    uuid,
                    power_limit,
                    mode,
                    process_stats,
                    domain,
                },
                counter,
                last_power,
                acc_half_pj: 0,
                total: MicroJoules(0),
                failures: 0,
                last_seen_us,
                share: GpuShare {
                    gpu: index,
                    domain,
                    ..GpuShare::default()
                },
            });
        }
        Ok(Self {
            backend,
            gpus,
            domains,
            targets: Vec::new(),
            samples: Vec::with_capacity(64),
            pids: Vec::with_capacity(64),
        })
    }

    /// The pids whose GPU share is reported (the target's tgids).
    pub fn set_targets(&mut self, tgids: &[u32]) {
        self.targets.clear();
        self.targets.extend_from_slice(tgids);
        self.targets.sort_unstable();
        self.targets.dedup();
    }

    #[must_use]
    pub fn gpus(&self) -> impl ExactSizeIterator<Item = &GpuInfo> {
        self.gpus.iter().map(|g| &g.info)
    }

    /// The target's share of each GPU over the last tick.
    #[must_use]
    pub fn shares(&self) -> impl ExactSizeIterator<Item = &GpuShare> {
        self.gpus.iter().map(|g| &g.share)
    }

    /// GPUs on which a target pid has a compute context or utilisation samples.
    pub fn target_gpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.gpus
            .iter()
            .filter(|g| g.share.target_share() != TargetShare::None)
            .map(|g| g.info.index)
    }

    fn read_energy(&mut self, i: usize, now: Nanos) -> Result<Option<Reading>, NvmlError> {
        let g = &mut self.gpus[i];
        let Some(domain) = g.info.domain else {
            return Ok(None);
        };
        let (delta, flags) = match g.info.mode {
            GpuEnergyMode::Counter => {
                let mj = self.backend.total_energy_mj(g.info.index)?;
                (
                    MicroJoules(g.counter.observe(mj) * 1000),
                    ReadingFlags::default(),
                )
            }
            GpuEnergyMode::IntegratedPower => {
                let p = self.backend.power_usage(g.info.index)?.0;
                if let Some((t0, p0)) = g.last_power.replace((now, p)) {
                    let dt = now.saturating_sub(t0).0;
                    g.acc_half_pj += u128::from(p0 + p) * u128::from(dt);
                }
                let total = MicroJoules((g.acc_half_pj / 2_000_000) as u64);
                (total.saturating_sub(g.total), INTEGRATED)
            }
            GpuEnergyMode::Disabled(_) => return Ok(None),
        };
        g.total += delta;
        Ok(Some(Reading {
            domain,
            at: now,
            total: g.total,
            delta,
            flags,
        }))
    }

    fn read_share(&mut self, i: usize) -> Result<(), NvmlError> {
        let g = &mut self.gpus[i];
        let index = g.info.index;
        let mut share = GpuShare {
            gpu: index,
            domain: g.info.domain,
            ..GpuShare::default()
        };
        if g.info.process_stats {
            self.samples.clear();
            match self
                .backend
                .process_utilization(index, g.last_seen_us, &mut self.samples)
            {
                Ok(()) => {
                    for s in &self.samples {
                        g.last_seen_us = g.last_seen_us.max(s.timestamp_us);
                        share.samples += 1;
                        if self.targets.binary_search(&s.pid).is_ok() {
                            share.target_sm += u64::from(s.sm_util);
                        } else {
                            share.other_sm += u64::from(s.sm_util);
                        }
                    }
                }
                Err(NvmlError::NotSupported) => {
                    g.info.process_stats = false;
                    log::warn!(
                        "GPU {index}: per-process utilisation not supported; a shared GPU \
                         cannot be split between processes"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        self.pids.clear();
        match self.backend.running_compute_pids(index, &mut self.pids) {
            // Placement is then known only from utilisation samples; energy is unaffected.
            Ok(()) | Err(NvmlError::NotSupported) => {}
            Err(e) => return Err(e),
        }
        for pid in &self.pids {
            if self.targets.binary_search(pid).is_ok() {
                share.target_running = true;
            } else {
                share.others_running = true;
            }
        }
        share.gpu_util = self.backend.utilization(index).ok().map(|u| u.gpu);
        g.share = share;
        Ok(())
    }

    /// Counts a failure; permanent ones (lost, unsupported) disable the GPU at once, transient
    /// ones after [`MAX_FAILURES`] in a row. One warning either way.
    fn fail(&mut self, i: usize, e: &NvmlError) {
        let g = &mut self.gpus[i];
        g.share = GpuShare {
            gpu: g.info.index,
            domain: g.info.domain,
            ..GpuShare::default()
        };
        let permanent = matches!(
            e,
            NvmlError::GpuLost
                | NvmlError::ResetRequired
                | NvmlError::NotSupported
                | NvmlError::Uninitialized
                | NvmlError::InvalidArg
        );
        g.failures += 1;
        if permanent || g.failures >= MAX_FAILURES {
            log::warn!("GPU {}: disabled: {e}", g.info.index);
            g.info.mode = GpuEnergyMode::Disabled(e.to_string());
        } else if g.failures == 1 {
            log::warn!("GPU {}: read failed, will retry: {e}", g.info.index);
        }
    }
}

fn gpu_domain(index: u32, name: Option<&str>, uuid: Option<&str>, mode: &GpuEnergyMode) -> Domain {
    let integrated = *mode == GpuEnergyMode::IntegratedPower;
    Domain {
        id: format!("gpu:{index}"),
        class: DomainClass::Gpu,
        source: SourceKind::Nvml,
        label: format!(
            "{} ({})",
            name.unwrap_or("NVIDIA GPU"),
            uuid.unwrap_or("uuid unknown")
        ),
        flags: if integrated {
            INTEGRATED
        } else {
            ReadingFlags::default()
        },
        note: integrated.then(|| {
            "no energy counter (pre-Volta): power integrated over time; on Ampere and newer \
             NVML power is a 1 s average, so short bursts are smeared"
                .to_owned()
        }),
    }
}

impl EnergySource for NvmlSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Nvml
    }

    fn domains(&self) -> &[Domain] {
        &self.domains
    }

    fn sample(&mut self, ctx: &TickCtx<'_>, out: &mut Vec<Reading>) {
        for i in 0..self.gpus.len() {
            if matches!(self.gpus[i].info.mode, GpuEnergyMode::Disabled(_)) {
                continue;
            }
            // The energy reading goes out even if the share query then fails, so `delta`
            // sums never skip an interval.
            match self.read_energy(i, ctx.now) {
                Ok(reading) => out.extend(reading),
                Err(e) => {
                    self.fail(i, &e);
                    continue;
                }
            }
            match self.read_share(i) {
                Ok(()) => self.gpus[i].failures = 0,
                Err(e) => self.fail(i, &e),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod replay;
#[cfg(test)]
mod tests;
