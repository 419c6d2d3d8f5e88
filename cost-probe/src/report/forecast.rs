//! Spend over time and where it is heading: month-end and budget-period forecasts.
//!
//! Method (stated in the report too): the rate is the cost seen over the observed window (first
//! to last record) divided by its length; the range is the 10th and 90th percentile of the rate
//! in 24 equal sub-windows of it (the first and last left out when they may be partial). A
//! projection to the end of a period is what was spent in the period so far plus rate × the
//! time left. It assumes the traffic of the window goes on as it was: it knows nothing of
//! weekly or monthly cycles longer than the window.
use serde::Serialize;

use crate::{alerts::period_bounds, rules::Budget};

/// Buckets kept per series; past it the bucket width doubles, so memory stays fixed whatever
/// the window (a month of records ends with ~17-minute buckets).
const MAX_BUCKETS: usize = 4096;
const SUB_WINDOWS: usize = 24;
const NS: i64 = 1_000_000_000;

/// The method, as the report states it.
pub const METHOD: &str = "rate = cost over the observed window / its length; range = 10th-90th \
     percentile of the rate in 24 equal sub-windows (first and last left out); projection = \
     spent in the period so far + rate x time left";

/// Buckets start at 100 ms, so that a window of a few seconds (the demo) still has sub-windows.
pub(super) const BASE_NS: i64 = 100_000_000;

/// Cost per time bucket, from 100 ms buckets upward.
#[derive(Debug, Clone)]
pub struct Series {
    width_ns: i64,
    /// Index (time / width) of `buckets[0]`.
    origin: i64,
    buckets: Vec<f64>,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            width_ns: BASE_NS,
            origin: 0,
            buckets: Vec::new(),
        }
    }
}

impl Series {
    pub fn add(&mut self, t_ns: i64, usd: f64) {
        let mut idx = t_ns.div_euclid(self.width_ns);
        if self.buckets.is_empty() {
            self.origin = idx;
        }
        loop {
            let lo = self.origin.min(idx);
            let hi = (self.origin + self.buckets.len() as i64 - 1).max(idx);
            if ((hi - lo + 1) as usize) <= MAX_BUCKETS {
                break;
            }
            self.coarsen();
            idx = t_ns.div_euclid(self.width_ns);
        }
        if idx < self.origin {
            let extra = (self.origin - idx) as usize;
            self.buckets.splice(0..0, std::iter::repeat_n(0.0, extra));
            self.origin = idx;
        }
        let i = (idx - self.origin) as usize;
        if i >= self.buckets.len() {
            self.buckets.resize(i + 1, 0.0);
        }
        self.buckets[i] += usd;
    }

    fn coarsen(&mut self) {
        let new_origin = self.origin.div_euclid(2);
        let mut merged = vec![0.0; self.buckets.len() / 2 + 2];
        for (i, v) in self.buckets.iter().enumerate() {
            merged[((self.origin + i as i64).div_euclid(2) - new_origin) as usize] += v;
        }
        while merged.last() == Some(&0.0) {
            merged.pop();
        }
        self.width_ns *= 2;
        self.origin = new_origin;
        self.buckets = merged;
    }

    /// (bucket start ns, bucket width ns, usd) for every bucket, empty ones included.
    pub fn points(&self) -> impl Iterator<Item = (i64, i64, f64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, v)| ((self.origin + i as i64) * self.width_ns, self.width_ns, *v))
    }

    /// Spent from `from_ns` on (buckets that start at or after it).
    fn since(&self, from_ns: i64) -> f64 {
        self.points()
            .filter(|(t, _, _)| *t >= from_ns)
            .map(|(_, _, v)| v)
            .sum()
    }

    fn total(&self) -> f64 {
        self.buckets.iter().sum()
    }

    /// $/s over `[first, last]` and its p10–p90 range over sub-windows.
    fn rate(&self, first: i64, last: i64) -> Rate {
        let span = (last - first).max(1) as f64 / NS as f64;
        let mean = self.total() / span;
        // Sub-windows are whole runs of buckets, so none gets a bucket more than another.
        let w = self.width_ns;
        let b0 = first.div_euclid(w);
        let k = (last.div_euclid(w) - b0 + 1) / SUB_WINDOWS as i64;
        let mut rates = Vec::new();
        if k > 0 {
            let mut sums = [0.0; SUB_WINDOWS];
            for (t, _, v) in self.points() {
                let j = (t.div_euclid(w) - b0).div_euclid(k);
                if (0..SUB_WINDOWS as i64).contains(&j) {
                    sums[j as usize] += v;
                }
            }
            let secs = (k * w) as f64 / NS as f64;
            rates = sums[1..SUB_WINDOWS - 1].iter().map(|s| s / secs).collect();
        }
        rates.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            rates
                .get(((rates.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        Rate {
            mean,
            low: pick(0.1).map(|r| r.min(mean)),
            high: pick(0.9).map(|r| r.max(mean)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    mean: f64,
    /// None when the window is shorter than 24 buckets.
    low: Option<f64>,
    high: Option<f64>,
}

/// A projection to the end of a period: spent so far, and the expected total with its range.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Projection {
    pub period_start: String,
    pub period_end: String,
    pub spent_usd: f64,
    pub usd_per_hour: f64,
    pub projected_usd: f64,
    /// None when the window is too short to measure a spread.
    pub projected_low_usd: Option<f64>,
    pub projected_high_usd: Option<f64>,
}

/// A budget's position: its projection against its amount.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetPosition {
    pub name: String,
    pub amount_usd: f64,
    #[serde(flatten)]
    pub projection: Projection,
    /// Spent so far, as a fraction of the amount.
    pub used: f64,
    /// Projected at the period's end, as a fraction of the amount.
    pub projected_used: f64,
}

fn stamp(secs: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64),
    )
    .to_string()
}

/// Where `series` ends the period holding `last`, given the window `[first, last]`.
#[must_use]
pub fn project(
    series: &Series,
    first: i64,
    last: i64,
    period: crate::rules::schema::Period,
) -> Projection {
    let (start, end) = period_bounds(period, last.div_euclid(NS));
    let rate = series.rate(first, last);
    let spent = series.since(start * NS);
    let left = (end * NS - last).max(0) as f64 / NS as f64;
    Projection {
        period_start: stamp(start),
        period_end: stamp(end),
        spent_usd: spent,
        usd_per_hour: rate.mean * 3600.0,
        projected_usd: spent + rate.mean * left,
        projected_low_usd: rate.low.map(|r| spent + r * left),
        projected_high_usd: rate.high.map(|r| spent + r * left),
    }
}

#[must_use]
pub fn budget(b: &Budget, series: &Series, first: i64, last: i64) -> BudgetPosition {
    let p = project(series, first, last, b.period);
    BudgetPosition {
        name: b.name.clone(),
        amount_usd: b.amount_usd,
        used: p.spent_usd / b.amount_usd,
        projected_used: p.projected_usd / b.amount_usd,
        projection: p,
    }
}
