//! `cost-probe agent --rules DIR`: a long-running daemon that finds its targets by rules.
//!
//! One probe traces every target (the kernel's target table holds them all); one record stream
//! carries them, each record with its pid, comm and the target's tags. Discovery rescans /proc
//! every `--discover` ms, so a restarted server is traced again within that period.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use procfs::process::{FDTarget, Process};
use tokio::signal::unix::{SignalKind, signal};

use super::attach::{add_targets, drain_once};
use crate::{
    alerts::AlertEngine,
    energy::Roots,
    meter::Meter,
    output::{Sink, metrics::Metrics},
    pipeline::Pipeline,
    probe::{Probe, ProbeError, cgroup, procscan},
    rules::{Rules, schema::TargetRule},
    units::monotonic_now,
};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Rules directory: `[[target]]` entries say what to trace; prices, tags, budgets as for attach.
    #[arg(long)]
    pub rules: PathBuf,
    /// Prometheus endpoint (`off` to disable). Loopback by default: expose it deliberately.
    #[arg(long, default_value = crate::output::metrics::DEFAULT_ADDR)]
    pub metrics: String,
    /// Where records go: a file (reopened on SIGHUP, for logrotate), `unix:PATH` (a listening
    /// unix stream socket, e.g. Vector's), or - for stdout.
    #[arg(long, default_value = "-")]
    pub output: String,
    /// Energy sampling interval in milliseconds.
    #[arg(long = "interval", default_value_t = 100)]
    pub interval_ms: u64,
    /// How often /proc is scanned for new targets, in milliseconds.
    #[arg(long = "discover", default_value_t = 500)]
    pub discover_ms: u64,
}

struct Flags {
    stop: AtomicBool,
    reload: AtomicBool,
}

pub async fn run(args: AgentArgs) -> ExitCode {
    let rules = match Rules::load_dir(&args.rules) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cost-probe: rules: {e}");
            return ExitCode::from(super::attach::EXIT_CANNOT_ATTACH);
        }
    };
    if rules.targets.is_empty() {
        eprintln!(
            "cost-probe: no [[target]] rules in {}: nothing to discover",
            args.rules.display()
        );
        return ExitCode::from(super::attach::EXIT_CANNOT_ATTACH);
    }
    let flags = Arc::new(Flags {
        stop: AtomicBool::new(false),
        reload: AtomicBool::new(false),
    });
    for (kind, reload) in [
        (SignalKind::interrupt(), false),
        (SignalKind::terminate(), false),
        (SignalKind::hangup(), true),
    ] {
        let flags = flags.clone();
        match signal(kind) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        if reload {
                            flags.reload.store(true, Ordering::Relaxed);
                        } else {
                            flags.stop.store(true, Ordering::Relaxed);
                        }
                    }
                });
            }
            Err(e) => log::warn!("cannot handle signal {kind:?}: {e}"),
        }
    }
    let metrics = Arc::new(Mutex::new(Metrics::new(
        &rules,
        crate::output::metrics::DEFAULT_MAX_SERIES,
    )));
    if args.metrics != "off" {
        let addr: SocketAddr = match args.metrics.parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("cost-probe: --metrics {}: {e}", args.metrics);
                return ExitCode::from(super::attach::EXIT_CANNOT_ATTACH);
            }
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cost-probe: cannot serve metrics on {addr}: {e}");
                return ExitCode::from(super::attach::EXIT_CANNOT_ATTACH);
            }
        };
        eprintln!("cost-probe: metrics on http://{addr}/metrics");
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::output::metrics::serve_listener(listener, m).await {
                log::error!("metrics server stopped: {e}");
            }
        });
    }
    match tokio::task::spawn_blocking(move || daemon(&args, rules, &flags, &metrics)).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cost-probe: agent thread failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A process being traced because a target rule matched it.
struct Root {
    rule: String,
    comm: String,
}

fn daemon(
    args: &AgentArgs,
    mut rules: Rules,
    flags: &Flags,
    metrics: &Arc<Mutex<Metrics>>,
) -> ExitCode {
    let mut probe = match Probe::load() {
        Ok(p) => p,
        Err(e @ (ProbeError::Privileges(_) | ProbeError::NoObject)) => {
            eprintln!("cost-probe: {e}");
            return ExitCode::from(super::attach::EXIT_CANNOT_ATTACH);
        }
        Err(e) => {
            eprintln!("cost-probe: cannot load the probe: {e}");
            return ExitCode::from(super::attach::EXIT_CANNOT_ATTACH);
        }
    };
    let sink = match Sink::new(&args.output) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cost-probe: cannot open {}: {e}", args.output);
            return ExitCode::from(super::attach::EXIT_CANNOT_ATTACH);
        }
    };
    let mut pipe = Pipeline::new(sink, None);
    pipe.meter = Some(Meter::new(
        &rules,
        Duration::from_millis(args.interval_ms),
        Roots::default(),
    ));
    pipe.metrics = Some(metrics.clone());
    pipe.alerts = Some(AlertEngine::new(&rules));
    eprintln!(
        "cost-probe: agent running with {} target rule(s) from {}",
        rules.targets.len(),
        args.rules.display()
    );
    let start = monotonic_now().0;
    let mut roots: HashMap<u32, Root> = HashMap::new();
    let mut traced: HashSet<u32> = HashSet::new();
    let mut last_discover: Option<Instant> = None;
    let mut last_flush = Instant::now();
    let discover_every = Duration::from_millis(args.discover_ms);
    let result = loop {
        if flags.reload.swap(false, Ordering::Relaxed) {
            reload(args, &mut rules, &mut pipe, metrics);
        }
        if last_discover.is_none_or(|t| t.elapsed() >= discover_every) {
            last_discover = Some(Instant::now());
            discover(&rules, &mut probe, &mut pipe, &mut roots, &mut traced);
        }
        let stopping = flags.stop.load(Ordering::Relaxed);
        if let Err(e) = drain_once(&mut probe, &mut pipe, stopping) {
            break Err(e);
        }
        for tgid in std::mem::take(&mut pipe.exited) {
            traced.remove(&tgid);
            if let Some(r) = roots.remove(&tgid) {
                eprintln!(
                    "cost-probe: pid {tgid} ({}, rule {}) exited",
                    r.comm, r.rule
                );
            }
        }
        if last_flush.elapsed() >= Duration::from_secs(1) || stopping {
            last_flush = Instant::now();
            let lost = probe.take_lost().map_err(Into::into);
            if let Err(e) = lost.and_then(|n| pipe.lost(n, monotonic_now().0).map_err(Into::into)) {
                break Err(e);
            }
        }
        if let Err(e) = pipe.sink.flush() {
            break Err(e.into());
        }
        if stopping {
            break Ok(());
        }
    };
    if let Err(e) = result {
        eprintln!("cost-probe: {e}");
    }
    if let Err(e) = pipe.finish(start, monotonic_now().0) {
        eprintln!("cost-probe: writing records: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// SIGHUP: new rules if they parse (else the old ones stay), and a reopened output file.
fn reload(args: &AgentArgs, rules: &mut Rules, pipe: &mut Pipeline, metrics: &Arc<Mutex<Metrics>>) {
    match Rules::load_dir(&args.rules) {
        Ok(new) => {
            if let Some(m) = pipe.meter.as_mut() {
                m.set_rules(&new);
            }
            pipe.alerts = Some(AlertEngine::new(&new));
            // Label rules may have changed: series start afresh under the new ones.
            *metrics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Metrics::new(&new, crate::output::metrics::DEFAULT_MAX_SERIES);
            *rules = new;
            eprintln!("cost-probe: rules reloaded from {}", args.rules.display());
        }
        Err(e) => eprintln!("cost-probe: rules: {e}; keeping the previous rules"),
    }
    if let Err(e) = pipe.sink.reopen() {
        eprintln!("cost-probe: cannot reopen {}: {e}", args.output);
    }
}

/// Scans /proc for processes that match a target rule and are not traced yet.
fn discover(
    rules: &Rules,
    probe: &mut Probe,
    pipe: &mut Pipeline,
    roots: &mut HashMap<u32, Root>,
    traced: &mut HashSet<u32>,
) {
    roots.retain(|pid, r| {
        let alive = procscan::alive(*pid);
        if !alive {
            eprintln!("cost-probe: pid {pid} ({}, rule {}) exited", r.comm, r.rule);
        }
        alive
    });
    traced.retain(|pid| procscan::alive(*pid));
    let Ok(all) = procfs::process::all_processes() else {
        return;
    };
    let port_rules: Vec<&TargetRule> = rules.targets.iter().filter(|t| t.port.is_some()).collect();
    let listening = listening_inodes(&port_rules);
    for p in all.flatten() {
        let pid = p.pid as u32;
        if traced.contains(&pid) || pid == std::process::id() {
            continue;
        }
        let Some(rule) = rules.targets.iter().find(|t| matches(t, &p, &listening)) else {
            continue;
        };
        // A child of something we trace is traced already (the kernel follows forks).
        if ancestors(pid).any(|a| traced.contains(&a)) {
            traced.insert(pid);
            continue;
        }
        let comm = procscan::comm(pid);
        match add_targets(probe, pipe, pid) {
            Ok(added) => {
                traced.extend(added.iter().copied());
                let mut tags = BTreeMap::from([("target".to_owned(), rule.name.clone())]);
                if let Ok(Some(c)) = cgroup::read(std::path::Path::new("/proc"), pid) {
                    if let Some(pod) = c.pod_uid {
                        tags.insert("pod_uid".into(), pod);
                    }
                    if let Some(id) = c.container_id {
                        tags.insert("container_id".into(), id);
                    }
                }
                pipe.process_tags.insert(pid, tags);
                if let Some(m) = pipe.meter.as_mut() {
                    for &t in &added {
                        m.add_target(t);
                    }
                }
                eprintln!(
                    "cost-probe: tracing pid {pid} ({comm}) for target rule {} (+{} descendants)",
                    rule.name,
                    added.len() - 1
                );
                roots.insert(
                    pid,
                    Root {
                        rule: rule.name.clone(),
                        comm,
                    },
                );
            }
            Err(e) => eprintln!("cost-probe: cannot trace pid {pid} ({comm}): {e}"),
        }
    }
}

fn ancestors(pid: u32) -> impl Iterator<Item = u32> {
    let mut cur = pid;
    std::iter::from_fn(move || {
        let p = procscan::ppid(cur).filter(|&p| p > 1 && p != cur)?;
        cur = p;
        Some(p)
    })
    .take(32)
}

/// Socket inodes listening on each port named by a port rule.
fn listening_inodes(rules: &[&TargetRule]) -> HashMap<u16, HashSet<u64>> {
    let mut out: HashMap<u16, HashSet<u64>> = HashMap::new();
    if rules.is_empty() {
        return out;
    }
    let mut entries = procfs::net::tcp().unwrap_or_default();
    entries.extend(procfs::net::tcp6().unwrap_or_default());
    for e in entries {
        if e.state == procfs::net::TcpState::Listen
            && rules.iter().any(|r| r.port == Some(e.local_address.port()))
        {
            out.entry(e.local_address.port())
                .or_default()
                .insert(e.inode);
        }
    }
    out
}

fn matches(rule: &TargetRule, p: &Process, listening: &HashMap<u16, HashSet<u64>>) -> bool {
    if let Some(re) = &rule.comm {
        let Ok(stat) = p.stat() else { return false };
        if !re.is_match(&stat.comm) {
            return false;
        }
    }
    if let Some(re) = &rule.cmdline {
        let Ok(cmd) = p.cmdline() else { return false };
        if cmd.is_empty() || !re.is_match(&cmd.join(" ")) {
            return false;
        }
    }
    if let Some(port) = rule.port {
        let Some(inodes) = listening.get(&port) else {
            return false;
        };
        let Ok(fds) = p.fd() else { return false };
        if !fds
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)))
        {
            return false;
        }
    }
    true
}
