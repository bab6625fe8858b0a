//! `taper explain TARGET "text"`: the words of one text with their attributions, as bars on a
//! terminal (coloured unless `NO_COLOR` or not a terminal) or as JSON with `--json`.
//!
//! TARGET is a deploy bundle, a trained model directory, or `PIPELINE.yaml:STAGE` naming a
//! `train` or `deploy` stage, read from that stage's output directory (`out/<file stem>/<stage>`
//! beside the pipeline file) as the last `taper run` left it.

use std::fmt::Write;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::cli::args::ExplainArgs;
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::model::stage_output_dir;
use crate::model::stages::Explain;
use crate::stages::explain::{ExplainError, Explainer, TextExplanation};

/// Characters of the longest bar.
const BAR_WIDTH: usize = 24;

pub fn run(args: &ExplainArgs, printer: &Printer) -> ExitStatus {
    let settings = Explain::one_text(args.method, usize::from(args.steps), args.baseline);
    let target = match resolve_target(&args.target) {
        Ok(target) => target,
        Err(Unresolved::Load(error)) => return super::report_load_error(error, printer),
        Err(Unresolved::Stage(error)) => {
            printer.diagnostic(error);
            return ExitStatus::Error;
        }
    };
    let result = Explainer::load_target(&target, &settings)
        .and_then(|explainer| explainer.explain(&args.text));
    let explanation = match result {
        Ok(explanation) => explanation,
        Err(error) => {
            let status = match error {
                ExplainError::NotAModel { .. } => ExitStatus::Error,
                _ => ExitStatus::Failure,
            };
            printer.diagnostic(error);
            return status;
        }
    };
    let method = serde_json::to_value(args.method).unwrap_or_default();
    if args.json {
        let mut value = serde_json::to_value(&explanation).unwrap_or_default();
        value["method"] = method;
        printer.data(&format!("{value:#}\n"));
    } else {
        let color = printer.color && std::io::stdout().is_terminal();
        let method = method.as_str().unwrap_or_default();
        printer.data(&render(&explanation, method, color));
    }
    ExitStatus::Success
}

/// A stage named in `PIPELINE.yaml:STAGE` that the pipeline does not have.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("`{pipeline}` has no stage `{stage}`")]
#[diagnostic(
    code(taper::explain::no_such_stage),
    help("its stages: {known}; name a `train` or `deploy` stage")
)]
pub struct NoSuchStage {
    pipeline: PathBuf,
    stage: String,
    known: String,
}

enum Unresolved {
    Load(crate::model::LoadError),
    Stage(NoSuchStage),
}

/// `PIPELINE.yaml:STAGE` → that stage's output directory; any other target as given (a path
/// that exists is never split, so a directory with a colon in its name still works).
fn resolve_target(target: &Path) -> Result<PathBuf, Unresolved> {
    let text = target.to_string_lossy();
    let Some((file, stage)) = text.rsplit_once(':') else {
        return Ok(target.to_path_buf());
    };
    let file = Path::new(file);
    let is_pipeline = matches!(
        file.extension().and_then(|extension| extension.to_str()),
        Some("yaml" | "yml")
    );
    if target.exists() || !is_pipeline {
        return Ok(target.to_path_buf());
    }
    let pipeline = super::load_pipeline(file, &[], None, false).map_err(Unresolved::Load)?;
    let Some(found) = pipeline.stages.iter().find(|s| s.id.as_str() == stage) else {
        return Err(Unresolved::Stage(NoSuchStage {
            pipeline: file.to_path_buf(),
            stage: stage.to_owned(),
            known: pipeline
                .stages
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }));
    };
    Ok(pipeline
        .root
        .join(stage_output_dir(&pipeline.path, &found.id)))
}

/// A header line, then one line per word: the word, its signed score and a bar as long as the
/// score's share of the largest one (green when it supports the prediction, red against).
fn render(explanation: &TextExplanation, method: &str, color: bool) -> String {
    let mut out = format!(
        "{} ({:.3}) · {method}",
        explanation.prediction, explanation.probability
    );
    if let Some(gap) = explanation.completeness_gap {
        let _ = write!(out, " · completeness gap {:.2}%", gap * 100.0);
    }
    out.push('\n');
    let width = explanation
        .words
        .iter()
        .map(|word| word.chars().count())
        .max()
        .unwrap_or(0);
    let scale = explanation
        .scores
        .iter()
        .fold(0f32, |max, score| max.max(score.abs()))
        .max(f32::MIN_POSITIVE);
    for (word, score) in explanation.words.iter().zip(&explanation.scores) {
        let length = (score.abs() / scale * BAR_WIDTH as f32).round() as usize;
        let bar = "█".repeat(length);
        let bar = match (color, *score >= 0.0) {
            (false, _) => bar,
            (true, true) => format!("\x1b[32m{bar}\x1b[0m"),
            (true, false) => format!("\x1b[31m{bar}\x1b[0m"),
        };
        let padding = width - word.chars().count();
        let _ = writeln!(out, "  {word}{:padding$}  {score:+.4}  {bar}", "");
    }
    out
}
