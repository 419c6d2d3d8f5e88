//! Prometheus exposition: request, energy, cost and health numbers, and a minimal `/metrics`
//! HTTP endpoint.
//!
//! Label values come from a bounded set: `endpoint` is the rules' normalized path (this module
//! normalizes, so a raw path or query string can never become a label), `method` one of the
//! standard methods or `other`, `status_class` `2xx`…, `model`, and the tag names declared in
//! `[[tag]]` rules (a tag named like a built-in label is exported as `tag_<name>`). Unknown
//! values leave the label out rather than inventing one. Each family holds at most `max_series`
//! label sets: past 90 % of it new sets fold into `endpoint="other"`, and once it is full into
//! one catch-all set, each fold counted in `cost_probe_series_overflow_total`.
mod http;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use std::sync::{Arc, Mutex, PoisonError};

use crate::alerts::Alert;
use crate::attribution::IntervalSplit;
use crate::rules::{PathNormalizer, Rules};
use crate::spans;

use super::{Record, Sink};

pub use self::http::{serve, serve_listener};

/// The Prometheus sink: every record updates the registry that `/metrics` serves (the HTTP
/// server holds the other handle and only reads).
pub struct PrometheusSink {
    metrics: Arc<Mutex<Metrics>>,
    max_series: usize,
}

impl PrometheusSink {
    #[must_use]
    pub fn new(metrics: Arc<Mutex<Metrics>>, max_series: usize) -> Self {
        Self {
            metrics,
            max_series,
        }
    }
}

impl Sink for PrometheusSink {
    fn write(&mut self, record: &Record<'_>) -> std::io::Result<()> {
        let mut mx = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        match *record {
            Record::Request { span, record } => mx.observe_request(&RequestObs {
                method: span.method.as_deref(),
                path: span.path.as_deref(),
                status: span.status,
                model: span.model.as_deref(),
                tags: &record.tags,
                duration_s: record.duration_ms / 1e3,
                energy_j: record.energy_j.map(|e| e.total),
                cost_usd: record.cost_usd.map(|c| c.total),
                tokens: span.usage.total(),
            }),
            Record::Interval { report, spans, .. } => {
                for d in &report.domains {
                    mx.observe_interval(&d.id, &d.split);
                }
                mx.sampler(
                    Duration::from_nanos(report.sampler_cost.0),
                    report.late_ticks,
                );
                mx.span_stats(spans);
            }
            Record::Lost(l) => mx.lost(l.events),
            Record::Alert(a) => mx.alert(a),
            Record::Summary(_) => {}
        }
        Ok(())
    }

    /// Label rules may have changed: series start afresh under the new ones.
    fn set_rules(&mut self, rules: &Rules) {
        *self.metrics.lock().unwrap_or_else(PoisonError::into_inner) =
            Metrics::new(rules, self.max_series);
    }
}

/// A label set: built-in labels in a fixed order, then tags by name.
pub type Labels = Vec<(String, String)>;

/// Default bound on label sets per family.
pub const DEFAULT_MAX_SERIES: usize = 1000;
/// Loopback only: metrics reveal traffic shape, so exposing them is the operator's decision.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";
/// Prometheus text format 0.0.4.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

const BUILTIN_LABELS: [&str; 4] = ["endpoint", "method", "status_class", "model"];
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
const OTHER: &str = "other";
/// Longer label values (model names are client-chosen) are cut: they bloat every scrape.
const MAX_VALUE_LEN: usize = 128;

/// One finished request, as metrics see it.
#[derive(Clone, Copy, Debug)]
pub struct RequestObs<'a> {
    pub method: Option<&'a str>,
    /// The raw request path; normalized here.
    pub path: Option<&'a str>,
    pub status: Option<u16>,
    pub model: Option<&'a str>,
    /// Tags from the rules' `Tagger`; names not declared in the rules are ignored.
    pub tags: &'a std::collections::BTreeMap<String, String>,
    pub duration_s: f64,
    pub energy_j: Option<f64>,
    pub cost_usd: Option<f64>,
    /// Prompt + completion tokens, when known.
    pub tokens: Option<u64>,
}

/// The span-table limits whose overflow is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanTable {
    /// Connections not tracked: the connection table was full.
    Conns,
    /// Pipelined requests dropped: a connection's queue was full.
    Queue,
    /// Open spans evicted by attribution's `max_open_spans`.
    OpenSpans,
}

impl SpanTable {
    fn as_str(self) -> &'static str {
        match self {
            Self::Conns => "conns",
            Self::Queue => "queue",
            Self::OpenSpans => "open_spans",
        }
    }
}

type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;
type FloatCounter = Counter<f64, std::sync::atomic::AtomicU64>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

fn latency_hist() -> Histogram {
    // 5 ms … 164 s: embeddings to long generations.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}
fn joules_hist() -> Histogram {
    // 10 mJ … 42 kJ: a cached token to minutes of a full GPU.
    Histogram::new(exponential_buckets(0.01, 4.0, 12))
}
fn usd_hist() -> Histogram {
    // $1e-7 … $6.7 per request.
    Histogram::new(exponential_buckets(1e-7, 4.0, 14))
}

/// Totals behind the per-1k gauges of one label set.
#[derive(Clone, Copy, Debug, Default)]
struct Acc {
    requests: u64,
    cost: f64,
    token_cost: f64,
    tokens: u64,
}

/// Admits label sets up to a hard cap (see the module docs).
#[derive(Debug)]
struct SeriesGuard {
    admitted: HashSet<Labels>,
    cap: usize,
}

impl SeriesGuard {
    fn new(cap: usize) -> Self {
        // Room for at least one normal, one folded and the catch-all set.
        Self {
            admitted: HashSet::new(),
            cap: cap.max(3),
        }
    }

    /// The label set to record under, and whether it was folded.
    fn admit(&mut self, labels: Labels, fold_key: &str, catch_all: &Labels) -> (Labels, bool) {
        if self.admitted.contains(&labels) {
            return (labels, false);
        }
        let normal_room = self.cap - (self.cap / 10).max(1) - 1;
        if self.admitted.len() < normal_room {
            self.admitted.insert(labels.clone());
            return (labels, false);
        }
        let mut folded = labels;
        match folded.iter_mut().find(|(k, _)| k == fold_key) {
            Some((_, v)) => OTHER.clone_into(v),
            None => folded.insert(0, (fold_key.to_owned(), OTHER.to_owned())),
        }
        if self.admitted.contains(&folded) {
            return (folded, true);
        }
        if self.admitted.len() < self.cap - 1 {
            self.admitted.insert(folded.clone());
            return (folded, true);
        }
        self.admitted.insert(catch_all.clone());
        (catch_all.clone(), true)
    }
}

/// Every metric cost-probe exports, in one registry.
pub struct Metrics {
    registry: Registry,
    paths: PathNormalizer,
    /// Declared tag name → exported label name.
    tag_labels: Vec<(String, String)>,
    requests: Family<Labels, Counter>,
    duration: HistFamily,
    energy_hist: HistFamily,
    cost_hist: HistFamily,
    cost_total: Family<Labels, FloatCounter>,
    energy_total: Family<Labels, FloatCounter>,
    tokens: Family<Labels, Counter>,
    cost_per_1k_requests: Family<Labels, FloatGauge>,
    cost_per_1k_tokens: Family<Labels, FloatGauge>,
    domain_energy: Family<Labels, FloatCounter>,
    lost: Counter,
    tick_seconds: FloatGauge,
    dropped_ticks: Counter,
    span_overflow: Family<Labels, Counter>,
    alerts: Family<Labels, Counter>,
    series_overflow: Family<Labels, Counter>,
    request_series: SeriesGuard,
    domain_series: SeriesGuard,
    acc: HashMap<Labels, Acc>,
    catch_all: Labels,
    span_stats_seen: spans::Stats,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("request_series", &self.request_series.admitted.len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics labelled by `rules`' path normalizer and declared tag names, with at most
    /// `max_series` label sets per family.
    #[must_use]
    pub fn new(rules: &Rules, max_series: usize) -> Self {
        let declared: BTreeSet<&String> = rules.tags.iter().flat_map(|t| t.set.keys()).collect();
        let tag_labels = declared
            .into_iter()
            .map(|k| {
                let label = if BUILTIN_LABELS.contains(&k.as_str()) {
                    format!("tag_{k}")
                } else {
                    k.clone()
                };
                (k.clone(), label)
            })
            .collect();
        let hist = |f: fn() -> Histogram| HistFamily::new_with_constructor(f);
        let catch_all = BUILTIN_LABELS
            .iter()
            .map(|k| ((*k).to_owned(), OTHER.to_owned()))
            .collect();
        let mut m = Self {
            registry: Registry::default(),
            paths: rules.tagger().normalizer().clone(),
            tag_labels,
            requests: Family::default(),
            duration: hist(latency_hist),
            energy_hist: hist(joules_hist),
            cost_hist: hist(usd_hist),
            cost_total: Family::default(),
            energy_total: Family::default(),
            tokens: Family::default(),
            cost_per_1k_requests: Family::default(),
            cost_per_1k_tokens: Family::default(),
            domain_energy: Family::default(),
            lost: Counter::default(),
            tick_seconds: FloatGauge::default(),
            dropped_ticks: Counter::default(),
            span_overflow: Family::default(),
            alerts: Family::default(),
            series_overflow: Family::default(),
            request_series: SeriesGuard::new(max_series),
            // Each domain has three series (attributed, idle, other).
            domain_series: SeriesGuard::new(max_series / 3),
            acc: HashMap::new(),
            catch_all,
            span_stats_seen: spans::Stats::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "cost_probe_requests",
            "Requests finished.",
            self.requests.clone(),
        );
        r.register(
            "cost_probe_request_duration_seconds",
            "Request latency, first request byte to last response byte.",
            self.duration.clone(),
        );
        r.register(
            "cost_probe_request_energy_joules",
            "Energy attributed to each request.",
            self.energy_hist.clone(),
        );
        r.register(
            "cost_probe_request_cost_usd",
            "Cost of each request (energy and capacity).",
            self.cost_hist.clone(),
        );
        r.register(
            "cost_probe_cost_usd",
            "Cost of finished requests.",
            self.cost_total.clone(),
        );
        r.register(
            "cost_probe_energy_joules",
            "Energy attributed to finished requests.",
            self.energy_total.clone(),
        );
        r.register(
            "cost_probe_tokens",
            "Prompt and completion tokens of finished requests.",
            self.tokens.clone(),
        );
        r.register(
            "cost_probe_cost_per_1k_requests_usd",
            "Cost of 1000 requests: cost total over request count.",
            self.cost_per_1k_requests.clone(),
        );
        r.register(
            "cost_probe_cost_per_1k_tokens_usd",
            "Cost of 1000 tokens, over requests whose tokens are known.",
            self.cost_per_1k_tokens.clone(),
        );
        r.register(
            "cost_probe_domain_energy_joules",
            "Measured energy by domain, split into attributed (to requests), idle and other (other processes).",
            self.domain_energy.clone(),
        );
        r.register(
            "cost_probe_lost_events",
            "Events the kernel dropped because the ring buffer was full.",
            self.lost.clone(),
        );
        r.register(
            "cost_probe_sampler_tick_seconds",
            "What the last energy-sampler tick cost.",
            self.tick_seconds.clone(),
        );
        r.register(
            "cost_probe_sampler_dropped_ticks",
            "Sampler ticks dropped because the consumer was behind.",
            self.dropped_ticks.clone(),
        );
        r.register(
            "cost_probe_span_overflow",
            "Connections, queued requests or open spans dropped at a table limit.",
            self.span_overflow.clone(),
        );
        r.register(
            "cost_probe_alerts",
            "Budget and anomaly alerts fired.",
            self.alerts.clone(),
        );
        r.register(
            "cost_probe_series_overflow",
            "Observations folded into endpoint=\"other\" or the catch-all series by the label cap.",
            self.series_overflow.clone(),
        );
    }

    /// The label set of a request, before the cap.
    #[must_use]
    pub fn request_labels(&self, obs: &RequestObs<'_>) -> Labels {
        let mut labels = Labels::with_capacity(4 + self.tag_labels.len());
        if let Some(path) = obs.path {
            labels.push(("endpoint".into(), sanitize(&self.paths.normalize(path))));
        }
        if let Some(m) = obs.method {
            let m = METHODS
                .iter()
                .find(|k| k.eq_ignore_ascii_case(m))
                .copied()
                .unwrap_or(OTHER);
            labels.push(("method".into(), m.into()));
        }
        if let Some(s) = obs.status.filter(|s| (100..600).contains(s)) {
            labels.push(("status_class".into(), format!("{}xx", s / 100)));
        }
        if let Some(m) = obs.model {
            labels.push(("model".into(), sanitize(m)));
        }
        for (tag, label) in &self.tag_labels {
            if let Some(v) = obs.tags.get(tag) {
                labels.push((label.clone(), sanitize(v)));
            }
        }
        labels
    }

    pub fn observe_request(&mut self, obs: &RequestObs<'_>) {
        let labels = self.request_labels(obs);
        let (labels, folded) = self
            .request_series
            .admit(labels, "endpoint", &self.catch_all);
        if folded {
            self.count_overflow("requests");
        }
        self.requests.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(obs.duration_s.max(0.0));
        let finite = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
        if let Some(j) = finite(obs.energy_j) {
            self.energy_hist.get_or_create(&labels).observe(j);
            self.energy_total.get_or_create(&labels).inc_by(j);
        }
        let cost = finite(obs.cost_usd);
        if let Some(c) = cost {
            self.cost_hist.get_or_create(&labels).observe(c);
            self.cost_total.get_or_create(&labels).inc_by(c);
        }
        if let Some(t) = obs.tokens {
            self.tokens.get_or_create(&labels).inc_by(t);
        }
        let acc = self.acc.entry(labels.clone()).or_default();
        acc.requests += 1;
        if let Some(c) = cost {
            acc.cost += c;
            if let Some(t) = obs.tokens.filter(|t| *t > 0) {
                acc.token_cost += c;
                acc.tokens += t;
            }
            self.cost_per_1k_requests
                .get_or_create(&labels)
                .set(acc.cost * 1000.0 / acc.requests as f64);
        }
        if acc.tokens > 0 {
            self.cost_per_1k_tokens
                .get_or_create(&labels)
                .set(acc.token_cost * 1000.0 / acc.tokens as f64);
        }
    }

    /// One attribution interval of one energy domain (`gpu:0`, `rapl:package-0`, …).
    pub fn observe_interval(&mut self, domain: &str, rec: &IntervalSplit) {
        let labels = vec![("domain".to_owned(), sanitize(domain))];
        let (base, folded) = self.domain_series.admit(
            labels,
            "domain",
            &vec![("domain".to_owned(), OTHER.to_owned())],
        );
        if folded {
            self.count_overflow("domains");
        }
        for (split, uj) in [
            ("attributed", rec.attributed),
            ("idle", rec.idle),
            ("other", rec.other),
        ] {
            let mut labels = base.clone();
            labels.push(("split".into(), split.into()));
            self.domain_energy
                .get_or_create(&labels)
                .inc_by(uj.joules());
        }
    }

    /// Kernel events dropped since the last call.
    pub fn lost(&self, events: u64) {
        self.lost.inc_by(events);
    }

    /// The last sampler tick's cost and the ticks dropped since the last call.
    pub fn sampler(&self, tick_cost: Duration, dropped: u64) {
        self.tick_seconds.set(tick_cost.as_secs_f64());
        self.dropped_ticks.inc_by(dropped);
    }

    pub fn span_overflow(&self, table: SpanTable, n: u64) {
        self.span_overflow
            .get_or_create(&vec![("table".to_owned(), table.as_str().to_owned())])
            .inc_by(n);
    }

    /// The span builder's cumulative counters; only what grew since the last call is added.
    pub fn span_stats(&mut self, stats: &spans::Stats) {
        let seen = self.span_stats_seen;
        self.span_overflow(
            SpanTable::Conns,
            stats.conn_overflow.saturating_sub(seen.conn_overflow),
        );
        self.span_overflow(
            SpanTable::Queue,
            stats.queue_overflow.saturating_sub(seen.queue_overflow),
        );
        self.span_stats_seen = *stats;
    }

    pub fn alert(&self, alert: &Alert) {
        self.alerts
            .get_or_create(&vec![
                ("rule".to_owned(), sanitize(&alert.rule)),
                ("kind".to_owned(), alert.kind.as_str().to_owned()),
            ])
            .inc();
    }

    fn count_overflow(&self, family: &str) {
        self.series_overflow
            .get_or_create(&vec![("family".to_owned(), family.to_owned())])
            .inc();
    }

    /// `OpenMetrics` 1.0 text, as prometheus-client writes it.
    #[must_use]
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_eof(&mut out);
        out
    }

    /// Prometheus text format 0.0.4 (what `promtool check metrics` and older scrapers read).
    #[must_use]
    pub fn encode(&self) -> String {
        openmetrics_to_text(&self.encode_openmetrics())
    }
}

/// `OpenMetrics` → Prometheus 0.0.4: `OpenMetrics` names a counter family without `_total` and its
/// samples with it, which the 0.0.4 parser reads as two families (the samples untyped, without
/// help); 0.0.4 has no `# UNIT` or `# EOF`.
#[must_use]
pub fn openmetrics_to_text(om: &str) -> String {
    let counters: HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + counters.len() * 16);
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                let _ = writeln!(out, "{prefix}{name}_total {tail}");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Label values are written unescaped by prometheus-client, so anything that would need escaping
/// (quotes, backslashes, control characters) is replaced.
fn sanitize(v: &str) -> String {
    v.chars()
        .take(MAX_VALUE_LEN)
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}
