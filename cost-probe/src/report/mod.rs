//! `report`: reads request, interval and lost records back and answers what each group cost.
//!
//! Streaming and bounded: each line is parsed in place ([`record`]), folded into per-group HDR
//! histograms and sums, and dropped. Memory is bounded by the group cap ([`MAX_GROUPS`]; past it
//! requests fold into `(other)`), the top-N heap, the histograms' fixed precision and the cap on
//! request hashes remembered ([`cache::MAX_DISTINCT`]), not by the number of records.
pub mod cache;
pub mod forecast;
pub mod html;
mod input;
pub mod record;
mod render;
mod scan;
pub mod views;

use std::{cmp::Reverse, collections::BinaryHeap};

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use serde::Serialize;

pub use input::{Input, read_from, read_inputs};
pub use render::table;

use crate::{pricing::Prices, rules::Budget};
use forecast::{BudgetPosition, Projection, Series};

/// Groups kept apart; past this, new groups fold into one `(other)` group.
pub const MAX_GROUPS: usize = 1000;
pub(crate) const OTHER: &str = "(other)";
/// Shown for a group key a record does not have.
pub(crate) const NONE: &str = "-";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{input}:{line}: not a record: {message}")]
    BadLine {
        input: String,
        line: u64,
        message: String,
    },
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{0}: no file matches")]
    NoMatch(String),
    #[error("writing the report: {0}")]
    Output(std::io::Error),
}

/// What a group is keyed on: a record field or any tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupKey {
    Model,
    Path,
    Comm,
    Method,
    Status,
    Tag(String),
}

impl GroupKey {
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Model => "model",
            Self::Path => "path",
            Self::Comm => "comm",
            Self::Method => "method",
            Self::Status => "status",
            Self::Tag(t) => t,
        }
    }
}

impl std::str::FromStr for GroupKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "model" => Self::Model,
            "path" => Self::Path,
            "comm" => Self::Comm,
            "method" => Self::Method,
            "status" => Self::Status,
            "" => return Err("empty group key".into()),
            t if t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) =>
            {
                Self::Tag(t.to_owned())
            }
            t => return Err(format!("{t:?} is not a field or tag name")),
        })
    }
}

/// A validated `report` invocation, less its inputs.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    pub by: Vec<GroupKey>,
    /// Unix ns; requests by their start, intervals by their start, `lost` by its time.
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub top: usize,
    /// Prices the idle energy the way the requests' energy was priced.
    pub prices: Prices,
    /// `[[budget]]` rules to place the spend against.
    pub budgets: Vec<Budget>,
}

/// Per-request distributions at 2 significant figures: a report's table needs no more, and it
/// keeps each group's histograms to a few KiB.
const SIGFIG: u8 = 2;

fn histogram() -> Histogram<u64> {
    Histogram::new(SIGFIG).expect("2 significant figures is in range")
}

#[derive(Debug)]
struct Group {
    values: Vec<String>,
    requests: u64,
    latency_us: Histogram<u64>,
    ttft_us: Histogram<u64>,
    energy_uj: Histogram<u64>,
    priced: u64,
    energy_j: f64,
    cost_usd: f64,
    co2_g: f64,
    token_cost_usd: f64,
    tokens: u64,
    egress_usd: f64,
    cache: cache::Tally,
    spend: Series,
}

impl Group {
    fn new(values: Vec<String>) -> Self {
        Self {
            values,
            requests: 0,
            latency_us: histogram(),
            ttft_us: histogram(),
            energy_uj: histogram(),
            priced: 0,
            energy_j: 0.0,
            cost_usd: 0.0,
            co2_g: 0.0,
            token_cost_usd: 0.0,
            tokens: 0,
            egress_usd: 0.0,
            cache: cache::Tally::default(),
            spend: Series::default(),
        }
    }
}

/// One of the most expensive requests.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopRequest {
    pub cost_usd: f64,
    pub start: String,
    pub group: Vec<String>,
    pub model: Option<String>,
    pub path: Option<String>,
    pub duration_ms: f64,
    pub tokens: Option<u64>,
    pub energy_j: Option<f64>,
}

/// Ordered by cost for the min-heap of the top N.
struct ByCost(TopRequest);

impl PartialEq for ByCost {
    fn eq(&self, o: &Self) -> bool {
        self.0.cost_usd.total_cmp(&o.0.cost_usd).is_eq()
    }
}
impl Eq for ByCost {}
impl PartialOrd for ByCost {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ByCost {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.cost_usd.total_cmp(&o.0.cost_usd)
    }
}

#[derive(Debug, Default)]
struct Totals {
    requests: u64,
    priced: u64,
    partial: u64,
    energy_j: f64,
    cost_usd: f64,
    co2_g: f64,
    token_cost_usd: f64,
    tokens: u64,
    egress_usd: f64,
    bytes_out: u64,
    cache: cache::Tally,
    intervals: u64,
    attributed_j: f64,
    idle_j: f64,
    other_j: f64,
    lost_events: u64,
    outside_window: u64,
    first_ns: Option<i64>,
    last_ns: Option<i64>,
}

/// Folds records into the report. Feed it lines, then [`Aggregator::finish`].
pub struct Aggregator {
    config: ReportConfig,
    groups: FxHashMap<String, Group>,
    key: String,
    totals: Totals,
    top: BinaryHeap<Reverse<ByCost>>,
    spend: Series,
    /// One series per `[[budget]]`, of the requests its tags select.
    budget_spend: Vec<Series>,
    /// What only the HTML report draws; `None` unless asked for.
    views: Option<Box<views::Collector>>,
    hashes: cache::Seen,
}

impl Aggregator {
    #[must_use]
    pub fn new(config: ReportConfig) -> Self {
        Self {
            groups: FxHashMap::default(),
            key: String::new(),
            totals: Totals::default(),
            top: BinaryHeap::new(),
            spend: Series::default(),
            budget_spend: vec![Series::default(); config.budgets.len()],
            views: None,
            hashes: cache::Seen::default(),
            config,
        }
    }

    /// Also collects what the HTML report's charts need ([`Report::views`]).
    #[must_use]
    pub fn with_views(mut self) -> Self {
        self.views = Some(Box::default());
        self
    }

    /// One NDJSON line (without its newline). Blank lines are skipped; record types the report
    /// does not use (`summary`, `alert`, types newer than this build) are skipped too.
    pub fn line(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        // Two calls rather than one over an `Option`'s contents: moving a `Line` out cost a
        // 300-byte copy per line.
        if let Some(l) = scan::line(bytes) {
            self.record(&l);
        } else {
            self.record(&serde_json::from_slice::<record::Line>(bytes).map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    fn record(&mut self, l: &record::Line) {
        match &*l.kind {
            "request" => self.request(l),
            "interval" => self.interval(l),
            "lost" if self.within(l.time.as_deref()) => {
                self.totals.lost_events += l.events.unwrap_or(0);
            }
            _ => {}
        }
    }

    fn within(&mut self, stamp: Option<&str>) -> bool {
        if self.config.since.is_none() && self.config.until.is_none() {
            return true;
        }
        let Some(t) = stamp.and_then(record::unix_nanos) else {
            return true;
        };
        let inside =
            self.config.since.is_none_or(|s| t >= s) && self.config.until.is_none_or(|u| t < u);
        if !inside {
            self.totals.outside_window += 1;
        }
        inside
    }

    /// Widens the observed window; returns the start.
    fn seen(&mut self, start: Option<&str>, end: Option<&str>) -> Option<i64> {
        let t = &mut self.totals;
        let start = start.and_then(record::unix_nanos);
        if let Some(s) = start {
            t.first_ns = Some(t.first_ns.map_or(s, |f| f.min(s)));
        }
        if let Some(e) = end.and_then(record::unix_nanos) {
            t.last_ns = Some(t.last_ns.map_or(e, |l| l.max(e)));
        }
        start
    }

    fn interval(&mut self, l: &record::Line) {
        if !self.within(l.start.as_deref()) {
            return;
        }
        let at = self.seen(l.start.as_deref(), l.end.as_deref());
        if let (Some(v), Some(at)) = (&mut self.views, at) {
            v.interval(at, l);
        }
        let t = &mut self.totals;
        t.intervals += 1;
        t.attributed_j += l.attributed_j.unwrap_or(0.0);
        t.idle_j += l.idle_j.unwrap_or(0.0);
        t.other_j += l.other_j.unwrap_or(0.0);
    }

    pub(crate) fn value<'a>(
        l: &'a record::Line,
        k: &GroupKey,
        status: &'a mut itoa::Buffer,
    ) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        match k {
            GroupKey::Model => l.model.as_deref().map(Cow::Borrowed),
            GroupKey::Path => l.http.as_ref().map(|h| Cow::Borrowed(&*h.path)),
            GroupKey::Comm => l.comm.as_deref().map(Cow::Borrowed),
            GroupKey::Method => l.http.as_ref().map(|h| Cow::Borrowed(&*h.method)),
            GroupKey::Status => l
                .http
                .as_ref()
                .and_then(|h| h.status)
                .map(|s| Cow::Borrowed(status.format(s))),
            GroupKey::Tag(t) => l.tags.and_then(|raw| scan::object_string(raw, t)),
        }
    }

    fn group(&mut self, l: &record::Line) -> &mut Group {
        self.key.clear();
        let mut status = itoa::Buffer::new();
        for k in &self.config.by {
            let v = Self::value(l, k, &mut status);
            self.key.push_str(v.as_deref().unwrap_or(NONE));
            self.key.push('\x1f');
        }
        if !self.groups.contains_key(self.key.as_str()) {
            let (key, values) = if self.groups.len() < MAX_GROUPS {
                let values = self
                    .key
                    .split_terminator('\x1f')
                    .map(str::to_owned)
                    .collect();
                (self.key.clone(), values)
            } else {
                (
                    OTHER.to_owned(),
                    vec![OTHER.to_owned(); self.config.by.len()],
                )
            };
            return self.groups.entry(key).or_insert_with(|| Group::new(values));
        }
        self.groups
            .get_mut(self.key.as_str())
            .expect("checked above")
    }

    fn request(&mut self, l: &record::Line) {
        if !self.within(l.start.as_deref()) {
            return;
        }
        let at = self.seen(l.start.as_deref(), l.end.as_deref());
        let partial = l.flags.is_some_and(|f| f.contains("\"partial\""));
        let cost = l.cost_usd.map(|c| c.total);
        let tokens = l.tokens.map(record::Tokens::total).filter(|t| *t > 0);
        let energy = l.energy_j.map(|e| e.total);
        let egress = l.cost_usd.and_then(|c| c.egress).unwrap_or(0.0);
        let to_top = cost.is_some_and(|c| self.enters_top(c));
        let repeat = l.request_hash.map(|h| self.hashes.check(h));
        let g = self.group(l);
        g.requests += 1;
        g.egress_usd += egress;
        if let Some(kind) = repeat {
            g.cache.add(kind, cost, energy);
        }
        if let Some(d) = l.duration_ms {
            record_in(&mut g.latency_us, (d * 1e3).round() as u64);
        }
        if let Some(f) = l.first_chunk_ms {
            record_in(&mut g.ttft_us, (f * 1e3).round() as u64);
        }
        if let Some(e) = energy {
            record_in(&mut g.energy_uj, (e * 1e6).round() as u64);
            g.energy_j += e;
        }
        if let Some(c) = cost {
            g.priced += 1;
            g.cost_usd += c;
            g.co2_g += l.co2_g.unwrap_or(0.0);
            if let Some(t) = tokens {
                g.tokens += t;
                g.token_cost_usd += c;
            }
            if let Some(at) = at {
                g.spend.add(at, c);
            }
        }
        let group_values = to_top.then(|| g.values.clone());
        let t = &mut self.totals;
        t.requests += 1;
        t.partial += u64::from(partial);
        t.egress_usd += egress;
        t.bytes_out += l.bytes.map_or(0, |b| b.out);
        if let Some(kind) = repeat {
            t.cache.add(kind, cost, energy);
        }
        if let Some(c) = cost {
            t.priced += 1;
            t.cost_usd += c;
            t.energy_j += energy.unwrap_or(0.0);
            t.co2_g += l.co2_g.unwrap_or(0.0);
            if let Some(tk) = tokens {
                t.tokens += tk;
                t.token_cost_usd += c;
                if let Some(v) = &mut self.views {
                    v.tokens(l.model.as_deref(), c, tk);
                }
            }
            if let Some(at) = at {
                self.spend.add(at, c);
                for (b, series) in self.config.budgets.iter().zip(&mut self.budget_spend) {
                    let selected = b.tags.iter().all(|(k, v)| {
                        l.tags
                            .and_then(|raw| scan::object_string(raw, k))
                            .is_some_and(|got| got == v.as_str())
                    });
                    if selected {
                        series.add(at, c);
                    }
                }
            }
            if let Some(values) = group_values {
                self.consider_top(l, c, values, tokens, energy);
            }
        }
    }

    fn enters_top(&self, cost: f64) -> bool {
        self.config.top > 0
            && (self.top.len() < self.config.top
                || self
                    .top
                    .peek()
                    .is_some_and(|Reverse(m)| m.0.cost_usd.total_cmp(&cost).is_lt()))
    }

    fn consider_top(
        &mut self,
        l: &record::Line,
        cost: f64,
        group: Vec<String>,
        tokens: Option<u64>,
        energy_j: Option<f64>,
    ) {
        self.top.push(Reverse(ByCost(TopRequest {
            cost_usd: cost,
            start: l.start.as_deref().unwrap_or(NONE).to_owned(),
            group,
            model: l.model.as_deref().map(str::to_owned),
            path: l.http.as_ref().map(|h| h.path.to_string()),
            duration_ms: l.duration_ms.unwrap_or(0.0),
            tokens,
            energy_j,
        })));
        if self.top.len() > self.config.top {
            self.top.pop();
        }
    }

    /// The report: groups by cost (highest first), the totals and the top requests.
    #[must_use]
    pub fn finish(self) -> Report {
        let total_cost = self.totals.cost_usd;
        let window = self.totals.first_ns.zip(self.totals.last_ns);
        let month = |s: &Series| {
            window.map(|(f, l)| forecast::project(s, f, l, crate::rules::schema::Period::Month))
        };
        let mut merged = self.views.as_ref().map(|_| views::Merged::default());
        let mut spend = Vec::new();
        let cache_opportunity = cache::CacheReport::of(
            &self.totals.cache,
            total_cost,
            self.groups.values().map(|g| (&g.values[..], &g.cache)),
        );
        let mut groups: Vec<GroupReport> = self
            .groups
            .into_values()
            .map(|g| {
                let mut r = GroupReport::of(&g, total_cost);
                r.month_end = month(&g.spend);
                if let Some(m) = &mut merged {
                    m.add(&g);
                    spend.push((g.values, g.cost_usd, g.spend));
                }
                r
            })
            .collect();
        let budgets = window.map_or_else(Vec::new, |(f, l)| {
            self.config
                .budgets
                .iter()
                .zip(&self.budget_spend)
                .map(|(b, s)| forecast::budget(b, s, f, l))
                .collect()
        });
        groups.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then_with(|| a.key.cmp(&b.key))
        });
        let mut top: Vec<TopRequest> = self.top.into_iter().map(|Reverse(b)| b.0).collect();
        top.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then_with(|| a.start.cmp(&b.start))
        });
        let t = &self.totals;
        let idle_usd = self
            .config
            .prices
            .energy(crate::units::MicroJoules((t.idle_j * 1e6).round() as u64))
            .0;
        let stamp = |ns: Option<i64>| {
            ns.map(|n| {
                humantime::format_rfc3339_nanos(
                    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(n.max(0) as u64),
                )
                .to_string()
            })
        };
        Report {
            by: self.config.by.iter().map(|k| k.name().to_owned()).collect(),
            from: stamp(t.first_ns),
            to: stamp(t.last_ns),
            groups,
            forecast_method: forecast::METHOD,
            month_end: month(&self.spend),
            budgets,
            cache_opportunity,
            totals: TotalsReport {
                requests: t.requests,
                priced_requests: t.priced,
                partial_requests: t.partial,
                energy_j: t.energy_j,
                cost_usd: t.cost_usd,
                co2_g: t.co2_g,
                usd_per_1k_tokens: per_1k(t.token_cost_usd, t.tokens),
                tokens: t.tokens,
                egress_usd: t.egress_usd,
                bytes_out: t.bytes_out,
                intervals: t.intervals,
                attributed_j: t.attributed_j,
                idle_j: t.idle_j,
                idle_usd,
                other_j: t.other_j,
                lost_events: t.lost_events,
                outside_window: t.outside_window,
            },
            top,
            views: self
                .views
                .zip(merged)
                .map(|(v, m)| v.finish(window, spend, m)),
        }
    }
}

/// Records into an auto-resizing histogram (which grows to the value; `saturating_record`
/// would clamp to its current top instead).
fn record_in(h: &mut Histogram<u64>, v: u64) {
    let _ = h.record(v.max(1));
}

fn per_1k(cost: f64, tokens: u64) -> Option<f64> {
    (tokens > 0).then(|| cost * 1000.0 / tokens as f64)
}

fn quantile(h: &Histogram<u64>, q: f64, scale: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / scale)
}

/// The report, as `--json` writes it and the table shows it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub by: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub groups: Vec<GroupReport>,
    pub totals: TotalsReport,
    pub top: Vec<TopRequest>,
    pub forecast_method: &'static str,
    /// All requests' spend projected to the end of the month of the last record.
    pub month_end: Option<Projection>,
    pub budgets: Vec<BudgetPosition>,
    /// What the HTML report draws, when the aggregator collected it.
    #[serde(skip)]
    pub views: Option<views::Views>,
    pub cache_opportunity: cache::CacheReport,
}

#[derive(Debug, Serialize)]
pub struct GroupReport {
    pub key: Vec<String>,
    pub requests: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub j_per_request: Option<f64>,
    pub energy_p50_j: Option<f64>,
    pub energy_p99_j: Option<f64>,
    pub usd_per_request: Option<f64>,
    pub usd_per_1k_tokens: Option<f64>,
    pub energy_j: f64,
    pub cost_usd: f64,
    pub co2_g: f64,
    /// The part of `cost_usd` that is response bytes at the egress price.
    pub egress_usd: f64,
    /// This group's part of all requests' cost, 0–1.
    pub share: Option<f64>,
    pub month_end: Option<Projection>,
}

impl GroupReport {
    fn of(g: &Group, total_cost: f64) -> Self {
        let mean = |sum: f64| (g.priced > 0).then(|| sum / g.priced as f64);
        Self {
            key: g.values.clone(),
            requests: g.requests,
            latency_p50_ms: quantile(&g.latency_us, 0.5, 1e3),
            latency_p99_ms: quantile(&g.latency_us, 0.99, 1e3),
            ttft_p50_ms: quantile(&g.ttft_us, 0.5, 1e3),
            j_per_request: mean(g.energy_j),
            energy_p50_j: quantile(&g.energy_uj, 0.5, 1e6),
            energy_p99_j: quantile(&g.energy_uj, 0.99, 1e6),
            usd_per_request: mean(g.cost_usd),
            usd_per_1k_tokens: per_1k(g.token_cost_usd, g.tokens),
            energy_j: g.energy_j,
            cost_usd: g.cost_usd,
            co2_g: g.co2_g,
            egress_usd: g.egress_usd,
            share: (total_cost > 0.0).then(|| g.cost_usd / total_cost),
            month_end: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TotalsReport {
    pub requests: u64,
    pub priced_requests: u64,
    pub partial_requests: u64,
    pub energy_j: f64,
    pub cost_usd: f64,
    pub co2_g: f64,
    pub usd_per_1k_tokens: Option<f64>,
    pub tokens: u64,
    /// The part of `cost_usd` that is response bytes at the egress price.
    pub egress_usd: f64,
    /// Response bytes of every request (`bytes.out`).
    pub bytes_out: u64,
    pub intervals: u64,
    pub attributed_j: f64,
    /// Energy the target's devices drew with no request in flight: the idle waste.
    pub idle_j: f64,
    /// The idle energy priced like the requests' energy (kWh × PUE × $/kWh).
    pub idle_usd: f64,
    pub other_j: f64,
    pub lost_events: u64,
    /// Records left out by `--since`/`--until`.
    pub outside_window: u64,
}

#[cfg(test)]
mod tests;
