//! The command line: arguments become a validated config, then one call into the runtime.
//! One file per subcommand; [`exit_code`] is the one place errors become exit codes.
pub mod agent;
pub mod attach;
pub mod demo;
pub mod doctor;

use std::{path::Path, process::ExitCode};

use crate::{
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
