//! One file per subcommand; each exposes `run(&Args, &Printer) -> ExitStatus`.

pub mod dag;
pub mod schema;
pub mod validate;

use super::printer::Printer;
use super::ExitStatus;
use crate::model::LoadError;

/// Reports a load error; a file that cannot be read is a usage error, an invalid one a failure.
pub(crate) fn report_load_error(error: LoadError, printer: &Printer) -> ExitStatus {
    let status = match error {
        LoadError::Read { .. } => ExitStatus::Error,
        LoadError::NotUtf8 { .. } | LoadError::TooLarge { .. } | LoadError::Invalid { .. } => {
            ExitStatus::Failure
        }
    };
    printer.diagnostic(error);
    status
}
