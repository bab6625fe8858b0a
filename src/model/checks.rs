//! Checks of settings that types cannot express (ranges, combinations). Each issue names the
//! path of the offending setting under the stage's settings, so validation can place it.

use super::stages::{is_env_name, Command, Method, Source};
use super::StageSettings;

pub(crate) struct Issue {
    pub path: Vec<String>,
    pub message: String,
    pub label: String,
    pub help: String,
}

fn issue(path: &[&str], message: &str, label: &str, help: &str) -> Issue {
    Issue {
        path: path.iter().map(|part| (*part).to_owned()).collect(),
        message: message.to_owned(),
        label: label.to_owned(),
        help: help.to_owned(),
    }
}

pub(crate) fn check(settings: &StageSettings) -> Vec<Issue> {
    let mut issues = Vec::new();
    match settings {
        StageSettings::Configure(configure) => {
            if !(configure.learning_rate > 0.0 && configure.learning_rate.is_finite()) {
                issues.push(issue(
                    &["learning_rate"],
                    "must be a positive number",
                    "not positive",
                    "typical values are 1e-5 to 5e-4",
                ));
            }
            for (name, value) in [
                ("epochs", configure.epochs),
                ("batch_size", configure.batch_size),
                ("gradient_accumulation", configure.gradient_accumulation),
                ("checkpoint_every", configure.checkpoint_every),
            ] {
                if value == 0 {
                    issues.push(issue(
                        &[name],
                        "must be at least 1",
                        "zero",
                        "use 1 or more",
                    ));
                }
            }
            for (name, value) in [
                ("warmup_ratio", configure.warmup_ratio),
                ("dropout", configure.dropout),
            ] {
                if !(0.0..1.0).contains(&value) {
                    issues.push(issue(
                        &[name],
                        "must be in [0, 1)",
                        "out of range",
                        "a fraction such as 0.1",
                    ));
                }
            }
            if configure.weight_decay < 0.0 {
                issues.push(issue(
                    &["weight_decay"],
                    "must not be negative",
                    "negative",
                    "typical values are 0 to 0.1",
                ));
            }
            if let Method::Lora { r: 0, .. } = configure.method {
                issues.push(issue(
                    &["method", "r"],
                    "the LoRA rank must be at least 1",
                    "zero rank",
                    "typical ranks are 4 to 16",
                ));
            }
            // The remaining rules (combinations such as early stopping with one epoch) live in
            // `Configure::problems`, which the `configure` runner also enforces.
            for (field, message) in configure.problems() {
                let path: Vec<&str> = field.split('.').collect();
                if !issues.iter().any(|known| known.path == path) {
                    issues.push(issue(
                        &path,
                        message.as_str(),
                        "invalid",
                        "see `taper schema` for the allowed values",
                    ));
                }
            }
        }
        StageSettings::PrepareData(prepare) => {
            let split = &prepare.split;
            let sizes = [
                ("train", split.train),
                ("validation", split.validation),
                ("test", split.test),
            ];
            if split.files.is_some() && sizes.iter().any(|(_, size)| size.is_some()) {
                issues.push(issue(
                    &["split", "files"],
                    "give either split sizes or split files, not both",
                    "files and sizes",
                    "remove `files` to split one table, or the sizes to use pre-split files",
                ));
            }
            if split.files.is_none() && split.train.is_none() {
                issues.push(issue(
                    &["split"],
                    "needs a `train` size (a count, or a fraction below 1)",
                    "no train split",
                    "write e.g. `split: { train: 2000, test: 1000, seed: 42 }`",
                ));
            }
            for (name, size) in sizes {
                if let Some(size) = size {
                    if !(size > 0.0 && size.is_finite()) || (size > 1.0 && size.fract() != 0.0) {
                        issues.push(issue(
                            &["split", name],
                            "must be a positive count or a fraction below 1",
                            "invalid size",
                            "write a count such as 2000 or a fraction such as 0.8",
                        ));
                    }
                }
            }
            if !(2..=512).contains(&prepare.max_length) {
                issues.push(issue(
                    &["max_length"],
                    "must be between 2 and 512 tokens",
                    "out of range",
                    "BERT-family models take at most 512 tokens; 64 or 128 is typical",
                ));
            }
            if let Some(labels) = &prepare.labels {
                for (index, label) in labels.iter().enumerate() {
                    if labels[..index].contains(label) {
                        issues.push(issue(
                            &["labels", &index.to_string()],
                            "lists a label twice",
                            "duplicate label",
                            "each label gets one id; remove the duplicate",
                        ));
                    }
                }
                if labels.len() < 2 {
                    issues.push(issue(
                        &["labels"],
                        "needs at least two labels",
                        "too few labels",
                        "a classifier needs two or more classes",
                    ));
                }
            }
            for (index, filter) in prepare.filter.iter().enumerate() {
                if filter.is_in.is_some() == filter.not_in.is_some() {
                    issues.push(issue(
                        &["filter", &index.to_string()],
                        "a filter takes exactly one of `in` and `not_in`",
                        "ambiguous filter",
                        "write `{ column: category, not_in: [plot] }`",
                    ));
                }
            }
        }
        StageSettings::SelectModel(select) => {
            if let Source::Url { .. } = select.source {
                issues.push(issue(
                    &["source"],
                    "models cannot come from a `url`",
                    "unsupported source",
                    "use `path`, `pip` or `hf` for a model",
                ));
            }
        }
        StageSettings::Evaluate(evaluate) if evaluate.batch_size == 0 => {
            issues.push(issue(
                &["batch_size"],
                "must be at least 1",
                "zero",
                "use e.g. 32",
            ));
        }
        StageSettings::Explain(explain) => {
            if explain.examples == 0 || explain.steps == 0 {
                let field = if explain.examples == 0 {
                    "examples"
                } else {
                    "steps"
                };
                issues.push(issue(
                    &[field],
                    "must be at least 1",
                    "zero",
                    "e.g. `examples: 20`, `steps: 32`",
                ));
            }
        }
        StageSettings::Command(command) => {
            if command.run.trim().is_empty() {
                issues.push(issue(
                    &["run"],
                    "must not be empty",
                    "empty command",
                    "write the shell command to run, e.g. `run: python3 report.py`",
                ));
            }
            issues.extend(pass_env_issues(command));
        }
        StageSettings::Evaluate(_) | StageSettings::Train(_) | StageSettings::Deploy(_) => {}
    }
    issues
}

/// `pass_env` names must be variable names, listed once, and not also set under `env:` (which
/// of the two would win is exactly the ambiguity that leaks a secret into the lock file).
fn pass_env_issues(command: &Command) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (index, name) in command.pass_env.iter().enumerate() {
        let at = ["pass_env", &index.to_string()];
        if !is_env_name(name) {
            issues.push(issue(
                &at,
                &format!("`{name}` is not an environment variable name"),
                "not a variable name",
                "use letters, digits and `_`, not starting with a digit, e.g. `HF_TOKEN`",
            ));
        } else if command.env.contains_key(name) {
            issues.push(issue(
                &at,
                &format!("`{name}` is also set under `env`"),
                "also in `env`",
                &format!("keep `{name}` in one place: `pass_env` to take it from taper's environment, or `env` to commit its value"),
            ));
        } else if command.pass_env[..index].contains(name) {
            issues.push(issue(
                &at,
                &format!("`{name}` is listed twice"),
                "duplicate",
                "list each variable once",
            ));
        }
    }
    issues
}
