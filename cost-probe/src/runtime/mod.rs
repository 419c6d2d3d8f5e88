//! The runtime: what `attach` and `agent` run, written once.
//!
//! A [`Session`] owns the probe, the [`Tracer`] (spans, meter, host caches, pricing, tags and
//! outputs) and the /proc root. [`Session::run`] is the one consumer loop; what differs between
//! attach and the agent (when to stop, discovery and reloads) is a [`Control`]:
//! [`attach::Attach`] and [`agent::Agent`].
pub mod agent;
pub mod attach;
pub mod demo;
pub mod doctor;
pub mod meter;
pub mod top;
mod tracer;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use self::meter::Meter;
pub use self::tracer::Tracer;
use crate::{
    energy::Roots,
    host::{ProcFs, Processes},
    output::{
        OutputTarget, Outputs, Sink,
        ndjson::NdjsonSink,
        otlp::{OtlpConfig, OtlpSink},
    },
    probe::{Probe, ProbeError},
    rules::{Rules, RulesError},
    units::monotonic_now,
};

/// Why a run could not start (exit code 2) or did not end cleanly (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no process with pid {0}")]
    NoProcess(u32),
    #[error("pid {pid} is a thread of process {tgid}: attach to {tgid}")]
    Thread { pid: u32, tgid: u32 },
    #[error("pid {pid} is a kernel thread ({comm}): nothing to trace")]
    KernelThread { pid: u32, comm: String },
    #[error("rules: {0}")]
    Rules(#[from] RulesError),
    #[error("no [[target]] rules in {0}: nothing to discover")]
    NoTargets(PathBuf),
    #[error(transparent)]
    Probe(ProbeError),
    #[error("cannot attach: {0}")]
    Attach(ProbeError),
    #[error("cannot open {target}: {source}")]
    Open {
        target: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Otlp(#[from] crate::output::otlp::config::ConfigError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The consumer loop failed (a sink's write, the ring).
    #[error("{0}")]
    Run(Box<dyn std::error::Error + Send + Sync>),
    /// Writing the last records and the summary failed (the error names the output).
    #[error("{0}")]
    Finish(std::io::Error),
}

impl RuntimeError {
    /// Whether the run never started: bad input, missing privileges, an unusable kernel.
    #[must_use]
    pub fn before_start(&self) -> bool {
        !matches!(self, Self::Run(_) | Self::Finish(_))
    }

    fn probe(e: ProbeError) -> Self {
        match e {
            ProbeError::Privileges(_) | ProbeError::NoObject => Self::Probe(e),
            e => Self::Attach(e),
        }
    }
}

/// What every run is configured with.
pub struct SessionConfig {
    pub rules: Rules,
    pub output: OutputTarget,
    /// Energy sampling interval.
    pub interval: Duration,
    /// The /proc tree targets and connections are read from.
    pub proc: ProcFs,
    /// OTLP export (`--otlp-endpoint`, `OTEL_*`), when configured.
    pub otlp: Option<OtlpConfig>,
}

/// One loaded probe, one tracer, and the host they look at.
pub struct Session {
    pub probe: Probe,
    pub tracer: Tracer,
    pub proc: ProcFs,
    start: u64,
}

impl Session {
    /// Opens the outputs (NDJSON to `config.output`, then `extra` sinks) and loads the probe:
    /// in that order, so an output that cannot be written fails before anything is attached.
    /// `alerts`: whether budget and anomaly rules fire.
    pub fn open(
        config: &SessionConfig,
        extra: Vec<Box<dyn Sink>>,
        alerts: bool,
        recorder: Option<Box<dyn std::io::Write + Send>>,
    ) -> Result<Self, RuntimeError> {
        let ndjson =
            NdjsonSink::new(config.output.clone()).map_err(|source| RuntimeError::Open {
                target: config.output.to_string(),
                source,
            })?;
        let probe = Probe::load().map_err(RuntimeError::probe)?;
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(ndjson)];
        sinks.extend(extra);
        if let Some(otlp) = &config.otlp {
            let sink =
                OtlpSink::new(otlp.clone(), config.proc.root().to_owned()).map_err(|source| {
                    RuntimeError::Open {
                        target: "the OTLP exporter thread".into(),
                        source,
                    }
                })?;
            sinks.push(Box::new(sink));
        }
        let meter = Meter::new(&config.rules, config.interval, Roots::default());
        let outputs = Outputs::new(&config.rules, sinks, alerts);
        let tracer = Tracer::new(
            &config.rules,
            meter,
            Processes::new(config.proc.clone()),
            outputs,
            recorder,
        );
        Ok(Self {
            probe,
            tracer,
            proc: config.proc.clone(),
            start: monotonic_now().0,
        })
    }

    /// Traces `pid`, its descendants and the connections they already hold (a syscall a thread
    /// is blocked in needs nothing: the exit program reads its arguments from the saved
    /// registers). Returns the tgids added, `pid` first.
    pub fn add_process(
        &mut self,
        pid: u32,
        tags: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<Vec<u32>, ProbeError> {
        // The fork tracepoint is live, so children forked after their parent is added are
        // caught; a second scan catches those forked while the first one ran.
        let mut added = Vec::new();
        for _ in 0..2 {
            for t in self.proc.descendants(pid) {
                if !added.contains(&t) {
                    self.probe.add_target(t)?;
                    added.push(t);
                }
            }
        }
        let id = monotonic_now().0;
        for &t in &added {
            for (conn, local, peer) in self.proc.existing_conns(t, id) {
                self.probe.add_conn(conn)?;
                self.tracer.existing_conn(conn, local, peer);
            }
        }
        self.tracer.add_target(&added, tags);
        self.tracer.baseline(monotonic_now().0);
        Ok(added)
    }

    /// One pass: drain the ring (waiting up to 10 ms unless stopping; spans go to the meter as
    /// they finish), classify accepts the kernel could not, and sample energy when due.
    fn drain_once(&mut self, stopping: bool) -> Result<(), RuntimeError> {
        let tracer = &mut self.tracer;
        self.probe
            .poll(Duration::from_millis(if stopping { 0 } else { 10 }), |b| {
                tracer.on_record(b);
            })
            .map_err(|e| RuntimeError::Run(e.into()))?;
        for conn in self.tracer.take_unclassified() {
            let kind = self.proc.classify(conn.tgid, conn.fd);
            if self.tracer.classified(conn, kind) {
                self.probe.forget_conn(conn);
            }
        }
        for conn in self.tracer.take_ended_by_exit() {
            self.probe.forget_conn(conn);
        }
        self.tracer
            .tick(monotonic_now().0)
            .map_err(|e| RuntimeError::Run(e.into()))
    }

    fn lost(&mut self) -> Result<(), RuntimeError> {
        let n = self
            .probe
            .take_lost()
            .map_err(|e| RuntimeError::Run(e.into()))?;
        self.tracer
            .lost(n, monotonic_now().0)
            .map_err(|e| RuntimeError::Run(e.into()))
    }

    /// The consumer loop: drains until `stop`, until `control` says so, or until the reader
    /// goes away; then flushes the open spans (flagged partial) and writes the summary. The
    /// summary is written even when the loop failed.
    pub fn run(
        mut self,
        control: &mut impl Control,
        stop: &AtomicBool,
    ) -> Result<(), RuntimeError> {
        let result = self.consume(control, stop);
        let now = monotonic_now().0;
        let finished = self.lost().and_then(|()| {
            self.tracer
                .finish(self.start, now)
                .map_err(RuntimeError::Finish)
        });
        result.and(finished)
    }

    fn consume(
        &mut self,
        control: &mut impl Control,
        stop: &AtomicBool,
    ) -> Result<(), RuntimeError> {
        let mut last_check = Instant::now();
        loop {
            control.before_drain(self);
            let stopping = stop.load(Ordering::Relaxed);
            self.drain_once(stopping)?;
            let exited = self.tracer.take_exited();
            let check = last_check.elapsed() >= Duration::from_secs(1);
            let done = control.after_drain(self, &exited, check);
            if check || stopping || done {
                last_check = Instant::now();
                self.lost()?;
            }
            if self.tracer.closed() {
                eprintln!("cost-probe: the reader of the records went away; stopping");
                return Ok(());
            }
            if done || stopping {
                return Ok(());
            }
            self.tracer
                .flush()
                .map_err(|e| RuntimeError::Run(e.into()))?;
        }
    }
}

/// What differs between runs, called on each pass of the consumer loop.
pub trait Control {
    /// Before the ring is drained (the agent's reloads and discovery).
    fn before_drain(&mut self, _session: &mut Session) {}

    /// After it, with the processes that exited in this pass; `check` is true about once a
    /// second. Returns whether the run is over.
    fn after_drain(&mut self, session: &mut Session, exited: &[u32], check: bool) -> bool;
}

/// Sets `stop` on SIGINT or SIGTERM (needs a tokio runtime).
pub fn stop_on_signals(stop: &std::sync::Arc<AtomicBool>) {
    on_signals(&[
        (tokio::signal::unix::SignalKind::interrupt(), stop.clone()),
        (tokio::signal::unix::SignalKind::terminate(), stop.clone()),
    ]);
}

/// Sets each flag whenever its signal arrives (needs a tokio runtime).
pub fn on_signals(handlers: &[(tokio::signal::unix::SignalKind, std::sync::Arc<AtomicBool>)]) {
    for (kind, flag) in handlers {
        let flag = flag.clone();
        match tokio::signal::unix::signal(*kind) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        flag.store(true, Ordering::Relaxed);
                    }
                });
            }
            Err(e) => log::warn!("cannot handle signal {kind:?}: {e}"),
        }
    }
}
