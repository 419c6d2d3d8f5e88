//! `cost-probe demo`: a sample streaming server, a small load, and the records.
use std::path::PathBuf;

use crate::runtime::{
    RuntimeError,
    demo::{self, DemoConfig},
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
}

pub async fn run(args: DemoArgs) -> Result<(), RuntimeError> {
    demo::run(DemoConfig {
        rules: super::rules(args.rules.as_deref())?,
        requests: args.requests,
        concurrency: args.concurrency,
    })
    .await
}

/// The demo's sample server (`cost-probe demo-server`).
pub async fn serve() -> Result<(), RuntimeError> {
    demo::serve().await
}
