//! `taper run FILE [STAGE...] [--downstream] [--force STAGE] [-S stage.key=value] [-j N]
//! [--dry-run]`.

use super::{print_out, print_status, SelectionArgs, StoreArgs};
use crate::cli::ExitStatus;
use crate::exec::{report, Engine, LocalExecutor, StageStatus};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Stages run at the same time (default: the number of CPU cores).
    #[arg(short = 'j', long)]
    pub jobs: Option<usize>,
    /// Print the plan and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Mirror stage logs to the terminal.
    #[arg(short, long)]
    pub verbose: bool,
}

pub fn run(args: &RunArgs) -> miette::Result<ExitStatus> {
    let pipeline = args.selection.load()?;
    let store = args.store.open()?;
    let executor = LocalExecutor::new(crate::stages::runner_for);
    let engine = Engine::new(&pipeline, &store, &executor)?;
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let options = args.selection.options(jobs);
    if args.dry_run {
        let plans = engine.plan(&options)?;
        print_out(&report::render_plan(&pipeline.name, &plans))?;
        return Ok(ExitStatus::Success);
    }
    let verbose = args.verbose;
    let summary = engine.run(&options, &|event| {
        if let Some(line) = report::render_event(event, verbose) {
            print_status(&line);
        }
    })?;
    print_status(&report::render_summary(&summary));
    let mut status = ExitStatus::Success;
    for (_, stage_status) in summary.stages {
        if let StageStatus::Failed(error) = stage_status {
            print_status(&format!("{:?}", miette::Report::new(error)));
            status = ExitStatus::Failure;
        }
    }
    Ok(status)
}
