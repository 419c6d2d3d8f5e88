//! `cost-probe attach --pid PID`: trace one server (and its children) until told to stop.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::{
    host::ProcFs,
    output::OutputTarget,
    runtime::{
        RuntimeError, SessionConfig,
        attach::{self, AttachConfig},
    },
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
    pub output: OutputTarget,
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

impl AttachArgs {
    fn config(self) -> Result<AttachConfig, RuntimeError> {
        Ok(AttachConfig {
            session: SessionConfig {
                rules: super::rules(self.rules.as_deref())?,
                output: self.output,
                interval: Duration::from_millis(self.interval_ms),
                proc: ProcFs::default(),
            },
            pid: self.pid,
            record: self.record,
        })
    }
}

pub async fn run(args: AttachArgs) -> Result<(), RuntimeError> {
    let stop = Arc::new(AtomicBool::new(false));
    super::stop_on_signals(&stop);
    if let Some(secs) = args.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let config = args.config()?;
    super::blocking(move || attach::run(&config, &stop, None)).await
}
