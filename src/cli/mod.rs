//! The command line: argument parsing, dispatch to subcommands, printing.
//!
//! (exec branch: a minimal dispatcher for `plan`, `run` and `cache`; the spec branch owns the
//! full CLI, into which these subcommands merge as one enum variant each.)

pub mod commands;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// taper: a declarative, cached, reproducible pipeline engine for fine-tuning models.
#[derive(Debug, Parser)]
#[command(name = "taper", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show which stages are cached and which will run, and why.
    Plan(commands::plan::PlanArgs),
    /// Run the stages whose inputs changed.
    Run(commands::run::RunArgs),
    /// Inspect and maintain the content-addressed store.
    Cache(commands::cache::CacheArgs),
}

/// How a command ended: 0 success, 1 a failed run or invalid input, 2 usage or internal error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    Failure,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TAPER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let result = match args.command {
        Command::Plan(args) => commands::plan::run(&args),
        Command::Run(args) => commands::run::run(&args),
        Command::Cache(args) => commands::cache::run(&args),
    };
    match result {
        Ok(status) => status.into(),
        Err(report) => {
            let _ = writeln!(std::io::stderr(), "{report:?}");
            ExitStatus::Failure.into()
        }
    }
}
