//! `top`'s live view: the records a run writes, folded into per-group rates for a terminal table.
//!
//! [`Live`] is the state, pure and clock-free (every call takes `now`): it reads the same NDJSON
//! lines the NDJSON sink writes ([`sink::ViewSink`] sends them), groups requests with `report`'s
//! `--by` keys, keeps a per-second spend series over the last [`WINDOW_SECS`] seconds, and holds
//! the latest in-flight snapshot. [`draw`] renders a [`Live`] with ratatui; the terminal and the
//! threads are the runtime's (`runtime::top`).
pub mod draw;
pub mod sink;
#[cfg(test)]
mod tests;

use std::{borrow::Cow, collections::BTreeMap};

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::{
    pricing::Prices,
    report::{
        Aggregator, GroupKey, MAX_GROUPS, NONE, OTHER,
        record::{self, Line},
    },
    units::MicroJoules,
};

/// The recent window of `$/min` and the sparkline, in seconds.
pub const WINDOW_SECS: i64 = 60;
const NS: i64 = 1_000_000_000;

/// A request in flight with the fields its request record will carry, so it is grouped the way
/// its record will be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub id: u64,
    /// Monotonic ns.
    pub start: u64,
    pub method: Option<String>,
    pub path: Option<String>,
    pub model: Option<String>,
    pub comm: String,
    pub tags: BTreeMap<String, String>,
}

/// Spend per wall-clock second over the last [`WINDOW_SECS`] seconds: a ring indexed by the second.
#[derive(Debug, Clone)]
pub struct Seconds {
    secs: [i64; WINDOW_SECS as usize],
    usd: [f64; WINDOW_SECS as usize],
}

impl Default for Seconds {
    fn default() -> Self {
        Self {
            secs: [i64::MIN; WINDOW_SECS as usize],
            usd: [0.0; WINDOW_SECS as usize],
        }
    }
}

impl Seconds {
    fn slot(sec: i64) -> usize {
        sec.rem_euclid(WINDOW_SECS) as usize
    }

    /// Adds spend at unix second `sec`. A second older than the one its slot holds is outside
    /// the window already and is dropped (it still counts in the totals).
    pub fn add(&mut self, sec: i64, usd: f64) {
        let i = Self::slot(sec);
        if self.secs[i] == sec {
            self.usd[i] += usd;
        } else if self.secs[i] < sec {
            self.secs[i] = sec;
            self.usd[i] = usd;
        }
    }

    /// Spend in the window ending with second `now` (inclusive).
    #[must_use]
    pub fn sum(&self, now: i64) -> f64 {
        self.series(now).iter().sum()
    }

    /// Spend per second, oldest first, the last entry being second `now`.
    #[must_use]
    pub fn series(&self, now: i64) -> Vec<f64> {
        (now - WINDOW_SECS + 1..=now)
            .map(|s| {
                let i = Self::slot(s);
                if self.secs[i] == s { self.usd[i] } else { 0.0 }
            })
            .collect()
    }
}

/// The column rows are sorted by (descending; ties by group name). `s` cycles through them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    #[default]
    UsdPerMin,
    Requests,
    InFlight,
    JoulesPerRequest,
    UsdPerRequest,
    P50,
}

impl SortBy {
    #[must_use]
    pub fn next(self) -> Self {
        match self {
            Self::UsdPerMin => Self::Requests,
            Self::Requests => Self::InFlight,
            Self::InFlight => Self::JoulesPerRequest,
            Self::JoulesPerRequest => Self::UsdPerRequest,
            Self::UsdPerRequest => Self::P50,
            Self::P50 => Self::UsdPerMin,
        }
    }

    #[must_use]
    pub fn header(self) -> &'static str {
        match self {
            Self::UsdPerMin => "$/min",
            Self::Requests => "requests",
            Self::InFlight => "in flight",
            Self::JoulesPerRequest => "J/request",
            Self::UsdPerRequest => "$/request",
            Self::P50 => "p50 ms",
        }
    }
}

#[derive(Debug)]
struct Group {
    name: String,
    requests: u64,
    /// Requests with energy and cost.
    priced: u64,
    energy_j: f64,
    cost_usd: f64,
    latency_us: Histogram<u64>,
    spend: Seconds,
    in_flight: u64,
}

impl Group {
    fn new(name: String) -> Self {
        Self {
            name,
            requests: 0,
            priced: 0,
            energy_j: 0.0,
            cost_usd: 0.0,
            // 2 significant figures, as `report` keeps them.
            latency_us: Histogram::new(2).expect("2 significant figures is in range"),
            spend: Seconds::default(),
            in_flight: 0,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub group: String,
    pub requests: u64,
    pub in_flight: u64,
    /// Over the recent window (see [`Live::window_secs`]).
    pub usd_per_min: f64,
    pub joules_per_request: Option<f64>,
    pub usd_per_request: Option<f64>,
    pub p50_ms: Option<f64>,
    pub cost_usd: f64,
}

/// Totals since the view started.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub partial: u64,
    pub energy_j: f64,
    pub cost_usd: f64,
    /// Energy drawn with no request in flight, and its price.
    pub idle_j: f64,
    pub idle_usd: f64,
    /// The idle power of the last interval, summed over its domains.
    pub idle_w: f64,
    pub lost_events: u64,
    /// Lines the view could not read (a bug if ever non-zero), and records it never got
    /// (its queue was full).
    pub unreadable: u64,
    pub dropped: u64,
}

/// The fields of an `interval` record the view reads beyond [`Line`]'s.
#[derive(Deserialize)]
struct IntervalIdle {
    #[serde(default)]
    domains: Vec<DomainIdle>,
}

#[derive(Deserialize)]
struct DomainIdle {
    #[serde(default)]
    idle_w: f64,
}

/// The view's state. Feed it record lines and in-flight snapshots; read rows and series.
pub struct Live {
    by: Vec<GroupKey>,
    prices: Prices,
    /// Unix ns the view started (the `$/min` window is shorter until a window has passed).
    started: i64,
    groups: FxHashMap<String, Group>,
    key: String,
    totals: Totals,
    spend: Seconds,
    in_flight: Vec<(String, u64)>,
    /// Monotonic ns of the in-flight snapshot.
    in_flight_at: u64,
    pub sort: SortBy,
    summary: Option<String>,
}

impl Live {
    /// `prices`: how idle energy is priced (the rules' energy price, as `report` does).
    #[must_use]
    pub fn new(by: Vec<GroupKey>, prices: Prices, started_unix_ns: i64) -> Self {
        Self {
            by,
            prices,
            started: started_unix_ns,
            groups: FxHashMap::default(),
            key: String::new(),
            totals: Totals::default(),
            spend: Seconds::default(),
            in_flight: Vec::new(),
            in_flight_at: 0,
            sort: SortBy::default(),
            summary: None,
        }
    }

    /// The group keys, for the table's first header.
    #[must_use]
    pub fn by(&self) -> &[GroupKey] {
        &self.by
    }

    #[must_use]
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The run's `summary` record, once it has been written.
    #[must_use]
    pub fn summary(&self) -> Option<&str> {
        self.summary.as_deref()
    }

    /// Records the view's queue could not take.
    pub fn dropped(&mut self, n: u64) {
        self.totals.dropped += n;
    }

    /// One NDJSON record line, as the NDJSON sink writes it.
    pub fn line(&mut self, bytes: &[u8]) {
        let Ok(l) = serde_json::from_slice::<Line>(bytes) else {
            self.totals.unreadable += 1;
            return;
        };
        match &*l.kind {
            "request" => self.request(&l),
            "interval" => {
                let t = &mut self.totals;
                t.idle_j += l.idle_j.unwrap_or(0.0);
                t.idle_usd = self
                    .prices
                    .energy(MicroJoules((t.idle_j * 1e6).round() as u64))
                    .0;
                if let Ok(i) = serde_json::from_slice::<IntervalIdle>(bytes) {
                    t.idle_w = i.domains.iter().map(|d| d.idle_w).sum();
                }
            }
            "lost" => self.totals.lost_events += l.events.unwrap_or(0),
            "summary" => self.summary = Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => {}
        }
    }

    /// The group of a record line: `report`'s key values, joined by `/`.
    fn group(&mut self, l: &Line) -> &mut Group {
        self.key.clear();
        let mut status = itoa::Buffer::new();
        for (i, k) in self.by.iter().enumerate() {
            if i > 0 {
                self.key.push_str(" / ");
            }
            let v = Aggregator::value(l, k, &mut status);
            self.key.push_str(v.as_deref().unwrap_or(NONE));
        }
        if !self.groups.contains_key(self.key.as_str()) {
            let key = if self.groups.len() < MAX_GROUPS {
                self.key.clone()
            } else {
                OTHER.to_owned()
            };
            return self
                .groups
                .entry(key.clone())
                .or_insert_with(|| Group::new(key));
        }
        self.groups
            .get_mut(self.key.as_str())
            .expect("checked above")
    }

    fn request(&mut self, l: &Line) {
        let cost = l.cost_usd.map(|c| c.total);
        let energy = l.energy_j.map(|e| e.total);
        let sec = l
            .end
            .as_deref()
            .and_then(record::unix_nanos)
            .map(|ns| ns.div_euclid(NS));
        let partial = l.flags.is_some_and(|f| f.contains("\"partial\""));
        let g = self.group(l);
        g.requests += 1;
        if let Some(d) = l.duration_ms {
            let _ = g.latency_us.record(((d * 1e3).round() as u64).max(1));
        }
        if let (Some(c), Some(e)) = (cost, energy) {
            g.priced += 1;
            g.cost_usd += c;
            g.energy_j += e;
            if let Some(s) = sec {
                g.spend.add(s, c);
            }
        }
        let t = &mut self.totals;
        t.requests += 1;
        t.partial += u64::from(partial);
        if let (Some(c), Some(e)) = (cost, energy) {
            t.cost_usd += c;
            t.energy_j += e;
            if let Some(s) = sec {
                self.spend.add(s, c);
            }
        }
    }

    /// The requests in flight at monotonic `now`: each counted in its group, the oldest kept
    /// with their group for the list.
    pub fn set_in_flight(&mut self, now: u64, requests: &[InFlight]) {
        for g in self.groups.values_mut() {
            g.in_flight = 0;
        }
        self.in_flight.clear();
        self.in_flight_at = now;
        for r in requests {
            let tags = serde_json::to_string(&r.tags).unwrap_or_default();
            let line = Line {
                kind: Cow::Borrowed("request"),
                http: r
                    .method
                    .as_deref()
                    .zip(r.path.as_deref())
                    .map(|(m, p)| record::Http {
                        method: Cow::Borrowed(m),
                        path: Cow::Borrowed(p),
                        status: None,
                    }),
                model: r.model.as_deref().map(Cow::Borrowed),
                comm: Some(Cow::Borrowed(&r.comm)),
                tags: Some(&tags),
                ..Line::default()
            };
            let g = self.group(&line);
            g.in_flight += 1;
            let name = g.name.clone();
            self.in_flight.push((name, r.start));
        }
        self.in_flight.sort_by_key(|&(_, start)| start);
    }

    /// Requests in flight at the last snapshot.
    #[must_use]
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    /// The `n` oldest requests in flight: group and age in seconds at the snapshot.
    #[must_use]
    pub fn oldest_in_flight(&self, n: usize) -> Vec<(&str, f64)> {
        self.in_flight
            .iter()
            .take(n)
            .map(|(g, start)| {
                (
                    g.as_str(),
                    self.in_flight_at.saturating_sub(*start) as f64 / 1e9,
                )
            })
            .collect()
    }

    /// Seconds the `$/min` window covers at unix ns `now`: [`WINDOW_SECS`], or less until the
    /// view has run that long (a rate is never extrapolated from an empty past).
    #[must_use]
    pub fn window_secs(&self, now: i64) -> f64 {
        ((now - self.started) as f64 / 1e9).clamp(1.0, WINDOW_SECS as f64)
    }

    /// Spend per minute over the recent window, all groups.
    #[must_use]
    pub fn usd_per_min(&self, now: i64) -> f64 {
        self.spend.sum(now.div_euclid(NS)) / self.window_secs(now) * 60.0
    }

    /// Spend per second over the last [`WINDOW_SECS`] seconds, oldest first.
    #[must_use]
    pub fn spend_series(&self, now: i64) -> Vec<f64> {
        self.spend.series(now.div_euclid(NS))
    }

    /// The table at unix ns `now`, sorted by [`Self::sort`].
    #[must_use]
    pub fn rows(&self, now: i64) -> Vec<Row> {
        let sec = now.div_euclid(NS);
        let window = self.window_secs(now);
        let mut rows: Vec<Row> = self
            .groups
            .values()
            .map(|g| {
                let per = |v: f64| (g.priced > 0).then(|| v / g.priced as f64);
                Row {
                    group: g.name.clone(),
                    requests: g.requests,
                    in_flight: g.in_flight,
                    usd_per_min: g.spend.sum(sec) / window * 60.0,
                    joules_per_request: per(g.energy_j),
                    usd_per_request: per(g.cost_usd),
                    p50_ms: (g.requests > 0 && !g.latency_us.is_empty())
                        .then(|| g.latency_us.value_at_quantile(0.5) as f64 / 1e3),
                    cost_usd: g.cost_usd,
                }
            })
            .collect();
        let sort = self.sort;
        let key = |r: &Row| -> f64 {
            match sort {
                SortBy::UsdPerMin => r.usd_per_min,
                SortBy::Requests => r.requests as f64,
                SortBy::InFlight => r.in_flight as f64,
                SortBy::JoulesPerRequest => r.joules_per_request.unwrap_or(-1.0),
                SortBy::UsdPerRequest => r.usd_per_request.unwrap_or(-1.0),
                SortBy::P50 => r.p50_ms.unwrap_or(-1.0),
            }
        };
        rows.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then_with(|| b.cost_usd.total_cmp(&a.cost_usd))
                .then_with(|| a.group.cmp(&b.group))
        });
        rows
    }
}
