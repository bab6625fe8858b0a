//! The command line: argument parsing, dispatch to subcommands, printing.
//!
//! Exit codes: 0 success, 1 an invalid pipeline or a failed run, 2 a usage error (bad
//! arguments, a missing file) or an internal error, 128 + signal when `run` was stopped by
//! SIGINT (130), SIGTERM (143) or SIGHUP (129).

pub mod args;
mod commands;
mod json;
pub mod printer;
mod progress;
mod signals;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use args::{Args, Command, OutputArgs};
use printer::Printer;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    /// The user's pipeline is invalid or a stage failed.
    Failure,
    /// Usage or internal error.
    Error,
    /// Stopped by this signal (SIGINT, SIGTERM, SIGHUP): exit 128 + signal, as shells do.
    Interrupted(i32),
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        match status {
            ExitStatus::Success => ExitCode::SUCCESS,
            ExitStatus::Failure => ExitCode::from(1),
            ExitStatus::Error => ExitCode::from(2),
            ExitStatus::Interrupted(signal) => {
                ExitCode::from(u8::try_from(128 + signal).unwrap_or(u8::MAX))
            }
        }
    }
}

/// Entry point of the `taper` binary.
pub fn main() -> ExitCode {
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
    // Only commands that run models get the allocator tuned for tensors: its never-trimmed
    // heap made `taper validate` of a 50,000-stage file hold a third more memory than it used.
    // Still before any thread exists (parsing and the hooks above start none), as it requires.
    if args.command.runs_models() {
        crate::ml::tune_runtime();
    }
    install_log_subscriber(args.output, color);
    run(args, &printer).into()
}

/// Sends `tracing` events (warnings such as an unreadable lock file being ignored) to stderr,
/// one compact line each. Without a subscriber they were silently dropped. Warnings show by
/// default, `-v` adds taper's debug messages, `-q` keeps only errors; `RUST_LOG` overrides.
fn install_log_subscriber(output: OutputArgs, color: bool) {
    let default = if output.quiet {
        "error"
    } else if output.verbose {
        "warn,taper=debug"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // `try_init` fails only when a subscriber is already installed, which then stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(color && std::io::stderr().is_terminal())
        .compact()
        .try_init();
}

/// Runs one parsed command.
pub fn run(args: Args, printer: &Printer) -> ExitStatus {
    match args.command {
        Command::Validate(args) => commands::validate::run(&args, printer),
        Command::Dag(args) => commands::dag::run(&args, printer),
        Command::Schema => commands::schema::run(printer),
        Command::Plan(args) => commands::plan::run(&args, printer),
        Command::Run(run_args) => commands::run::run(&run_args, args.output, printer),
        Command::Cache(args) => commands::cache::run(&args, printer),
        Command::Metrics(args) => commands::metrics::run(&args, printer),
        Command::Predict(args) => commands::predict::run(&args, printer),
        Command::Serve(args) => commands::serve::run(&args, printer),
        Command::Explain(args) => commands::explain::run(&args, printer),
        Command::Exp(args) => commands::exp::run(&args, printer),
        Command::Plots(args) => commands::plots::run(&args, printer),
        Command::Spec(args) => commands::spec::run(&args, printer),
        Command::Completions { shell } => commands::completions::run(shell, printer),
    }
}
