//! `attach`: trace one process and its descendants until told to stop or it exits.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use super::{Control, RuntimeError, Session, SessionConfig};

/// A validated `attach` invocation.
pub struct AttachConfig {
    pub session: SessionConfig,
    pub pid: u32,
    /// Every raw kernel event as a JSON line here (fixtures, bug reports).
    pub record: Option<PathBuf>,
}

/// Ends the run when the traced root process exits.
pub struct Attach {
    pid: u32,
}

impl Control for Attach {
    fn after_drain(&mut self, session: &mut Session, exited: &[u32], check: bool) -> bool {
        let gone = exited.contains(&self.pid) || (check && !session.proc.alive(self.pid));
        if gone {
            eprintln!("cost-probe: pid {} exited", self.pid);
        }
        gone
    }
}

/// Loads the probe, attaches to `config.pid` and runs the consumer loop on this (blocking)
/// thread until `stop`; sets `ready` once attached.
pub fn run(
    config: &AttachConfig,
    stop: &AtomicBool,
    ready: Option<&AtomicBool>,
) -> Result<(), RuntimeError> {
    let pid = config.pid;
    if !config.session.proc.alive(pid) {
        return Err(RuntimeError::NoProcess(pid));
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
    let mut session = Session::open(&config.session, Vec::new(), false, recorder)?;
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
    if let Some(r) = ready {
        r.store(true, Ordering::Relaxed);
    }
    session.run(&mut Attach { pid }, stop)
}
