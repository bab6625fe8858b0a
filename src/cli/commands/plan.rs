//! `taper plan FILE [STAGE...]`: each stage `cached` or `will run`, with the reason.

use super::{print_out, SelectionArgs, StoreArgs};
use crate::cli::ExitStatus;
use crate::exec::{report, Decision, Engine, LocalExecutor};

#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: &PlanArgs) -> miette::Result<ExitStatus> {
    let pipeline = args.selection.load()?;
    let store = args.store.open()?;
    let executor = LocalExecutor::new(crate::stages::runner_for);
    let engine = Engine::new(&pipeline, &store, &executor)?;
    let plans = engine.plan(&args.selection.options(1))?;
    print_out(&report::render_plan(&pipeline.name, &plans))?;
    let blocked = plans
        .iter()
        .any(|plan| matches!(plan.decision, Decision::Error(_)));
    Ok(if blocked {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}
