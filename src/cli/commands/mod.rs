//! One file per subcommand; each exposes `run(&Args, &Printer) -> ExitStatus`.

pub mod cache;
pub mod completions;
pub mod dag;
pub mod exp;
pub mod explain;
pub mod metrics;
pub mod plan;
pub mod plots;
pub mod predict;
pub mod run;
pub mod schema;
pub mod serve;
pub mod spec;
pub mod validate;

use std::path::{Path, PathBuf};

use super::args::{RemoteArgs, StoreArgs};
use super::printer::Printer;
use super::ExitStatus;
use crate::cache::locate::{default_store_dir, project_root_of};
use crate::cache::remote::{configured_remote, Remote, RemoteError};
use crate::cache::Store;
use crate::data::sources::SourceResolver;
use crate::model::{LoadError, Override, Pipeline};

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

/// Ends a command that prints `text` on success: the data to stdout, or the error rendered with
/// the exit status `status_of` gives it.
pub(crate) fn finish<E: miette::Diagnostic + Send + Sync + 'static>(
    result: Result<String, E>,
    printer: &Printer,
    status_of: impl FnOnce(&E) -> ExitStatus,
) -> ExitStatus {
    match result {
        Ok(text) => {
            printer.data(&text);
            ExitStatus::Success
        }
        Err(error) => {
            let status = status_of(&error);
            printer.diagnostic(error);
            status
        }
    }
}

/// Loads a pipeline file, fetching published specs (`use: { url | pip, blake3 }`) into the
/// downloads bucket of the store `store` names, else `TAPER_STORE`'s, else the project's (the
/// commands without `--store` still find the specs a `run` fetched). With `read_only`
/// (`--read-only-store`) a spec not yet downloaded is an error instead.
pub(crate) fn load_pipeline(
    file: &Path,
    overrides: &[Override],
    store: Option<&Path>,
    read_only: bool,
) -> Result<Pipeline, LoadError> {
    let store_root = store
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("TAPER_STORE").map(PathBuf::from))
        .unwrap_or_else(|| default_store_dir(Some(file)));
    let root = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let resolver = SourceResolver::new(root, &store_root);
    let resolver = if read_only {
        resolver.reading_only()
    } else {
        resolver
    };
    crate::model::load_file_with(file, overrides, &resolver)
}

/// Loads the pipeline and opens the store, reporting failures; `Err` carries the exit status.
pub(crate) fn load_with_store(
    selection: &super::args::SelectionArgs,
    store: &StoreArgs,
    printer: &Printer,
) -> Result<(crate::model::Pipeline, Store), ExitStatus> {
    let pipeline = load_pipeline(
        &selection.file,
        &selection.overrides,
        store.store.as_deref(),
        store.read_only_store,
    )
    .map_err(|error| report_load_error(error, printer))?;
    let store = open_store(store, Some(selection.file.as_path()), printer)?;
    Ok((pipeline, store))
}

/// Opens the store `args` names, or the project's (found from `pipeline_file`, else from the
/// current directory); a store that cannot be opened is a usage error (exit 2).
pub(crate) fn open_store(
    args: &StoreArgs,
    pipeline_file: Option<&Path>,
    printer: &Printer,
) -> Result<Store, ExitStatus> {
    let dir = args
        .store
        .clone()
        .unwrap_or_else(|| default_store_dir(pipeline_file));
    let opened = if args.read_only_store {
        Store::open_read_only(&dir)
    } else {
        Store::open(&dir)
    };
    opened.map_err(|error| {
        printer.diagnostic(error);
        ExitStatus::Error
    })
}

/// Opens the remote cache `args` names, or the project's (`remote:` in `.taper/config.yaml`);
/// `Ok(None)` when none is configured. A remote that cannot be opened is a usage error.
pub(crate) fn open_remote(
    args: &RemoteArgs,
    pipeline_file: Option<&Path>,
    printer: &Printer,
) -> Result<Option<Remote>, ExitStatus> {
    let report = |error: RemoteError| {
        printer.diagnostic(error);
        ExitStatus::Error
    };
    let url = match &args.remote {
        Some(url) => Some(url.clone()),
        None => configured_remote(&project_root_of(pipeline_file)).map_err(report)?,
    };
    url.map(|url| Remote::open(&url).map_err(report))
        .transpose()
}
