//! Machine-readable output (`--json`): the shapes are documented in docs/spec.md,
//! "Machine-readable output". Every document and every `run` event carries `"schema": 1`; a
//! change that removes or renames a field bumps it, adding a field does not.

use crate::cache::{ActionListing, ExperimentRecord};
use crate::exec::{Decision, Event, RunSummary, StagePlan, StageStatus};
use crate::fingerprint::DirtyReason;
use crate::spec::SpecUse;

/// The version of every `--json` shape of plan, run and cache ls.
pub const SCHEMA: u32 = 1;

/// A dirty reason: its serialized fields (`reason`, and e.g. `field`, `old`, `new`) plus
/// `message`, the sentence `plan` prints.
fn reason(reason: &DirtyReason) -> serde_json::Value {
    let mut value = serde_json::to_value(reason).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(object) = value.as_object_mut() {
        object.insert("message".to_owned(), reason.to_string().into());
    }
    value
}

fn reasons(list: &[DirtyReason]) -> Vec<serde_json::Value> {
    list.iter().map(reason).collect()
}

/// An error as `{code, message, help}`.
fn error(error: &dyn miette::Diagnostic) -> serde_json::Value {
    serde_json::json!({
        "code": error.code().map(|code| code.to_string()),
        "message": error.to_string(),
        "help": error.help().map(|help| help.to_string()),
    })
}

/// `taper plan --json`: one document.
pub fn plan(pipeline: &str, plans: &[StagePlan], specs: &[SpecUse]) -> String {
    let stages: Vec<serde_json::Value> = plans
        .iter()
        .map(|plan| {
            let mut stage = serde_json::json!({
                "stage": plan.stage,
                "key": plan.key,
            });
            let (decision, extra) = match &plan.decision {
                Decision::Cached { restore } => {
                    ("cached", serde_json::json!({ "restore": restore }))
                }
                Decision::WillRun(list) => {
                    let may = list
                        .iter()
                        .all(|reason| matches!(reason, DirtyReason::UpstreamWillRun { .. }));
                    (
                        if may { "may-run" } else { "will-run" },
                        serde_json::json!({ "reasons": reasons(list) }),
                    )
                }
                Decision::Error(failure) => {
                    ("error", serde_json::json!({ "error": error(failure) }))
                }
            };
            stage["decision"] = decision.into();
            if let (Some(stage), Some(extra)) = (stage.as_object_mut(), extra.as_object()) {
                stage.extend(extra.clone());
            }
            stage
        })
        .collect();
    let sweeps: Vec<serde_json::Value> = specs
        .iter()
        .filter(|used| {
            used.variants
                .iter()
                .any(|variant| !variant.params.is_empty())
        })
        .map(|used| {
            serde_json::json!({
                "entry": used.entry,
                "spec": used.source.to_string(),
                "variants": used.variants.iter().map(|variant| serde_json::json!({
                    "label": variant.label,
                    "params": variant.params,
                    "stages": variant.stages,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let document = serde_json::json!({
        "schema": SCHEMA,
        "pipeline": pipeline,
        "stages": stages,
        "sweeps": sweeps,
    });
    format!("{document}\n")
}

/// One `taper run --json` event line; log lines only with `verbose`, as on the terminal.
pub fn event(event: &Event<'_>, verbose: bool) -> Option<String> {
    let value = match event {
        Event::Cached { stage, restored } => {
            serde_json::json!({ "event": "cached", "stage": stage, "restored": restored })
        }
        Event::Waiting { stage } => serde_json::json!({ "event": "waiting", "stage": stage }),
        Event::Started {
            stage,
            reasons: list,
        } => {
            serde_json::json!({ "event": "started", "stage": stage, "reasons": reasons(list) })
        }
        Event::Log { stage, line } => {
            if !verbose {
                return None;
            }
            serde_json::json!({ "event": "log", "stage": stage, "line": line })
        }
        Event::Finished {
            stage,
            duration,
            outputs_unchanged,
        } => serde_json::json!({
            "event": "finished",
            "stage": stage,
            "duration_ms": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            "outputs_unchanged": outputs_unchanged,
        }),
        Event::Failed {
            stage,
            error: failure,
        } => {
            serde_json::json!({ "event": "failed", "stage": stage, "error": error(*failure) })
        }
        Event::Skipped { stage, upstream } => {
            serde_json::json!({ "event": "skipped", "stage": stage, "upstream": upstream })
        }
    };
    Some(line(value))
}

/// The last `taper run --json` event: counts, and the experiment the run recorded (its id,
/// and each stage's status, key, wall time and metrics).
pub fn summary(summary: &RunSummary, experiment: &ExperimentRecord) -> String {
    let count = |wanted: fn(&StageStatus) -> bool| {
        summary
            .stages
            .iter()
            .filter(|(_, status)| wanted(status))
            .count()
    };
    line(serde_json::json!({
        "event": "summary",
        "ran": count(|status| matches!(status, StageStatus::Ran { .. })),
        "cached": count(|status| matches!(status, StageStatus::Cached { .. })),
        "failed": count(|status| matches!(status, StageStatus::Failed(_))),
        "skipped": count(|status| matches!(status, StageStatus::Skipped { .. })),
        "lock_error": summary.lock_error.as_ref().map(|failure| error(failure)),
        "experiment": experiment.id,
        "wall_ms": experiment.wall_ms,
        "stages": experiment.stages,
    }))
}

/// An event object with `schema` added, on one line.
fn line(mut value: serde_json::Value) -> String {
    if let Some(object) = value.as_object_mut() {
        object.insert("schema".to_owned(), SCHEMA.into());
    }
    format!("{value}\n")
}

/// `taper cache ls --json`: one document, newest result first.
pub fn cache_listing(listings: &[ActionListing]) -> String {
    let results: Vec<serde_json::Value> = listings
        .iter()
        .map(|listing| {
            serde_json::json!({
                "key": listing.record.key,
                "stage": listing.record.stage,
                "kind": listing.record.fingerprint.kind,
                "files": listing.output_files,
                "bytes": listing.output_bytes,
                "duration_ms": listing.record.duration_ms,
                "finished_at": listing.record.finished_at,
                "metrics": listing.record.metrics,
            })
        })
        .collect();
    let document = serde_json::json!({ "schema": SCHEMA, "results": results });
    format!("{document}\n")
}
