//! The command line: argument parsing, dispatch to subcommands, printing.
use std::process::ExitCode;

/// Entry point of the `taper` binary.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
