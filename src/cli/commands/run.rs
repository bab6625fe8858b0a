//! `taper run FILE [STAGE...] [--downstream] [--force STAGE] [-S stage.key=value] [-j N]
//! [--dry-run]`: status lines on stderr as stages finish; each failure rendered with its log
//! path; exit 1 when any stage failed.

use crate::cli::args::RunArgs;
use crate::cli::printer::Printer;
use crate::cli::progress::RunDisplay;
use crate::cli::ExitStatus;
use crate::exec::{report, Engine, LocalExecutor, RunOptions, StageStatus};

pub fn run(args: &RunArgs, printer: &Printer) -> ExitStatus {
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
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
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
    let display = RunDisplay::new(printer, args.verbose);
    let summary = match engine.run(&options, &|event| display.event(event)) {
        Ok(summary) => summary,
        Err(error) => {
            printer.diagnostic(error);
            return ExitStatus::Failure;
        }
    };
    printer.status(&report::render_summary(&summary));
    let mut status = ExitStatus::Success;
    for (_, stage_status) in summary.stages {
        if let StageStatus::Failed(error) = stage_status {
            printer.diagnostic(error);
            status = ExitStatus::Failure;
        }
    }
    status
}
