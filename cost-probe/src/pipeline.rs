//! The userspace data path for one probe: ring records → spans → records on a sink.
//!
//! Runs on one thread (the ring consumer) so the hot path has no locks or channels.
use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    io::{self, Write},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use crate::{
    alerts::{AlertEngine, Observation},
    meter::{Meter, Priced},
    output::{
        SecondCache, Sink, WallClock,
        metrics::{Metrics, RequestObs},
        records::{LostRecord, RequestRecord},
        summary::{Sample, Summary},
    },
    probe::{ConnId, Event, OwnedEvent, event::DecodeError, procscan},
    spans::{Flags, Limits, RequestSpan, SpanBuilder, SpanEvent},
};

/// Everything the consumer thread owns.
pub struct Pipeline {
    pub builder: SpanBuilder,
    pub summary: Summary,
    pub sink: Sink,
    pub clock: WallClock,
    spans: Vec<SpanEvent>,
    comms: HashMap<u32, String>,
    listeners: HashMap<(u32, i32), Option<SocketAddr>>,
    /// Accepts the kernel could not classify (no address buffer): checked after the batch.
    unclassified: Vec<ConnId>,
    record: Option<Box<dyn Write + Send>>,
    /// Process exits seen in the stream.
    pub exited: Vec<u32>,
    pub decode_errors: u64,
    pub first_ts: Option<u64>,
    pub last_ts: u64,
    /// Energy and pricing; `None` traces spans only.
    pub meter: Option<Meter>,
    priced: Vec<Priced>,
    seconds: SecondCache,
    /// Prometheus series (agent mode).
    pub metrics: Option<Arc<Mutex<Metrics>>>,
    /// Budget and anomaly rules (agent mode).
    pub alerts: Option<AlertEngine>,
    /// Tags per traced process (target rule, pod, container); descendants inherit their root's.
    pub process_tags: HashMap<u32, BTreeMap<String, String>>,
    /// Exited processes whose cached comm, listeners and tags are dropped once no held request
    /// can need them any more (a few intervals later).
    graveyard: Vec<(u64, u32)>,
    /// Raw path → normalized path, for summary groups.
    normalized: HashMap<String, String>,
}

/// Entries in the path-normalization cache before it is cleared.
const NORMALIZED_CACHE: usize = 4096;

impl Pipeline {
    #[must_use]
    pub fn new(sink: Sink, record: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            builder: SpanBuilder::new(Limits::default()),
            summary: Summary::default(),
            sink,
            clock: WallClock::now(),
            spans: Vec::with_capacity(256),
            comms: HashMap::new(),
            listeners: HashMap::new(),
            unclassified: Vec::new(),
            record,
            exited: Vec::new(),
            decode_errors: 0,
            first_ts: None,
            last_ts: 0,
            meter: None,
            priced: Vec::new(),
            seconds: SecondCache::default(),
            metrics: None,
            alerts: None,
            process_tags: HashMap::new(),
            graveyard: Vec::new(),
            normalized: HashMap::new(),
        }
    }

    /// Handles one ring-buffer record.
    pub fn on_record(&mut self, bytes: &[u8]) {
        match crate::probe::event::decode(bytes) {
            Ok(ev) => self.on_event(&ev),
            Err(e) => self.decode_error(&e),
        }
    }

    fn decode_error(&mut self, e: &DecodeError) {
        self.decode_errors += 1;
        if self.decode_errors == 1 {
            log::warn!("undecodable ring record ({e}); counting further ones silently");
        }
    }

    pub fn on_event(&mut self, ev: &Event<'_>) {
        let ts = ev.ts();
        self.first_ts.get_or_insert(ts);
        self.last_ts = self.last_ts.max(ts);
        if let Some(w) = self.record.as_mut() {
            let _ = serde_json::to_writer(&mut *w, &OwnedEvent::from_event(ev));
            let _ = w.write_all(b"\n");
        }
        self.builder.on_event(ev, &mut self.spans);
        match *ev {
            Event::Accept {
                conn,
                listen_fd,
                family_unknown,
                ..
            } => {
                if family_unknown {
                    self.unclassified.push(conn);
                }
                if let Some(local) = self.listener(conn.tgid, listen_fd) {
                    self.builder.set_local(conn, local);
                }
            }
            Event::ProcExit { ts, tgid } => {
                self.exited.push(tgid);
                self.graveyard.push((ts, tgid));
            }
            _ => {}
        }
    }

    /// Registers a connection found in /proc at attach time (its first bytes may be
    /// mid-request, so it starts unsynchronised).
    pub fn existing_conn(&mut self, conn: ConnId, local: SocketAddr, peer: SocketAddr) {
        self.builder.adopt(conn, local, peer);
    }

    /// Accepts the kernel could not classify, for the caller to check against /proc.
    pub fn take_unclassified(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.unclassified)
    }

    fn listener(&mut self, tgid: u32, fd: i32) -> Option<SocketAddr> {
        if let Entry::Occupied(e) = self.listeners.entry((tgid, fd)) {
            return *e.get();
        }
        // One /proc read per process fills every listener it has.
        for (lfd, addr) in procscan::sockets(tgid).listeners {
            self.listeners.insert((tgid, lfd), Some(addr));
        }
        *self.listeners.entry((tgid, fd)).or_insert(None)
    }

    fn comm(&mut self, tgid: u32) -> &str {
        self.comms
            .entry(tgid)
            .or_insert_with(|| procscan::comm(tgid))
    }

    /// Emits records for the spans finished since the last call (or hands them to the meter,
    /// which emits them once their energy is known).
    pub fn emit(&mut self) -> io::Result<()> {
        let mut spans = std::mem::take(&mut self.spans);
        for e in spans.drain(..) {
            match (e, self.meter.as_mut()) {
                (SpanEvent::Started { id, conn, start }, Some(m)) => {
                    m.add_target(conn.tgid);
                    m.started(id, start);
                }
                (SpanEvent::Started { .. }, None) => {}
                (SpanEvent::Finished(span), Some(m)) => m.finished(span),
                (SpanEvent::Finished(span), None) => self.emit_span(&span, None)?,
            }
        }
        self.spans = spans;
        Ok(())
    }

    /// Samples energy when an interval is due; emits the interval and the requests it priced.
    pub fn tick(&mut self, now: u64) -> io::Result<()> {
        self.bury(now);
        let Some(m) = self.meter.as_mut() else {
            return Ok(());
        };
        if let Some(rec) = m.tick_if_due(crate::units::Nanos(now), &self.clock, &mut self.priced) {
            if let Some(metrics) = &self.metrics {
                let mut mx = metrics.lock().unwrap_or_else(PoisonError::into_inner);
                for (domain, ir) in &rec.raw {
                    mx.observe_interval(domain, ir);
                }
                mx.sampler(
                    std::time::Duration::from_secs_f64(rec.sampler_us / 1e6),
                    rec.dropped,
                );
                mx.span_stats(&self.builder.stats);
            }
            // (The first tick only sets each counter's baseline.)
            if !rec.domains.is_empty() {
                self.sink.write(&rec)?;
            }
        }
        self.emit_priced()
    }

    fn emit_priced(&mut self) -> io::Result<()> {
        let mut priced = std::mem::take(&mut self.priced);
        for p in priced.drain(..) {
            self.emit_span(&p.span, Some(&p))?;
        }
        self.priced = priced;
        Ok(())
    }

    fn emit_span(&mut self, span: &RequestSpan, priced: Option<&Priced>) -> io::Result<()> {
        let extra = (!self.process_tags.is_empty()).then(|| self.tags_for(span.conn.tgid));
        self.comm(span.conn.tgid);
        // The record borrows the comm; move the table out while self is used mutably.
        let comms = std::mem::take(&mut self.comms);
        let comm = comms.get(&span.conn.tgid).map_or("?", String::as_str);
        let mut rec = RequestRecord::from_span(span, comm, &self.clock, &mut self.seconds);
        if let Some(p) = priced {
            rec = rec.priced(p);
        }
        for (k, v) in extra.into_iter().flatten() {
            rec.tags.to_mut().entry(k).or_insert(v);
        }
        let written = self
            .sink
            .write_request(&rec)
            .and_then(|()| self.observe(span, &rec));
        if written.is_ok() {
            if span.flags.contains(Flags::PARTIAL) {
                self.summary.totals.partial_requests += 1;
            }
            // Summary groups use the normalized path (bounded: never one group per user id),
            // through a bounded cache: normalizing allocates, and paths repeat.
            let path = match (&span.path, &self.meter) {
                (Some(p), Some(m)) => {
                    if !self.normalized.contains_key(p.as_str()) {
                        if self.normalized.len() >= NORMALIZED_CACHE {
                            self.normalized.clear();
                        }
                        let n = m.tagger().normalizer().normalize(p);
                        self.normalized.insert(p.clone(), n);
                    }
                    self.normalized.get(p.as_str()).map(String::as_str)
                }
                (p, _) => p.as_deref(),
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
        }
        drop(rec);
        self.comms = comms;
        written
    }

    /// Drops per-process caches of processes that exited over 5 s ago (every request of theirs
    /// has been priced and emitted by then), so a long-running agent does not grow with churn.
    fn bury(&mut self, now: u64) {
        const GRACE_NS: u64 = 5_000_000_000;
        while let Some(&(ts, tgid)) = self.graveyard.first() {
            if now.saturating_sub(ts) < GRACE_NS {
                break;
            }
            self.graveyard.remove(0);
            self.comms.remove(&tgid);
            self.process_tags.remove(&tgid);
            self.listeners.retain(|(t, _), _| *t != tgid);
        }
    }

    /// Tags of a traced process: its own, or those of the nearest ancestor that has some.
    fn tags_for(&mut self, tgid: u32) -> BTreeMap<String, String> {
        if let Some(t) = self.process_tags.get(&tgid) {
            return t.clone();
        }
        let mut pid = tgid;
        let mut found = BTreeMap::new();
        for _ in 0..16 {
            match procscan::ppid(pid) {
                Some(p) if p > 1 => {
                    if let Some(t) = self.process_tags.get(&p) {
                        found.clone_from(t);
                        break;
                    }
                    pid = p;
                }
                _ => break,
            }
        }
        self.process_tags.insert(tgid, found.clone());
        found
    }

    /// Metrics and alerts for one request record.
    fn observe(&mut self, span: &RequestSpan, rec: &RequestRecord<'_>) -> io::Result<()> {
        if let Some(metrics) = &self.metrics {
            let mut mx = metrics.lock().unwrap_or_else(PoisonError::into_inner);
            mx.observe_request(&RequestObs {
                method: span.method.as_deref(),
                path: span.path.as_deref(),
                status: span.status,
                model: span.model.as_deref(),
                tags: &rec.tags,
                duration_s: rec.duration_ms / 1e3,
                energy_j: rec.energy_j.map(|e| e.total),
                cost_usd: rec.cost_usd.map(|c| c.total),
                tokens: span.usage.total(),
            });
        }
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
            self.sink.write(a)?;
            if let Some(metrics) = &self.metrics {
                metrics
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .alert(a);
            }
        }
        Ok(())
    }

    /// Emits a `lost` record when the kernel dropped events.
    pub fn lost(&mut self, events: u64, now: u64) -> io::Result<()> {
        if events == 0 {
            return Ok(());
        }
        self.summary.totals.lost_events += events;
        if let Some(metrics) = &self.metrics {
            metrics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .lost(events);
        }
        log::warn!("{events} events dropped in the kernel (ring buffer full)");
        self.sink
            .write(&LostRecord::new(self.clock.rfc3339(now), events))
    }

    /// Ends every open span (flagged partial), then writes the summary.
    pub fn finish(&mut self, start: u64, now: u64) -> io::Result<()> {
        self.builder.flush(now, &mut self.spans);
        self.emit()?;
        if let Some(m) = self.meter.as_mut() {
            let rec = m.finish(&self.clock, &mut self.priced);
            self.sink.write(&rec)?;
            let t = m.totals;
            let (idle_usd, _) = m.prices.energy(t.idle);
            self.summary.totals.idle_j = Some(t.idle.joules());
            self.summary.totals.idle_usd = Some(idle_usd);
            self.summary.totals.other_j = Some(t.other.joules());
        }
        self.emit_priced()?;
        let stats = self.builder.stats;
        if stats.conn_overflow + stats.queue_overflow > 0 {
            log::warn!(
                "dropped {} connections and {} requests over the table limits",
                stats.conn_overflow,
                stats.queue_overflow
            );
        }
        let rec = self
            .summary
            .record(self.clock.rfc3339(start), self.clock.rfc3339(now));
        self.sink.write(&rec)?;
        if let Some(w) = self.record.as_mut() {
            w.flush()?;
        }
        self.sink.flush()
    }
}
