//! One file per subcommand; each exposes `run(&Args, &Printer) -> ExitStatus`.

pub mod cache;
pub mod dag;
pub mod metrics;
pub mod plan;
pub mod run;
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

/// Loads the pipeline and opens the store, reporting failures; `Err` carries the exit status.
pub(crate) fn load_with_store(
    selection: &super::args::SelectionArgs,
    store: &std::path::Path,
    printer: &Printer,
) -> Result<(crate::model::Pipeline, crate::cache::Store), ExitStatus> {
    let pipeline = crate::model::load_file(&selection.file, &selection.overrides)
        .map_err(|error| report_load_error(error, printer))?;
    let store = crate::cache::Store::open(store).map_err(|error| {
        printer.diagnostic(error);
        ExitStatus::Error
    })?;
    Ok((pipeline, store))
}
