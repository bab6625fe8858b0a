//! Checks of settings that types cannot express (ranges, combinations). Each issue names the
//! path of the offending setting under the stage's settings, so validation can place it.

use super::stages::{
    is_env_name, Augment, Command, Robustness, Source, GATE_METRICS, MAX_AUGMENT_COPIES,
    MAX_ROBUSTNESS_DRAWS,
};
use super::StageSettings;
use crate::spec::suggestion_help;

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
        // `Configure::problems` owns these rules; the `configure` runner enforces the same list.
        StageSettings::Configure(configure) => {
            issues.extend(configure.problems().into_iter().map(|problem| Issue {
                path: problem.field.split('.').map(str::to_owned).collect(),
                message: problem.message,
                label: problem.label.to_owned(),
                help: problem.help,
            }));
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
            // Fractions are shares of the same rows: past 1 in total, the later splits would
            // take rows the earlier ones already have (or fail at run time, after the read).
            let fractions: f64 = sizes
                .iter()
                .filter_map(|(_, size)| *size)
                .filter(|size| *size > 0.0 && *size < 1.0)
                .sum();
            if fractions > 1.0 {
                issues.push(issue(
                    &["split"],
                    &format!("the split fractions add up to {fractions}, more than all the rows"),
                    "fractions over 1",
                    "make the fractions add up to at most 1, e.g. `train: 0.8, test: 0.2`",
                ));
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
            if let Some(augment) = &prepare.augment {
                issues.extend(augment_issues(augment));
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
            if select.layers == Some(0) {
                issues.push(issue(
                    &["layers"],
                    "must keep at least 1 layer",
                    "zero",
                    "e.g. `layers: 3` for half of a 6-layer model; remove it to keep all",
                ));
            }
        }
        StageSettings::Evaluate(evaluate) => {
            if evaluate.batch_size == 0 {
                issues.push(issue(
                    &["batch_size"],
                    "must be at least 1",
                    "zero",
                    "use e.g. 32",
                ));
            }
            if let Some(robustness) = &evaluate.robustness {
                issues.extend(robustness_issues(robustness));
            }
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
        StageSettings::Deploy(deploy) => {
            let names: Vec<&str> = GATE_METRICS.iter().map(|(name, _, _)| *name).collect();
            for (metric, threshold) in &deploy.require {
                let path = ["require", metric.as_str()];
                match GATE_METRICS.iter().find(|(name, _, _)| name == metric) {
                    None => issues.push(issue(
                        &path,
                        &format!("`{metric}` is not a metric that `evaluate` reports"),
                        "unknown metric",
                        &suggestion_help(metric, &names, "metric"),
                    )),
                    // NaN lies in no range, so `.nan` lands here too.
                    Some((_, low, high))
                        if !((*low..=*high).contains(threshold) && threshold.is_finite()) =>
                    {
                        issues.push(issue(
                            &path,
                            &format!("the minimum for `{metric}` must be a number from {low} to {high}, not {threshold}"),
                            "out of range",
                            &format!("`{metric}` lies in [{low}, {high}]: a minimum outside it could never pass or always would"),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        StageSettings::Train(_) => {}
    }
    issues
}

/// A rate is a probability; NaN lies in no range, so `.nan` is refused too.
fn is_rate(rate: f64) -> bool {
    (0.0..=1.0).contains(&rate)
}

fn augment_issues(augment: &Augment) -> Vec<Issue> {
    let mut issues = Vec::new();
    if !(1..=MAX_AUGMENT_COPIES).contains(&augment.copies) {
        issues.push(issue(
            &["augment", "copies"],
            &format!("must be between 1 and {MAX_AUGMENT_COPIES}"),
            "out of range",
            "each copy adds one perturbed example per training example; 1 to 4 is typical",
        ));
    }
    let rates = augment.ops.rates();
    for (name, rate) in rates {
        if !is_rate(rate) {
            issues.push(issue(
                &["augment", "ops", name],
                &format!("must be a rate from 0 to 1, not {rate}"),
                "out of range",
                "a rate is the share of words (or letters, for `typo`) an op changes, e.g. 0.1",
            ));
        }
    }
    if rates.iter().all(|(_, rate)| *rate == 0.0) {
        issues.push(issue(
            &["augment", "ops"],
            "gives no op a rate above 0, so nothing would be augmented",
            "no ops",
            "write e.g. `ops: { delete: 0.1, swap: 0.1, insert: 0.1, typo: 0.05 }`, or remove `augment`",
        ));
    }
    issues
}

fn robustness_issues(robustness: &Robustness) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (name, rate) in [("typo", robustness.typo), ("delete", robustness.delete)] {
        if let Some(rate) = rate {
            if !(is_rate(rate) && rate > 0.0) {
                issues.push(issue(
                    &["robustness", name],
                    &format!("must be a rate above 0 and at most 1, not {rate}"),
                    "out of range",
                    &format!("e.g. `{name}: 0.05`; leave `{name}` out to skip this perturbation"),
                ));
            }
        }
    }
    if !(1..=MAX_ROBUSTNESS_DRAWS).contains(&robustness.draws) {
        issues.push(issue(
            &["robustness", "draws"],
            &format!(
                "must be from 1 to {MAX_ROBUSTNESS_DRAWS}, not {}",
                robustness.draws
            ),
            "out of range",
            "each draw is one inference pass over the split per kind; 5 steadies the drop",
        ));
    }
    if robustness.typo.is_none() && robustness.delete.is_none() && !robustness.casing {
        issues.push(issue(
            &["robustness"],
            "names no perturbation",
            "nothing to perturb",
            "give at least one of `typo`, `delete` and `casing: true`, e.g. `robustness: { typo: 0.05 }`",
        ));
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
