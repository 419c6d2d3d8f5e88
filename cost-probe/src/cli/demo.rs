//! `cost-probe demo`: a sample streaming server, a small load, and the records.
use std::{io::Write, path::PathBuf};

use crate::{
    output::OutputTarget,
    pricing::Prices,
    report::{self, Aggregator, Input, ReportConfig},
    runtime::{
        RuntimeError,
        demo::{self, DemoConfig},
    },
};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Requests to send.
    #[arg(long, default_value_t = 24)]
    pub requests: u32,
    /// Concurrent client connections (keep-alive).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Rules directory (pricing, tags); the built-in defaults when absent.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Write the records to FILE (emptied first), the HTML report beside it (FILE with the
    /// extension `html`), and end with `cost-probe report`'s table of them; without it the
    /// records go to stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> Result<(), RuntimeError> {
    let rules = super::rules(args.rules.as_deref())?;
    let prices = Prices::from_rules(&rules, None);
    let output = match &args.output {
        // The file sink appends (for logrotate); a demo's file holds one run.
        Some(p) => std::fs::File::create(p)
            .map(|_| OutputTarget::File(p.clone()))
            .map_err(|source| RuntimeError::Open {
                target: p.display().to_string(),
                source,
            })?,
        None => OutputTarget::Stdout,
    };
    demo::run(DemoConfig {
        rules,
        requests: args.requests,
        concurrency: args.concurrency,
        output,
    })
    .await?;
    let Some(path) = args.output else {
        return Ok(());
    };
    let mut agg = Aggregator::new(ReportConfig {
        by: vec![
            report::GroupKey::Tag("endpoint".into()),
            report::GroupKey::Model,
        ],
        since: None,
        until: None,
        top: 3,
        prices,
        budgets: Vec::new(),
    })
    .with_views();
    report::read_inputs(&[Input::File(path.clone())], &mut agg)
        .map_err(|e| RuntimeError::Run(e.into()))?;
    let r = agg.finish();
    let html = path.with_extension("html");
    let page = report::html::page(&r).map_err(|e| RuntimeError::Run(e.into()))?;
    std::fs::write(&html, page).map_err(|source| RuntimeError::Open {
        target: html.display().to_string(),
        source,
    })?;
    let table = report::table(&r);
    let mut out = std::io::stdout().lock();
    match out.write_all(table.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(RuntimeError::Finish(e));
        }
        _ => {}
    }
    eprintln!(
        "demo: the records are in {p}, the HTML report in {h}; `cost-probe report {p} --by …` \
         regroups them",
        p = path.display(),
        h = html.display()
    );
    Ok(())
}

/// The demo's sample server (`cost-probe demo-server`).
pub async fn serve() -> Result<(), RuntimeError> {
    demo::serve().await
}
