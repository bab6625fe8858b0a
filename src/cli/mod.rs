//! The command line: argument parsing, dispatch to subcommands, printing.
//!
//! Exit codes: 0 success, 1 an invalid pipeline (or, later, a failed run), 2 a usage error
//! (bad arguments, a missing file) or an internal error.

pub mod args;
mod commands;
pub mod printer;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use args::{Args, Command};
use printer::Printer;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    /// The user's pipeline is invalid or a stage failed.
    Failure,
    /// Usage or internal error.
    Error,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        match status {
            ExitStatus::Success => ExitCode::SUCCESS,
            ExitStatus::Failure => ExitCode::from(1),
            ExitStatus::Error => ExitCode::from(2),
        }
    }
}

/// Entry point of the `taper` binary.
pub fn main() -> ExitCode {
    crate::ml::tune_runtime();
    let printer = Printer::from_env();
    let color = printer.color;
    // Installed once, here: every diagnostic rendered by the printer goes through it.
    // Without NO_COLOR, miette decides (colour only on a terminal); forcing it on would put
    // escape codes into redirected output.
    let _ = miette::set_hook(Box::new(move |_| {
        let options = miette::MietteHandlerOpts::new();
        let options = if color { options } else { options.color(false) };
        Box::new(options.build())
    }));
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitStatus::Error.into()
            } else {
                ExitStatus::Success.into()
            };
        }
    };
    run(args, &printer).into()
}

/// Runs one parsed command.
pub fn run(args: Args, printer: &Printer) -> ExitStatus {
    match args.command {
        Command::Validate(args) => commands::validate::run(&args, printer),
        Command::Dag(args) => commands::dag::run(&args, printer),
        Command::Schema => commands::schema::run(printer),
        Command::Plan(args) => commands::plan::run(&args, printer),
        Command::Run(args) => commands::run::run(&args, printer),
        Command::Cache(args) => commands::cache::run(&args, printer),
        Command::Metrics(args) => commands::metrics::run(&args, printer),
    }
}
