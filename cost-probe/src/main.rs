//! The cost-probe command line.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cost_probe::cli;

/// Prices every request an inference server handles, in joules and dollars, with eBPF.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run as a daemon: find targets by rules, trace them all, serve Prometheus metrics.
    Agent(cli::agent::AgentArgs),
    /// Trace one server process (and its children) and write request records.
    Attach(cli::attach::AttachArgs),
    /// Start a sample streaming server and a small load, attach, and print the records.
    Demo(cli::demo::DemoArgs),
    /// The demo's sample server (used by `demo`).
    #[command(hide = true)]
    DemoServer,
    /// What this host can trace and measure, and why not (exit code 0 when attach can work).
    Doctor(cli::doctor::DoctorArgs),
    /// What each model, team or endpoint cost, from records already written (files or stdin).
    Report(cli::report::ReportArgs),
    /// A live table of what each model (or `--by` group) costs now, for one server process.
    Top(cli::top::TopArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return cli::usage_error(&e),
    };
    match cli.cmd {
        Cmd::Attach(a) => cli::exit_code(cli::attach::run(a).await),
        Cmd::Agent(a) => cli::exit_code(cli::agent::run(a).await),
        Cmd::Doctor(a) => cli::doctor::run(&a),
        Cmd::Demo(a) => cli::exit_code(cli::demo::run(a).await),
        Cmd::Report(a) => cli::report::run(&a),
        Cmd::Top(a) => cli::top::run(a).await,
        Cmd::DemoServer => cli::exit_code(cli::demo::serve().await),
    }
}
