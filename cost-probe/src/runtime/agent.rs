//! `agent`: a long-running daemon that finds its targets by rules.
//!
//! One probe traces every target (the kernel's target table holds them all); one record stream
//! carries them, each record with its pid, comm and the target's tags. Discovery rescans /proc
//! every `discover` period, so a restarted server is traced again within that period.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Control, RuntimeError, Session, SessionConfig};
use crate::{
    host::discovery::{Check, Discovery, Found},
    output::{
        Sink,
        metrics::{DEFAULT_MAX_SERIES, Metrics, PrometheusSink},
    },
    rules::Rules,
};

/// A validated `agent` invocation.
pub struct AgentConfig {
    pub session: SessionConfig,
    /// Where the rules came from (reloaded from here on SIGHUP).
    pub rules_dir: PathBuf,
    /// How often /proc is scanned for new targets.
    pub discover: Duration,
}

/// Flags the signal handlers set and the loop reads.
#[derive(Debug, Default, Clone)]
pub struct Signals {
    /// SIGINT, SIGTERM: flush and exit.
    pub stop: Arc<AtomicBool>,
    /// SIGHUP: reload the rules, reopen the output file.
    pub reload: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers (needs a tokio runtime).
    #[must_use]
    pub fn install() -> Self {
        let s = Self::default();
        super::stop_on_signals(&s.stop);
        super::on_signals(&[(tokio::signal::unix::SignalKind::hangup(), s.reload.clone())]);
        s
    }
}

/// Discovery and reloads around the consumer loop.
pub struct Agent<'a> {
    config: &'a AgentConfig,
    rules: Rules,
    signals: &'a Signals,
    discovery: Discovery,
    last_discover: Option<Instant>,
    /// Exec'd processes whose rule waits for them to listen, until when to keep asking.
    starting: Vec<(u32, Instant)>,
}

/// How long an exec'd process that matches a port rule's other matchers is re-checked on every
/// pass (10 ms) before the periodic scan takes over: a model server can take a while to load
/// before it listens.
const STARTING: Duration = Duration::from_secs(30);
/// At most this many processes are re-checked on every pass; more wait for the periodic scan.
const MAX_STARTING: usize = 32;

impl Agent<'_> {
    /// SIGHUP: new rules if they parse (else the old ones stay), and a reopened output file.
    fn reload(&mut self, session: &mut Session) {
        let dir = &self.config.rules_dir;
        match Rules::load_dir(dir) {
            Ok(new) => {
                session.tracer.set_rules(&new);
                self.rules = new;
                eprintln!("cost-probe: rules reloaded from {}", dir.display());
            }
            Err(e) => eprintln!("cost-probe: rules: {e}; keeping the previous rules"),
        }
        if let Err(e) = session.tracer.reopen() {
            eprintln!(
                "cost-probe: cannot reopen {}: {e}",
                self.config.session.output
            );
        }
    }

    /// Traces the processes a target rule matches that are not traced yet.
    fn discover(&mut self, session: &mut Session) {
        for (pid, root) in self.discovery.prune(&session.proc) {
            eprintln!(
                "cost-probe: pid {pid} ({}, rule {}) exited",
                root.comm, root.rule
            );
        }
        let found = self
            .discovery
            .scan(&session.proc, &self.rules.targets, std::process::id());
        for f in found {
            self.trace(session, f);
        }
    }

    /// Checks the processes that exec'd since the last pass, and those still starting.
    fn check_execs(&mut self, session: &mut Session) {
        let now = Instant::now();
        let execs = session.tracer.take_execs();
        self.starting.retain(|&(_, until)| until > now);
        let mut pids: Vec<u32> = self.starting.iter().map(|&(p, _)| p).collect();
        pids.extend(execs.iter().copied());
        for pid in pids {
            let check =
                self.discovery
                    .check(&session.proc, &self.rules.targets, pid, std::process::id());
            match check {
                Check::Found(f) => {
                    self.starting.retain(|&(p, _)| p != pid);
                    self.trace(session, f);
                }
                Check::Wait
                    if self.starting.len() < MAX_STARTING
                        && !self.starting.iter().any(|&(p, _)| p == pid) =>
                {
                    self.starting.push((pid, now + STARTING));
                }
                Check::Wait => {}
                Check::No => self.starting.retain(|&(p, _)| p != pid),
            }
        }
    }

    /// Traces a found process and its descendants, tagged with its rule and container.
    fn trace(&mut self, session: &mut Session, f: Found) {
        let mut tags = BTreeMap::from([("target".to_owned(), f.rule.clone())]);
        if let Some(c) = session.proc.container(f.pid) {
            if let Some(pod) = c.pod_uid {
                tags.insert("pod_uid".into(), pod);
            }
            if let Some(id) = c.container_id {
                tags.insert("container_id".into(), id);
            }
        }
        match session.add_process(f.pid, Some(tags)) {
            Ok(added) => {
                eprintln!(
                    "cost-probe: tracing pid {} ({}) for target rule {} (+{} descendants)",
                    f.pid,
                    f.comm,
                    f.rule,
                    added.len() - 1
                );
                self.discovery.traced(f, &added);
            }
            Err(e) => eprintln!("cost-probe: cannot trace pid {} ({}): {e}", f.pid, f.comm),
        }
    }
}

impl Control for Agent<'_> {
    fn before_drain(&mut self, session: &mut Session) {
        if self.signals.reload.swap(false, Ordering::Relaxed) {
            self.reload(session);
        }
        if self
            .last_discover
            .is_none_or(|t| t.elapsed() >= self.config.discover)
        {
            self.last_discover = Some(Instant::now());
            self.discover(session);
        }
    }

    fn after_drain(&mut self, session: &mut Session, exited: &[u32], _check: bool) -> bool {
        if !self.starting.is_empty() || session.tracer.has_execs() {
            self.check_execs(session);
        }
        for &tgid in exited {
            if let Some(r) = self.discovery.exited(tgid) {
                eprintln!(
                    "cost-probe: pid {tgid} ({}, rule {}) exited",
                    r.comm, r.rule
                );
            }
        }
        false
    }
}

/// Serves Prometheus metrics on `addr` (on the tokio runtime) and returns the registry the
/// agent's Prometheus sink updates.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    rules: &Rules,
) -> Result<Arc<Mutex<Metrics>>, RuntimeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Metrics { addr, source })?;
    let m = Arc::new(Mutex::new(Metrics::new(rules, DEFAULT_MAX_SERIES)));
    eprintln!("cost-probe: metrics on http://{addr}/metrics");
    let served = m.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::output::metrics::serve_listener(listener, served).await {
            log::error!("metrics server stopped: {e}");
        }
    });
    Ok(m)
}

/// Loads the probe and runs discovery and the consumer loop on this (blocking) thread until
/// `signals.stop`. Records also update `metrics` (served by the caller).
pub fn run(
    config: &AgentConfig,
    signals: &Signals,
    metrics: Option<Arc<Mutex<Metrics>>>,
) -> Result<(), RuntimeError> {
    let rules = &config.session.rules;
    if rules.targets.is_empty() {
        return Err(RuntimeError::NoTargets(config.rules_dir.clone()));
    }
    let extra: Vec<Box<dyn Sink>> = metrics
        .into_iter()
        .map(|m| Box::new(PrometheusSink::new(m, DEFAULT_MAX_SERIES)) as Box<dyn Sink>)
        .collect();
    let mut session = Session::open(&config.session, extra, true, None)?;
    if let Err(e) = session.probe.watch_exec() {
        eprintln!(
            "cost-probe: cannot watch execs ({e}): new targets are found by the /proc scan every {} ms only",
            config.discover.as_millis()
        );
    }
    eprintln!(
        "cost-probe: agent running with {} target rule(s) from {}",
        rules.targets.len(),
        config.rules_dir.display()
    );
    let mut agent = Agent {
        config,
        rules: rules.clone(),
        signals,
        discovery: Discovery::default(),
        last_discover: None,
        starting: Vec::new(),
    };
    session.run(&mut agent, &signals.stop)
}
