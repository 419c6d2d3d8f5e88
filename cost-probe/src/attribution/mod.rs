//! Joules and device-seconds per request, from per-domain energy intervals and request spans.
//!
//! Pure: values in, values out, no I/O and no clocks. The integrator feeds span events (start,
//! stream progress, end with what the response said of the server's work) and energy intervals
//! in time order (span events stamped before an interval's end should reach the [`Ledger`]
//! before that interval does); the ledger answers each interval with an [`IntervalSplit`] at
//! once and hands finished requests back through [`Ledger::drain_ready`].
//!
//! # Method (DESIGN.md "Attribution", with the changes noted)
//! For each interval of domain d:
//! 1. `target = measured × share` (exact rational, floor), `other = measured − target`.
//! 2. Idle power `P_idle(d)` is, in order of precedence: a value pinned for the domain (rules
//!    `[gpu.X] idle_watts`, or a modelled domain's own idle: the CPU power model's idle watts
//!    per CPU × CPUs, known from the first interval), the fixed `[attribution] idle_power =
//!    <watts>`, or LEARNED (see below); with none of these, 0 and the interval says `none`.
//!    `static = min(target, share × P_idle × Δt)`, `dynamic = target − static`.
//!    *Change from DESIGN*: the idle floor is scaled by the target's share, because `P_idle` is a
//!    whole-device figure and the other processes' part of the device already carries its own
//!    slice of the floor inside `other`. With share 1 (the common case) this is DESIGN's formula.
//! 3. `dynamic` (or all of `target` under `idle = "amortize"`) goes to the requests open in the
//!    interval, `static` to `idle`. With no request open, all of `target` is idle. The interval
//!    record is final at once; which request gets what may wait (step 4).
//! 4. **Activity-aware split** (*change from DESIGN*, which split by time open): each request's
//!    part is its time *worked on* inside the interval (× its tokens in `split = "tokens"`),
//!    from the work windows of [`work`]: queued from arrival, prefill, then decode until its
//!    end. A request waiting in the server's queue gets nothing for that time. The windows come
//!    from the server's own timings (llama.cpp, Ollama), else from the stream (the first chunk
//!    ends prefill; prefill length from a rate learned on requests that did not wait), else the
//!    request counts as worked on while open (`overlap`, the old method). Where a request open
//!    in an interval has not yet shown where its queue ended (no chunk yet, not ended), the
//!    interval's split waits for it, at most [`MAX_HOLD`] (then it is made from what is known,
//!    flagged `split_estimated`). Device-time is shared the same way, by processor sharing
//!    over the work windows.
//! 5. Every split is exact: floor parts, and the few µJ the floors leave go to the request with
//!    the largest weight, so `Σ requests + idle + other == measured` holds exactly in integer
//!    microjoules, and no part is ever negative (all arithmetic is unsigned).
//!
//! LEARNED idle power: over intervals in which no request of the target is open or the device
//! reported no activity (`device_idle`: NVML utilisation 0 %), the device's power
//! (`measured / Δt`, whole device) is kept in a ring of the last `idle_window` samples; the
//! estimate is its `idle_percentile`-th percentile (default 5th), used once `MIN_IDLE_SAMPLES`
//! samples exist. A low percentile rather than the mean because the first idle intervals after a
//! burst still carry ramp-down power, and another process may briefly use the device.
//!
//! Capacity: the target's device-time (`devices × Δt × share`) while some request was open is
//! the requests'; the rest of the target's part is idle capacity, the rest of the device
//! `other`. A request that shares a GPU with 7 others for a whole second gets 1/8 GPU-second.
//!
//! Token split: a request's tokens are only known when its span ends; an interval settled while
//! a request is still open weighs it by the mean token count of requests ended so far (1
//! before any), and the request is flagged `token_weight_estimated`.

mod idle;
mod ids;
mod ledger;
#[cfg(test)]
mod queue_tests;
mod share;
#[cfg(test)]
mod tests;
mod work;

use serde::Serialize;

pub use self::ids::IdMap;
pub use self::ledger::{Audit, Ledger, LedgerCounters, MAX_HOLD};
pub use self::work::{ServerWork, SplitMethod, WorkHints};
use crate::units::{MicroJoules, Nanos};

/// Fewest idle-interval samples before a learned idle power is trusted.
pub const MIN_IDLE_SAMPLES: usize = 5;

/// What kind of energy a domain measures; a request's joules and device-seconds are kept per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnergyKind {
    Gpu,
    /// RAPL package, psys, or the CPU power model.
    Cpu,
    Dram,
}

/// A small id the integrator assigns to each energy domain (GPU 0, RAPL package 0, …); names
/// stay with the integrator so the hot path compares integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DomainId(pub u32);

/// An exact fraction in `[0, 1]`: the target's part of a domain's energy in one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    num: u64,
    den: u64,
}

impl Share {
    pub const ALL: Self = Self { num: 1, den: 1 };
    pub const NONE: Self = Self { num: 0, den: 1 };

    /// `num / den`, clamped to 1. A zero denominator (no busy time at all on the host) means the
    /// target used none of the domain.
    #[must_use]
    pub fn new(num: u64, den: u64) -> Self {
        if den == 0 {
            Self::NONE
        } else {
            Self {
                num: num.min(den),
                den,
            }
        }
    }

    #[must_use]
    pub fn num(self) -> u64 {
        self.num
    }

    #[must_use]
    pub fn den(self) -> u64 {
        self.den
    }

    /// `⌊x × share⌋`; never more than `x`.
    #[must_use]
    pub fn apply(self, x: u64) -> u64 {
        (u128::from(x) * u128::from(self.num) / u128::from(self.den)) as u64
    }

    fn apply_wide(self, x: u128) -> u128 {
        // Split the multiplication so `x × num` cannot overflow even for huge x.
        let (q, r) = (x / u128::from(self.den), x % u128::from(self.den));
        q * u128::from(self.num) + r * u128::from(self.num) / u128::from(self.den)
    }
}

/// One interval of one energy domain, as the energy sampler measured it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about one reading, each read by the ledger on its own"
)]
pub struct DomainInterval {
    pub domain: DomainId,
    pub class: EnergyKind,
    pub start: Nanos,
    pub end: Nanos,
    /// Whole-device energy over `[start, end)`.
    pub measured: MicroJoules,
    /// GPU: the target's share of per-process SM utilisation; CPU: target CPU time ÷ host busy
    /// time.
    pub target_share: Share,
    /// The energy comes from the CPU power model, not a counter.
    pub estimated: bool,
    /// The energy was integrated from power samples rather than read from an energy counter.
    pub integrated: bool,
    /// The domain did not report over this interval (a GPU lost, a counter gone): `measured` is
    /// 0, requests active in it are flagged `partial_energy`, and it does not teach idle power.
    /// It keeps the domain's watermark moving, so requests are not held back forever.
    pub unmeasured: bool,
    /// The device itself reported no activity over the interval (NVML utilisation 0 %): its
    /// power is idle power, whatever the target's requests were doing (waiting in a queue, or
    /// on the CPU). Idle power is learned from such intervals as well as request-free ones.
    pub device_idle: bool,
    /// Devices behind the domain (cores, or 1 GPU): capacity is `devices × Δt`.
    pub devices: u32,
}

/// How the target's idle (static) energy is reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdleMode {
    /// An explicit `idle` bucket, priced separately.
    #[default]
    Explicit,
    /// Split over the requests active in the interval, like dynamic energy.
    Amortize,
}

/// How energy is split among requests active in an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitMode {
    /// By overlap time.
    #[default]
    Time,
    /// By overlap time × the request's tokens.
    Tokens,
}

/// Where a domain's idle power comes from when none is pinned for it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum IdlePower {
    #[default]
    Learned,
    Watts(f64),
}

/// Which idle power an interval used (for the interval record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleSource {
    /// Rules (`[gpu.X] idle_watts`).
    Pinned,
    /// The power model's own idle (a modelled domain).
    Model,
    Fixed,
    Learned,
    /// Nothing known yet: all target energy counted dynamic.
    #[default]
    None,
}

/// Ledger settings; `rules::Rules::ledger_config` builds one from `[attribution]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerConfig {
    pub idle: IdleMode,
    pub split: SplitMode,
    pub idle_power: IdlePower,
    /// Spans started but not ended beyond this many evict the oldest (flagged `evicted`).
    pub max_open_spans: usize,
    /// Percentile (0–100) of idle-interval power taken as learned idle power.
    pub idle_percentile: u8,
    /// Idle-interval power samples kept per domain.
    pub idle_window: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            idle: IdleMode::Explicit,
            split: SplitMode::Time,
            idle_power: IdlePower::Learned,
            max_open_spans: 10_000,
            idle_percentile: 5,
            idle_window: 3_000,
        }
    }
}

/// One value per domain class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PerClass<T> {
    pub gpu: T,
    pub cpu: T,
    pub dram: T,
}

impl<T> PerClass<T> {
    pub fn get_mut(&mut self, class: EnergyKind) -> &mut T {
        match class {
            EnergyKind::Gpu => &mut self.gpu,
            EnergyKind::Cpu => &mut self.cpu,
            EnergyKind::Dram => &mut self.dram,
        }
    }

    pub fn get(&self, class: EnergyKind) -> &T {
        match class {
            EnergyKind::Gpu => &self.gpu,
            EnergyKind::Cpu => &self.cpu,
            EnergyKind::Dram => &self.dram,
        }
    }
}

/// Qualifiers on a request's numbers; [`RequestFlags::names`] gives the record's `flags` strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent yes/no facts, emitted as a list of names"
)]
pub struct RequestFlags {
    /// Some CPU energy came from the power model.
    pub estimated_cpu: bool,
    /// Some GPU energy was integrated from power samples.
    pub integrated_gpu: bool,
    /// Some intervals the request spans were never seen (shutdown, or a late span start).
    pub partial_energy: bool,
    /// The span never ended (drained at shutdown or evicted).
    pub unfinished: bool,
    /// Evicted by the open-span cap.
    pub evicted: bool,
    /// Token split used an estimated token count for this request.
    pub token_weight_estimated: bool,
    /// Some interval was split before the request's queue time was known (held too long).
    pub split_estimated: bool,
}

impl RequestFlags {
    /// The set flags, as the record's `flags` strings.
    #[must_use]
    pub fn names(&self) -> Vec<&'static str> {
        self.iter_names().collect()
    }

    /// Like [`Self::names`], without allocating.
    pub fn iter_names(&self) -> impl Iterator<Item = &'static str> + use<> {
        [
            (self.estimated_cpu, "estimated_cpu"),
            (self.integrated_gpu, "integrated_gpu"),
            (self.partial_energy, "partial_energy"),
            (self.unfinished, "unfinished"),
            (self.evicted, "evicted"),
            (self.token_weight_estimated, "token_weight_estimated"),
            (self.split_estimated, "split_estimated"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
    }
}

/// Where a request's time and energy went: queue, prefill, decode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    pub method: SplitMethod,
    /// Waiting in the server's queue (not with [`SplitMethod::Overlap`]: unknown there).
    pub queue: Option<Nanos>,
    /// Prefill time (not with [`SplitMethod::Overlap`]).
    pub prefill_time: Option<Nanos>,
    /// Energy while prefilling, all classes; `prefill + decode` is the request's total.
    pub prefill: MicroJoules,
    pub decode: MicroJoules,
}

/// What one finished request consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestEnergy {
    pub energy: PerClass<MicroJoules>,
    /// Device-nanoseconds (GPU-ns, core-ns, DRAM-zone-ns).
    pub device_ns: PerClass<u64>,
    pub phases: Phases,
    pub flags: RequestFlags,
}

/// Joules in the record shape `energy_j {gpu, cpu, dram, total}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EnergyJoules {
    pub gpu: f64,
    pub cpu: f64,
    pub dram: f64,
    pub total: f64,
}

impl RequestEnergy {
    #[must_use]
    pub fn total(&self) -> MicroJoules {
        self.energy.gpu + self.energy.cpu + self.energy.dram
    }

    #[must_use]
    pub fn energy_j(&self) -> EnergyJoules {
        EnergyJoules {
            gpu: self.energy.gpu.joules(),
            cpu: self.energy.cpu.joules(),
            dram: self.energy.dram.joules(),
            total: self.total().joules(),
        }
    }

    #[must_use]
    pub fn device_seconds(&self) -> PerClass<f64> {
        PerClass {
            gpu: self.device_ns.gpu as f64 / 1e9,
            cpu: self.device_ns.cpu as f64 / 1e9,
            dram: self.device_ns.dram as f64 / 1e9,
        }
    }
}

/// Device-time of one interval, split like the energy (device-nanoseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CapacitySplit {
    pub total: u64,
    pub attributed: u64,
    pub idle: u64,
    pub other: u64,
}

/// The ledger's answer to one interval: the `interval` record's numbers plus the audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IntervalSplit {
    pub domain: DomainId,
    pub class: EnergyKind,
    pub start: Nanos,
    pub end: Nanos,
    pub measured: MicroJoules,
    pub attributed: MicroJoules,
    pub idle: MicroJoules,
    pub other: MicroJoules,
    /// The target's static part (in `idle` unless amortized).
    pub static_energy: MicroJoules,
    pub idle_power_uw: u64,
    pub idle_source: IdleSource,
    pub active_requests: u32,
    pub capacity: CapacitySplit,
}

impl IntervalSplit {
    /// Whether energy and capacity add up exactly.
    #[must_use]
    pub fn is_conserved(&self) -> bool {
        u128::from(self.attributed.0) + u128::from(self.idle.0) + u128::from(self.other.0)
            == u128::from(self.measured.0)
            && u128::from(self.capacity.attributed)
                + u128::from(self.capacity.idle)
                + u128::from(self.capacity.other)
                == u128::from(self.capacity.total)
    }
}

/// One domain's split in an interval, under the domain's name (`gpu:0`, `rapl:package-0`).
#[derive(Clone, Debug)]
pub struct DomainSplit {
    pub id: String,
    pub split: IntervalSplit,
    /// Modeled, not measured (the CPU power model).
    pub estimated: bool,
    /// Power integrated over time (no energy counter).
    pub integrated: bool,
}

/// One sampler tick's attribution, every domain it covered: what the `interval` record and the
/// interval metrics are made from.
#[derive(Clone, Debug, Default)]
pub struct IntervalReport {
    /// The earliest start of a domain's interval (`CLOCK_MONOTONIC`).
    pub start: Nanos,
    /// The tick's time.
    pub end: Nanos,
    pub domains: Vec<DomainSplit>,
    /// What the tick cost the sampler.
    pub sampler_cost: Nanos,
    /// Ticks that came due while the consumer was busy and were merged into this one.
    pub late_ticks: u64,
}
