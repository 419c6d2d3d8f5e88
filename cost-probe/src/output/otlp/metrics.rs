//! OTLP metrics: the `/metrics` series under OpenTelemetry names, cumulative.
//!
//! The [`Aggregator`] runs on the consumer thread (a few map updates per request, no
//! allocation once a series exists); a [`Snapshot`] of it goes to the exporter thread each
//! export interval and becomes a `ResourceMetrics` there.
// Series are few (capped per instrument) and model names, the one client-chosen part, are cut
// and capped: a fast non-DoS-resistant hash is fine, and the consumer thread does one lookup per
// instrument per request.
use rustc_hash::FxHashMap as HashMap;

use opentelemetry_proto::tonic::{
    common::v1::{KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};

use super::{
    convert::{kv, scope},
    semconv::{self as sc, buckets},
};
use crate::{
    attribution::IntervalReport,
    output::records::RequestRecord,
    spans::{Protocol, RequestSpan},
};

/// An attribute value in a series key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Val {
    S(String),
    I(i64),
    B(bool),
}

type Attrs = Vec<(&'static str, Val)>;

/// One instrument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Inst {
    HttpDuration,
    GenAiDuration,
    Ttft,
    Tokens,
    RequestEnergy,
    Requests,
    Energy,
    Cost,
    Co2,
    DomainEnergy,
    LostEvents,
    DroppedSpans,
}

impl Inst {
    /// Name, unit, description, histogram boundaries (`None`: a monotonic sum).
    fn meta(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static [f64]>,
    ) {
        match self {
            Self::HttpDuration => (
                "http.server.request.duration",
                "s",
                "Duration of HTTP server requests.",
                Some(buckets::HTTP_DURATION),
            ),
            Self::GenAiDuration => (
                "gen_ai.server.request.duration",
                "s",
                "Generative AI server request duration (to the last byte).",
                Some(buckets::GEN_AI_DURATION),
            ),
            Self::Ttft => (
                "gen_ai.server.time_to_first_token",
                "s",
                "Time to the first streamed chunk of a successful response.",
                Some(buckets::TTFT),
            ),
            Self::Tokens => (
                "gen_ai.client.token.usage",
                "{token}",
                "Input and output tokens per request, as the server reported them.",
                Some(buckets::TOKENS),
            ),
            Self::RequestEnergy => (
                "cost_probe.request.energy",
                "J",
                "Energy attributed to one request.",
                Some(buckets::ENERGY),
            ),
            Self::Requests => ("cost_probe.requests", "{request}", "Requests seen.", None),
            Self::Energy => (
                "cost_probe.energy",
                "J",
                "Energy attributed to requests, by domain.",
                None,
            ),
            Self::Cost => (
                "cost_probe.cost",
                "USD",
                "Cost of requests, by component.",
                None,
            ),
            Self::Co2 => ("cost_probe.co2", "g", "CO2 of requests.", None),
            Self::DomainEnergy => (
                "cost_probe.domain.energy",
                "J",
                "Energy measured per domain, split into attributed, idle and other.",
                None,
            ),
            Self::LostEvents => (
                "cost_probe.lost_events",
                "{event}",
                "Kernel events dropped (ring buffer full).",
                None,
            ),
            Self::DroppedSpans => (
                "cost_probe.otlp.dropped_spans",
                "{span}",
                "Spans the OTLP exporter could not deliver.",
                None,
            ),
        }
    }
}

#[derive(Clone, Debug)]
struct Hist {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Hist {
    fn new(bounds: &[f64]) -> Self {
        Self {
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn record(&mut self, bounds: &[f64], v: f64) {
        // Buckets are (prev, bound]: the first bound at or above v.
        let i = bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// Attribute sets per instrument before new ones fold into the overflow series.
const MAX_SERIES: usize = 1000;

/// Cumulative series since the run began.
#[derive(Clone, Debug)]
pub struct Aggregator {
    start: u64,
    hists: HashMap<(Inst, Attrs), Hist>,
    sums: HashMap<(Inst, Attrs), f64>,
    series: HashMap<Inst, usize>,
}

/// The aggregator at one time, for the exporter thread.
#[derive(Debug)]
pub struct Snapshot {
    start: u64,
    time: u64,
    data: Aggregator,
}

impl Aggregator {
    pub fn new(start_unix_ns: u64) -> Self {
        Self {
            start: start_unix_ns,
            hists: HashMap::default(),
            sums: HashMap::default(),
            series: HashMap::default(),
        }
    }

    /// The key for `attrs`, or the overflow series once `inst` has [`MAX_SERIES`].
    fn key(series: &mut HashMap<Inst, usize>, inst: Inst, attrs: Attrs) -> (Inst, Attrs) {
        let n = series.entry(inst).or_default();
        if *n >= MAX_SERIES {
            return (inst, vec![(sc::OTEL_METRIC_OVERFLOW, Val::B(true))]);
        }
        *n += 1;
        (inst, attrs)
    }

    fn observe(&mut self, inst: Inst, attrs: Attrs, v: f64) {
        let bounds = inst.meta().3.unwrap_or(&[]);
        let k = (inst, attrs);
        if let Some(h) = self.hists.get_mut(&k) {
            h.record(bounds, v);
            return;
        }
        let k = Self::key(&mut self.series, k.0, k.1);
        self.hists
            .entry(k)
            .or_insert_with(|| Hist::new(bounds))
            .record(bounds, v);
    }

    fn add(&mut self, inst: Inst, attrs: Attrs, v: f64) {
        let k = (inst, attrs);
        if let Some(s) = self.sums.get_mut(&k) {
            *s += v;
            return;
        }
        let k = Self::key(&mut self.series, k.0, k.1);
        *self.sums.entry(k).or_default() += v;
    }

    pub fn request(&mut self, span: &RequestSpan, rec: &RequestRecord<'_>) {
        let seconds = rec.duration_ms / 1e3;
        let mut http: Attrs = Vec::with_capacity(2);
        if let Some(m) = &span.method {
            http.push((sc::HTTP_REQUEST_METHOD, Val::S(method(m).to_owned())));
        }
        if let Some(st) = span.status {
            http.push((sc::HTTP_RESPONSE_STATUS_CODE, Val::I(i64::from(st))));
        }
        if span.protocol == Protocol::Http1 {
            self.observe(Inst::HttpDuration, http.clone(), seconds);
        }
        self.add(Inst::Requests, http, 1.0);
        let mut genai: Attrs = Vec::with_capacity(2);
        if let Some(op) = span.path.as_deref().and_then(sc::operation) {
            genai.push((sc::GEN_AI_OPERATION_NAME, Val::S(op.to_owned())));
        }
        if let Some(m) = &span.model {
            genai.push((sc::GEN_AI_RESPONSE_MODEL, Val::S(cut(m))));
        }
        if span.model.is_some() {
            self.observe(Inst::GenAiDuration, genai.clone(), seconds);
            if let (Some(ms), true) = (rec.first_chunk_ms, span.status.is_some_and(|s| s < 400)) {
                self.observe(Inst::Ttft, genai.clone(), ms / 1e3);
            }
        }
        for (kind, n) in [
            ("input", span.usage.prompt),
            ("output", span.usage.completion),
        ] {
            if let Some(n) = n {
                let mut a = genai.clone();
                a.push((sc::GEN_AI_TOKEN_TYPE, Val::S(kind.to_owned())));
                self.observe(Inst::Tokens, a, n as f64);
            }
        }
        if let Some(e) = rec.energy_j {
            self.observe(Inst::RequestEnergy, genai.clone(), e.total);
            for (domain, j) in [("gpu", e.gpu), ("cpu", e.cpu), ("dram", e.dram)] {
                let mut a = genai.clone();
                a.push(("cost_probe.energy.domain", Val::S(domain.to_owned())));
                self.add(Inst::Energy, a, j);
            }
        }
        if let Some(c) = rec.cost_usd {
            for (component, usd) in [
                ("energy", c.energy),
                ("capacity", c.capacity),
                ("egress", c.egress),
            ] {
                let mut a = genai.clone();
                a.push(("cost_probe.cost.component", Val::S(component.to_owned())));
                self.add(Inst::Cost, a, usd);
            }
        }
        if let Some(g) = rec.co2_g {
            self.add(Inst::Co2, genai, g);
        }
    }

    pub fn interval(&mut self, report: &IntervalReport) {
        for d in &report.domains {
            for (split, uj) in [
                ("attributed", d.split.attributed),
                ("idle", d.split.idle),
                ("other", d.split.other),
            ] {
                let a = vec![
                    ("cost_probe.domain", Val::S(d.id.clone())),
                    ("cost_probe.split", Val::S(split.to_owned())),
                ];
                self.add(Inst::DomainEnergy, a, uj.joules());
            }
        }
    }

    pub fn lost(&mut self, events: u64) {
        self.add(Inst::LostEvents, Vec::new(), events as f64);
    }

    pub fn snapshot(&self, now_unix_ns: u64, dropped_spans: u64) -> Snapshot {
        let mut data = self.clone();
        data.sums
            .insert((Inst::DroppedSpans, Vec::new()), dropped_spans as f64);
        Snapshot {
            start: self.start,
            time: now_unix_ns,
            data,
        }
    }
}

/// Methods outside the standard set are `_OTHER`, as the HTTP conventions say (a client picks
/// the method; series must stay bounded).
fn method(m: &str) -> &str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN.iter().find(|k| **k == m).copied().unwrap_or("_OTHER")
}

/// Model names are client-chosen when the server does not name one: bounded length.
fn cut(s: &str) -> String {
    s.chars().take(128).collect()
}

fn attributes(a: &Attrs) -> Vec<KeyValue> {
    a.iter()
        .map(|(k, v)| {
            kv(
                k,
                match v {
                    Val::S(s) => Value::StringValue(s.clone()),
                    Val::I(i) => Value::IntValue(*i),
                    Val::B(b) => Value::BoolValue(*b),
                },
            )
        })
        .collect()
}

impl Snapshot {
    pub fn into_proto(self, resource: Resource) -> ResourceMetrics {
        let cumulative = AggregationTemporality::Cumulative as i32;
        let mut by_inst: HashMap<Inst, Metric> = HashMap::default();
        let metric = |inst: Inst| {
            let (name, unit, description, _) = inst.meta();
            Metric {
                name: name.into(),
                unit: unit.into(),
                description: description.into(),
                ..Metric::default()
            }
        };
        for ((inst, attrs), h) in &self.data.hists {
            let bounds = inst.meta().3.unwrap_or(&[]);
            let m = by_inst.entry(*inst).or_insert_with(|| metric(*inst));
            let point = HistogramDataPoint {
                attributes: attributes(attrs),
                start_time_unix_nano: self.start,
                time_unix_nano: self.time,
                count: h.count,
                sum: Some(h.sum),
                bucket_counts: h.counts.clone(),
                explicit_bounds: bounds.to_vec(),
                min: (h.count > 0).then_some(h.min),
                max: (h.count > 0).then_some(h.max),
                ..HistogramDataPoint::default()
            };
            match &mut m.data {
                Some(Data::Histogram(hg)) => hg.data_points.push(point),
                _ => {
                    m.data = Some(Data::Histogram(Histogram {
                        data_points: vec![point],
                        aggregation_temporality: cumulative,
                    }));
                }
            }
        }
        for ((inst, attrs), v) in &self.data.sums {
            let m = by_inst.entry(*inst).or_insert_with(|| metric(*inst));
            let point = NumberDataPoint {
                attributes: attributes(attrs),
                start_time_unix_nano: self.start,
                time_unix_nano: self.time,
                value: Some(number_data_point::Value::AsDouble(*v)),
                ..NumberDataPoint::default()
            };
            match &mut m.data {
                Some(Data::Sum(s)) => s.data_points.push(point),
                _ => {
                    m.data = Some(Data::Sum(Sum {
                        data_points: vec![point],
                        aggregation_temporality: cumulative,
                        is_monotonic: true,
                    }));
                }
            }
        }
        let mut metrics: Vec<Metric> = by_inst.into_values().collect();
        metrics.sort_by(|a, b| a.name.cmp(&b.name));
        ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_values_at_their_upper_bound() {
        let b = [1.0, 2.0];
        let mut h = Hist::new(&b);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0] {
            h.record(&b, v);
        }
        assert_eq!(h.counts, [2, 2, 1]);
        assert_eq!(h.count, 5);
        assert!(
            (h.sum - 8.0).abs() < 1e-12
                && (h.min - 0.5).abs() < 1e-12
                && (h.max - 3.0).abs() < 1e-12
        );
    }

    #[test]
    fn series_past_the_limit_fold_into_the_overflow_series() {
        let mut a = Aggregator::new(0);
        for i in 0..MAX_SERIES + 10 {
            a.add(Inst::Requests, vec![("k", Val::I(i as i64))], 1.0);
        }
        assert_eq!(a.sums.len(), MAX_SERIES + 1);
        let over = a
            .sums
            .get(&(
                Inst::Requests,
                vec![(sc::OTEL_METRIC_OVERFLOW, Val::B(true))],
            ))
            .copied();
        assert_eq!(over.map(|v| v as u64), Some(10));
        // A series admitted before the limit keeps counting.
        a.add(Inst::Requests, vec![("k", Val::I(0))], 1.0);
        assert_eq!(a.sums[&(Inst::Requests, vec![("k", Val::I(0))])] as u64, 2);
    }

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(method("GET"), "GET");
        assert_eq!(method("BREW"), "_OTHER");
    }
}
