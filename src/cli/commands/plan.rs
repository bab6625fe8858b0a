//! `taper plan FILE [STAGE...]`: each stage `cached` or `will run`, with the reason.

use crate::cache::LockFile;
use crate::cli::args::PlanArgs;
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::exec::{report, Decision, Engine, LocalExecutor, RunOptions};

pub fn run(args: &PlanArgs, printer: &Printer) -> ExitStatus {
    let (pipeline, store) = match super::load_with_store(&args.selection, &args.store, printer) {
        Ok(loaded) => loaded,
        Err(status) => return status,
    };
    let executor = LocalExecutor::new(crate::stages::runner_for);
    let options = RunOptions {
        targets: args.selection.stages.clone(),
        downstream: args.selection.downstream,
        force: args.selection.force.clone(),
        jobs: 1,
    };
    let plans =
        match Engine::new(&pipeline, &store, &executor).and_then(|engine| engine.plan(&options)) {
            Ok(plans) => plans,
            Err(error) => {
                printer.diagnostic(error);
                return ExitStatus::Failure;
            }
        };
    if args.json {
        printer.data(&crate::cli::json::plan(
            &pipeline.name,
            &plans,
            &pipeline.specs,
        ));
    } else {
        printer.data(&report::render_plan(&pipeline.name, &plans));
        printer.data(&report::render_expansion(&pipeline.specs));
        if let Some(lock) = LockFile::load(&LockFile::path_for(&pipeline.path)) {
            printer.data(&report::render_spec_changes(&lock, &pipeline.specs));
        }
    }
    let mut status = ExitStatus::Success;
    for plan in plans {
        if let Decision::Error(error) = plan.decision {
            printer.diagnostic(error);
            status = ExitStatus::Failure;
        }
    }
    status
}
