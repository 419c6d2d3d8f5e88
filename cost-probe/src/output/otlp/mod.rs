//! OTLP/HTTP protobuf export: each priced request as a SERVER span (in the caller's trace when
//! it sent a `traceparent`), and the request, energy and cost series as OTLP metrics.
//!
//! The sink runs on the consumer thread and never waits on the network: it copies what a span
//! needs into a [`SpanData`] and offers it to a bounded queue (`try_send`); a full queue is a
//! drop, counted. Metrics are aggregated here (cumulative, like the Prometheus sink) and a
//! snapshot is queued every export interval: a lost snapshot loses nothing, the next one carries
//! the totals. The exporter thread ([`export`]) batches, encodes with the `opentelemetry-proto`
//! types, gzips and posts, retrying as collectors expect.
pub mod config;
mod convert;
mod export;
mod metrics;
mod semconv;

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::Instant,
};

pub use self::config::{OtlpConfig, OtlpEndpoint};
use self::{export::Item, metrics::Aggregator};
pub use super::summary::ExportStats;
use super::{
    Record, Sink, WallClock,
    records::{Attribution, FlagList},
};
use crate::{
    attribution::EnergyJoules,
    pricing::CostUsd,
    spans::{Protocol, TraceParent, Usage},
};

/// What a span needs, owned, copied on the consumer thread (a few small strings).
#[derive(Debug, Clone)]
struct SpanData {
    pid: u32,
    comm: String,
    /// Unix ns.
    start: u64,
    end: u64,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    protocol: Protocol,
    method: Option<String>,
    path: Option<String>,
    status: Option<u16>,
    model: Option<String>,
    usage: Usage,
    ttfb_ms: Option<f64>,
    first_chunk_ms: Option<f64>,
    chunks: Option<u32>,
    bytes_in: u64,
    bytes_out: u64,
    energy: Option<EnergyJoules>,
    attribution: Option<Attribution>,
    cost: Option<CostUsd>,
    co2_g: Option<f64>,
    usd_per_1k_tokens: Option<f64>,
    flags: FlagList,
    tags: Vec<(String, String)>,
    trace_parent: Option<TraceParent>,
}

/// Counters shared by the sink and its exporter thread.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    /// The run is ending: the exporter's retries are bounded by its shutdown grace from now.
    closing: std::sync::atomic::AtomicBool,
}

/// The OTLP sink (see the module docs).
pub struct OtlpSink {
    clock: WallClock,
    tx: Option<SyncSender<Item>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    traces: bool,
    unsampled: u64,
    aggregator: Option<Aggregator>,
    metric_interval: std::time::Duration,
    last_metrics: Instant,
    /// Drops already reported in a `lost` record.
    reported_drops: u64,
    finished: Option<ExportStats>,
}

impl OtlpSink {
    /// Starts the exporter thread. `proc_root`: where resource attributes of traced processes
    /// (command line, executable, cgroup) are read from.
    pub fn new(config: OtlpConfig, proc_root: PathBuf) -> io::Result<Self> {
        let counters = Arc::new(Counters::default());
        let clock = WallClock::now();
        let traces = config.traces.is_some();
        let aggregator = config
            .metrics
            .is_some()
            .then(|| Aggregator::new(unix_now()));
        let metric_interval = config.metric_interval;
        let (tx, thread) = export::spawn(config, proc_root, counters.clone())?;
        Ok(Self {
            clock,
            tx: Some(tx),
            thread: Some(thread),
            counters,
            traces,
            unsampled: 0,
            aggregator,
            metric_interval,
            last_metrics: Instant::now(),
            reported_drops: 0,
            finished: None,
        })
    }

    fn offer(&mut self, item: Item) {
        let spans = item.spans();
        let Some(tx) = &self.tx else {
            self.counters.dropped.fetch_add(spans, Ordering::Relaxed);
            return;
        };
        match tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(spans, Ordering::Relaxed);
            }
        }
    }

    fn metrics_due(&mut self, force: bool) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        let Some(agg) = self.aggregator.as_mut() else {
            return;
        };
        if !force && self.last_metrics.elapsed() < self.metric_interval {
            return;
        }
        self.last_metrics = Instant::now();
        let snapshot = agg.snapshot(unix_now(), dropped);
        self.offer(Item::Metrics(Box::new(snapshot)));
    }

    fn span_data(
        &self,
        span: &crate::spans::RequestSpan,
        rec: &super::RequestRecord<'_>,
    ) -> SpanData {
        let unix = |mono: u64| {
            self.clock
                .system_time(mono)
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        SpanData {
            pid: rec.pid,
            comm: rec.comm.to_owned(),
            start: unix(span.start),
            end: unix(span.end),
            local: span.local,
            peer: span.peer,
            protocol: span.protocol,
            method: span.method.as_deref().map(str::to_owned),
            path: span.path.as_deref().map(str::to_owned),
            status: span.status,
            model: span.model.clone(),
            usage: span.usage,
            ttfb_ms: rec.ttfb_ms,
            first_chunk_ms: rec.first_chunk_ms,
            chunks: rec.chunks,
            bytes_in: rec.bytes.input,
            bytes_out: rec.bytes.out,
            energy: rec.energy_j,
            attribution: rec.attribution,
            cost: rec.cost_usd,
            co2_g: rec.co2_g,
            usd_per_1k_tokens: rec.usd_per_1k_tokens,
            flags: rec.flags,
            tags: tags(&rec.tags),
            trace_parent: span.trace_parent,
        }
    }
}

fn tags(t: &BTreeMap<String, String>) -> Vec<(String, String)> {
    t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Sink for OtlpSink {
    fn dropped_since(&mut self) -> u64 {
        let now = self.counters.dropped.load(Ordering::Relaxed);
        now - std::mem::replace(&mut self.reported_drops, now)
    }

    fn write(&mut self, record: &Record<'_>) -> io::Result<()> {
        if self.finished.is_some() {
            return Ok(());
        }
        match *record {
            Record::Request { span, record } => {
                if let Some(agg) = self.aggregator.as_mut() {
                    agg.request(span, record);
                }
                if !self.traces {
                    return Ok(());
                }
                // The caller's trace is not sampled: a span of ours would be an orphan there
                // (parent-based sampling, the SDKs' default).
                if span.trace_parent.is_some_and(|t| !t.sampled()) {
                    self.unsampled += 1;
                    return Ok(());
                }
                let data = self.span_data(span, record);
                self.offer(Item::Span(Box::new(data)));
            }
            Record::Interval { report, .. } => {
                if let Some(agg) = self.aggregator.as_mut() {
                    agg.interval(report);
                }
                self.metrics_due(false);
            }
            Record::Lost(l) => {
                if let Some(agg) = self.aggregator.as_mut() {
                    agg.lost(l.events);
                }
            }
            Record::Alert(_) | Record::Summary(_) => {}
        }
        Ok(())
    }

    /// Sends the last metrics, lets the exporter send what it holds (within its time limit),
    /// and says what became of every span.
    fn finish(&mut self) -> Option<ExportStats> {
        if let Some(s) = self.finished {
            return Some(s);
        }
        self.metrics_due(true);
        // Closing the queue tells the exporter to send what it has and stop.
        self.counters.closing.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::warn!("otlp: the exporter thread panicked");
        }
        let stats = ExportStats {
            spans_sent: self.counters.sent.load(Ordering::Relaxed),
            spans_dropped: self.counters.dropped.load(Ordering::Relaxed),
            spans_unsampled: self.unsampled,
        };
        if stats.spans_dropped > 0 {
            log::warn!(
                "otlp: {} of {} spans dropped",
                stats.spans_dropped,
                stats.spans_dropped + stats.spans_sent
            );
        }
        self.finished = Some(stats);
        Some(stats)
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.finish();
    }
}
