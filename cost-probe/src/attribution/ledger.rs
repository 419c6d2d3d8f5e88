//! The streaming attribution engine.

use super::idle::IdleLearner;
use super::ids::IdMap;
use super::share::{Item, Phase, Sharer, exact_split};
use super::work::{self, PrefillRates, SpanFacts, SplitMethod, WorkHints};
use super::{
    CapacitySplit, DomainId, DomainInterval, EnergyKind, IdleMode, IdlePower, IdleSource,
    IntervalSplit, LedgerConfig, RequestEnergy, SplitMode,
};
use crate::units::{MicroJoules, Nanos};

/// How long an interval's split may wait for the requests in it to end (a request queued or
/// computing for longer is split from what is known then, and flagged `split_estimated`).
pub const MAX_HOLD: Nanos = Nanos(120_000_000_000);

#[derive(Clone, Debug)]
struct Span {
    id: u64,
    start: Nanos,
    end: Option<Nanos>,
    tokens: Option<u64>,
    first_chunk: Option<Nanos>,
    /// Nothing else of the target was in flight when it arrived.
    alone: bool,
    hints: Option<WorkHints>,
    /// Intervals it is in whose split is not final yet.
    pending: u32,
    acc: RequestEnergy,
}

impl Span {
    fn facts(&self) -> SpanFacts {
        SpanFacts {
            start: self.start,
            end: self.end,
            first_chunk: self.first_chunk,
            hints: self.hints,
        }
    }
}

/// One interval of one domain whose energy for requests is known but not yet given out: some
/// request in it had not shown yet how much of its time was queue.
#[derive(Clone, Debug)]
struct Pending {
    class: EnergyKind,
    start: Nanos,
    end: Nanos,
    /// Energy for the members (µJ), given out exactly at settlement.
    energy: u64,
    /// Device-time for the members (device-ns).
    capacity: u64,
    members: Vec<u64>,
    /// `members[..checked]` are known settled for this interval (a request that ended, or was
    /// streaming before it began, stays so): each tick resumes the check where it stopped.
    checked: usize,
}

#[derive(Clone, Debug)]
struct DomainState {
    id: DomainId,
    watermark: Nanos,
    learner: IdleLearner,
    pinned_idle: Option<(u64, IdleSource)>,
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

/// Streaming attribution: span events and domain intervals in, per-request energy out.
#[derive(Debug)]
pub struct Ledger {
    cfg: LedgerConfig,
    /// Dense so the per-interval scan is a linear walk; `index` maps ids to slots.
    spans: Vec<Span>,
    index: IdMap<usize>,
    open: usize,
    domains: Vec<DomainState>,
    token_sum: u128,
    token_count: u64,
    rates: PrefillRates,
    pending: Vec<Pending>,
    counters: LedgerCounters,
    audit: Audit,
    // Scratch reused by every interval so the steady state does not allocate.
    active: Vec<usize>,
    items: Vec<Item>,
    sharer: Sharer,
    weights: Vec<u128>,
    prefill_w: Vec<u128>,
    phase_w: Vec<u128>,
    cap_w: Vec<u128>,
    parts: Vec<u64>,
    spare: Vec<Vec<u64>>,
    ready: Vec<(u64, RequestEnergy)>,
}

impl Ledger {
    #[must_use]
    pub fn new(cfg: LedgerConfig) -> Self {
        Self {
            cfg,
            spans: Vec::new(),
            index: IdMap::default(),
            open: 0,
            domains: Vec::new(),
            token_sum: 0,
            token_count: 0,
            rates: PrefillRates::default(),
            pending: Vec::new(),
            counters: LedgerCounters::default(),
            audit: Audit::default(),
            active: Vec::new(),
            items: Vec::new(),
            sharer: Sharer::default(),
            weights: Vec::new(),
            prefill_w: Vec::new(),
            phase_w: Vec::new(),
            cap_w: Vec::new(),
            parts: Vec::new(),
            spare: Vec::new(),
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

    /// Pins a domain's idle power from rules (`[gpu.X] idle_watts`); it then wins over
    /// `[attribution] idle_power`.
    pub fn set_domain_idle_watts(&mut self, domain: DomainId, watts: f64) {
        self.pin_idle(domain, watts, IdleSource::Pinned);
    }

    /// Pins a modelled domain's idle power to the model's own: the model's idle is known exactly
    /// from the first interval, nothing to learn.
    pub fn set_domain_model_idle_watts(&mut self, domain: DomainId, watts: f64) {
        self.pin_idle(domain, watts, IdleSource::Model);
    }

    fn pin_idle(&mut self, domain: DomainId, watts: f64, source: IdleSource) {
        let uw = (watts.max(0.0) * 1e6).round() as u64;
        self.domain_mut(domain).pinned_idle = Some((uw, source));
    }

    /// The idle power a domain would use now, in microwatts.
    pub fn idle_power_uw(&mut self, domain: DomainId) -> (u64, IdleSource) {
        let fixed = match self.cfg.idle_power {
            IdlePower::Watts(w) => Some((w.max(0.0) * 1e6).round() as u64),
            IdlePower::Learned => None,
        };
        let d = self.domain_mut(domain);
        if let Some(p) = d.pinned_idle {
            p
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
            first_chunk: None,
            alone: self.open == 0,
            hints: None,
            pending: 0,
            acc,
        });
        self.open += 1;
    }

    /// A streamed response of the span wrote body chunks at `at`: its first one ends the
    /// request's queue and prefill.
    pub fn span_progress(&mut self, id: u64, at: Nanos) {
        if let Some(&slot) = self.index.get(&id) {
            let span = &mut self.spans[slot];
            if span.first_chunk.is_none() && span.end.is_none() {
                span.first_chunk = Some(at.max(span.start));
            }
        }
    }

    /// Ends a span knowing only its tokens (see [`Self::span_finished`]).
    pub fn span_ended(&mut self, id: u64, end: Nanos, tokens: Option<u64>) {
        self.span_finished(
            id,
            end,
            WorkHints {
                tokens,
                ..WorkHints::default()
            },
        );
    }

    /// Ends a span with what its response told of the server's work; an end before the start is
    /// taken as the start (a zero-length request).
    pub fn span_finished(&mut self, id: u64, end: Nanos, hints: WorkHints) {
        let tokens = hints.tokens;
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
        span.hints = Some(hints);
        self.rates.learn(&span.facts(), span.alone);
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
                pinned_idle: None,
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
        if self.domain_mut(iv.domain).watermark == Nanos::ZERO {
            // The domain's first interval: whatever ran before it was never measured.
            for &slot in &self.active {
                let span = &mut self.spans[slot];
                span.acc.flags.partial_energy |= span.start < iv.start;
            }
        }
        if iv.unmeasured {
            for k in 0..n_active {
                let slot = self.active[k];
                self.spans[slot].acc.flags.partial_energy = true;
            }
        }

        if (n_active == 0 || iv.device_idle) && dt > 0 && !iv.unmeasured {
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
        // Device-time: the target's share of the devices, for as long as a request was open;
        // the rest of the target's part is idle capacity, the rest of the device `other`.
        let cap_total = u64::from(iv.devices).saturating_mul(dt);
        let cap_target = iv.target_share.apply(cap_total);
        let mut capacity = CapacitySplit {
            total: cap_total,
            attributed: 0,
            idle: cap_target,
            other: cap_total - cap_target,
        };
        let given = if n_active == 0 || dt == 0 {
            0
        } else {
            let busy = self.open_time(iv);
            let cap = (u128::from(cap_target) * u128::from(busy) / u128::from(dt)) as u64;
            capacity.attributed = cap;
            capacity.idle = cap_target - cap;
            self.hold(iv, to_split, cap);
            to_split
        };
        // `given ≤ to_split ≤ target`, so this cannot underflow.
        let idle = target - given;

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

    /// Holds the interval's energy for its active spans until their work is known.
    fn hold(&mut self, iv: &DomainInterval, energy: u64, capacity: u64) {
        let mut members = self.spare.pop().unwrap_or_default();
        members.clear();
        for &slot in &self.active {
            let span = &mut self.spans[slot];
            span.pending += 1;
            members.push(span.id);
            match iv.class {
                EnergyKind::Cpu if iv.estimated => span.acc.flags.estimated_cpu = true,
                EnergyKind::Gpu if iv.integrated => span.acc.flags.integrated_gpu = true,
                _ => {}
            }
        }
        self.pending.push(Pending {
            class: iv.class,
            start: iv.start,
            end: iv.end,
            energy,
            capacity,
            members,
            checked: 0,
        });
    }

    /// Fills `active` with the slots of spans open during the interval.
    fn collect_active(&mut self, iv: &DomainInterval) {
        self.active.clear();
        for (slot, span) in self.spans.iter().enumerate() {
            let s = span.start.max(iv.start);
            let e = span.end.unwrap_or(iv.end).min(iv.end);
            if e > s {
                self.active.push(slot);
            }
        }
    }

    /// Fills `weights` (time worked) and `prefill_w` (of which prefill) per member from `items`
    /// clipped to the interval; false when no member worked in it.
    fn clipped_lengths(&mut self, p: &Pending) -> bool {
        let n = self.active.len();
        self.weights.clear();
        self.weights.resize(n, 0);
        self.prefill_w.clear();
        self.prefill_w.resize(n, 0);
        let mut any = false;
        for it in &self.items {
            let len = it.end.min(p.end.0).saturating_sub(it.start.max(p.start.0));
            self.weights[it.member as usize] += u128::from(len);
            if it.phase == Phase::Prefill {
                self.prefill_w[it.member as usize] += u128::from(len);
            }
            any |= len > 0;
        }
        any
    }

    /// Fills `items` with each active span's whole open time.
    fn open_items(&mut self) {
        self.items.clear();
        for (k, &slot) in self.active.iter().enumerate() {
            let span = &self.spans[slot];
            self.items.push(Item {
                member: k as u32,
                phase: Phase::Decode,
                start: span.start.0,
                end: span.end.map_or(u64::MAX, |e| e.0),
            });
        }
    }

    /// Time within the interval during which at least one active span was open.
    fn open_time(&mut self, iv: &DomainInterval) -> u64 {
        // Under load some request is nearly always open across the whole interval.
        let whole = self.active.iter().any(|&slot| {
            let span = &self.spans[slot];
            span.start <= iv.start && span.end.is_none_or(|e| e >= iv.end)
        });
        if whole {
            return iv.end.0 - iv.start.0;
        }
        self.open_items();
        self.sharer.run(&self.items, iv.start.0, iv.end.0)
    }

    /// Settles every pending interval whose members' work is known (or, with `force`, all of
    /// them, from what is known now).
    fn settle(&mut self, force: bool) {
        let horizon = self
            .domains
            .iter()
            .map(|d| d.watermark)
            .max()
            .unwrap_or(Nanos::ZERO);
        let mut k = 0;
        while k < self.pending.len() {
            let p = &mut self.pending[k];
            let stale = horizon.0.saturating_sub(p.end.0) >= MAX_HOLD.0;
            while let Some(id) = p.members.get(p.checked) {
                let settled = self
                    .index
                    .get(id)
                    .is_none_or(|&slot| work::settled_from(&self.spans[slot].facts(), p.start));
                if !settled {
                    break;
                }
                p.checked += 1;
            }
            let ready = p.checked == p.members.len();
            if ready || stale || force {
                let p = self.pending.swap_remove(k);
                // At shutdown a request still open is flagged `unfinished` already.
                self.settle_one(&p, stale && !ready);
                self.spare.push(p.members);
            } else {
                k += 1;
            }
        }
    }

    /// Gives one interval's energy and device-time to its members by processor sharing over
    /// their work windows: a member queued for the whole interval gets nothing from it.
    fn settle_one(&mut self, p: &Pending, early: bool) {
        self.active.clear();
        self.items.clear();
        for id in &p.members {
            let Some(&slot) = self.index.get(id) else {
                continue;
            };
            let span = &mut self.spans[slot];
            span.pending -= 1;
            span.acc.flags.split_estimated |= early;
            let w = work::windows(&span.facts(), &self.rates);
            let member = self.active.len() as u32;
            self.active.push(slot);
            for (phase, win) in [(Phase::Prefill, w.prefill), (Phase::Decode, w.decode)] {
                if !win.is_empty() {
                    self.items.push(Item {
                        member,
                        phase,
                        start: win.start.0,
                        end: win.end.0,
                    });
                }
            }
        }
        if !self.clipped_lengths(p) {
            // No member was working (the windows are estimates): by the time they were open.
            self.open_items();
            self.clipped_lengths(p);
        }
        // Device-time by processor sharing: at each instant the device is shared by the
        // requests being worked on.
        self.sharer.run(&self.items, p.start.0, p.end.0);
        let mut cap_w = std::mem::take(&mut self.cap_w);
        cap_w.clear();
        cap_w.resize(self.active.len(), 0);
        for (it, &share) in self.items.iter().zip(&self.sharer.shares) {
            cap_w[it.member as usize] += share;
        }
        exact_split(p.capacity, &mut cap_w, &mut self.parts);
        self.cap_w = cap_w;
        for (k, &slot) in self.active.iter().enumerate() {
            *self.spans[slot].acc.device_ns.get_mut(p.class) += self.parts[k];
        }
        // Energy by time worked: each request working adds its own load (the same rule as the
        // overlap method, restricted to the work windows).
        self.phase_w.clear();
        self.phase_w.extend_from_slice(&self.weights);
        if self.cfg.split == SplitMode::Tokens {
            for (k, &slot) in self.active.iter().enumerate() {
                let (t, estimated) = self.token_weight(&self.spans[slot]);
                self.weights[k] = self.weights[k].saturating_mul(t);
                self.spans[slot].acc.flags.token_weight_estimated |= estimated;
            }
        }
        exact_split(p.energy, &mut self.weights, &mut self.parts);
        for (k, &slot) in self.active.iter().enumerate() {
            let part = self.parts[k];
            let prefill = (u128::from(part) * self.prefill_w[k])
                .checked_div(self.phase_w[k])
                .unwrap_or(0) as u64;
            let acc = &mut self.spans[slot].acc;
            *acc.energy.get_mut(p.class) += MicroJoules(part);
            acc.phases.prefill += MicroJoules(prefill);
            acc.phases.decode += MicroJoules(part - prefill);
        }
    }

    fn min_watermark(&self) -> Option<Nanos> {
        self.domains.iter().map(|d| d.watermark).min()
    }

    /// Finished requests whose end every domain's intervals have passed; removed from the ledger.
    pub fn drain_ready(&mut self) -> impl Iterator<Item = (u64, RequestEnergy)> + '_ {
        self.settle(false);
        if let Some(wm) = self.min_watermark() {
            self.take_where(|s| s.pending == 0 && s.end.is_some_and(|e| e <= wm));
        }
        self.ready.drain(..)
    }

    /// Every request still held (shutdown). Requests whose intervals were not all seen are flagged
    /// `partial_energy`; spans never ended also `unfinished`.
    pub fn drain_all(&mut self) -> impl Iterator<Item = (u64, RequestEnergy)> + '_ {
        self.settle(true);
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

    /// Moves the spans `pred` picks to `ready`, keeping the rest in their order (a span's slot
    /// is its start order, so `ready` comes out close to end order, cheap for the meter to sort).
    fn take_where(&mut self, pred: impl Fn(&Span) -> bool) {
        let mut keep = 0;
        for slot in 0..self.spans.len() {
            let span = &self.spans[slot];
            if !pred(span) {
                if keep != slot {
                    self.spans.swap(keep, slot);
                    self.index.insert(self.spans[keep].id, keep);
                }
                keep += 1;
                continue;
            }
            self.index.remove(&span.id);
            let mut acc = span.acc;
            let w = work::windows(&span.facts(), &self.rates);
            acc.phases.method = w.method;
            if w.method != SplitMethod::Overlap {
                acc.phases.queue = Some(w.work_start().saturating_sub(span.start));
                acc.phases.prefill_time = Some(Nanos(w.prefill.len()));
            }
            self.ready.push((span.id, acc));
        }
        self.spans.truncate(keep);
    }
}
