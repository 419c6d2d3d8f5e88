//! `cost-probe attach --pid PID`: trace one server (and its children) until told to stop.
use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    energy::Roots,
    meter::Meter,
    output::{Sink, record_file},
    pipeline::Pipeline,
    probe::{
        Probe, ProbeError,
        procscan::{self, FdKind},
    },
    rules::Rules,
    units::monotonic_now,
};

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Process to trace; its descendants (now and later) are traced too.
    #[arg(long)]
    pub pid: u32,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM or the target exits).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Where records go: a file path, or - for stdout.
    #[arg(long, default_value = "-")]
    pub output: String,
    /// Also write every raw kernel event as JSON lines here (for fixtures and bug reports;
    /// contains payload bytes, so treat it as sensitive).
    #[arg(long, hide = true)]
    pub record: Option<PathBuf>,
    /// Rules directory (prices, PUE, carbon, tags); built-in defaults when absent.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Energy sampling interval in milliseconds (NVML's energy counter updates every ~100 ms).
    #[arg(long = "interval", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub interval_ms: u64,
}

/// Exit code for "cannot attach" (no such pid, no privileges, no eBPF object).
pub const EXIT_CANNOT_ATTACH: u8 = 2;

pub async fn run(args: AttachArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    crate::cli::stop_on_signals(&stop);
    if let Some(secs) = args.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    match tokio::task::spawn_blocking(move || trace(&args, &stop, None)).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cost-probe: tracer thread failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cannot_attach(msg: &str) -> ExitCode {
    eprintln!("cost-probe: {msg}");
    ExitCode::from(EXIT_CANNOT_ATTACH)
}

/// Loads the probe and runs the consumer loop on this (blocking) thread; sets `ready` once
/// attached.
pub fn trace(args: &AttachArgs, stop: &AtomicBool, ready: Option<&AtomicBool>) -> ExitCode {
    let pid = args.pid;
    if !procscan::alive(pid) {
        return cannot_attach(&format!("no process with pid {pid}"));
    }
    let rules = match &args.rules {
        Some(dir) => Rules::load_dir(dir),
        None => Rules::builtin(),
    };
    let rules = match rules {
        Ok(r) => r,
        Err(e) => return cannot_attach(&format!("rules: {e}")),
    };
    let mut probe = match Probe::load() {
        Ok(p) => p,
        Err(e @ (ProbeError::Privileges(_) | ProbeError::NoObject)) => {
            return cannot_attach(&e.to_string());
        }
        Err(e) => return cannot_attach(&format!("cannot attach: {e}")),
    };
    let sink = match Sink::new(&args.output) {
        Ok(s) => s,
        Err(e) => return cannot_attach(&format!("cannot open {}: {e}", args.output)),
    };
    let record = match &args.record {
        Some(p) => match record_file(p) {
            Ok(f) => Some(Box::new(f) as Box<dyn std::io::Write + Send>),
            Err(e) => return cannot_attach(&format!("cannot open {}: {e}", p.display())),
        },
        None => None,
    };
    let mut pipe = Pipeline::new(sink, record);
    let mut meter = Meter::new(
        &rules,
        Duration::from_millis(args.interval_ms),
        Roots::default(),
    );
    for s in meter.sources().iter().filter(|s| s.used) {
        eprintln!("cost-probe: energy from {}: {}", s.source, s.message);
    }
    meter.add_target(pid);
    pipe.meter = Some(meter);
    let start = monotonic_now().0;
    let targets = match add_targets(&mut probe, &mut pipe, pid) {
        Ok(added) => {
            if let Some(m) = pipe.meter.as_mut() {
                for &t in &added {
                    m.add_target(t);
                }
            }
            added.len()
        }
        Err(e) => return cannot_attach(&format!("cannot attach: {e}")),
    };
    eprintln!(
        "cost-probe: tracing pid {pid} ({}) and {} descendant process(es); Ctrl-C to stop",
        procscan::comm(pid),
        targets - 1
    );
    if let Some(r) = ready {
        r.store(true, Ordering::Relaxed);
    }
    match consume(&mut probe, &mut pipe, pid, stop) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("cost-probe: {e}");
            return ExitCode::FAILURE;
        }
    }
    let now = monotonic_now().0;
    if let Err(e) = probe
        .take_lost()
        .map_err(std::io::Error::other)
        .and_then(|n| pipe.lost(n, now))
        .and_then(|()| pipe.finish(start, now))
    {
        eprintln!("cost-probe: writing records: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Adds the target and its descendants and the connections they already hold (a syscall a
/// thread is blocked in needs nothing: the exit program reads its arguments from the saved
/// registers). Returns the tgids added.
pub fn add_targets(
    probe: &mut Probe,
    pipe: &mut Pipeline,
    pid: u32,
) -> Result<Vec<u32>, ProbeError> {
    // The fork tracepoint is live, so children forked after their parent is added are caught;
    // a second scan catches those forked while the first one ran.
    let mut added = Vec::new();
    for _ in 0..2 {
        for t in procscan::descendants(pid) {
            if !added.contains(&t) {
                probe.add_target(t)?;
                added.push(t);
            }
        }
    }
    let id = monotonic_now().0;
    for &t in &added {
        for (conn, local, peer) in procscan::existing_conns(t, id) {
            probe.add_conn(conn)?;
            pipe.existing_conn(conn, local, peer);
        }
    }
    Ok(added)
}

/// One pass of the consumer: drain the ring (waiting up to 10 ms unless stopping), classify
/// accepts the kernel could not, emit finished spans, and sample energy when due.
pub fn drain_once(
    probe: &mut Probe,
    pipe: &mut Pipeline,
    stopping: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    probe.poll(Duration::from_millis(if stopping { 0 } else { 10 }), |b| {
        pipe.on_record(b);
    })?;
    for conn in pipe.take_unclassified() {
        match procscan::classify(conn.tgid, conn.fd) {
            FdKind::Tcp { local, peer } => pipe.builder.set_addrs(conn, local, peer),
            FdKind::NotTcp => {
                probe.forget_conn(conn);
                pipe.builder.forget(conn);
            }
            // Closed already: its close event ends it.
            FdKind::Gone => {}
        }
    }
    // The kernel filters data syscalls by connection alone (no process check), so entries of a
    // process that exited must go before its pid can be reused.
    for conn in pipe.builder.take_ended_by_exit() {
        probe.forget_conn(conn);
    }
    pipe.emit()?;
    pipe.tick(monotonic_now().0)?;
    Ok(())
}

/// Drains the ring buffer until stopped, the target exits, or the reader goes away.
fn consume(
    probe: &mut Probe,
    pipe: &mut Pipeline,
    pid: u32,
    stop: &AtomicBool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut last_check = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        drain_once(probe, pipe, stopping)?;
        let root_exited = std::mem::take(&mut pipe.exited).contains(&pid);
        let check = last_check.elapsed() >= Duration::from_secs(1);
        if check || stopping || root_exited {
            last_check = Instant::now();
            pipe.lost(probe.take_lost()?, monotonic_now().0)?;
        }
        if root_exited || (check && !procscan::alive(pid)) {
            eprintln!("cost-probe: pid {pid} exited");
            return Ok(());
        }
        if stopping || pipe.sink.closed {
            return Ok(());
        }
        pipe.sink.flush()?;
    }
}
