//! The streaming attribution engine.

// Span ids are our own counter: a fast non-DoS-resistant hash is fine.
use rustc_hash::FxHashMap as HashMap;

use super::idle::IdleLearner;
use super::{
    CapacitySplit, DomainId, DomainInterval, EnergyKind, IdleMode, IdlePower, IdleSource,
    IntervalSplit, LedgerConfig, RequestEnergy, SplitMode,
};
use crate::units::{MicroJoules, Nanos};

/// Fixed-point scale of the processor-sharing integral (per-capita device-time).
const PS_SHIFT: u32 = 32;

#[derive(Clone, Debug)]
struct Span {
    id: u64,
    start: Nanos,
    end: Option<Nanos>,
    tokens: Option<u64>,
    acc: RequestEnergy,
}

#[derive(Clone, Debug)]
struct DomainState {
    id: DomainId,
    watermark: Nanos,
    learner: IdleLearner,
    pinned_idle_uw: Option<u64>,
}

/// Running totals over every interval seen, for conservation checks across the whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub intervals: u64,
    pub measured: MicroJoules,
    pub attributed: MicroJoules,
    pub idle: MicroJoules,
    pub other: MicroJoules,
    /// Intervals whose parts did not add up; zero unless the ledger has a bug.
    pub violations: u64,
}

/// Anomalies in the span stream, counted rather than fatal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerCounters {
    /// Open spans evicted by `max_open_spans`.
    pub evicted: u64,
    pub duplicate_starts: u64,
    pub unknown_ends: u64,
    /// Spans that started before an interval already processed (they missed some energy).
    pub late_starts: u64,
}

/// Shifts weights right until their sum fits in 64 bits, so `amount × w` (amount < 2^64) cannot
/// overflow u128; returns the new sum. Shifting keeps every part a floor of a fraction ≤ 1 of the
/// amount, so conservation is unaffected; only a request's share of a huge total loses low bits.
fn normalize(weights: &mut [u128]) -> u128 {
    let mut total = weights.iter().fold(0u128, |a, &w| a.saturating_add(w));
    if total > u128::from(u64::MAX) {
        let shift = 128 - total.leading_zeros() - 64;
        total = 0;
        for w in weights.iter_mut() {
            *w >>= shift;
            total += *w;
        }
    }
    total
}

/// Streaming attribution: span events and domain intervals in, per-request energy out.
#[derive(Debug)]
pub struct Ledger {
    cfg: LedgerConfig,
    /// Dense so the per-interval scan is a linear walk; `index` maps ids to slots.
    spans: Vec<Span>,
    index: HashMap<u64, usize>,
    open: usize,
    domains: Vec<DomainState>,
    token_sum: u128,
    token_count: u64,
    counters: LedgerCounters,
    audit: Audit,
    // Scratch reused by every interval so the steady state does not allocate.
    active: Vec<usize>,
    weights: Vec<u128>,
    sweep: Vec<(u64, bool, u32)>,
    ps_start: Vec<u128>,
    ps_share: Vec<u128>,
    ready: Vec<(u64, RequestEnergy)>,
}

impl Ledger {
    #[must_use]
    pub fn new(cfg: LedgerConfig) -> Self {
        Self {
            cfg,
            spans: Vec::new(),
            index: HashMap::default(),
            open: 0,
            domains: Vec::new(),
            token_sum: 0,
            token_count: 0,
            counters: LedgerCounters::default(),
            audit: Audit::default(),
            active: Vec::new(),
            weights: Vec::new(),
            sweep: Vec::new(),
            ps_start: Vec::new(),
            ps_share: Vec::new(),
            ready: Vec::new(),
        }
    }

    #[must_use]
    pub fn config(&self) -> &LedgerConfig {
        &self.cfg
    }

    #[must_use]
    pub fn audit(&self) -> Audit {
        self.audit
    }

    #[must_use]
    pub fn counters(&self) -> LedgerCounters {
        self.counters
    }

    /// Spans started and not yet ended.
    #[must_use]
    pub fn open_spans(&self) -> usize {
        self.open
    }

    /// Spans held (open, or ended and waiting for their intervals).
    #[must_use]
    pub fn held_spans(&self) -> usize {
        self.spans.len()
    }

    /// Pins a domain's idle power (rules `[gpu.X] idle_watts`, or the CPU power model's idle);
    /// it then wins over `[attribution] idle_power`.
    pub fn set_domain_idle_watts(&mut self, domain: DomainId, watts: f64) {
        let uw = (watts.max(0.0) * 1e6).round() as u64;
        self.domain_mut(domain).pinned_idle_uw = Some(uw);
    }

    /// The idle power a domain would use now, in microwatts.
    pub fn idle_power_uw(&mut self, domain: DomainId) -> (u64, IdleSource) {
        let fixed = match self.cfg.idle_power {
            IdlePower::Watts(w) => Some((w.max(0.0) * 1e6).round() as u64),
            IdlePower::Learned => None,
        };
        let d = self.domain_mut(domain);
        if let Some(p) = d.pinned_idle_uw {
            (p, IdleSource::Pinned)
        } else if let Some(p) = fixed {
            (p, IdleSource::Fixed)
        } else if let Some(p) = d.learner.estimate() {
            (p, IdleSource::Learned)
        } else {
            (0, IdleSource::None)
        }
    }

    pub fn span_started(&mut self, id: u64, start: Nanos) {
        if self.index.contains_key(&id) {
            self.counters.duplicate_starts += 1;
            return;
        }
        if self.open >= self.cfg.max_open_spans {
            self.evict_oldest_open();
        }
        let mut acc = RequestEnergy::default();
        if self.domains.iter().any(|d| d.watermark > start) {
            self.counters.late_starts += 1;
            acc.flags.partial_energy = true;
        }
        self.index.insert(id, self.spans.len());
        self.spans.push(Span {
            id,
            start,
            end: None,
            tokens: None,
            acc,
        });
        self.open += 1;
    }

    /// Ends a span; an end before the start is taken as the start (a zero-length request).
    pub fn span_ended(&mut self, id: u64, end: Nanos, tokens: Option<u64>) {
        let Some(&slot) = self.index.get(&id) else {
            self.counters.unknown_ends += 1;
            return;
        };
        let span = &mut self.spans[slot];
        if span.end.is_some() {
            self.counters.unknown_ends += 1;
            return;
        }
        span.end = Some(end.max(span.start));
        span.tokens = tokens;
        self.open -= 1;
        if let Some(t) = tokens {
            self.token_sum += u128::from(t);
            self.token_count += 1;
        }
    }

    fn evict_oldest_open(&mut self) {
        let oldest = self
            .spans
            .iter_mut()
            .filter(|s| s.end.is_none())
            .min_by_key(|s| (s.start, s.id));
        if let Some(s) = oldest {
            let floor = self
                .domains
                .iter()
                .map(|d| d.watermark)
                .min()
                .unwrap_or(s.start);
            s.end = Some(floor.max(s.start));
            s.acc.flags.evicted = true;
            s.acc.flags.unfinished = true;
            s.acc.flags.partial_energy = true;
            self.open -= 1;
            self.counters.evicted += 1;
        }
    }

    fn domain_mut(&mut self, id: DomainId) -> &mut DomainState {
        let pos = if let Some(pos) = self.domains.iter().position(|d| d.id == id) {
            pos
        } else {
            self.domains.push(DomainState {
                id,
                watermark: Nanos::ZERO,
                learner: IdleLearner::new(self.cfg.idle_window, self.cfg.idle_percentile),
                pinned_idle_uw: None,
            });
            self.domains.len() - 1
        };
        &mut self.domains[pos]
    }

    fn token_weight(&self, span: &Span) -> (u128, bool) {
        match span.tokens {
            Some(t) => (u128::from(t.max(1)), false),
            None if self.token_count == 0 => (1, true),
            None => ((self.token_sum / u128::from(self.token_count)).max(1), true),
        }
    }

    /// Attributes one interval of one domain and returns its record.
    pub fn interval(&mut self, iv: &DomainInterval) -> IntervalSplit {
        let dt = iv.end.saturating_sub(iv.start).0;
        let measured = iv.measured.0;
        let target = iv.target_share.apply(measured);
        let other = measured - target;

        self.collect_active(iv);
        let n_active = self.active.len();
        if iv.unmeasured {
            for k in 0..n_active {
                let slot = self.active[k];
                self.spans[slot].acc.flags.partial_energy = true;
            }
        }

        if n_active == 0 && dt > 0 && !iv.unmeasured {
            let uw = u128::from(measured) * 1_000_000_000 / u128::from(dt);
            let uw = u64::try_from(uw).unwrap_or(u64::MAX);
            self.domain_mut(iv.domain).learner.observe(uw);
        }
        let (idle_uw, idle_source) = self.idle_power_uw(iv.domain);
        let floor = iv
            .target_share
            .apply_wide(u128::from(idle_uw) * u128::from(dt) / 1_000_000_000);
        let static_energy = u64::try_from(floor).unwrap_or(u64::MAX).min(target);
        let dynamic = target - static_energy;

        let to_split = match self.cfg.idle {
            IdleMode::Explicit => dynamic,
            IdleMode::Amortize => target,
        };
        let given = if n_active == 0 {
            0
        } else {
            self.split_energy(iv, to_split)
        };
        // `given ≤ to_split ≤ target` by floor division, so these cannot underflow.
        let idle = target - given;

        let capacity = self.split_capacity(iv, dt);

        let d = self.domain_mut(iv.domain);
        d.watermark = d.watermark.max(iv.end);

        let rec = IntervalSplit {
            domain: iv.domain,
            class: iv.class,
            start: iv.start,
            end: iv.end,
            measured: iv.measured,
            attributed: MicroJoules(given),
            idle: MicroJoules(idle),
            other: MicroJoules(other),
            static_energy: MicroJoules(static_energy),
            idle_power_uw: idle_uw,
            idle_source,
            active_requests: n_active as u32,
            capacity,
        };
        let conserved = rec.is_conserved();
        debug_assert!(conserved, "attribution lost energy: {rec:?}");
        self.audit.intervals += 1;
        self.audit.measured += rec.measured;
        self.audit.attributed += rec.attributed;
        self.audit.idle += rec.idle;
        self.audit.other += rec.other;
        if !conserved {
            self.audit.violations += 1;
        }
        rec
    }

    /// Fills `active` with the slots of spans overlapping the interval, and `weights` with their
    /// split weights.
    fn collect_active(&mut self, iv: &DomainInterval) {
        self.active.clear();
        self.weights.clear();
        for (slot, span) in self.spans.iter().enumerate() {
            let s = span.start.max(iv.start);
            let e = span.end.unwrap_or(iv.end).min(iv.end);
            if e <= s {
                continue;
            }
            let overlap = u128::from((e - s).0);
            let w = match self.cfg.split {
                SplitMode::Time => overlap,
                SplitMode::Tokens => overlap * self.token_weight(span).0,
            };
            self.active.push(slot);
            self.weights.push(w);
        }
    }

    /// Gives each active span `⌊amount × w / Σw⌋`; returns the total given.
    fn split_energy(&mut self, iv: &DomainInterval, amount: u64) -> u64 {
        let total_w = normalize(&mut self.weights);
        let tokens_mode = self.cfg.split == SplitMode::Tokens;
        let mut given = 0u64;
        for k in 0..self.active.len() {
            let slot = self.active[k];
            let part = (u128::from(amount) * self.weights[k])
                .checked_div(total_w)
                .unwrap_or(0) as u64;
            let estimated_tokens = tokens_mode && self.token_weight(&self.spans[slot]).1;
            let acc = &mut self.spans[slot].acc;
            *acc.energy.get_mut(iv.class) += MicroJoules(part);
            given += part;
            match iv.class {
                EnergyKind::Cpu if iv.estimated => acc.flags.estimated_cpu = true,
                EnergyKind::Gpu if iv.integrated => acc.flags.integrated_gpu = true,
                _ => {}
            }
            acc.flags.token_weight_estimated |= estimated_tokens;
        }
        given
    }

    /// Processor sharing on the target's device-time (see module docs).
    fn split_capacity(&mut self, iv: &DomainInterval, dt: u64) -> CapacitySplit {
        let total = u64::from(iv.devices).saturating_mul(dt);
        let target = iv.target_share.apply(total);
        let other = total - target;
        if self.active.is_empty() || dt == 0 {
            return CapacitySplit {
                total,
                attributed: 0,
                idle: target,
                other,
            };
        }
        // Only boundaries inside the interval need sorting: spans already running at its start
        // are live from the outset, and spans still running at its end close with the final
        // segment. With long requests that leaves a handful of events per interval.
        let n = self.active.len();
        self.sweep.clear();
        self.ps_start.clear();
        self.ps_start.resize(n, 0);
        self.ps_share.clear();
        self.ps_share.resize(n, u128::MAX);
        let mut live = 0u64;
        for (k, &slot) in self.active.iter().enumerate() {
            let span = &self.spans[slot];
            let s = span.start.max(iv.start);
            let e = span.end.unwrap_or(iv.end).min(iv.end);
            if s > iv.start {
                self.sweep.push((s.0, true, k as u32));
            } else {
                live += 1;
            }
            if e < iv.end {
                self.sweep.push((e.0, false, k as u32));
            }
        }
        // Ends sort before starts at the same instant (false < true): a zero-length gap.
        self.sweep.sort_unstable();
        let (mut integral, mut prev, mut busy) = (0u128, iv.start.0, 0u64);
        for &(t, is_start, k) in self.sweep.iter().chain([&(iv.end.0, false, u32::MAX)]) {
            if live > 0 && t > prev {
                let len = t - prev;
                busy += len;
                integral += (u128::from(len) << PS_SHIFT) / u128::from(live);
            }
            prev = t;
            if k == u32::MAX {
                break;
            }
            if is_start {
                live += 1;
                self.ps_start[k as usize] = integral;
            } else {
                live -= 1;
                self.ps_share[k as usize] = integral - self.ps_start[k as usize];
            }
        }
        for (share, start) in self.ps_share.iter_mut().zip(&self.ps_start) {
            if *share == u128::MAX {
                *share = integral - start;
            }
        }
        let busy_cap = u128::from(target) * u128::from(busy) / u128::from(dt);
        let total_share = normalize(&mut self.ps_share);
        let mut given = 0u64;
        for (k, &slot) in self.active.iter().enumerate() {
            let part = (busy_cap * self.ps_share[k])
                .checked_div(total_share)
                .unwrap_or(0) as u64;
            *self.spans[slot].acc.device_ns.get_mut(iv.class) += part;
            given += part;
        }
        CapacitySplit {
            total,
            attributed: given,
            idle: target - given,
            other,
        }
    }

    fn min_watermark(&self) -> Option<Nanos> {
        self.domains.iter().map(|d| d.watermark).min()
    }

    /// Finished requests whose end every domain's intervals have passed; removed from the ledger.
    pub fn drain_ready(&mut self) -> impl Iterator<Item = (u64, RequestEnergy)> + '_ {
        if let Some(wm) = self.min_watermark() {
            self.take_where(|s| s.end.is_some_and(|e| e <= wm));
        }
        self.ready.drain(..)
    }

    /// Every request still held (shutdown). Requests whose intervals were not all seen are flagged
    /// `partial_energy`; spans never ended also `unfinished`.
    pub fn drain_all(&mut self) -> impl Iterator<Item = (u64, RequestEnergy)> + '_ {
        let wm = self.min_watermark();
        for s in &mut self.spans {
            let covered = matches!((s.end, wm), (Some(e), Some(w)) if e <= w);
            if !covered {
                s.acc.flags.partial_energy = true;
            }
            if s.end.is_none() {
                s.acc.flags.unfinished = true;
            }
        }
        self.open = 0;
        self.take_where(|_| true);
        self.ready.drain(..)
    }

    fn take_where(&mut self, pred: impl Fn(&Span) -> bool) {
        let mut slot = 0;
        while slot < self.spans.len() {
            if pred(&self.spans[slot]) {
                let span = self.spans.swap_remove(slot);
                self.index.remove(&span.id);
                if let Some(moved) = self.spans.get(slot) {
                    self.index.insert(moved.id, slot);
                }
                self.ready.push((span.id, span.acc));
            } else {
                slot += 1;
            }
        }
    }
}
