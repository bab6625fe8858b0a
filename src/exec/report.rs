//! Text for people: one line per stage decision or event. Kept here (not in the CLI) so the
//! exact wording is unit-tested and snapshot-tested next to the engine that produces it.

use std::fmt::Write;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use super::describe_reasons;
use super::engine::{Decision, Event, RunSummary, StagePlan, StageStatus};
use crate::fingerprint::DirtyReason;

fn width(names: impl Iterator<Item = usize>) -> usize {
    names.max().unwrap_or(0)
}

/// Whether a stage runs only if an upstream stage that will run first changes its outputs:
/// with early cutoff, identical upstream bytes leave it cached, so `plan` cannot promise it.
fn may_run(reasons: &[DirtyReason]) -> bool {
    reasons
        .iter()
        .all(|reason| matches!(reason, DirtyReason::UpstreamWillRun { .. }))
}

/// `taper plan`: a header, then `<stage>  cached|will run|may run|error  <why>` per stage.
pub fn render_plan(pipeline: &str, plans: &[StagePlan]) -> String {
    let pad = width(plans.iter().map(|plan| plan.stage.as_str().len()));
    let (mut will_run, mut may, mut errors) = (0, 0, 0);
    for plan in plans {
        match &plan.decision {
            Decision::WillRun(reasons) if may_run(reasons) => may += 1,
            Decision::WillRun(_) => will_run += 1,
            Decision::Error(_) => errors += 1,
            Decision::Cached { .. } => {}
        }
    }
    let cached = plans.len() - will_run - may - errors;
    let mut out = format!(
        "plan for `{pipeline}`: {} stages, {cached} cached, {will_run} will run",
        plans.len()
    );
    if may > 0 {
        let _ = write!(out, ", {may} may run");
    }
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
            Decision::Cached { restore } => {
                format!("{stage:<pad$}  cached    restore {}", quoted_list(restore))
            }
            Decision::WillRun(reasons) if may_run(reasons) => format!(
                "{stage:<pad$}  may run   {} (runs only if its outputs change)",
                describe_reasons(reasons)
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

fn quoted_list<T: AsRef<str>>(items: &[T]) -> String {
    items
        .iter()
        .map(|item| format!("`{}`", item.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn seconds(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

/// One status line for a run event; `None` for log lines unless `verbose`.
pub fn render_event(event: &Event<'_>, verbose: bool) -> Option<String> {
    Some(match event {
        Event::Cached { stage, restored: [] } => format!("cached   {stage}"),
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

/// How many lines of a failed stage's log its failure report shows.
pub const LOG_TAIL_LINES: usize = 20;
/// At most this much of the log's end is read: a multi-gigabyte log costs no more to report.
const LOG_TAIL_BYTES: u64 = 64 * 1024;
/// A longer line (a progress bar redrawn with `\r`, a dumped array) is cut to this many
/// characters, so one line cannot flood the terminal.
const LOG_LINE_CHARS: usize = 300;

/// The last [`LOG_TAIL_LINES`] lines of a stage log, each cut to [`LOG_LINE_CHARS`].
pub fn log_tail(path: &Path) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if start > 0 {
        // The first line read starts mid-line.
        if let Some(first) = lines.first_mut() {
            first.insert(0, '…');
        }
    }
    let keep = lines.len().saturating_sub(LOG_TAIL_LINES);
    Ok(lines.split_off(keep).into_iter().map(cut_line).collect())
}

fn cut_line(line: String) -> String {
    // Escape sequences from the command (cursor moves, screen clears) must not act on the
    // terminal showing the report.
    let line: String = line
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    match line.char_indices().nth(LOG_LINE_CHARS) {
        Some((end, _)) => format!("{}… ({} more bytes)", &line[..end], line.len() - end),
        None => line,
    }
}

/// The end of a failed stage's log, for the failure report.
pub fn render_log_tail(log: &Path, lines: &[String]) -> String {
    if lines.is_empty() {
        return format!("the log `{}` is empty\n", log.display());
    }
    let mut out = format!("last lines of `{}`:\n", log.display());
    for line in lines {
        let _ = writeln!(out, "  | {line}");
    }
    out
}

/// For `plan`: each spec param whose value differs from the lock file's record, with the line
/// it is now written at (`spec `greet` param `epochs`: 1 → 2 (greet.yaml:17)`), and specs
/// whose file changed though no param did.
pub fn render_spec_changes(
    lock: &crate::cache::LockFile,
    specs: &[crate::spec::SpecUse],
) -> String {
    let mut out = String::new();
    for used in specs {
        let Some(locked) = lock.specs.get(&used.entry) else {
            continue;
        };
        let mut named = false;
        for (name, (value, origin)) in &used.params {
            match locked.params.get(name) {
                Some(old) if old == value => {}
                old => {
                    named = true;
                    let old = old.map_or("(none)", String::as_str);
                    let _ = writeln!(
                        out,
                        "spec `{}` param `{name}` changed ({old} → {value}) at {origin}",
                        used.name
                    );
                }
            }
        }
        if !named && locked.blake3 != used.blake3 {
            let _ = writeln!(
                out,
                "spec `{}` ({}) changed since the lock file; no param value did",
                used.name, used.source
            );
        }
    }
    out
}

/// For `plan`: how each swept `use:` expanded, one line per variant with its values and the
/// stages of its own (shared stages are listed once, first).
pub fn render_expansion(specs: &[crate::spec::SpecUse]) -> String {
    let mut out = String::new();
    for used in specs.iter().filter(|used| used.variants.len() > 1) {
        let shared: Vec<&str> = used.variants[0]
            .stages
            .iter()
            .filter(|stage| {
                used.variants
                    .iter()
                    .all(|variant| variant.stages.contains(stage))
            })
            .map(String::as_str)
            .collect();
        let _ = writeln!(
            out,
            "sweep `{}` ({}): {} variants; shared: {}",
            used.entry,
            used.source,
            used.variants.len(),
            quoted_list(&shared)
        );
        for variant in &used.variants {
            let values: Vec<String> = variant
                .params
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            let own: Vec<&str> = variant
                .stages
                .iter()
                .filter(|stage| !shared.contains(&stage.as_str()))
                .map(String::as_str)
                .collect();
            let _ = writeln!(out, "  {}  {}", values.join(" "), quoted_list(&own));
        }
    }
    out
}
