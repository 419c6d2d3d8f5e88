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
    output::{OutputTarget, otlp::OtlpEndpoint},
    runtime::{
        RuntimeError, SessionConfig,
        attach::{self, AttachConfig},
    },
};

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Stop after this many seconds, fractions allowed, at most a year (31536000)
    /// (default: until SIGINT, SIGTERM or SIGHUP, or the target exits).
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Option<Duration>,
    /// Where records go: a file path, or - for stdout.
    #[arg(long, default_value = "-")]
    pub output: OutputTarget,
}

/// What to trace and how: shared by `attach` and `top`.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// Process to trace; its descendants (now and later) are traced too.
    #[arg(long)]
    pub pid: u32,
    /// Also write every raw kernel event as JSON lines here (for fixtures and bug reports;
    /// contains payload bytes, so treat it as sensitive).
    #[arg(long, hide = true)]
    pub record: Option<PathBuf>,
    /// Rules directory (prices, PUE, carbon, tags); built-in defaults when absent.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Export spans and metrics over OTLP/HTTP (protobuf, gzip) to this collector base URL,
    /// e.g. `http://127.0.0.1:4318` (`/v1/traces` and `/v1/metrics` are added). The standard
    /// `OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` apply.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// Energy sampling interval in milliseconds (NVML's energy counter updates every ~100 ms).
    #[arg(long = "interval", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub interval_ms: u64,
}

impl TargetArgs {
    /// The attach configuration with records going to `output`.
    pub(super) fn config(self, output: OutputTarget) -> Result<AttachConfig, RuntimeError> {
        Ok(AttachConfig {
            session: SessionConfig {
                rules: super::rules(self.rules.as_deref())?,
                output,
                interval: Duration::from_millis(self.interval_ms),
                proc: ProcFs::default(),
                otlp: super::otlp(self.otlp_endpoint.as_ref())?,
            },
            pid: self.pid,
            record: self.record,
        })
    }
}

/// The longest `--duration`: a year. Anything longer is a typo, and `Duration` (and tokio's
/// timer) cannot hold every finite float anyway.
pub const MAX_DURATION: Duration = Duration::from_hours(365 * 24);

/// `--duration`: seconds, finite, above zero and at most [`MAX_DURATION`].
///
/// # Errors
/// Says what is wrong with the value, in one line.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds".to_owned())?;
    if !secs.is_finite() {
        return Err("the number of seconds must be finite".into());
    }
    if secs <= 0.0 {
        return Err("the number of seconds must be above 0".into());
    }
    let max = MAX_DURATION.as_secs();
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("at most {max} seconds (a year)"))
}

/// The flag a traced run stops on: SIGINT, SIGTERM, SIGHUP, or `duration` elapsed.
pub(super) fn stop_flag(duration: Option<Duration>) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    super::stop_on_signals(&stop);
    // A hangup (the terminal closed, an ssh session dropped) ends the run as SIGINT does:
    // flushed, with its summary. Without a handler it killed the process (exit 129).
    crate::runtime::on_signals(&[(tokio::signal::unix::SignalKind::hangup(), stop.clone())]);
    if let Some(d) = duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    stop
}

pub async fn run(args: AttachArgs) -> Result<(), RuntimeError> {
    let stop = stop_flag(args.duration);
    let config = args.target.config(args.output)?;
    super::blocking(move || attach::run(&config, &stop, None)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (#10.4): `--duration=-1`, `inf`, `NaN` and `1e300` panicked in a tokio
    /// worker (`cannot convert float seconds to Duration`) and the run ignored the duration.
    #[test]
    fn duration_rejects_negative_infinite_nan_and_huge_seconds() {
        for bad in [
            "-1", "0", "-0", "inf", "-inf", "NaN", "1e300", "31536001", "", "ten",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        assert_eq!(
            parse_duration("1e300").unwrap_err(),
            "at most 31536000 seconds (a year)"
        );
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("31536000"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("0.001"), Ok(Duration::from_millis(1)));
    }
}
