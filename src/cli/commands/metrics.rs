//! `taper metrics FILE` and `taper metrics diff NEW [OLD]`.
//!
//! A metrics source is one of: an evaluate stage's `metrics.json` (its scalar metrics, and
//! per-class precision/recall/F1 as `<label>.<metric>`); a lock file (every stage's headline
//! metrics as `<stage>.<metric>`); a pipeline file (its lock file). `diff` without `OLD` reads
//! the pipeline's lock file as committed in git (`git show HEAD:<lock>`), like `dvc metrics
//! diff`. When one side is a `metrics.json` and the other a lock file, the `metrics.json` keys
//! are prefixed with the one lock stage that reports `accuracy`, so they line up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cache::LockFile;
use crate::cli::args::{MetricsArgs, MetricsCommand};
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::data::metrics::{numeric_metrics, parse_document};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum MetricsError {
    #[error("cannot read `{path}`")]
    #[diagnostic(
        code(taper::metrics::read),
        help("pass a metrics file (JSON or YAML), a lock file or a pipeline file")
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is neither a metrics file nor a lock file: {reason}")]
    #[diagnostic(
        code(taper::metrics::unrecognized),
        help("`taper metrics` reads a JSON or YAML mapping of metrics (`out/<evaluate stage>/metrics.json`, a `command` stage's `metrics:` file), a `<pipeline>.lock` or a pipeline file")
    )]
    Unrecognized { path: PathBuf, reason: String },
    #[error("no committed version of `{path}`: {reason}")]
    #[diagnostic(
        code(taper::metrics::no_baseline),
        help("commit the lock file first, or name the old metrics: `taper metrics diff NEW OLD`")
    )]
    NoBaseline { path: PathBuf, reason: String },
    #[error("`taper metrics` needs a file")]
    #[diagnostic(
        code(taper::metrics::usage),
        help("`taper metrics out/test/metrics.json`, or `taper metrics diff NEW [OLD]`")
    )]
    Usage,
}

/// Flattened metrics of one source.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSource {
    pub values: BTreeMap<String, f64>,
    /// From a lock file: the stage reporting `accuracy`, when exactly one does.
    pub evaluate_stage: Option<String>,
    pub from_lock: bool,
}

/// The version of `taper metrics --json` and `taper metrics diff --json` output
/// (docs/spec.md, "Machine-readable output").
pub const METRICS_SCHEMA: u32 = 1;

pub fn run(args: &MetricsArgs, printer: &Printer) -> ExitStatus {
    let result = match (&args.command, &args.file) {
        (
            Some(MetricsCommand::Diff {
                new,
                old,
                all,
                json,
            }),
            _,
        ) => diff(new, old.as_deref()).map(|rows| {
            if *json {
                diff_json(&rows, *all)
            } else {
                render_diff(&rows, *all)
            }
        }),
        (None, Some(file)) => load(file).map(|source| {
            if args.json {
                show_json(&source)
            } else {
                show(&source)
            }
        }),
        (None, None) => Err(MetricsError::Usage),
    };
    // As for every command, a file that cannot be read is a usage error (2); one that reads
    // but holds no metrics is a failure (1).
    super::finish(result, printer, |error| match error {
        MetricsError::Usage | MetricsError::Read { .. } => ExitStatus::Error,
        MetricsError::Unrecognized { .. } | MetricsError::NoBaseline { .. } => ExitStatus::Failure,
    })
}

/// The lock file of a pipeline file (a `.yaml` with top-level `stages:`); `path` itself
/// otherwise.
fn lock_path(path: &Path, text: &str) -> PathBuf {
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let is_pipeline = is_yaml
        && serde_yaml::from_str::<serde_yaml::Value>(text)
            .is_ok_and(|document| document.get("stages").is_some());
    if is_pipeline {
        LockFile::path_for(path)
    } else {
        path.to_path_buf()
    }
}

fn read(path: &Path) -> Result<String, MetricsError> {
    std::fs::read_to_string(path).map_err(|source| MetricsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load(path: &Path) -> Result<MetricsSource, MetricsError> {
    let text = read(path)?;
    let lock = lock_path(path, &text);
    if lock == path {
        parse(path, &text)
    } else {
        parse(&lock, &read(&lock)?)
    }
}

/// A lock file (`.lock`: every stage's metrics as `<stage>.<metric>`) or a metrics document
/// (JSON, or YAML for `.yaml`/`.yml`): its numbers under dotted names, lists of plain values
/// left out (`crate::data::metrics::numeric_metrics`).
pub fn parse(path: &Path, text: &str) -> Result<MetricsSource, MetricsError> {
    if path.extension().is_some_and(|e| e != "lock") {
        let value = parse_document(path, text).map_err(|reason| MetricsError::Unrecognized {
            path: path.to_path_buf(),
            reason,
        })?;
        if !value.is_object() {
            return Err(MetricsError::Unrecognized {
                path: path.to_path_buf(),
                reason: "expected a mapping of metrics".to_owned(),
            });
        }
        return Ok(MetricsSource {
            values: numeric_metrics(&value),
            evaluate_stage: None,
            from_lock: false,
        });
    }
    let lock: LockFile =
        serde_yaml::from_str(text).map_err(|error| MetricsError::Unrecognized {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
    let mut values = BTreeMap::new();
    let mut with_accuracy = Vec::new();
    for (stage, locked) in &lock.stages {
        if locked.metrics.contains_key("accuracy") {
            with_accuracy.push(stage.clone());
        }
        for (metric, value) in &locked.metrics {
            values.insert(format!("{stage}.{metric}"), *value);
        }
    }
    Ok(MetricsSource {
        values,
        evaluate_stage: (with_accuracy.len() == 1).then(|| with_accuracy.remove(0)),
        from_lock: true,
    })
}

pub(crate) fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.4}")
    }
}

pub fn show(source: &MetricsSource) -> String {
    let width = source.values.keys().map(String::len).max().unwrap_or(6);
    let mut out = String::new();
    for (key, value) in &source.values {
        out.push_str(&format!("{key:<width$}  {}\n", number(*value)));
    }
    out
}

/// `{"schema": 1, "metrics": {"name": value, …}}`.
pub fn show_json(source: &MetricsSource) -> String {
    let document = serde_json::json!({ "schema": METRICS_SCHEMA, "metrics": source.values });
    format!("{document}\n")
}

fn diff(new: &Path, old: Option<&Path>) -> Result<Vec<DiffRow>, MetricsError> {
    let new_source = load(new)?;
    let old_source = match old {
        Some(old) => load(old)?,
        None => {
            let lock = LockFile::path_for(new);
            if !new_source.from_lock {
                return Err(MetricsError::NoBaseline {
                    path: lock,
                    reason: "a `metrics.json` has no committed baseline".to_owned(),
                });
            }
            committed(&lock)?
        }
    };
    Ok(diff_rows(&old_source, &new_source))
}

/// The lock file as committed at `HEAD`.
fn committed(lock: &Path) -> Result<MetricsSource, MetricsError> {
    let no_baseline = |reason: String| MetricsError::NoBaseline {
        path: lock.to_path_buf(),
        reason,
    };
    let directory = lock
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = lock
        .file_name()
        .ok_or_else(|| no_baseline("not a file".to_owned()))?;
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(directory)
        .arg("show")
        .arg(format!("HEAD:./{}", name.to_string_lossy()))
        .output()
        .map_err(|error| no_baseline(format!("cannot run `git`: {error}")))?;
    if !output.status.success() {
        return Err(no_baseline(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    parse(lock, &String::from_utf8_lossy(&output.stdout))
}

/// One metric on either side of a diff.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffRow {
    pub name: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
}

impl DiffRow {
    fn changed(&self) -> bool {
        self.old != self.new
    }

    fn change(&self) -> Option<f64> {
        Some(self.new? - self.old?)
    }
}

/// Every metric of either side, by name. When one side is a `metrics.json` and the other a
/// lock file, the `metrics.json` names are prefixed with the lock's evaluate stage.
pub fn diff_rows(old: &MetricsSource, new: &MetricsSource) -> Vec<DiffRow> {
    let align = |source: &MetricsSource, other: &MetricsSource| -> BTreeMap<String, f64> {
        match (&other.evaluate_stage, source.from_lock) {
            (Some(stage), false) if other.from_lock => source
                .values
                .iter()
                .map(|(k, v)| (format!("{stage}.{k}"), *v))
                .collect(),
            _ => source.values.clone(),
        }
    };
    let old_values = align(old, new);
    let new_values = align(new, old);
    let names: std::collections::BTreeSet<&String> =
        old_values.keys().chain(new_values.keys()).collect();
    names
        .into_iter()
        .map(|name| DiffRow {
            name: name.clone(),
            old: old_values.get(name).copied(),
            new: new_values.get(name).copied(),
        })
        .collect()
}

/// A table `metric  old  new  change`: the changed metrics (added and removed ones included),
/// or with `all` every metric.
pub fn render_diff(rows: &[DiffRow], all: bool) -> String {
    let shown: Vec<&DiffRow> = rows.iter().filter(|row| all || row.changed()).collect();
    if shown.is_empty() {
        return format!(
            "no metric changed ({} compared; `--all` lists them)\n",
            rows.len()
        );
    }
    let width = shown
        .iter()
        .map(|row| row.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "{:<width$}  {:>10}  {:>10}  {:>10}\n",
        "metric", "old", "new", "change"
    );
    let text = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), number);
    for row in shown {
        let change = row
            .change()
            .map_or_else(|| "-".to_owned(), |change| format!("{change:+.4}"));
        out.push_str(&format!(
            "{:<width$}  {:>10}  {:>10}  {change:>10}\n",
            row.name,
            text(row.old),
            text(row.new)
        ));
    }
    out
}

/// `{"schema": 1, "metrics": [{"name", "old", "new", "change"}, …]}`, rows as in
/// [`render_diff`] (`null` for a missing side).
pub fn diff_json(rows: &[DiffRow], all: bool) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .filter(|row| all || row.changed())
        .map(|row| {
            serde_json::json!({
                "name": row.name,
                "old": row.old,
                "new": row.new,
                "change": row.change(),
            })
        })
        .collect();
    let document = serde_json::json!({ "schema": METRICS_SCHEMA, "metrics": rows });
    format!("{document}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"{"split": "test", "labels": ["neg", "pos"], "examples": 40,
        "accuracy": 0.85, "macro_f1": 0.8, "per_class": [{"label": "neg", "precision": 0.9,
        "recall": 0.5, "f1": 0.6428571, "support": 16}], "confusion": [[8, 8], [0, 24]]}"#;

    const LOCK: &str = "version: 1\npipeline: p\nstages: {}\n";

    #[test]
    fn metrics_json_flattens_scalars_and_classes() {
        let source = parse(Path::new("metrics.json"), METRICS).unwrap();
        assert_eq!(
            show(&source),
            "accuracy                 0.8500\nexamples                 40\nmacro_f1                 0.8000\nper_class.neg.f1         0.6429\nper_class.neg.precision  0.9000\nper_class.neg.recall     0.5000\nper_class.neg.support    16\n"
        );
        assert_eq!(
            show_json(&parse(Path::new("m.json"), r#"{"a": {"b": 0.5}}"#).unwrap()),
            "{\"metrics\":{\"a.b\":0.5},\"schema\":1}\n"
        );
    }

    #[test]
    fn yaml_metrics_nest_like_json_ones() {
        let source = parse(
            Path::new("m.yaml"),
            "eval:\n  loss: 0.25\n  steps: 10\nname: x\n",
        )
        .unwrap();
        assert_eq!(show(&source), "eval.loss   0.2500\neval.steps  10\n");
    }

    #[test]
    fn diff_aligns_a_metrics_file_with_the_lock_stage() {
        let new = parse(Path::new("metrics.json"), METRICS).unwrap();
        let mut old = parse(Path::new("p.lock"), LOCK).unwrap();
        old.values.insert("test.accuracy".into(), 0.8);
        old.evaluate_stage = Some("test".into());
        let table = render_diff(&diff_rows(&old, &new), false);
        assert!(
            table.starts_with("metric                               old         new      change\n"),
            "{table}"
        );
        assert!(
            table.contains("\ntest.accuracy                     0.8000      0.8500     +0.0500\n"),
            "{table}"
        );
        assert!(
            table.contains("\ntest.macro_f1                          -      0.8000           -\n"),
            "{table}"
        );
    }

    /// `metrics diff` shows what changed; `--all` adds the rest.
    #[test]
    fn diff_shows_only_changes_unless_all() {
        let old = parse(Path::new("old.json"), r#"{"accuracy": 0.8, "loss": 0.5}"#).unwrap();
        let new = parse(Path::new("new.json"), r#"{"accuracy": 0.8, "loss": 0.4}"#).unwrap();
        let rows = diff_rows(&old, &new);
        assert_eq!(
            render_diff(&rows, false),
            "metric         old         new      change\nloss        0.5000      0.4000     -0.1000\n"
        );
        assert_eq!(
            render_diff(&rows, true),
            "metric           old         new      change\naccuracy      0.8000      0.8000     +0.0000\nloss          0.5000      0.4000     -0.1000\n"
        );
        assert_eq!(
            diff_json(&rows, false),
            r#"{"metrics":[{"change":-0.09999999999999998,"name":"loss","new":0.4,"old":0.5}],"schema":1}"#.to_owned() + "\n"
        );
        assert_eq!(
            render_diff(&diff_rows(&old, &old), false),
            "no metric changed (2 compared; `--all` lists them)\n"
        );
    }

    #[test]
    fn unrecognized_files_are_errors() {
        assert!(matches!(
            parse(Path::new("x.json"), "[1]"),
            Err(MetricsError::Unrecognized { .. })
        ));
        assert!(matches!(
            parse(Path::new("x.lock"), "not: [a lock"),
            Err(MetricsError::Unrecognized { .. })
        ));
    }
}
