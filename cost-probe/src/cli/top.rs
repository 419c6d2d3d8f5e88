//! `cost-probe top --pid PID`: attach, and show what each group costs now, live.
use std::{io::IsTerminal, process::ExitCode, time::Duration};

use super::{
    EXIT_CANNOT_START,
    attach::{TargetArgs, parse_duration, stop_flag},
};
use crate::{
    output::OutputTarget,
    pricing::Prices,
    report::GroupKey,
    runtime::{
        RuntimeError,
        top::{self, TopConfig},
    },
};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub target: TargetArgs,
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
}

impl TopArgs {
    fn config(self) -> Result<TopConfig, RuntimeError> {
        let attach = self
            .target
            .config(self.output.unwrap_or(OutputTarget::Discard))?;
        let prices = Prices::from_rules(&attach.session.rules, None);
        Ok(TopConfig {
            attach,
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
