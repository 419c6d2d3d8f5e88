//! `cost-probe doctor [--json]`: what this host can trace and measure, and why not.
use std::process::ExitCode;

use crate::runtime::doctor::Report;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Prints the report; exit code 0 only when `attach` can work here.
#[must_use]
pub fn run(args: &DoctorArgs) -> ExitCode {
    let report = Report::new();
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("cost-probe: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render());
    }
    if report.tracing.attach_works {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
