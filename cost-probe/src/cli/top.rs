//! `cost-probe top --pid PID`: attach, and show what each group costs now, live.
use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use super::{
    EXIT_CANNOT_START,
    attach::{parse_duration, stop_flag},
};
use crate::{
    host::ProcFs,
    output::{OutputTarget, otlp::OtlpEndpoint},
    pricing::Prices,
    report::GroupKey,
    runtime::{
        RuntimeError, SessionConfig,
        attach::AttachConfig,
        top::{self, TopConfig},
    },
};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Process to trace; its descendants (now and later) are traced too.
    #[arg(long)]
    pub pid: u32,
    /// Group by these, comma-separated, as `report --by`: `model`, `path`, `comm`, `method`,
    /// `status`, or any tag.
    #[arg(long, value_delimiter = ',', default_value = "model")]
    pub by: Vec<GroupKey>,
    /// Stop after this many seconds, fractions allowed (default: until q, Ctrl-C, a signal, or
    /// the target exits).
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Option<Duration>,
    /// Also write every record here, as attach does: a file path or `unix:SOCKET` (stdout is
    /// the view's). Without it, records go nowhere but the view, and the summary to stdout.
    #[arg(long)]
    pub output: Option<OutputTarget>,
    /// Every raw kernel event as JSON lines here (fixtures, bug reports).
    #[arg(long, hide = true)]
    pub record: Option<PathBuf>,
    /// Rules directory (prices, PUE, carbon, tags); built-in defaults when absent.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Export spans and metrics over OTLP/HTTP to this collector base URL (see `attach`).
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// Energy sampling interval in milliseconds.
    #[arg(long = "interval", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub interval_ms: u64,
}

impl TopArgs {
    fn config(self) -> Result<TopConfig, RuntimeError> {
        let rules = super::rules(self.rules.as_deref())?;
        let prices = Prices::from_rules(&rules, None);
        Ok(TopConfig {
            attach: AttachConfig {
                session: SessionConfig {
                    rules,
                    output: self.output.unwrap_or(OutputTarget::Discard),
                    interval: Duration::from_millis(self.interval_ms),
                    proc: ProcFs::default(),
                    otlp: super::otlp(self.otlp_endpoint.as_ref())?,
                },
                pid: self.pid,
                record: self.record,
            },
            by: self.by,
            prices,
        })
    }
}

/// Exit 2 when stdout is not a terminal or `--output -` asks for it; otherwise attach's codes.
pub async fn run(args: TopArgs) -> ExitCode {
    if !std::io::stdout().is_terminal() {
        eprintln!(
            "cost-probe: top draws on a terminal and stdout is not one; use attach for records"
        );
        return ExitCode::from(EXIT_CANNOT_START);
    }
    if args.output == Some(OutputTarget::Stdout) {
        eprintln!("cost-probe: top draws on stdout; --output needs a file or unix:SOCKET");
        return ExitCode::from(EXIT_CANNOT_START);
    }
    let stop = stop_flag(args.duration);
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => return super::exit_code(Err(e)),
    };
    super::exit_code(super::blocking(move || top::run(&config, &stop)).await)
}
