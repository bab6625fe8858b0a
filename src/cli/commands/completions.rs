//! `taper completions SHELL`: a completion script on stdout, generated from the clap
//! definitions in `cli::args`, so it never lists a flag that no longer exists.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::args::Args;
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;

pub fn run(shell: Shell, printer: &Printer) -> ExitStatus {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "taper", &mut script);
    printer.data(&String::from_utf8_lossy(&script));
    ExitStatus::Success
}
