//! The exporter thread: batches spans, posts OTLP/HTTP protobuf (gzip), retries.
//!
//! Retries follow the OTLP/HTTP spec: 429, 502, 503, 504 and connection errors are retried with
//! exponential backoff (jittered), waiting at least what `Retry-After` says (seconds); any other
//! status is final. While a batch is being retried the thread reads no more of the queue, so the
//! queue fills and the consumer's `try_send` counts the overflow: every span is either sent or
//! counted as dropped, once.
use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::Ordering,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::ExportMetricsServiceRequest,
        trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    },
    trace::v1::{ResourceSpans, ScopeSpans},
};
use prost::Message;

use super::{
    Counters, OtlpConfig, SpanData,
    config::Compression,
    convert::{self, Ids, Resources},
    metrics::Snapshot,
};

/// What the consumer thread queues.
pub enum Item {
    Span(Box<SpanData>),
    Metrics(Box<Snapshot>),
}

impl Item {
    /// Spans this item carries (what a drop of it costs).
    pub fn spans(&self) -> u64 {
        match self {
            Self::Span(_) => 1,
            Self::Metrics(_) => 0,
        }
    }
}

/// First retry wait; doubled per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A batch retried this long is dropped (counted), so a receiver gone for good cannot hold the
/// exporter forever; the queue behind it has been overflowing (and counting) meanwhile.
const MAX_RETRY: Duration = Duration::from_mins(2);
/// At the end of a run, what is still queued gets this long, at most, to be sent.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub fn spawn(
    config: OtlpConfig,
    proc_root: PathBuf,
    counters: Arc<Counters>,
) -> std::io::Result<(SyncSender<Item>, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(config.queue);
    let thread = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || Exporter::new(config, proc_root, counters).run(&rx))?;
    Ok((tx, thread))
}

struct Exporter {
    agent: ureq::Agent,
    config: OtlpConfig,
    resources: Resources,
    ids: Ids,
    counters: Arc<Counters>,
    /// Set once the run began to end: retries stop at this instant.
    deadline: Option<Instant>,
    last_warning: Option<Instant>,
}

enum Outcome {
    /// Delivered; the receiver rejected this many spans (partial success).
    Sent {
        rejected: u64,
    },
    Failed(String),
}

impl Exporter {
    fn new(config: OtlpConfig, proc_root: PathBuf, counters: Arc<Counters>) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            // A redirect is a misconfigured endpoint: say so (final status) rather than follow a
            // POST somewhere else.
            .max_redirects(0)
            .build()
            .new_agent();
        Self {
            agent,
            resources: Resources::new(&config, proc_root),
            config,
            ids: Ids::new(),
            counters,
            deadline: None,
            last_warning: None,
        }
    }

    fn run(mut self, rx: &Receiver<Item>) {
        let mut batch: Vec<SpanData> = Vec::with_capacity(self.config.batch);
        let mut oldest: Option<Instant> = None;
        loop {
            let wait = oldest.map_or(self.config.delay, |t| {
                (t + self.config.delay).saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(wait) {
                Ok(Item::Span(s)) => {
                    oldest.get_or_insert_with(Instant::now);
                    batch.push(*s);
                    if batch.len() >= self.config.batch {
                        self.spans(&mut batch);
                        oldest = None;
                    }
                }
                Ok(Item::Metrics(m)) => self.metrics(*m),
                Err(RecvTimeoutError::Timeout) => {
                    self.spans(&mut batch);
                    oldest = None;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // The run ended: what is left gets a bounded grace, then counts as dropped.
        self.counters.closing.store(true, Ordering::Relaxed);
        self.spans(&mut batch);
    }

    /// The shutdown deadline, from the moment the sink said the run is ending.
    fn deadline(&mut self) -> Option<Instant> {
        if self.deadline.is_none() && self.counters.closing.load(Ordering::Relaxed) {
            self.deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        }
        self.deadline
    }

    fn spans(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let Some(url) = self.config.traces.clone() else {
            batch.clear();
            return;
        };
        if self.deadline().is_some_and(|d| Instant::now() >= d) {
            self.dropped(n, "the run ended before they could be sent");
            batch.clear();
            return;
        }
        // One ResourceSpans per traced process, in pid order.
        let mut by_pid: BTreeMap<u32, Vec<_>> = BTreeMap::new();
        for d in batch.iter() {
            let span = convert::span(d, &mut self.ids);
            by_pid
                .entry(d.pid)
                .or_default()
                .push((span, d.comm.as_str()));
        }
        let resource_spans = by_pid
            .into_iter()
            .map(|(pid, spans)| {
                let comm = spans.first().map_or("", |s| s.1);
                ResourceSpans {
                    resource: Some(self.resources.get(pid, comm).clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(convert::scope()),
                        spans: spans.into_iter().map(|s| s.0).collect(),
                        ..ScopeSpans::default()
                    }],
                    ..ResourceSpans::default()
                }
            })
            .collect();
        batch.clear();
        let body = ExportTraceServiceRequest { resource_spans }.encode_to_vec();
        match self.post(&url, &body, true) {
            Outcome::Sent { rejected } => {
                let rejected = rejected.min(n);
                self.counters
                    .sent
                    .fetch_add(n - rejected, Ordering::Relaxed);
                if rejected > 0 {
                    self.dropped(rejected, "rejected by the receiver");
                }
            }
            Outcome::Failed(why) => self.dropped(n, &why),
        }
    }

    fn metrics(&mut self, snapshot: Snapshot) {
        let Some(url) = self.config.metrics.clone() else {
            return;
        };
        let body = ExportMetricsServiceRequest {
            resource_metrics: vec![snapshot.into_proto(self.resources.agent())],
        }
        .encode_to_vec();
        // Cumulative: a snapshot lost here is carried by the next one.
        if let Outcome::Failed(why) = self.post(&url, &body, false) {
            log::debug!("otlp: metrics not sent: {why}");
        }
    }

    fn dropped(&mut self, n: u64, why: &str) {
        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.last_warning = Some(Instant::now());
            log::warn!(
                "otlp: {n} spans dropped ({why}); {} in all so far",
                self.counters.dropped.load(Ordering::Relaxed)
            );
        }
    }

    /// Posts `body`, retrying what the spec says is retryable until [`MAX_RETRY`] or the
    /// shutdown deadline.
    fn post(&mut self, url: &str, body: &[u8], traces: bool) -> Outcome {
        let payload = match self.config.compression {
            Compression::Gzip => match gzip(body) {
                Ok(z) => z,
                Err(e) => return Outcome::Failed(format!("gzip: {e}")),
            },
            Compression::None => body.to_vec(),
        };
        let first = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let (why, retry_after) = match self.attempt(url, &payload) {
                Attempt::Done(resp) => {
                    let rejected = if traces {
                        ExportTraceServiceResponse::decode(resp.as_slice())
                            .ok()
                            .and_then(|r| r.partial_success)
                            .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                    } else {
                        0
                    };
                    return Outcome::Sent { rejected };
                }
                Attempt::Final(why) => return Outcome::Failed(why),
                Attempt::Retry(why, after) => (why, after),
            };
            let jitter = 0.8 + 0.4 * (self.ids.unit());
            let wait = retry_after.unwrap_or(backoff).max(backoff.mul_f64(jitter));
            let limit = self
                .deadline()
                .unwrap_or(first + MAX_RETRY)
                .min(first + MAX_RETRY);
            if Instant::now() + wait >= limit {
                return Outcome::Failed(format!("{why}; gave up retrying"));
            }
            log::debug!("otlp: {why}; retrying in {wait:?}");
            std::thread::sleep(wait);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn attempt(&self, url: &str, payload: &[u8]) -> Attempt {
        let mut req = self
            .agent
            .post(url)
            .header("content-type", "application/x-protobuf");
        if self.config.compression == Compression::Gzip {
            req = req.header("content-encoding", "gzip");
        }
        for (k, v) in &self.config.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send(payload) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                // Bounded: a partial-success response is small; a huge body is not one.
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_vec()
                    .unwrap_or_default();
                match status {
                    200..=299 => Attempt::Done(body),
                    429 | 502 | 503 | 504 => Attempt::Retry(format!("HTTP {status}"), retry_after),
                    _ => Attempt::Final(format!("HTTP {status}")),
                }
            }
            Err(e) => Attempt::Retry(e.to_string(), None),
        }
    }
}

enum Attempt {
    Done(Vec<u8>),
    Retry(String, Option<Duration>),
    Final(String),
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    z.write_all(body)?;
    z.finish()
}
