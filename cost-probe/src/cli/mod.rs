//! The command line: arguments become a validated config, then one call into the runtime.
//! One file per subcommand; [`exit_code`] is the one place errors become exit codes.
pub mod agent;
pub mod attach;
pub mod demo;
pub mod doctor;
pub mod report;
pub mod top;

use std::{path::Path, process::ExitCode};

use crate::{
    output::otlp::{OtlpConfig, OtlpEndpoint},
    rules::Rules,
    runtime::{self, RuntimeError},
};

/// Exit code for bad input and "cannot attach" (no such pid, no privileges, no eBPF object).
pub const EXIT_CANNOT_START: u8 = 2;

/// One line on stderr for an error; 2 when the run never started, 1 when it failed later.
#[must_use]
pub fn exit_code(result: Result<(), RuntimeError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cost-probe: {e}");
            if e.before_start() {
                ExitCode::from(EXIT_CANNOT_START)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A command line clap refused. A bad value (`--duration=-1`, `--interval 5`) is one line on
/// stderr, `cost-probe: invalid value …`, and exit code 2; anything else (help, version, a
/// missing or unknown argument) is printed the way clap prints it, with clap's exit code.
#[must_use]
pub fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    eprintln!(
        "cost-probe: {}",
        first.strip_prefix("error: ").unwrap_or(first)
    );
    ExitCode::from(EXIT_CANNOT_START)
}

/// `--otlp-endpoint` and the `OTEL_*` variables, validated (a bad value: one line, exit 2).
fn otlp(flag: Option<&OtlpEndpoint>) -> Result<Option<OtlpConfig>, RuntimeError> {
    Ok(OtlpConfig::from_env(flag, |k| std::env::var(k).ok())?)
}

/// `--rules DIR`, or the built-in rules.
fn rules(dir: Option<&Path>) -> Result<Rules, RuntimeError> {
    Ok(match dir {
        Some(d) => Rules::load_dir(d)?,
        None => Rules::builtin()?,
    })
}

/// Runs a blocking runtime call on tokio's blocking pool (the consumer thread).
async fn blocking(
    f: impl FnOnce() -> Result<(), RuntimeError> + Send + 'static,
) -> Result<(), RuntimeError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(RuntimeError::Run(
            format!("tracer thread failed: {e}").into(),
        ))
    })
}

pub use runtime::stop_on_signals;
