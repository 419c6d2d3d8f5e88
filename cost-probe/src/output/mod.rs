//! Outputs: the records of a run, and the sinks they go to.
//!
//! [`Outputs`] is the last stage of the data path. It turns a priced request, an attributed
//! interval, a kernel drop count or the end of the run into records (one envelope each, see
//! [`records`]), feeds the two stages that derive records from records (the run `summary`, and
//! the budget/anomaly alert engine, whose `alert` records go out like any other), and hands
//! every record to every [`Sink`]: NDJSON ([`ndjson`]) and Prometheus ([`metrics`]) today.
mod json;
pub mod metrics;
pub mod ndjson;
pub mod otlp;
pub mod records;
pub mod summary;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use self::{
    records::{IntervalRecord, LostRecord, RequestRecord},
    summary::{Sample, Summary, SummaryRecord},
};
use crate::{
    alerts::{Alert, AlertEngine, Observation},
    attribution::{IntervalReport, RequestEnergy},
    pricing::RequestCost,
    rules::{PathNormalizer, Rules},
    spans::{Flags, RequestSpan, Stats},
};
/// Converts `CLOCK_MONOTONIC` ns (eBPF and sampler time) to wall time, once, at the sink.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// realtime − monotonic, in ns.
    offset: i128,
}

impl WallClock {
    #[must_use]
    pub fn now() -> Self {
        // Take the pair with the smallest gap between the two reads.
        let mut best = (u128::MAX, 0i128);
        for _ in 0..5 {
            let a = crate::units::monotonic_now().0;
            let real = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let b = crate::units::monotonic_now().0;
            let gap = u128::from(b - a);
            if gap < best.0 {
                best = (gap, real as i128 - i128::from(a + (b - a) / 2));
            }
        }
        Self { offset: best.1 }
    }

    #[must_use]
    pub fn fixed(offset_ns: i128) -> Self {
        Self { offset: offset_ns }
    }

    #[must_use]
    pub fn system_time(&self, mono_ns: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.unix_ns(mono_ns))
    }

    /// Nanoseconds since the Unix epoch (0 before it or past `u64`).
    fn unix_ns(&self, mono_ns: u64) -> u64 {
        u64::try_from((i128::from(mono_ns) + self.offset).max(0)).unwrap_or(0)
    }

    /// RFC 3339 UTC with nanoseconds.
    #[must_use]
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_nanos(self.system_time(mono_ns)).to_string()
    }

    /// Like [`Self::rfc3339`], into a stack buffer, reusing the date and time of day when the
    /// second is the one formatted last (records come in time order, a few per millisecond):
    /// no allocation on the per-request path.
    pub fn stamp(&self, mono_ns: u64, cache: &mut SecondCache) -> Stamp {
        let real = self.unix_ns(mono_ns);
        let (secs, nanos) = (real / 1_000_000_000, real % 1_000_000_000);
        if cache.secs != Some(secs) {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            // "YYYY-MM-DDTHH:MM:SSZ" → keep up to the seconds.
            let s = humantime::format_rfc3339_seconds(whole).to_string();
            let p = s.trim_end_matches('Z').as_bytes();
            let n = p.len().min(STAMP_LEN - 11);
            cache.prefix = [0; STAMP_LEN];
            cache.prefix[..n].copy_from_slice(&p[..n]);
            cache.len = n;
            cache.secs = Some(secs);
        }
        let n = cache.len;
        let mut st = Stamp {
            buf: cache.prefix,
            len: 0,
        };
        st.buf[n] = b'.';
        // 1e9 + ns in decimal: a leading 1, then the nine digits of the nanoseconds.
        let mut digits = itoa::Buffer::new();
        let d = digits.format(1_000_000_000 + nanos).as_bytes();
        st.buf[n + 1..n + 10].copy_from_slice(&d[1..10]);
        st.buf[n + 10] = b'Z';
        st.len = (n + 11) as u8;
        st
    }
}

const STAMP_LEN: usize = 40;

/// An RFC 3339 timestamp in a stack buffer (see [`WallClock::stamp`]).
#[derive(Clone, Copy)]
pub struct Stamp {
    buf: [u8; STAMP_LEN],
    len: u8,
}

impl Stamp {
    /// The ASCII bytes, for the record writer (no UTF-8 check per record).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        // The buffer holds ASCII written by `WallClock::stamp` (humantime's digits and
        // separators, then ours); an invalid prefix cannot happen, and would show as empty.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The formatted second of the last timestamp (see [`WallClock::stamp`]): `prefix[..len]`.
#[derive(Debug, Clone)]
pub struct SecondCache {
    secs: Option<u64>,
    prefix: [u8; STAMP_LEN],
    len: usize,
}

impl Default for SecondCache {
    fn default() -> Self {
        Self {
            secs: None,
            prefix: [0; STAMP_LEN],
            len: 0,
        }
    }
}

/// One record, as every sink receives it: the typed body, and for requests and intervals what
/// they were made from (metrics label by the span's method and status, and count per domain).
#[derive(Clone, Copy)]
pub enum Record<'a> {
    Request {
        span: &'a RequestSpan,
        record: &'a RequestRecord<'a>,
    },
    Interval {
        report: &'a IntervalReport,
        record: &'a IntervalRecord,
        /// The span builder's counters at this interval's end.
        spans: &'a Stats,
    },
    Lost(&'a LostRecord),
    Alert(&'a Alert),
    Summary(&'a SummaryRecord<'a>),
}

/// Where records go. Sinks run on the consumer thread: a write must not block on the network.
pub trait Sink: Send {
    fn write(&mut self, record: &Record<'_>) -> io::Result<()>;

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The reader went away (a closed pipe): the run may end normally.
    fn closed(&self) -> bool {
        false
    }

    /// New rules (SIGHUP): label sets start afresh.
    fn set_rules(&mut self, _rules: &Rules) {}

    /// SIGHUP: a file is reopened (logrotate moved it).
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Spans this sink has dropped since the last call (an exporter's full queue, or a batch
    /// it gave up on): reported as a `lost` record.
    fn dropped_since(&mut self) -> u64 {
        0
    }

    /// The run is ending: an exporting sink sends what it holds (within its own time limit)
    /// and says what became of the spans, for the summary.
    fn finish(&mut self) -> Option<otlp::ExportStats> {
        None
    }
}

/// `--output`: where NDJSON records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    Stdout,
    /// A file, appended to and reopened on SIGHUP.
    File(PathBuf),
    /// A listening unix stream socket (Vector's `socket` source, Fluent Bit's `unix`).
    Unix(PathBuf),
    /// Nowhere: `top` without `--output` (its view is on stdout). Not a command-line value.
    Discard,
}

impl std::str::FromStr for OutputTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("empty output path".into()),
            "-" => Ok(Self::Stdout),
            _ => Ok(match s.strip_prefix("unix:") {
                Some("") => return Err("unix: needs a socket path".into()),
                Some(sock) => Self::Unix(sock.into()),
                None => Self::File(s.into()),
            }),
        }
    }
}

impl std::fmt::Display for OutputTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("-"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Discard => f.write_str("(nowhere)"),
        }
    }
}

/// A priced request's energy and cost.
#[derive(Clone, Copy, Debug)]
pub struct Price<'a> {
    pub energy: &'a RequestEnergy,
    pub cost: &'a RequestCost,
}

/// Entries in the path-normalization cache before it is cleared.
const NORMALIZED_CACHE: usize = 4096;

/// Every sink of a run, and the stages that derive records from records.
pub struct Outputs {
    clock: WallClock,
    seconds: SecondCache,
    sinks: Vec<Box<dyn Sink>>,
    summary: Summary,
    alerts: Option<AlertEngine>,
    normalizer: PathNormalizer,
    /// Raw path → normalized path, for summary groups (normalizing allocates, and paths repeat).
    /// Keyed by what clients send: seeded hashing, so no client can choose colliding paths.
    normalized: HashMap<String, String, foldhash::fast::RandomState>,
}

impl Outputs {
    /// `alerts`: whether `[[budget]]` and `[[anomaly]]` rules fire (the agent's job).
    #[must_use]
    pub fn new(rules: &Rules, sinks: Vec<Box<dyn Sink>>, alerts: bool) -> Self {
        Self {
            clock: WallClock::now(),
            seconds: SecondCache::default(),
            sinks,
            summary: Summary::default(),
            alerts: alerts.then(|| AlertEngine::new(rules)),
            normalizer: PathNormalizer::new(rules),
            normalized: HashMap::default(),
        }
    }

    #[must_use]
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    fn dispatch(&mut self, record: &Record<'_>) -> io::Result<()> {
        for s in &mut self.sinks {
            s.write(record)?;
        }
        Ok(())
    }

    /// One finished request: its record to every sink, then the summary and the alerts.
    pub fn request(
        &mut self,
        span: &RequestSpan,
        comm: &str,
        price: Option<Price<'_>>,
        tags: &BTreeMap<String, String>,
    ) -> io::Result<()> {
        let mut rec = RequestRecord::from_span(span, comm, &self.clock, &mut self.seconds);
        match price {
            Some(p) => rec.price(p.energy, p.cost, tags),
            None => rec.tags = std::borrow::Cow::Borrowed(tags),
        }
        self.dispatch(&Record::Request { span, record: &rec })?;
        if span.flags.contains(Flags::PARTIAL) {
            self.summary.totals.partial_requests += 1;
        }
        // Summary groups use the normalized path (bounded: never one group per user id).
        let path = match span.path.as_deref() {
            Some(p) => Some(normalized(&mut self.normalized, &self.normalizer, p)),
            None => None,
        };
        self.summary.add_with(
            path,
            span.model.as_deref(),
            &rec.tags,
            Sample {
                latency_ms: rec.duration_ms,
                energy_j: rec.energy_j.map(|e| e.total),
                cost_usd: rec.cost_usd.map(|c| c.total),
                tokens: span.usage.total(),
            },
        );
        let Some(engine) = self.alerts.as_mut() else {
            return Ok(());
        };
        let fired = engine.observe(&Observation {
            time: self.clock.system_time(span.end),
            cost_usd: rec.cost_usd.map(|c| c.total),
            energy_j: rec.energy_j.map(|e| e.total),
            tags: &rec.tags,
        });
        for a in &fired {
            log::warn!(
                "alert {}: {} {:.6} over {:.6}",
                a.rule,
                a.kind.as_str(),
                a.observed,
                a.threshold
            );
            self.dispatch(&Record::Alert(a))?;
        }
        Ok(())
    }

    /// One attributed interval.
    pub fn interval(&mut self, report: &IntervalReport, spans: &Stats) -> io::Result<()> {
        let record = IntervalRecord::new(report, &self.clock);
        self.dispatch(&Record::Interval {
            report,
            record: &record,
            spans,
        })?;
        // Once per interval: what an exporter dropped since the last one.
        let dropped: u64 = self.sinks.iter_mut().map(|s| s.dropped_since()).sum();
        if dropped == 0 {
            return Ok(());
        }
        let rec = LostRecord {
            time: self.clock.rfc3339(report.end.0),
            events: 0,
            export_spans: Some(dropped),
        };
        self.dispatch(&Record::Lost(&rec))
    }

    /// Events the kernel dropped (ring buffer full) since the last call.
    pub fn lost(&mut self, events: u64, now: u64) -> io::Result<()> {
        if events == 0 {
            return Ok(());
        }
        self.summary.totals.lost_events += events;
        log::warn!("{events} events dropped in the kernel (ring buffer full)");
        let rec = LostRecord {
            time: self.clock.rfc3339(now),
            events,
            export_spans: None,
        };
        self.dispatch(&Record::Lost(&rec))
    }

    /// The run's `summary` record, with the meter's totals of energy nobody's request used.
    pub fn finish(&mut self, start: u64, end: u64, unattributed: Unattributed) -> io::Result<()> {
        self.summary.totals.idle_j = Some(unattributed.idle_j);
        self.summary.totals.idle_usd = Some(unattributed.idle_usd);
        self.summary.totals.other_j = Some(unattributed.other_j);
        for s in &mut self.sinks {
            if let Some(stats) = s.finish() {
                self.summary.totals.otlp = Some(stats);
            }
        }
        let summary = std::mem::take(&mut self.summary);
        let rec = summary.record(self.clock.rfc3339(start), self.clock.rfc3339(end));
        self.dispatch(&Record::Summary(&rec))?;
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        for s in &mut self.sinks {
            s.flush()?;
        }
        Ok(())
    }

    /// Whether a sink's reader went away (the run ends normally).
    #[must_use]
    pub fn closed(&self) -> bool {
        self.sinks.iter().any(|s| s.closed())
    }

    /// New rules: alerts and path labels follow them, sinks restart their series.
    pub fn set_rules(&mut self, rules: &Rules) {
        if self.alerts.is_some() {
            self.alerts = Some(AlertEngine::new(rules));
        }
        self.normalizer = PathNormalizer::new(rules);
        self.normalized.clear();
        for s in &mut self.sinks {
            s.set_rules(rules);
        }
    }

    /// Reopens every sink's file (logrotate). Every sink is told even when one fails; the first
    /// error is returned.
    pub fn reopen(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for s in &mut self.sinks {
            if let Err(e) = s.reopen()
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result
    }
}

fn normalized<'a>(
    cache: &'a mut HashMap<String, String, foldhash::fast::RandomState>,
    normalizer: &PathNormalizer,
    path: &str,
) -> &'a str {
    if !cache.contains_key(path) {
        if cache.len() >= NORMALIZED_CACHE {
            cache.clear();
        }
        cache.insert(path.to_owned(), normalizer.normalize(path));
    }
    cache.get(path).map_or("", String::as_str)
}

/// Energy of a run that no request was charged, for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unattributed {
    pub idle_j: f64,
    pub idle_usd: f64,
    pub other_j: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_rfc3339_equals_humantime() {
        let clock = WallClock::fixed(1_795_000_000_123_456_789);
        let mut cache = SecondCache::default();
        for ns in [
            0,
            1,
            999_999_999,
            1_000_000_000,
            86_400_000_000_123,
            86_400_000_000_124,
        ] {
            assert_eq!(clock.stamp(ns, &mut cache).as_str(), clock.rfc3339(ns));
        }
    }
}
