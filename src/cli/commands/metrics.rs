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

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum MetricsError {
    #[error("cannot read `{path}`")]
    #[diagnostic(
        code(taper::metrics::read),
        help("pass an evaluate stage's `metrics.json`, a lock file or a pipeline file")
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is neither a `metrics.json` nor a lock file: {reason}")]
    #[diagnostic(
        code(taper::metrics::unrecognized),
        help("`taper metrics` reads `out/<evaluate stage>/metrics.json` or `<pipeline>.lock`")
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

pub fn run(args: &MetricsArgs, printer: &Printer) -> ExitStatus {
    let result = match (&args.command, &args.file) {
        (Some(MetricsCommand::Diff { new, old }), _) => diff(new, old.as_deref()),
        (None, Some(file)) => load(file).map(|source| show(&source)),
        (None, None) => Err(MetricsError::Usage),
    };
    match result {
        Ok(text) => {
            printer.data(&text);
            ExitStatus::Success
        }
        Err(error) => {
            // As for every command, a file that cannot be read is a usage error (2); one that
            // reads but holds no metrics is a failure (1).
            let status = match error {
                MetricsError::Usage | MetricsError::Read { .. } => ExitStatus::Error,
                MetricsError::Unrecognized { .. } | MetricsError::NoBaseline { .. } => {
                    ExitStatus::Failure
                }
            };
            printer.diagnostic(error);
            status
        }
    }
}

fn lock_path(path: &Path) -> PathBuf {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => LockFile::path_for(path),
        _ => path.to_path_buf(),
    }
}

pub fn load(path: &Path) -> Result<MetricsSource, MetricsError> {
    let path = lock_path(path);
    let text = std::fs::read_to_string(&path).map_err(|source| MetricsError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<MetricsSource, MetricsError> {
    if path.extension().is_some_and(|e| e == "json") {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| MetricsError::Unrecognized {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })?;
        let object = value
            .as_object()
            .ok_or_else(|| MetricsError::Unrecognized {
                path: path.to_path_buf(),
                reason: "expected a JSON object".to_owned(),
            })?;
        let mut values = BTreeMap::new();
        for (key, value) in object {
            if let Some(number) = value.as_f64() {
                values.insert(key.clone(), number);
            }
        }
        for class in object
            .get("per_class")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(label) = class.get("label").and_then(serde_json::Value::as_str) else {
                continue;
            };
            for metric in ["precision", "recall", "f1"] {
                if let Some(number) = class.get(metric).and_then(serde_json::Value::as_f64) {
                    values.insert(format!("{label}.{metric}"), number);
                }
            }
        }
        return Ok(MetricsSource {
            values,
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

/// `value`'s leaves (scalars) under dotted names: `{"a": {"b": 1}, "c": [2]}` → `a.b`, `c.0`.
pub(crate) fn flatten(
    prefix: &str,
    value: &serde_json::Value,
    out: &mut BTreeMap<String, serde_json::Value>,
) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                flatten(&join(key), child, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                flatten(&join(&index.to_string()), child, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf.clone());
        }
    }
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

fn diff(new: &Path, old: Option<&Path>) -> Result<String, MetricsError> {
    let new_source = load(new)?;
    let old_source = match old {
        Some(old) => load(old)?,
        None => {
            let lock = lock_path(new);
            if !new_source.from_lock {
                return Err(MetricsError::NoBaseline {
                    path: lock,
                    reason: "a `metrics.json` has no committed baseline".to_owned(),
                });
            }
            committed(&lock)?
        }
    };
    Ok(render_diff(&old_source, &new_source))
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

/// A table `metric  old  new  change`, one row per key of either side.
pub fn render_diff(old: &MetricsSource, new: &MetricsSource) -> String {
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
    let mut keys: Vec<&String> = old_values.keys().chain(new_values.keys()).collect();
    keys.sort();
    keys.dedup();
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(6).max(6);
    let mut out = format!(
        "{:<width$}  {:>10}  {:>10}  {:>10}\n",
        "metric", "old", "new", "change"
    );
    for key in keys {
        let old = old_values.get(key);
        let new = new_values.get(key);
        let show = |v: Option<&f64>| v.map_or_else(|| "-".to_owned(), |v| number(*v));
        let change = match (old, new) {
            (Some(a), Some(b)) => format!("{:+.4}", b - a),
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "{key:<width$}  {:>10}  {:>10}  {change:>10}\n",
            show(old),
            show(new)
        ));
    }
    out
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
            "accuracy       0.8500\nexamples       40\nmacro_f1       0.8000\nneg.f1         0.6429\nneg.precision  0.9000\nneg.recall     0.5000\n"
        );
    }

    #[test]
    fn diff_aligns_a_metrics_file_with_the_lock_stage() {
        let new = parse(Path::new("metrics.json"), METRICS).unwrap();
        let mut old = parse(Path::new("p.lock"), LOCK).unwrap();
        old.values.insert("test.accuracy".into(), 0.8);
        old.evaluate_stage = Some("test".into());
        let table = render_diff(&old, &new);
        assert!(
            table.starts_with("metric                     old         new      change\n"),
            "{table}"
        );
        assert!(
            table.contains("\ntest.accuracy           0.8000      0.8500     +0.0500\n"),
            "{table}"
        );
        assert!(
            table.contains("\ntest.macro_f1                -      0.8000           -\n"),
            "{table}"
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
