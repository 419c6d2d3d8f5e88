//! `cost-probe agent --rules DIR`: a daemon that finds its targets by rules.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    host::ProcFs,
    output::{OutputTarget, metrics, otlp::OtlpEndpoint},
    runtime::{
        RuntimeError, SessionConfig,
        agent::{self, AgentConfig, Signals},
    },
};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Rules directory: `[[target]]` entries say what to trace; prices, tags, budgets as for attach.
    #[arg(long)]
    pub rules: PathBuf,
    /// Prometheus endpoint (`off` to disable). Loopback by default: expose it deliberately.
    #[arg(long, default_value = metrics::DEFAULT_ADDR)]
    pub metrics: MetricsAddr,
    /// Where records go: a file (reopened on SIGHUP, for logrotate), `unix:PATH` (a listening
    /// unix stream socket, e.g. Vector's), or - for stdout.
    #[arg(long, default_value = "-")]
    pub output: OutputTarget,
    /// Export spans and metrics over OTLP/HTTP (protobuf, gzip) to this collector base URL,
    /// e.g. `http://127.0.0.1:4318` (`/v1/traces` and `/v1/metrics` are added). The standard
    /// `OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` apply.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// Energy sampling interval in milliseconds.
    #[arg(long = "interval", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub interval_ms: u64,
    /// How often /proc is scanned for new targets, in milliseconds.
    #[arg(long = "discover", default_value_t = 500)]
    pub discover_ms: u64,
}

/// `--metrics`: an address to serve Prometheus on, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    On(SocketAddr),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(Self::Off);
        }
        s.parse()
            .map(Self::On)
            .map_err(|e| format!("{e} (an address such as 127.0.0.1:9464, or off)"))
    }
}

pub async fn run(args: AgentArgs) -> Result<(), RuntimeError> {
    let config = AgentConfig {
        session: SessionConfig {
            rules: super::rules(Some(&args.rules))?,
            output: args.output,
            interval: Duration::from_millis(args.interval_ms),
            proc: ProcFs::default(),
            otlp: super::otlp(args.otlp_endpoint.as_ref())?,
        },
        rules_dir: args.rules,
        discover: Duration::from_millis(args.discover_ms),
    };
    let signals = Signals::install();
    let metrics = match args.metrics {
        MetricsAddr::Off => None,
        MetricsAddr::On(addr) => Some(agent::serve_metrics(addr, &config.session.rules).await?),
    };
    super::blocking(move || agent::run(&config, &signals, metrics)).await
}
