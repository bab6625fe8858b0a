//! `taper explain TARGET "text"`: the words of one text with their attributions, as bars on a
//! terminal (coloured unless `NO_COLOR` or not a terminal) or as JSON with `--json`.

use std::fmt::Write;
use std::io::IsTerminal;

use crate::cli::args::ExplainArgs;
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::model::stages::{Explain, SplitName};
use crate::stages::explain::{ExplainError, Explainer, TextExplanation};

/// Characters of the longest bar.
const BAR_WIDTH: usize = 24;

pub fn run(args: &ExplainArgs, printer: &Printer) -> ExitStatus {
    let settings = Explain {
        method: args.method,
        // Split and example count belong to the stage; one text is explained here.
        split: SplitName::Test,
        examples: 1,
        steps: usize::from(args.steps),
        baseline: args.baseline,
    };
    let result = Explainer::load_target(&args.target, &settings)
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
