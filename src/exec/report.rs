//! Text for people: one line per stage decision or event. Kept here (not in the CLI) so the
//! exact wording is unit-tested and snapshot-tested next to the engine that produces it.

use std::fmt::Write;
use std::time::Duration;

use super::engine::{Decision, Event, RunSummary, StagePlan, StageStatus};
use super::describe_reasons;

fn width(names: impl Iterator<Item = usize>) -> usize {
    names.max().unwrap_or(0)
}

/// `taper plan`: a header, then `<stage>  cached|will run|error  <why>` per stage.
pub fn render_plan(pipeline: &str, plans: &[StagePlan]) -> String {
    let pad = width(plans.iter().map(|plan| plan.stage.as_str().len()));
    let will_run = plans
        .iter()
        .filter(|plan| matches!(plan.decision, Decision::WillRun(_)))
        .count();
    let errors = plans
        .iter()
        .filter(|plan| matches!(plan.decision, Decision::Error(_)))
        .count();
    let cached = plans.len() - will_run - errors;
    let mut out = format!(
        "plan for `{pipeline}`: {} stages, {cached} cached, {will_run} will run",
        plans.len()
    );
    if errors > 0 {
        let _ = write!(out, ", {errors} cannot run");
    }
    out.push('\n');
    for plan in plans {
        let stage = plan.stage.as_str();
        let line = match &plan.decision {
            Decision::Cached { restore } if restore.is_empty() => {
                format!("{stage:<pad$}  cached")
            }
            Decision::Cached { restore } => format!(
                "{stage:<pad$}  cached    restore {}",
                quoted_list(restore)
            ),
            Decision::WillRun(reasons) => {
                format!("{stage:<pad$}  will run  {}", describe_reasons(reasons))
            }
            Decision::Error(error) => format!("{stage:<pad$}  error     {error}"),
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn seconds(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

/// One status line for a run event; `None` for log lines unless `verbose`.
pub fn render_event(event: &Event<'_>, verbose: bool) -> Option<String> {
    Some(match event {
        Event::Cached { stage, restored } if restored.is_empty() => format!("cached   {stage}"),
        Event::Cached { stage, restored } => {
            format!("cached   {stage} (restored {})", quoted_list(restored))
        }
        Event::Waiting { stage } => format!(
            "waiting  {stage}: another taper run is computing the same stage key; using its result when it finishes"
        ),
        Event::Started { stage, reasons } => {
            format!("running  {stage}: {}", describe_reasons(reasons))
        }
        Event::Log { stage, line } => {
            if !verbose {
                return None;
            }
            format!("  {stage} | {line}")
        }
        Event::Finished {
            stage,
            duration,
            outputs_unchanged,
        } => {
            if *outputs_unchanged {
                format!(
                    "done     {stage} in {} (outputs unchanged: dependents stay cached)",
                    seconds(*duration)
                )
            } else {
                format!("done     {stage} in {}", seconds(*duration))
            }
        }
        Event::Failed { stage, error } => format!("failed   {stage}: {error}"),
        Event::Skipped { stage, upstream } => {
            format!("skipped  {stage}: upstream `{upstream}` failed")
        }
    })
}

/// The closing line of `taper run`.
pub fn render_summary(summary: &RunSummary) -> String {
    let mut ran = 0;
    let mut cached = 0;
    let mut failed = 0;
    let mut skipped = 0;
    for (_, status) in &summary.stages {
        match status {
            StageStatus::Ran { .. } => ran += 1,
            StageStatus::Cached { .. } => cached += 1,
            StageStatus::Failed(_) => failed += 1,
            StageStatus::Skipped { .. } => skipped += 1,
        }
    }
    let mut out = format!(
        "{} stages: {ran} ran, {cached} cached",
        summary.stages.len()
    );
    if failed > 0 {
        let _ = write!(out, ", {failed} failed");
    }
    if skipped > 0 {
        let _ = write!(out, ", {skipped} skipped");
    }
    out
}
