//! Settings that are wrong only given the stage they read from.
//!
//! Contract: runs on the stages whose settings could be typed, with their inputs resolved;
//! each problem is labelled at the setting it names.

use std::collections::BTreeMap;

use super::Checked;
use crate::model::checks::Issue;
use crate::model::error::ModelError;
use crate::model::{InputSlot, StageId, StageSettings};

/// Settings that are wrong only given the stage they read from: an `evaluate` or `explain` of
/// a split its dataset never makes (it failed only after training, minutes in), and a `deploy`
/// gate with no metrics to check it against.
pub(super) fn check_across_stages(
    checked: &[Checked<'_>],
    inputs: &[BTreeMap<InputSlot, StageId>],
    errors: &mut Vec<ModelError>,
) {
    let settings_of = |id: &StageId| {
        checked
            .iter()
            .find(|stage| stage.id.value == id.as_str())
            .and_then(|stage| stage.settings.as_deref())
    };
    for (stage, inputs) in checked.iter().zip(inputs) {
        let split = match stage.settings.as_deref() {
            Some(StageSettings::Evaluate(evaluate)) => evaluate.split,
            Some(StageSettings::Explain(explain)) => explain.split,
            Some(StageSettings::Deploy(deploy)) => {
                if !deploy.require.is_empty() && !inputs.contains_key(&InputSlot::Metrics) {
                    errors.push(stage.issue_error(&stage.settings_node, Issue {
                        path: vec!["require".to_owned()],
                        message: "gates need metrics, but the stage has no `metrics` input".to_owned(),
                        label: "nothing to check these against".to_owned(),
                        help: "add `metrics: <evaluate stage>` under `inputs`, or remove `require`".to_owned(),
                    }));
                }
                continue;
            }
            _ => continue,
        };
        // The `ood` dataset of an `evaluate` is read at the same split as its `data`.
        for slot in [InputSlot::Data, InputSlot::Ood] {
            let Some(data) = inputs.get(&slot) else {
                continue;
            };
            let Some(StageSettings::PrepareData(prepare)) = settings_of(data) else {
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
