//! `taper plots TARGET... [-o FILE]`: one self-contained HTML page with the training curves of
//! several runs overlaid (`stages::train_log::render_runs_svg`: plotters' SVG, inlined, so the
//! page fetches nothing when viewed).
//!
//! A target is a pipeline file (the curves of each of its `train` stages, as the last run left
//! them under `out/`; a sweep's variants each have their own), a `train` stage's output
//! directory, or a `train_log.jsonl`.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::cli::args::PlotsArgs;
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::model::{stage_output_dir, StageKind};
use crate::stages::train_log::{from_jsonl, render_runs_svg, LogRecord};

const LOG: &str = "train_log.jsonl";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlotsError {
    #[error("cannot read the training log `{}`", path.display())]
    #[diagnostic(
        code(taper::plots::read),
        help("a target is a pipeline file whose `train` stages have run, a `train` stage's output directory, or a `train_log.jsonl`")
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not a training log: {reason}", path.display())]
    #[diagnostic(
        code(taper::plots::not_a_log),
        help("`train_log.jsonl` is written by a `train` stage, one JSON record per line")
    )]
    NotALog { path: PathBuf, reason: String },
    #[error("no training curves in {targets}")]
    #[diagnostic(
        code(taper::plots::nothing),
        help("run the pipeline first (`taper run FILE`): its `train` stages write `train_log.jsonl` under `out/`")
    )]
    Nothing { targets: String },
    #[error("cannot write `{}`", path.display())]
    #[diagnostic(
        code(taper::plots::write),
        help("check that the directory is writable")
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Load(#[from] crate::model::LoadError),
}

pub fn run(args: &PlotsArgs, printer: &Printer) -> ExitStatus {
    match plot(&args.targets, &args.output) {
        Ok(count) => {
            printer.status(&format!(
                "wrote `{}`: {count} run{}",
                args.output.display(),
                if count == 1 { "" } else { "s" }
            ));
            ExitStatus::Success
        }
        Err(error) => {
            let status = match error {
                PlotsError::Write { .. } | PlotsError::Read { .. } => ExitStatus::Error,
                _ => ExitStatus::Failure,
            };
            printer.diagnostic(error);
            status
        }
    }
}

fn plot(targets: &[PathBuf], output: &Path) -> Result<usize, PlotsError> {
    let mut runs = Vec::new();
    for target in targets {
        runs.extend(runs_of(target)?);
    }
    if runs.is_empty() {
        return Err(PlotsError::Nothing {
            targets: targets
                .iter()
                .map(|target| format!("`{}`", target.display()))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    std::fs::write(output, page(&runs)).map_err(|source| PlotsError::Write {
        path: output.to_path_buf(),
        source,
    })?;
    Ok(runs.len())
}

/// The named runs a target holds; a pipeline's `train` stages that have not run are skipped.
fn runs_of(target: &Path) -> Result<Vec<(String, Vec<LogRecord>)>, PlotsError> {
    let is_pipeline = target.is_file()
        && matches!(
            target.extension().and_then(|extension| extension.to_str()),
            Some("yaml" | "yml")
        );
    if is_pipeline {
        let pipeline = super::load_pipeline(target, &[], None, false)?;
        let mut runs = Vec::new();
        for stage in &pipeline.stages {
            let log = stage_output_dir(&pipeline.path, &stage.id).join(LOG);
            if stage.kind() == StageKind::Train && log.is_file() {
                runs.push((stage.id.to_string(), read_log(&log)?));
            }
        }
        return Ok(runs);
    }
    let log = if target.is_dir() {
        target.join(LOG)
    } else {
        target.to_path_buf()
    };
    let name = if target.is_dir() {
        target
    } else {
        target.parent().unwrap_or(target)
    };
    Ok(vec![(name.display().to_string(), read_log(&log)?)])
}

fn read_log(path: &Path) -> Result<Vec<LogRecord>, PlotsError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlotsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_jsonl(&text).map_err(|error| PlotsError::NotALog {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The HTML page: the chart, then a table of each run's last training loss and last
/// validation accuracy.
fn page(runs: &[(String, Vec<LogRecord>)]) -> String {
    let mut rows = String::new();
    for (name, records) in runs {
        let last_loss = records.iter().rev().find_map(|record| match record {
            LogRecord::Step { loss, .. } => Some(format!("{loss:.4}")),
            LogRecord::Validation { .. } => None,
        });
        let last_accuracy = records.iter().rev().find_map(|record| match record {
            LogRecord::Validation { accuracy, .. } => Some(format!("{accuracy:.4}")),
            LogRecord::Step { .. } => None,
        });
        let steps = records
            .iter()
            .filter(|record| matches!(record, LogRecord::Step { .. }))
            .count();
        let _ = writeln!(
            rows,
            "<tr><td>{}</td><td>{steps}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            last_loss.unwrap_or_else(|| "-".to_owned()),
            last_accuracy.unwrap_or_else(|| "-".to_owned())
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>taper: training curves</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
</style>
</head>
<body>
<h1>Training curves</h1>
{svg}
<table>
<tr><th>run</th><th>steps</th><th>last training loss</th><th>last validation accuracy</th></tr>
{rows}</table>
</body>
</html>
"#,
        svg = render_runs_svg(runs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(losses: &[f64], accuracy: f64) -> Vec<LogRecord> {
        let mut records: Vec<LogRecord> = losses
            .iter()
            .enumerate()
            .map(|(index, loss)| LogRecord::Step {
                step: index + 1,
                epoch: 0,
                loss: *loss,
                learning_rate: 1e-3,
            })
            .collect();
        records.push(LogRecord::Validation {
            step: losses.len(),
            epoch: 0,
            loss: 0.5,
            accuracy,
        });
        records
    }

    #[test]
    fn the_page_overlays_every_run_and_fetches_nothing() {
        let runs = vec![
            ("train-lr1e-3".to_owned(), log(&[0.7, 0.6, 0.4], 0.8)),
            ("train-lr<2e-3>".to_owned(), log(&[0.7, 0.5], 0.9)),
        ];
        let html = page(&runs);
        assert!(html.contains("<svg"), "{html}");
        assert!(!html.contains("src=") && !html.contains("href="), "{html}");
        assert!(html.contains("train-lr1e-3: training"), "{html}");
        assert!(
            html.contains("<td>train-lr&lt;2e-3&gt;</td><td>2</td><td>0.5000</td><td>0.9000</td>"),
            "{html}"
        );
        // Two runs, two panels: a curve of each run in each.
        assert!(html.matches("<polyline").count() >= 4, "{html}");
    }
}
