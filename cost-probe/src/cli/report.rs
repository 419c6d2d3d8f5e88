//! `cost-probe report`: what each group of requests cost, from records already written.
use std::{io::Write, path::PathBuf, process::ExitCode};

use super::EXIT_CANNOT_START;
use crate::{
    pricing::Prices,
    report::{self, Aggregator, GroupKey, Input, ReportConfig, ReportError},
};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// NDJSON record files (gzip is detected), globs, or `-` for stdin (the default).
    pub files: Vec<String>,
    /// Group by these, comma-separated: `model`, `path`, `comm`, `method`, `status`, or any tag.
    #[arg(long, value_delimiter = ',', default_value = "model")]
    pub by: Vec<GroupKey>,
    /// Only records from this time on (RFC 3339, e.g. 2026-12-01T00:00:00Z or 2026-12-01 08:00:00).
    #[arg(long, value_parser = stamp)]
    pub since: Option<i64>,
    /// Only records before this time (RFC 3339).
    #[arg(long, value_parser = stamp)]
    pub until: Option<i64>,
    /// How many of the most expensive requests to list.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Write the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as one self-contained HTML page with charts (no script, no
    /// network) to this file; the table or JSON still goes to stdout.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Rules directory whose energy price, PUE and carbon intensity price the idle energy; the
    /// built-in defaults when absent (the requests carry their own prices).
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

fn stamp(s: &str) -> Result<i64, String> {
    report::record::unix_nanos(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 time"))
}

/// Exit 0 with the report, 2 on bad input (an unreadable file, a line that is not a record, bad
/// rules), 1 when the report cannot be written.
#[must_use]
pub fn run(args: &ReportArgs) -> ExitCode {
    match report(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => {
            eprintln!("cost-probe: {}", ReportError::Output(e));
            ExitCode::FAILURE
        }
        Err(Failure::Html(e)) => {
            eprintln!("cost-probe: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Input(e)) => {
            eprintln!("cost-probe: {e}");
            ExitCode::from(EXIT_CANNOT_START)
        }
    }
}

enum Failure {
    Input(String),
    Output(std::io::Error),
    /// The HTML page could not be drawn or written (exit 1).
    Html(String),
}

fn report(args: &ReportArgs) -> Result<(), Failure> {
    let input = |e: &dyn std::fmt::Display| Failure::Input(e.to_string());
    let rules = super::rules(args.rules.as_deref()).map_err(|e| input(&e))?;
    if let (Some(s), Some(u)) = (args.since, args.until)
        && s >= u
    {
        return Err(Failure::Input("--since must be before --until".into()));
    }
    let mut inputs = Vec::new();
    for f in &args.files {
        inputs.extend(Input::expand(f).map_err(|e| input(&e))?);
    }
    if inputs.is_empty() {
        inputs.push(Input::Stdin);
    }
    let agg = Aggregator::new(ReportConfig {
        by: args.by.clone(),
        since: args.since,
        until: args.until,
        top: args.top,
        prices: Prices::from_rules(&rules, None),
        budgets: rules.budgets.clone(),
    });
    let mut agg = if args.html.is_some() {
        agg.with_views()
    } else {
        agg
    };
    report::read_inputs(&inputs, &mut agg).map_err(|e| input(&e))?;
    let r = agg.finish();
    if let Some(path) = &args.html {
        let page = report::html::page(&r).map_err(|e| Failure::Html(e.to_string()))?;
        std::fs::write(path, page)
            .map_err(|e| Failure::Html(format!("writing {}: {e}", path.display())))?;
    }
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&r).expect("the report serializes");
        s.push('\n');
        s
    } else {
        report::table(&r)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(Failure::Output)
}
