//! Budget and anomaly alerts from the rules' `[[budget]]` and `[[anomaly]]` entries.
//!
//! Pure: every observation carries its own wall-clock time (the sink's conversion of the span's
//! end), so tests script whole days of spend without sleeping and the engine never reads a clock.
//!
//! - A budget sums the cost of the requests whose tags include all of the budget's tags over a
//!   UTC hour, day or calendar month, and fires once per `alert_at` threshold per period. A
//!   request timestamped before the current period (it finished late, or clocks were stepped)
//!   counts toward the current period: rewinding would re-fire alerts already sent.
//! - An anomaly keeps, per tag group (the request's full tag set), the values of the last
//!   `window` and fires when a request exceeds `factor` × their median. It fires once per
//!   excursion and re-arms when a request is back at or below the limit. The median is robust to
//!   the spikes it is looking for, which an EWMA is not (one spike would raise the baseline).
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::rules::schema::{AnomalyMetric, Period};
use crate::rules::{Anomaly, Budget, Rules};

/// Samples a group needs before its median is trusted: fewer and one slow request is the
/// baseline.
pub const MIN_BASELINE_SAMPLES: usize = 20;
/// Most samples kept per group. Beyond it the oldest go first, so at high request rates the
/// baseline covers less than `window`; the median of 2048 recent requests is still stable.
pub const MAX_BASELINE_SAMPLES: usize = 2048;
/// Most tag groups per anomaly rule; requests of further groups share one overflow group, so
/// tags with unbounded values cannot grow memory.
pub const MAX_GROUPS: usize = 1024;

/// One priced request, as the alert engine sees it.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// Wall-clock time of the request (its end).
    pub time: SystemTime,
    pub cost_usd: Option<f64>,
    pub energy_j: Option<f64>,
    pub tags: &'a BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Budget,
    Anomaly,
}

impl AlertKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::Anomaly => "anomaly",
        }
    }
}

/// The `alert` record's body (DESIGN.md "Records"; `output::records` adds the envelope).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// RFC 3339 UTC time of the request that fired it.
    pub time: String,
    pub rule: String,
    pub kind: AlertKind,
    /// `cost_usd` (budget spend), `cost_per_request` or `energy_per_request`.
    pub metric: &'static str,
    /// Budget: the fraction of the amount (0.9); anomaly: the factor over the baseline.
    pub threshold: f64,
    /// Budget: spend so far in the period (USD); anomaly: the request's value.
    pub observed: f64,
    /// The value `observed` crossed: amount × threshold, or factor × baseline.
    pub limit: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    /// Anomaly: the median of the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_s: Option<f64>,
    /// Budget: the budget's tag filter; anomaly: the tag group.
    pub tags: BTreeMap<String, String>,
}

/// Budgets and anomalies of one rules set.
#[derive(Debug)]
pub struct AlertEngine {
    budgets: Vec<BudgetState>,
    anomalies: Vec<AnomalyState>,
}

#[derive(Debug)]
struct BudgetState {
    rule: Budget,
    /// Unix seconds of the current period's bounds; `None` before the first request.
    period: Option<(i64, i64)>,
    spent: f64,
    /// Thresholds already fired this period (they are increasing, and spend only grows).
    fired: usize,
}

#[derive(Debug)]
struct AnomalyState {
    rule: Anomaly,
    groups: HashMap<BTreeMap<String, String>, Group>,
    overflow: Group,
    scratch: Vec<f64>,
}

#[derive(Debug)]
struct Group {
    /// (unix ns, value), oldest first.
    samples: VecDeque<(i128, f64)>,
    armed: bool,
}

impl Default for Group {
    fn default() -> Self {
        Self {
            samples: VecDeque::new(),
            armed: true,
        }
    }
}

impl AlertEngine {
    #[must_use]
    pub fn new(rules: &Rules) -> Self {
        Self::from_parts(&rules.budgets, &rules.anomalies)
    }

    #[must_use]
    pub fn from_parts(budgets: &[Budget], anomalies: &[Anomaly]) -> Self {
        Self {
            budgets: budgets
                .iter()
                .map(|b| BudgetState {
                    rule: b.clone(),
                    period: None,
                    spent: 0.0,
                    fired: 0,
                })
                .collect(),
            anomalies: anomalies
                .iter()
                .map(|a| AnomalyState {
                    rule: a.clone(),
                    groups: HashMap::new(),
                    overflow: Group::default(),
                    scratch: Vec::new(),
                })
                .collect(),
        }
    }

    /// Whether any rule could ever fire (the caller can skip the engine otherwise).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty() && self.anomalies.is_empty()
    }

    /// Feeds one request; returns the alerts it fired (usually none, which does not allocate).
    pub fn observe(&mut self, obs: &Observation<'_>) -> Vec<Alert> {
        let mut out = Vec::new();
        let ns = unix_nanos(obs.time);
        for b in &mut self.budgets {
            b.observe(obs, ns, &mut out);
        }
        for a in &mut self.anomalies {
            a.observe(obs, ns, &mut out);
        }
        out
    }
}

fn has_tags(filter: &BTreeMap<String, String>, tags: &BTreeMap<String, String>) -> bool {
    filter.iter().all(|(k, v)| tags.get(k) == Some(v))
}

/// A usable amount: finite and ≥ 0 (unknown or broken values are skipped, never guessed).
fn usable(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite() && *v >= 0.0)
}

impl BudgetState {
    fn observe(&mut self, obs: &Observation<'_>, ns: i128, out: &mut Vec<Alert>) {
        let Some(cost) = usable(obs.cost_usd) else {
            return;
        };
        if !has_tags(&self.rule.tags, obs.tags) {
            return;
        }
        let secs = i64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(i64::MAX);
        let bounds = period_bounds(self.rule.period, secs);
        if self.period.is_none_or(|(start, _)| bounds.0 > start) {
            self.period = Some(bounds);
            self.spent = 0.0;
            self.fired = 0;
        }
        let (start, end) = self.period.unwrap_or(bounds);
        self.spent += cost;
        while let Some(&t) = self.rule.alert_at.get(self.fired) {
            let limit = self.rule.amount_usd * t;
            // Relative slack so spend summed from many small floats (0.1 × 1000) still reaches
            // the threshold it equals on paper.
            if self.spent < limit * (1.0 - 1e-9) {
                break;
            }
            self.fired += 1;
            out.push(Alert {
                time: rfc3339_nanos(ns),
                rule: self.rule.name.clone(),
                kind: AlertKind::Budget,
                metric: "cost_usd",
                threshold: t,
                observed: self.spent,
                limit,
                amount_usd: Some(self.rule.amount_usd),
                period: Some(period_name(self.rule.period)),
                period_start: Some(rfc3339_secs(start)),
                period_end: Some(rfc3339_secs(end)),
                baseline: None,
                samples: None,
                window_s: None,
                tags: self.rule.tags.clone(),
            });
        }
    }
}

impl AnomalyState {
    fn observe(&mut self, obs: &Observation<'_>, ns: i128, out: &mut Vec<Alert>) {
        let (metric, value) = match self.rule.metric {
            AnomalyMetric::CostPerRequest => ("cost_per_request", obs.cost_usd),
            AnomalyMetric::EnergyPerRequest => ("energy_per_request", obs.energy_j),
        };
        let Some(value) = usable(value) else {
            return;
        };
        if !has_tags(&self.rule.tags, obs.tags) {
            return;
        }
        let group = if self.groups.contains_key(obs.tags) || self.groups.len() < MAX_GROUPS {
            self.groups.entry(obs.tags.clone()).or_default()
        } else {
            &mut self.overflow
        };
        let window = i128::try_from(self.rule.window.as_nanos()).unwrap_or(i128::MAX);
        while group
            .samples
            .front()
            .is_some_and(|(t, _)| *t < ns.saturating_sub(window))
        {
            group.samples.pop_front();
        }
        if group.samples.len() >= MIN_BASELINE_SAMPLES {
            let baseline = median(group.samples.iter().map(|(_, v)| *v), &mut self.scratch);
            // A zero baseline (nothing measured yet) makes every ratio infinite: no signal.
            if baseline > 0.0 {
                let limit = self.rule.factor * baseline;
                if value <= limit {
                    group.armed = true;
                } else if group.armed {
                    group.armed = false;
                    out.push(Alert {
                        time: rfc3339_nanos(ns),
                        rule: self.rule.name.clone(),
                        kind: AlertKind::Anomaly,
                        metric,
                        threshold: self.rule.factor,
                        observed: value,
                        limit,
                        amount_usd: None,
                        period: None,
                        period_start: None,
                        period_end: None,
                        baseline: Some(baseline),
                        samples: Some(group.samples.len()),
                        window_s: Some(self.rule.window.as_secs_f64()),
                        tags: obs.tags.clone(),
                    });
                }
            }
        }
        group.samples.push_back((ns, value));
        if group.samples.len() > MAX_BASELINE_SAMPLES {
            group.samples.pop_front();
        }
    }
}

fn median(values: impl Iterator<Item = f64>, scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    scratch.extend(values);
    let n = scratch.len();
    if n == 0 {
        return 0.0;
    }
    let (lower, upper, _) = scratch.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        f64::midpoint(below, upper)
    }
}

fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

fn system_time(ns: i128) -> SystemTime {
    let abs = Duration::from_nanos(u64::try_from(ns.unsigned_abs()).unwrap_or(u64::MAX));
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + abs
    } else {
        SystemTime::UNIX_EPOCH - abs
    }
}

fn rfc3339_nanos(ns: i128) -> String {
    humantime::format_rfc3339_nanos(system_time(ns)).to_string()
}

fn rfc3339_secs(secs: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(i128::from(secs) * 1_000_000_000)).to_string()
}

fn period_name(p: Period) -> &'static str {
    match p {
        Period::Hour => "hour",
        Period::Day => "day",
        Period::Month => "month",
    }
}

/// `[start, end)` of the UTC period holding `secs` (unix seconds).
#[must_use]
pub fn period_bounds(period: Period, secs: i64) -> (i64, i64) {
    const DAY: i64 = 86_400;
    match period {
        Period::Hour => {
            let start = secs.div_euclid(3600) * 3600;
            (start, start + 3600)
        }
        Period::Day => {
            let start = secs.div_euclid(DAY) * DAY;
            (start, start + DAY)
        }
        Period::Month => {
            let (y, m) = year_month(secs.div_euclid(DAY));
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                days_from_civil(y, m, 1) * DAY,
                days_from_civil(ny, nm, 1) * DAY,
            )
        }
    }
}

// Howard Hinnant's `days_from_civil` / `civil_from_days` (proleptic Gregorian, exact for all
// i64 days we can meet): http://howardhinnant.github.io/date_algorithms.html
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}
