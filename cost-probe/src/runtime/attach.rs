//! `attach`: trace one process and its descendants until told to stop or it exits.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use super::{Control, RuntimeError, Session, SessionConfig};
use crate::output::Sink;

/// A validated `attach` invocation.
pub struct AttachConfig {
    pub session: SessionConfig,
    pub pid: u32,
    /// Every raw kernel event as a JSON line here (fixtures, bug reports).
    pub record: Option<PathBuf>,
}

/// Ends the run when every traced process has exited: the root, and the processes it forked
/// (an nginx master killed with SIGKILL leaves its workers serving, and they are still traced).
pub struct Attach {
    pid: u32,
    root_gone: bool,
}

impl Attach {
    /// Traced processes still alive, other than the root.
    fn survivors(&self, session: &Session) -> usize {
        session
            .probe
            .targets()
            .into_iter()
            .filter(|&t| t != self.pid && session.proc.alive(t))
            .count()
    }
}

impl Control for Attach {
    fn after_drain(&mut self, session: &mut Session, exited: &[u32], check: bool) -> bool {
        if self.root_gone {
            let over = check && self.survivors(session) == 0;
            if over {
                eprintln!("cost-probe: every traced process exited");
            }
            return over;
        }
        if !(exited.contains(&self.pid) || (check && !session.proc.alive(self.pid))) {
            return false;
        }
        self.root_gone = true;
        match self.survivors(session) {
            0 => {
                eprintln!("cost-probe: pid {} exited", self.pid);
                true
            }
            n => {
                eprintln!(
                    "cost-probe: pid {} exited; still tracing the {n} process(es) it left running",
                    self.pid
                );
                false
            }
        }
    }
}

/// Loads the probe, attaches to `config.pid` and runs the consumer loop on this (blocking)
/// thread until `stop`; sets `ready` once attached.
pub fn run(
    config: &AttachConfig,
    stop: &AtomicBool,
    ready: Option<&AtomicBool>,
) -> Result<(), RuntimeError> {
    let (session, mut control) = start(config, Vec::new())?;
    if let Some(r) = ready {
        r.store(true, Ordering::Relaxed);
    }
    session.run(&mut control, stop)
}

/// Opens the outputs (NDJSON, then `extra` sinks), loads the probe and attaches to
/// `config.pid`: the session and the control that ends it when the target exits.
pub fn start(
    config: &AttachConfig,
    extra: Vec<Box<dyn Sink>>,
) -> Result<(Session, Attach), RuntimeError> {
    let pid = config.pid;
    let proc = &config.session.proc;
    if !proc.alive(pid) {
        return Err(RuntimeError::NoProcess(pid));
    }
    // A thread id traces nothing (the kernel's target table holds processes), and a kernel
    // thread serves no requests: both are refused before the probe loads.
    if let Some(tgid) = proc.tgid(pid).filter(|&t| t != pid) {
        return Err(RuntimeError::Thread { pid, tgid });
    }
    if proc.kernel_thread(pid) {
        return Err(RuntimeError::KernelThread {
            pid,
            comm: proc.comm(pid),
        });
    }
    let recorder = match &config.record {
        Some(p) => Some(
            Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
                |source| RuntimeError::Open {
                    target: p.display().to_string(),
                    source,
                },
            )?)) as Box<dyn std::io::Write + Send>,
        ),
        None => None,
    };
    let mut session = Session::open(&config.session, extra, false, recorder)?;
    for s in session.tracer.energy_sources() {
        eprintln!("cost-probe: energy from {s}");
    }
    let added = session
        .add_process(pid, None)
        .map_err(RuntimeError::Attach)?;
    eprintln!(
        "cost-probe: tracing pid {pid} ({}) and {} descendant process(es); Ctrl-C to stop",
        session.proc.comm(pid),
        added.len() - 1
    );
    Ok((
        session,
        Attach {
            pid,
            root_gone: false,
        },
    ))
}
