//! Settings that are wrong only given the stage they read from.
//!
//! Contract: runs on the stages whose settings could be typed, with their inputs resolved;
//! each problem is labelled at the setting it names.

use std::collections::BTreeMap;

use super::Checked;
use crate::model::checks::Issue;
use crate::model::error::ModelError;
use crate::model::stages::Precision;
use crate::model::{InputSlot, StageId, StageSettings};

/// Settings that are wrong only given the stage they read from: an `evaluate` or `explain` of
/// a split its dataset never makes (it failed only after training, minutes in), a `deploy`
/// gate with no metrics to check it against, and a `train` stage's teacher (`check_teacher`).
pub(super) fn check_across_stages(
    checked: &[Checked<'_>],
    inputs: &[BTreeMap<InputSlot, StageId>],
    errors: &mut Vec<ModelError>,
) {
    for (stage, stage_inputs) in checked.iter().zip(inputs) {
        let split = match stage.settings.as_deref() {
            Some(StageSettings::Train(_)) => {
                check_teacher(stage, stage_inputs, checked, inputs, errors);
                continue;
            }
            Some(StageSettings::Evaluate(evaluate)) => evaluate.split,
            Some(StageSettings::Explain(explain)) => explain.split,
            Some(StageSettings::Deploy(deploy)) => {
                if !deploy.require.is_empty() && !stage_inputs.contains_key(&InputSlot::Metrics) {
                    errors.push(stage.issue_error(&stage.settings_node, Issue {
                        path: vec!["require".to_owned()],
                        message: "gates need metrics, but the stage has no `metrics` input".to_owned(),
                        label: "nothing to check these against".to_owned(),
                        help: "add `metrics: <evaluate stage>` under `inputs`, or remove `require`".to_owned(),
                    }));
                }
                let missing: Vec<&str> = [InputSlot::Metrics, InputSlot::Data]
                    .into_iter()
                    .filter(|slot| !stage_inputs.contains_key(slot))
                    .map(InputSlot::as_str)
                    .collect();
                if deploy.precision == Precision::Int8 && !missing.is_empty() {
                    errors.push(stage.issue_error(&stage.settings_node, Issue {
                        path: vec!["precision".to_owned()],
                        message: format!(
                            "`precision: int8` evaluates the quantized model again, but the stage has no `{}` input",
                            missing.join("` or `")
                        ),
                        label: "nothing to evaluate the int8 model on".to_owned(),
                        help: "add `metrics: <evaluate stage>` and `data: <prepare-data stage>` under `inputs` (the int8 model is scored on the split the evaluate stage scored)".to_owned(),
                    }));
                }
                continue;
            }
            _ => continue,
        };
        // The `ood` dataset of an `evaluate` is read at the same split as its `data`.
        for slot in [InputSlot::Data, InputSlot::Ood] {
            let Some(data) = stage_inputs.get(&slot) else {
                continue;
            };
            let Some(StageSettings::PrepareData(prepare)) = settings_of(checked, data) else {
                continue;
            };
            let made = prepare.split.made();
            if made.contains(&split) {
                continue;
            }
            let names: Vec<String> = made
                .iter()
                .map(|name| format!("`{}`", name.as_str()))
                .collect();
            errors.push(stage.issue_error(
                &stage.settings_node,
                Issue {
                    path: vec!["split".to_owned()],
                    message: format!("stage `{data}` makes no `{}` split", split.as_str()),
                    label: "a split the data stage does not make".to_owned(),
                    help: format!(
                    "`{data}` makes {}; use one of those, or add `{}` to the `split` of `{data}`",
                    names.join(", "),
                    split.as_str()
                ),
                },
            ));
        }
    }
}

fn settings_of<'s>(checked: &'s [Checked<'_>], id: &StageId) -> Option<&'s StageSettings> {
    checked
        .iter()
        .find(|stage| stage.id.value == id.as_str())
        .and_then(|stage| stage.settings.as_deref())
}

/// A `train` stage distils exactly when its `configure` stage sets `distillation` and it has
/// a `teacher` input; the teacher must have been trained on the same labels (compared when
/// both data stages name their labels; otherwise `train` compares label counts at run time).
fn check_teacher(
    stage: &Checked<'_>,
    inputs: &BTreeMap<InputSlot, StageId>,
    checked: &[Checked<'_>],
    all_inputs: &[BTreeMap<InputSlot, StageId>],
    errors: &mut Vec<ModelError>,
) {
    let Some(config) = inputs.get(&InputSlot::Config) else {
        return;
    };
    let Some(StageSettings::Configure(configure)) = settings_of(checked, config) else {
        return;
    };
    let teacher_reference = stage
        .inputs
        .iter()
        .find(|(key, _)| key.value == InputSlot::Teacher.as_str())
        .map(|(_, reference)| reference.span);
    match (configure.distillation.is_some(), inputs.get(&InputSlot::Teacher)) {
        (true, None) => errors.push(ModelError::MissingInput {
            kind: "train".to_owned(),
            stage: stage.id.value.to_string(),
            slot: InputSlot::Teacher.to_string(),
            expected: format!("a trained model, because `{config}` sets `distillation`"),
            span: stage.inputs_span.unwrap_or(stage.id.span).into(),
            help: format!(
                "add `teacher: <train stage>` under `inputs`, or remove `distillation` from `{config}`"
            ),
        }),
        (false, Some(teacher)) => {
            if let Some(span) = teacher_reference {
                errors.push(ModelError::InvalidValue {
                    message: format!(
                        "stage `{}` has a `teacher` input, but `{config}` sets no `distillation`",
                        stage.id.value
                    ),
                    span: span.into(),
                    label: format!("`{teacher}` would not be used"),
                    param: None,
                    help: format!(
                        "add `distillation: {{ temperature: 2.0, weight: 0.5 }}` to `{config}`, or remove the `teacher` input"
                    ),
                });
            }
        }
        (true, Some(teacher)) => {
            let labels_of = |train: &StageId| {
                let position = checked
                    .iter()
                    .position(|stage| stage.id.value == train.as_str())?;
                let data = all_inputs.get(position)?.get(&InputSlot::Data)?;
                match settings_of(checked, data)? {
                    StageSettings::PrepareData(prepare) => {
                        Some((data.clone(), prepare.labels.clone()?))
                    }
                    _ => None,
                }
            };
            let student = inputs
                .get(&InputSlot::Data)
                .and_then(|data| match settings_of(checked, data) {
                    Some(StageSettings::PrepareData(prepare)) => {
                        Some((data.clone(), prepare.labels.clone()?))
                    }
                    _ => None,
                });
            if let (Some((teacher_data, theirs)), Some((data, ours)), Some(span)) =
                (labels_of(teacher), student, teacher_reference)
            {
                if theirs != ours {
                    errors.push(ModelError::InvalidValue {
                        message: format!(
                            "teacher `{teacher}` was trained on the labels [{}] of `{teacher_data}`, but `{}` trains on [{}] of `{data}`",
                            theirs.join(", "),
                            stage.id.value,
                            ours.join(", ")
                        ),
                        span: span.into(),
                        label: "a teacher with other labels".to_owned(),
                        param: None,
                        help: "distil from a model trained on the same labels, in the same order".to_owned(),
                    });
                }
            }
        }
        (false, None) => {}
    }
}
