//! `taper validate FILE...`: load every file, report every problem, exit 1 if any is invalid.

use crate::cli::args::ValidateArgs;
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::model::load_file;
use crate::model::stages::committed_secrets;

pub fn run(args: &ValidateArgs, printer: &Printer) -> ExitStatus {
    let mut status = ExitStatus::Success;
    for file in &args.files {
        match load_file(file, &args.overrides) {
            Ok(pipeline) => {
                printer.status(&format!(
                    "ok {}: pipeline `{}`, {} stage{}",
                    file.display(),
                    pipeline.name,
                    pipeline.stages.len(),
                    if pipeline.stages.len() == 1 { "" } else { "s" }
                ));
                for warning in committed_secrets(file, &pipeline) {
                    printer.diagnostic(warning);
                }
            }
            Err(error) => {
                // A usage error (unreadable file) outranks an invalid pipeline.
                let file_status = super::report_load_error(error, printer);
                if status != ExitStatus::Error {
                    status = file_status;
                }
            }
        }
    }
    status
}
