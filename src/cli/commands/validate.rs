//! `taper validate FILE...`: load every file, report every problem, exit 1 if any is invalid.

use crate::cli::args::ValidateArgs;
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::model::stages::committed_secrets;
use crate::model::LoadError;

pub fn run(args: &ValidateArgs, printer: &Printer) -> ExitStatus {
    let mut status = ExitStatus::Success;
    for file in &args.files {
        let loaded = super::load_pipeline(file, &args.overrides, None, false);
        if args.json {
            let (record, file_status) = match &loaded {
                Ok(pipeline) => (
                    serde_json::json!({ "file": file, "ok": true, "pipeline": pipeline.name, "stages": pipeline.stages.len(), "errors": [] }),
                    ExitStatus::Success,
                ),
                Err(error) => (
                    serde_json::json!({ "file": file, "ok": false, "errors": error.to_json() }),
                    match error {
                        LoadError::Read { .. } => ExitStatus::Error,
                        LoadError::NotUtf8 { .. }
                        | LoadError::TooLarge { .. }
                        | LoadError::Invalid { .. } => ExitStatus::Failure,
                    },
                ),
            };
            printer.data(&format!("{record}\n"));
            if status != ExitStatus::Error && file_status != ExitStatus::Success {
                status = file_status;
            }
            continue;
        }
        match loaded {
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
