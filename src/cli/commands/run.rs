//! `taper run FILE [STAGE...] [--downstream] [--force STAGE] [-S stage.key=value] [-j N]
//! [--dry-run]`: status lines on stderr as stages finish; each failure rendered with its log
//! path and last lines; exit 1 when any stage failed or the lock file could not be written,
//! 128 + signal when stopped by SIGINT, SIGTERM or SIGHUP (see `cli::signals`).

use crate::cli::args::{OutputArgs, RunArgs};
use crate::cli::printer::Printer;
use crate::cli::progress::RunDisplay;
use crate::cli::ExitStatus;
use crate::exec::interrupt::{signal_name, STAGE_PROCESSES};
use crate::exec::{report, Engine, ExecError, LocalExecutor, RunOptions, StageStatus};

pub fn run(args: &RunArgs, output: OutputArgs, printer: &Printer) -> ExitStatus {
    let (pipeline, store) = match super::load_with_store(&args.selection, &args.store, printer) {
        Ok(loaded) => loaded,
        Err(status) => return status,
    };
    let executor = LocalExecutor::new(crate::stages::runner_for);
    let engine = match Engine::new(&pipeline, &store, &executor) {
        Ok(engine) => engine,
        Err(error) => {
            printer.diagnostic(error);
            return ExitStatus::Failure;
        }
    };
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        usize::from,
    );
    let options = RunOptions {
        targets: args.selection.stages.clone(),
        downstream: args.selection.downstream,
        force: args.selection.force.clone(),
        jobs,
    };
    if args.dry_run {
        return match engine.plan(&options) {
            Ok(plans) => {
                printer.data(&report::render_plan(&pipeline.name, &plans));
                ExitStatus::Success
            }
            Err(error) => {
                printer.diagnostic(error);
                ExitStatus::Failure
            }
        };
    }
    if let Err(error) = crate::cli::signals::install() {
        // Without the handler a signal still stops taper, only less cleanly: not worth
        // refusing to run.
        tracing::warn!("cannot handle SIGTERM, SIGINT and SIGHUP: {error}");
    }
    let display = RunDisplay::new(printer, output);
    let summary = match engine.run(&options, &|event| display.event(event)) {
        Ok(summary) => summary,
        Err(error) => {
            printer.diagnostic(error);
            return ExitStatus::Failure;
        }
    };
    if !output.quiet {
        printer.status(&report::render_summary(&summary));
    }
    let interrupted = STAGE_PROCESSES.interrupted();
    let mut status = ExitStatus::Success;
    for (_, stage_status) in summary.stages {
        if let StageStatus::Failed(error) = stage_status {
            status = ExitStatus::Failure;
            // With `-v` the log was already mirrored line by line; after a signal, the
            // log's end shows only that the command was stopped.
            let log = match &error {
                ExecError::StageFailed { log, .. } if !output.verbose && interrupted.is_none() => {
                    Some(log.clone())
                }
                _ => None,
            };
            printer.diagnostic(error);
            if let Some(log) = log {
                match report::log_tail(&log) {
                    Ok(lines) => printer.status(&report::render_log_tail(&log, &lines)),
                    Err(error) => tracing::warn!("cannot read `{}`: {error}", log.display()),
                }
            }
        }
    }
    if let Some(error) = summary.lock_error {
        printer.diagnostic(error);
        status = ExitStatus::Failure;
    }
    if let Some(signal) = interrupted {
        printer.status(&format!(
            "{}: run stopped; finished stages are cached, run again to continue",
            signal_name(signal)
        ));
        return ExitStatus::Interrupted(signal);
    }
    status
}
