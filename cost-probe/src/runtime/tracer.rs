//! The tracer: the one state of a run, fed kernel events, giving out records.
//!
//! Runs on one thread (the ring consumer) so the hot path has no locks or channels. Data flows
//! one way through it: events → [`SpanBuilder`] → [`Meter`] (energy) → pricing and tags →
//! [`Outputs`]. It never touches the probe; what the probe must learn (connections to forget) it
//! hands back to the loop in [`crate::runtime`].
use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use super::meter::Meter;
use crate::{
    host::{FdKind, Processes},
    output::{Outputs, Price, Unattributed},
    pricing::Prices,
    probe::{ConnId, Event, event::decode},
    rules::{RequestInfo, Rules, Tagger},
    spans::{Limits, RequestSpan, SpanBuilder, SpanSink},
    units::Nanos,
    view::InFlight,
};

/// The process's name and a request's tags: rule tags (given `info` less its process fields),
/// then the process's discovery tags where no rule set the key.
fn tags_of<'p>(
    processes: &'p mut Processes,
    tagger: &Tagger,
    tgid: u32,
    info: RequestInfo<'_>,
) -> (&'p str, BTreeMap<String, String>) {
    let process = processes.info(tgid);
    let mut tags = tagger.tags(&RequestInfo {
        comm: Some(&process.comm),
        cmdline: process.cmdline.as_deref(),
        ..info
    });
    for (k, v) in &process.tags {
        if !tags.contains_key(k) {
            tags.insert(k.clone(), v.clone());
        }
    }
    (&process.comm, tags)
}

/// The span builder's reports, straight to the meter (which releases a finished span once its
/// energy is known): a span is moved once, from its connection to the meter.
struct ToMeter<'m>(&'m mut Meter);

impl SpanSink for ToMeter<'_> {
    fn started(&mut self, id: u64, conn: ConnId, start: u64) {
        self.0.add_target(conn.tgid);
        self.0.started(id, start);
    }
    fn progress(&mut self, id: u64, at: u64, _chunks: u32) {
        self.0.progress(id, at);
    }
    fn finished(&mut self, span: RequestSpan) {
        self.0.finished(span);
    }
}

pub struct Tracer {
    spans: SpanBuilder,
    meter: Meter,
    prices: Prices,
    tagger: Tagger,
    processes: Processes,
    outputs: Outputs,
    /// `attach --record`: every raw event as a JSON line (fixtures, bug reports).
    recorder: Option<Box<dyn Write + Send>>,
    /// Accepts the kernel could not classify (no address buffer): checked after the batch.
    unclassified: Vec<ConnId>,
    /// Process exits seen in the stream since the loop last asked.
    exited: Vec<u32>,
    /// Execs seen since the loop last asked (the agent's discovery).
    execs: Vec<u32>,
    decode_errors: u64,
}

impl Tracer {
    #[must_use]
    pub fn new(
        rules: &Rules,
        meter: Meter,
        processes: Processes,
        outputs: Outputs,
        recorder: Option<Box<dyn Write + Send>>,
    ) -> Self {
        Self {
            spans: SpanBuilder::new(Limits::default()),
            prices: Prices::from_rules(rules, meter.gpu_model()),
            tagger: rules.tagger(),
            meter,
            processes,
            outputs,
            recorder,
            unclassified: Vec::new(),
            exited: Vec::new(),
            execs: Vec::new(),
            decode_errors: 0,
        }
    }

    /// The energy sources in use, in words (`nvml: 1 GPU …`).
    pub fn energy_sources(&self) -> impl Iterator<Item = String> + '_ {
        self.meter
            .sources()
            .iter()
            .filter(|s| s.used)
            .map(|s| format!("{}: {}", s.source, s.message))
    }

    /// Handles one ring-buffer record.
    pub fn on_record(&mut self, bytes: &[u8]) {
        match decode(bytes) {
            Ok(ev) => self.on_event(&ev),
            Err(e) => {
                self.decode_errors += 1;
                if self.decode_errors == 1 {
                    log::warn!("undecodable ring record ({e}); counting further ones silently");
                }
            }
        }
    }

    pub fn on_event(&mut self, ev: &Event<&[u8]>) {
        if let Some(w) = self.recorder.as_mut() {
            let _ = serde_json::to_writer(&mut *w, ev);
            let _ = w.write_all(b"\n");
        }
        self.spans.on_event(ev, &mut ToMeter(&mut self.meter));
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
                if let Some(local) = self.processes.listener(conn.tgid, listen_fd) {
                    self.spans.set_local(conn, local);
                }
            }
            Event::ProcExit { ts, tgid } => {
                self.exited.push(tgid);
                self.processes.exited(ts, tgid);
            }
            Event::Exec { tgid, .. } => self.execs.push(tgid),
            _ => {}
        }
    }

    /// A process (and its descendants) the loop added to the probe: its CPU time is the
    /// target's, and `tags` (agent discovery) go on its requests' records.
    pub fn add_target(&mut self, tgids: &[u32], tags: Option<BTreeMap<String, String>>) {
        for &t in tgids {
            self.meter.add_target(t);
        }
        if let (Some(&root), Some(tags)) = (tgids.first(), tags) {
            self.processes.set_tags(root, tags);
        }
    }

    /// Samples energy for the first time if it has not yet (see [`Meter::baseline`]).
    pub fn baseline(&mut self, now: u64) {
        self.meter.baseline(Nanos(now));
    }

    /// Registers a connection found in /proc at attach time (its first bytes may be
    /// mid-request, so it starts unsynchronised).
    pub fn existing_conn(
        &mut self,
        conn: ConnId,
        local: std::net::SocketAddr,
        peer: std::net::SocketAddr,
    ) {
        self.spans.adopt(conn, local, peer);
    }

    /// Accepts the kernel could not classify, for the loop to check against /proc.
    pub fn take_unclassified(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.unclassified)
    }

    /// What /proc said about an unclassified accept. Returns whether the probe should forget
    /// the connection (it is not TCP).
    pub fn classified(&mut self, conn: ConnId, kind: FdKind) -> bool {
        match kind {
            FdKind::Tcp { local, peer } => {
                self.spans.set_addrs(conn, local, peer);
                false
            }
            FdKind::NotTcp => {
                self.spans.forget(conn);
                true
            }
            // Closed already: its close event ends it.
            FdKind::Gone => false,
        }
    }

    /// Connections whose process exited: the kernel filters data syscalls by connection alone,
    /// so their entries must go before the pid can be reused.
    pub fn take_ended_by_exit(&mut self) -> Vec<ConnId> {
        self.spans.take_ended_by_exit()
    }

    /// Process exits seen since the last call.
    pub fn take_exited(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.exited)
    }

    #[must_use]
    pub fn has_execs(&self) -> bool {
        !self.execs.is_empty()
    }

    /// Processes that executed a new program since the last call.
    pub fn take_execs(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.execs)
    }

    /// Samples energy when an interval is due; writes the interval and the requests it priced.
    pub fn tick(&mut self, now: u64) -> io::Result<()> {
        self.processes.bury(now);
        if let Some(report) = self.meter.tick_if_due(Nanos(now))
            // The first tick only sets each counter's baseline: nothing to say yet.
            && !report.domains.is_empty()
        {
            self.outputs.interval(&report, &self.spans.stats)?;
        }
        self.emit_released()
    }

    /// Prices, tags and writes every request the meter released.
    fn emit_released(&mut self) -> io::Result<()> {
        let (prices, tagger) = (&self.prices, &self.tagger);
        let (processes, outputs) = (&mut self.processes, &mut self.outputs);
        let mut result = Ok(());
        self.meter.drain_released(|span, energy| {
            if result.is_err() {
                return;
            }
            let cost = prices.price(energy, span.usage.total(), span.bytes_out);
            let (comm, tags) = tags_of(
                processes,
                tagger,
                span.conn.tgid,
                RequestInfo {
                    method: span.method.as_deref(),
                    path: span.path.as_deref(),
                    port: span.local.map(|a| a.port()),
                    model: span.model.as_deref(),
                    comm: None,
                    cmdline: None,
                },
            );
            result = outputs.request(
                span,
                comm,
                Some(Price {
                    energy,
                    cost: &cost,
                }),
                &tags,
            );
        });
        result
    }

    /// Every request in flight (started, not finished), with the fields and tags its record will
    /// carry, into `out` (cleared first). For the live view, about once a second.
    pub fn in_flight(&mut self, out: &mut Vec<InFlight>) {
        out.clear();
        let (processes, tagger) = (&mut self.processes, &self.tagger);
        self.spans.open_requests(|r| {
            let model = crate::spans::scan::model(r.body_head);
            let (comm, tags) = tags_of(
                processes,
                tagger,
                r.conn.tgid,
                RequestInfo {
                    method: r.method,
                    path: r.path,
                    port: r.local.map(|a| a.port()),
                    model: model.as_deref(),
                    comm: None,
                    cmdline: None,
                },
            );
            out.push(InFlight {
                id: r.id,
                start: r.start,
                method: r.method.map(str::to_owned),
                path: r.path.map(str::to_owned),
                comm: comm.to_owned(),
                model,
                tags,
            });
        });
    }

    /// Events the kernel dropped since the last call.
    pub fn lost(&mut self, events: u64, now: u64) -> io::Result<()> {
        self.outputs.lost(events, now)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.outputs.flush()
    }

    /// Whether a sink's reader went away.
    #[must_use]
    pub fn closed(&self) -> bool {
        self.outputs.closed()
    }

    /// New rules (SIGHUP): prices, tags, alerts and metric labels follow them; the ledger keeps
    /// its state.
    pub fn set_rules(&mut self, rules: &Rules) {
        self.prices = Prices::from_rules(rules, self.meter.gpu_model());
        self.tagger = rules.tagger();
        self.outputs.set_rules(rules);
    }

    /// Reopens the output files (SIGHUP, after logrotate).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.outputs.reopen()
    }

    /// Ends every open span (flagged partial), prices what is held, then writes the summary.
    pub fn finish(&mut self, start: u64, now: u64) -> io::Result<()> {
        self.spans.flush(now, &mut ToMeter(&mut self.meter));
        let report = self.meter.finish();
        self.outputs.interval(&report, &self.spans.stats)?;
        self.emit_released()?;
        let stats = self.spans.stats;
        if stats.conn_overflow + stats.queue_overflow > 0 {
            log::warn!(
                "dropped {} connections and {} requests over the table limits",
                stats.conn_overflow,
                stats.queue_overflow
            );
        }
        let t = self.meter.totals;
        let (idle_usd, _) = self.prices.energy(t.idle);
        self.outputs.finish(
            start,
            now,
            Unattributed {
                idle_j: t.idle.joules(),
                idle_usd,
                other_j: t.other.joules(),
            },
        )?;
        if let Some(w) = self.recorder.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}
