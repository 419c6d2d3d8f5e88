//! The NDJSON record schema (DESIGN.md "Records"). Unknown values are omitted, never invented.
//!
//! Every record is one body type behind one [`Envelope`]: `{"v":1,"type":"<kind>", …body}`. A new
//! record type is a struct and a [`Body`] impl, never a new envelope.
use std::{borrow::Cow, collections::BTreeMap, net::SocketAddr};

use serde::Serialize;

use super::{Stamp, WallClock};
use crate::{
    alerts::Alert,
    attribution::{IdleSource, IntervalReport, Phases, RequestEnergy, SplitMethod},
    pricing::RequestCost,
    spans::{Protocol, RequestSpan},
};

pub const VERSION: u32 = 1;

/// A record body: what follows `v` and `type` in its line.
pub trait Body: Serialize {
    const KIND: Kind;
}

/// The fields every record starts with, then the body's.
#[derive(Serialize, Debug)]
pub struct Envelope<'a, T: Body> {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(flatten)]
    pub body: &'a T,
}

impl<'a, T: Body> Envelope<'a, T> {
    #[must_use]
    pub fn new(body: &'a T) -> Self {
        Self {
            v: VERSION,
            kind: T::KIND,
            body,
        }
    }
}

impl Body for RequestRecord<'_> {
    const KIND: Kind = Kind::Request;
}

impl Body for IntervalRecord {
    const KIND: Kind = Kind::Interval;
}

impl Body for LostRecord {
    const KIND: Kind = Kind::Lost;
}

impl Body for Alert {
    const KIND: Kind = Kind::Alert;
}

impl Body for super::summary::SummaryRecord<'_> {
    const KIND: Kind = Kind::Summary;
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Request,
    Interval,
    Lost,
    Alert,
    Summary,
}

#[derive(Serialize, Debug)]
pub struct Conn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
}

#[derive(Serialize, Debug)]
pub struct Http<'a> {
    pub method: &'a str,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// `request_hash`: 16 lower-case hex digits, so tools that read JSON numbers as f64 keep all 64
/// bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHash(pub u64);

impl RequestHash {
    /// The hex digits, without an allocation.
    #[must_use]
    pub fn hex(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, d) in out.iter_mut().enumerate() {
            let nibble = (self.0 >> (60 - 4 * i)) & 0xf;
            *d = b"0123456789abcdef"[nibble as usize];
        }
        out
    }
}

impl Serialize for RequestHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let hex = self.hex();
        s.serialize_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

#[derive(Serialize, Debug)]
pub struct Bytes {
    #[serde(rename = "in")]
    pub input: u64,
    pub out: u64,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<u64>,
}

/// How a request's energy was taken from each interval's, and where its time went: waiting in
/// the server's queue, prefill, decode. Times and phase energies only where the traffic showed
/// them (not with the `overlap` method).
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct Attribution {
    pub method: SplitMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_j: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_j: Option<f64>,
}

impl Attribution {
    #[must_use]
    pub fn of(p: &Phases) -> Self {
        let phased = p.method != SplitMethod::Overlap;
        Self {
            method: p.method,
            queue_ms: p.queue.map(|t| t.0 as f64 / 1e6),
            prefill_ms: p.prefill_time.map(|t| t.0 as f64 / 1e6),
            prefill_j: phased.then(|| p.prefill.joules()),
            decode_j: phased.then(|| p.decode.joules()),
        }
    }
}

/// A `request` record.
#[derive(Serialize, Debug)]
pub struct RequestRecord<'a> {
    pub start: Stamp,
    pub end: Stamp,
    pub duration_ms: f64,
    pub pid: u32,
    pub comm: &'a str,
    pub conn: Conn,
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Http<'a>>,
    /// XXH64 of method, target and body, headers left out; absent when the body was not read
    /// whole (`spans::http::request::RequestHash`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<RequestHash>,
    pub bytes: Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    /// Time to the first body chunk (first token of a stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_chunk_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_j: Option<crate::attribution::EnergyJoules>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<crate::pricing::CostUsd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub co2_g: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd_per_1k_tokens: Option<f64>,
    /// Borrowed from the pricing result unless process tags are merged in.
    #[serde(skip_serializing_if = "no_tags")]
    pub tags: Cow<'a, BTreeMap<String, String>>,
    pub flags: FlagList,
}

#[expect(
    clippy::ptr_arg,
    reason = "serde's skip_serializing_if passes a reference to the field"
)]
fn no_tags(t: &Cow<'_, BTreeMap<String, String>>) -> bool {
    t.is_empty()
}

/// The record's `flags` without a heap allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlagList {
    names: [&'static str; 16],
    len: usize,
}

impl FlagList {
    pub fn extend(&mut self, names: impl IntoIterator<Item = &'static str>) {
        for n in names {
            if self.len < self.names.len() {
                self.names[self.len] = n;
                self.len += 1;
            }
        }
    }

    #[must_use]
    pub fn as_slice(&self) -> &[&'static str] {
        &self.names[..self.len]
    }
}

impl Serialize for FlagList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.as_slice())
    }
}

fn ms(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e6
}

impl<'a> RequestRecord<'a> {
    /// The record for a span, without energy or cost (filled in by attribution when enabled).
    #[must_use]
    pub fn from_span(
        span: &'a RequestSpan,
        comm: &'a str,
        clock: &WallClock,
        cache: &mut super::SecondCache,
    ) -> Self {
        let tokens = (!span.usage.is_empty()).then_some(Tokens {
            prompt: span.usage.prompt,
            completion: span.usage.completion,
        });
        Self {
            start: clock.stamp(span.start, cache),
            end: clock.stamp(span.end, cache),
            duration_ms: ms(span.start, span.end),
            pid: span.conn.tgid,
            comm,
            conn: Conn {
                local: span.local,
                peer: span.peer,
            },
            protocol: span.protocol,
            http: match (&span.method, &span.path) {
                (Some(m), Some(p)) => Some(Http {
                    method: m,
                    path: p,
                    status: span.status,
                }),
                _ => None,
            },
            request_hash: span.request_hash.map(RequestHash),
            bytes: Bytes {
                input: span.bytes_in,
                out: span.bytes_out,
            },
            ttfb_ms: span.first_byte.map(|t| ms(span.start, t)),
            first_chunk_ms: span.first_chunk.map(|t| ms(span.start, t)),
            chunks: span.chunks,
            model: span.model.as_deref(),
            tokens,
            energy_j: None,
            attribution: None,
            cost_usd: None,
            co2_g: None,
            usd_per_1k_tokens: None,
            tags: Cow::Owned(BTreeMap::new()),
            flags: {
                let mut f = FlagList::default();
                f.extend(span.flags.names());
                f
            },
        }
    }

    /// Adds the request's energy, price and tags (in place: a record is a few hundred bytes).
    pub fn price(
        &mut self,
        energy: &RequestEnergy,
        cost: &RequestCost,
        tags: &'a BTreeMap<String, String>,
    ) {
        self.energy_j = Some(energy.energy_j());
        self.attribution = Some(Attribution::of(&energy.phases));
        self.cost_usd = Some(cost.cost_usd);
        self.co2_g = Some(cost.co2_g);
        self.usd_per_1k_tokens = cost.usd_per_1k_tokens;
        self.tags = Cow::Borrowed(tags);
        self.flags.extend(energy.flags.iter_names());
    }
}

/// A `lost` record: events the kernel dropped (ring buffer full) since the last one.
#[derive(Serialize, Debug)]
pub struct LostRecord {
    pub time: String,
    /// Kernel events dropped (ring buffer full) since the previous `lost` record.
    pub events: u64,
    /// Request spans an exporter (OTLP) dropped since the previous one: its queue was full or
    /// the collector refused them for too long. The NDJSON records still have those requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_spans: Option<u64>,
}

/// One domain's part of an `interval` record.
#[derive(Serialize, Debug, Clone)]
pub struct DomainPart {
    pub domain: String,
    pub measured_j: f64,
    pub attributed_j: f64,
    pub idle_j: f64,
    pub other_j: f64,
    /// Idle power used for the static part, and where it came from.
    pub idle_w: f64,
    pub idle_source: IdleSource,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub integrated: bool,
}

/// The `interval` record: one sampler tick's energy, split.
#[derive(Serialize, Debug)]
pub struct IntervalRecord {
    pub start: String,
    pub end: String,
    pub measured_j: BTreeMap<String, f64>,
    pub attributed_j: f64,
    pub idle_j: f64,
    pub other_j: f64,
    pub active_requests: u32,
    pub domains: Vec<DomainPart>,
    /// Sampler cost of this tick (µs).
    pub sampler_us: f64,
}

impl IntervalRecord {
    #[must_use]
    pub fn new(report: &IntervalReport, clock: &WallClock) -> Self {
        let mut rec = Self {
            start: clock.rfc3339(report.start.0),
            end: clock.rfc3339(report.end.0),
            measured_j: BTreeMap::new(),
            attributed_j: 0.0,
            idle_j: 0.0,
            other_j: 0.0,
            active_requests: 0,
            domains: Vec::with_capacity(report.domains.len()),
            sampler_us: report.sampler_cost.0 as f64 / 1e3,
        };
        for d in &report.domains {
            let s = &d.split;
            rec.measured_j.insert(d.id.clone(), s.measured.joules());
            rec.attributed_j += s.attributed.joules();
            rec.idle_j += s.idle.joules();
            rec.other_j += s.other.joules();
            rec.active_requests = rec.active_requests.max(s.active_requests);
            rec.domains.push(DomainPart {
                domain: d.id.clone(),
                measured_j: s.measured.joules(),
                attributed_j: s.attributed.joules(),
                idle_j: s.idle.joules(),
                other_j: s.other.joules(),
                idle_w: s.idle_power_uw as f64 / 1e6,
                idle_source: s.idle_source,
                estimated: d.estimated,
                integrated: d.integrated,
            });
        }
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        probe::ConnId,
        spans::{Flags, Usage},
    };

    #[test]
    fn request_record_shape() {
        let mut flags = Flags::default();
        flags.set(Flags::STREAMED);
        let span = RequestSpan {
            id: 1,
            conn: ConnId {
                tgid: 42,
                fd: 7,
                id: 1,
            },
            local: Some("127.0.0.1:8080".parse().unwrap()),
            peer: Some("127.0.0.1:5555".parse().unwrap()),
            protocol: Protocol::Http1,
            method: Some("POST".into()),
            path: Some("/v1/chat/completions".into()),
            status: Some(200),
            start: 1_000_000_000,
            end: 1_250_000_000,
            first_byte: Some(1_010_000_000),
            first_chunk: Some(1_020_000_000),
            chunks: Some(9),
            bytes_in: 300,
            bytes_out: 2000,
            model: Some("m".into()),
            usage: Usage {
                prompt: Some(5),
                completion: None,
            },
            timings: None,
            flags,
            trace_parent: None,
            request_hash: None,
        };
        let clock = WallClock::fixed(1_700_000_000_000_000_000);
        let mut cache = super::super::SecondCache::default();
        let rec = RequestRecord::from_span(&span, "srv", &clock, &mut cache);
        let v = serde_json::to_value(Envelope::new(&rec)).unwrap();
        assert_eq!(v["type"], "request");
        assert_eq!(v["v"], 1);
        assert_eq!(v["start"], "2023-11-14T22:13:21.000000000Z");
        assert_eq!(v["duration_ms"], 250.0);
        assert_eq!(v["http"]["path"], "/v1/chat/completions");
        assert_eq!(v["tokens"], serde_json::json!({"prompt": 5}));
        assert_eq!(v["flags"], serde_json::json!(["streamed"]));
        assert_eq!(v["ttfb_ms"], 10.0);
        assert!(v.get("energy_j").is_none());
    }

    /// Regression: the alert record named its `type` field differently from the others; every
    /// record now gets `v` and `type` from the one envelope, first and in that order.
    #[test]
    fn every_record_starts_with_the_same_envelope() {
        let lost = LostRecord {
            time: "t".into(),
            events: 3,
            export_spans: None,
        };
        assert_eq!(
            serde_json::to_string(&Envelope::new(&lost)).unwrap(),
            r#"{"v":1,"type":"lost","time":"t","events":3}"#
        );
        let alert = Alert {
            time: "t".into(),
            rule: "r".into(),
            kind: crate::alerts::AlertKind::Budget,
            metric: "cost_usd",
            threshold: 0.5,
            observed: 1.0,
            limit: 1.0,
            amount_usd: None,
            period: None,
            period_start: None,
            period_end: None,
            baseline: None,
            samples: None,
            window_s: None,
            tags: BTreeMap::new(),
        };
        let line = serde_json::to_string(&Envelope::new(&alert)).unwrap();
        assert!(
            line.starts_with(r#"{"v":1,"type":"alert","time":"t","rule":"r","kind":"budget""#),
            "{line}"
        );
    }
}
