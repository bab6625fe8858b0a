//! One stage on its own: its name, keys and kind, its settings typed (with `${params.…}`
//! substituted) and range-checked, and a `command` stage's `deps`/`outs` normalized.
//!
//! Contract: [`check_stage`] reports every problem of the stage and returns what it could
//! read ([`Checked`]), even from a broken stage, so the checks across stages still run. Every
//! bad field of a settings block is reported, not only the first; a range check on a field that
//! already failed to read is not repeated.

use std::borrow::Cow;

use serde::de::DeserializeOwned;

use super::params::{mentions_param, substitute, Substitution, UNRESOLVED};
use super::{invalid, string_value, Checked, SettingsNode, STAGE_KEYS};
use crate::model::de::{from_node, DeError, UnknownField};
use crate::model::error::ModelError;
use crate::model::paths::{is_strictly_inside, normalize};
use crate::model::{Command, StageKind, StageSettings};
use crate::spec::{
    did_you_mean, suggestion_help, Key, Node, ScalarStyle, ScalarValue, Span, Value,
};

const COMMAND_KEYS: [&str; 6] = ["run", "deps", "outs", "env", "pass_env", "metrics"];

fn is_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric())
        && chars
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '-'))
}

pub(super) fn check_stage<'a>(
    id: &'a Key,
    body: &'a Node,
    params: &Substitution<'_>,
    errors: &mut Vec<ModelError>,
) -> Checked<'a> {
    let mut checked = Checked {
        id,
        kind: None,
        kind_span: id.span,
        settings: None,
        inputs: Vec::new(),
        inputs_span: None,
        settings_node: SettingsNode::Written(body),
        settings_key_span: id.span,
        deps: Vec::new(),
        outs: Vec::new(),
    };
    if !is_stage_name(&id.value) {
        errors.push(ModelError::InvalidStageName {
            stage: id.value.to_string(),
            span: id.span.into(),
        });
    }
    let Some(entries) = body.as_map() else {
        errors.push(invalid(
            format!("stage `{}` must be a mapping with a `kind`, not {}", id.value, body.describe()),
            body,
            "expected `kind: …` and its settings",
            "write e.g. `train: { kind: train, inputs: { model: base, data: reviews, config: hparams } }`".to_owned(),
        ));
        return checked;
    };
    let place = format!("stage `{}`", id.value);

    // The kind first: which other keys are allowed depends on it.
    match body.get("kind") {
        None => errors.push(ModelError::MissingKey {
            key: "kind".to_owned(),
            place: place.clone(),
            span: id.span.into(),
            label: "this stage has no `kind`".to_owned(),
            help: format!("add `kind: <kind>`, one of {}", kind_list()),
        }),
        Some(node) => {
            checked.kind_span = node.span;
            match node
                .as_scalar()
                .filter(|scalar| scalar.style != ScalarStyle::Block)
            {
                Some(scalar) => match StageKind::from_name(&scalar.text) {
                    Some(kind) => checked.kind = Some(kind),
                    None => errors.push(ModelError::UnknownKind {
                        kind: scalar.text.to_string(),
                        stage: id.value.to_string(),
                        span: node.span.into(),
                        help: match did_you_mean(
                            &scalar.text,
                            StageKind::ALL.iter().map(|kind| kind.as_str()),
                        ) {
                            Some(best) => format!("did you mean `{best}`?"),
                            None => format!("the kinds are {}", kind_list()),
                        },
                    }),
                },
                None => errors.push(invalid(
                    format!(
                        "the `kind` of stage `{}` must be a name, not {}",
                        id.value,
                        node.describe()
                    ),
                    node,
                    "expected a stage kind",
                    format!("the kinds are {}", kind_list()),
                )),
            }
        }
    }

    for (key, value) in entries {
        let name = key.value.as_str();
        if !STAGE_KEYS.contains(&name) {
            errors.push(ModelError::UnknownKey {
                key: key.value.to_string(),
                place: place.clone(),
                span: key.span.into(),
                label: "not a stage key".to_owned(),
                help: suggestion_help(name, &STAGE_KEYS, "stage key"),
            });
            continue;
        }
        let Some(kind) = checked.kind else { continue };
        let misplaced = match (kind, name) {
            (StageKind::Command, "with") => Some((
                "`command` stages take `run`, `deps`, `outs` and `env` at stage level".to_owned(),
                "move these settings up one level, next to `kind: command`".to_owned(),
            )),
            (StageKind::Command, "inputs") => Some((
                "`command` stages have no typed inputs".to_owned(),
                "list the files it reads under `deps`; a dep under another stage's `outs` (or `out/<stage>/`) is an edge".to_owned(),
            )),
            (StageKind::Command, _) => None,
            (_, "run" | "deps" | "outs" | "env" | "pass_env" | "metrics") => Some((
                format!("`{name}` applies only to `command` stages"),
                format!("`{kind}` stages take their settings under `with:`; for a shell step, add a `kind: command` stage"),
            )),
            _ => None,
        };
        if let Some((label, help)) = misplaced {
            errors.push(ModelError::UnknownKey {
                key: key.value.to_string(),
                place: format!("`{kind}` stage `{}`", id.value),
                span: key.span.into(),
                label,
                help,
            });
        }
        if name == "inputs" && kind != StageKind::Command {
            checked.inputs_span = Some(key.span);
            match value.as_map() {
                Some(inputs) => {
                    checked.inputs = inputs
                        .iter()
                        .map(|(slot, reference)| (slot, reference))
                        .collect()
                }
                None => errors.push(invalid(
                    format!(
                        "`inputs` of stage `{}` must be a mapping of input to stage, not {}",
                        id.value,
                        value.describe()
                    ),
                    value,
                    "expected `{ slot: stage }`",
                    format!("write e.g. `inputs: {{ {} }}`", example_inputs(kind)),
                )),
            }
        }
    }
    if let Some(node) = body.get("description") {
        string_value(node, "a stage `description`", errors);
    }

    let Some(kind) = checked.kind else {
        return checked;
    };
    // Settings are read from the file's own nodes; only a block that uses `${params.…}` is
    // copied, to substitute into. Copying every block doubled the tree (a copy of each
    // `deps` list) while the stages were typed.
    let settings_node: Cow<'a, Node> = if kind == StageKind::Command {
        let is_setting = |key: &Key| COMMAND_KEYS.contains(&key.value.as_str());
        if entries
            .iter()
            .any(|(key, value)| is_setting(key) && mentions_param(value))
        {
            let mut command_entries: Vec<(Key, Node)> = entries
                .iter()
                .filter(|(key, _)| is_setting(key))
                .cloned()
                .collect();
            for (_, value) in &mut command_entries {
                substitute(value, params, errors);
            }
            Cow::Owned(Node {
                span: id.span,
                value: Value::Map(command_entries),
                from_param: None,
            })
        } else {
            // The stage's other keys (`kind`, …) are not `Command` fields; `typed` leaves
            // them to the stage-key checks above.
            Cow::Borrowed(body)
        }
    } else {
        // `with:` left empty (null) means "all defaults", like no `with` at all.
        match body.get("with").filter(|node| {
            node.as_scalar().map(crate::spec::Scalar::resolve) != Some(ScalarValue::Null)
        }) {
            Some(with) if mentions_param(with) => {
                let mut with = with.clone();
                substitute(&mut with, params, errors);
                Cow::Owned(with)
            }
            Some(with) => Cow::Borrowed(with),
            None => Cow::Owned(Node::empty_map(id.span)),
        }
    };
    let key_span = entries
        .iter()
        .find(|(key, _)| key.value == "with")
        .map_or(id.span, |(key, _)| key.span);
    let typed = match kind {
        StageKind::SelectModel => {
            typed(&settings_node, key_span, id, kind, errors).map(StageSettings::SelectModel)
        }
        StageKind::PrepareData => typed(&settings_node, key_span, id, kind, errors)
            .map(|settings| StageSettings::PrepareData(Box::new(settings))),
        StageKind::Configure => typed(&settings_node, key_span, id, kind, errors)
            .map(|settings| StageSettings::Configure(Box::new(settings))),
        StageKind::Train => {
            typed(&settings_node, key_span, id, kind, errors).map(StageSettings::Train)
        }
        StageKind::Evaluate => {
            typed(&settings_node, key_span, id, kind, errors).map(StageSettings::Evaluate)
        }
        StageKind::Explain => {
            typed(&settings_node, key_span, id, kind, errors).map(StageSettings::Explain)
        }
        StageKind::Deploy => {
            typed(&settings_node, key_span, id, kind, errors).map(StageSettings::Deploy)
        }
        StageKind::Command => {
            typed::<Command>(&settings_node, id.span, id, kind, errors).map(|mut command| {
                normalize_command_paths(&mut command, &settings_node, &mut checked, errors);
                StageSettings::Command(command)
            })
        }
    };
    checked.settings_key_span = key_span;
    // A `path:` source is read like a `command` dep: one under another stage's outputs is an
    // edge (a model trained upstream, a split it wrote), so it must wait for that stage and
    // key on what it produced, not on what an earlier run left on disk.
    if kind != StageKind::Command {
        if let Some(settings) = &typed.value {
            let read = settings.read_paths();
            checked
                .deps
                .extend(read.into_iter().map(|path| (path, key_span)));
        }
    }
    // Range checks run on what could be read even when a value was wrong (that entry then has
    // its default), so a block with a wrong type and an out-of-range value reports both; an
    // issue about a left-out entry would only repeat its error.
    if let Some(settings) = &typed.value {
        for issue in crate::model::checks::check(settings) {
            if !typed.skips(&settings_node, &issue.path) {
                errors.push(checked.issue_error(&settings_node, issue));
            }
        }
    }
    // A command stage's settings are needed only for the checks above. Settings of ML stages
    // stay for the checks across stages (`semantic.rs`).
    if kind != StageKind::Command {
        checked.settings_node = settings_node.into();
    }
    // A pipeline with an error is never built, and a `command` stage's settings are read
    // only to build it (the checks across stages read ML settings): once the file has an
    // error they are dropped, which was a fifth of the memory of 150,000 broken stages.
    let needed = kind != StageKind::Command || errors.is_empty();
    checked.settings = typed.value.filter(|_| typed.valid && needed).map(Box::new);
    checked
}

/// Settings read from a node: valid, or with errors (already reported) and the value read
/// without the entries that hold them.
struct Typed<T> {
    value: Option<T>,
    valid: bool,
    skipped: Vec<Span>,
}

impl<T> Typed<T> {
    fn map<U>(self, convert: impl FnOnce(T) -> U) -> Typed<U> {
        Typed {
            value: self.value.map(convert),
            valid: self.valid,
            skipped: self.skipped,
        }
    }

    /// Whether the setting at `path` under `node` is, or is inside, a left-out entry.
    fn skips(&self, node: &Node, path: &[String]) -> bool {
        let mut node = node;
        for step in path {
            let next = match &node.value {
                Value::Map(entries) => entries.iter().find(|(key, _)| key.value == step),
                Value::Seq(_) | Value::Scalar(_) => None,
            };
            match next {
                Some((key, _)) if self.skipped.contains(&key.span) => return true,
                Some((_, value)) => node = value,
                None => match node.lookup(std::slice::from_ref(step)) {
                    Some(item) => node = item,
                    None => return false,
                },
            }
        }
        false
    }
}

fn normalize_command_paths(
    command: &mut Command,
    node: &Node,
    checked: &mut Checked<'_>,
    errors: &mut Vec<ModelError>,
) {
    let mut metrics = Vec::new();
    // Exact capacities: grown by pushes, a one-dep stage's list had room for four, which was
    // a tenth of the memory of validating a 50,000-stage chain.
    checked.deps.reserve_exact(command.deps.len());
    checked
        .outs
        .reserve_exact(command.outs.len() + command.metrics.len());
    for (list, field) in [
        (&mut command.deps, "deps"),
        (&mut command.outs, "outs"),
        (&mut command.metrics, "metrics"),
    ] {
        for (index, path) in list.iter_mut().enumerate() {
            let span = node
                .lookup(&[field.to_owned(), index.to_string()])
                .map_or(checked.id.span, |item| item.span);
            let normalized = normalize(path);
            if field != "deps" && !is_strictly_inside(&normalized) {
                errors.push(ModelError::InvalidValue {
                    message: format!("output `{}` of stage `{}` is outside the pipeline directory", path.display(), checked.id.value),
                    span: span.into(),
                    label: "not inside the pipeline directory".to_owned(),
                    param: None,
                    help: "outputs are cached and restored, so they must be relative paths inside the pipeline's directory".to_owned(),
                });
                // Reported once: kept out of the overlap checks, where `.` (the empty path)
                // would also "overlap" every other out of the stage.
                *path = normalized;
                continue;
            }
            *path = normalized.clone();
            match field {
                "deps" => checked.deps.push((normalized, span)),
                "outs" => checked.outs.push((normalized, span)),
                _ => metrics.push((normalized, span)),
            }
        }
    }
    // A metrics file is an output: one inside a declared out is already cached with it; any
    // other becomes an out of its own, so it is cleared, checked, cached and restored like one.
    for (path, span) in metrics {
        if !command.outs.iter().any(|out| path.starts_with(out)) {
            command.outs.push(path.clone());
            checked.outs.push((path, span));
        }
    }
}

fn typed<T: DeserializeOwned>(
    node: &Node,
    key_span: Span,
    id: &Key,
    kind: StageKind,
    errors: &mut Vec<ModelError>,
) -> Typed<T> {
    let outcome = from_node::<T>(node, Some(key_span));
    let place = format!("the settings of `{kind}` stage `{}`", id.value);
    // A `command` stage's settings are read from the stage itself, whose keys the stage-key
    // checks already reported on; its other keys (`kind`, `description`…) are not settings.
    let unknown = if kind == StageKind::Command {
        Vec::new()
    } else {
        outcome.unknown
    };
    for UnknownField {
        key,
        span,
        expected,
    } in unknown
    {
        errors.push(ModelError::UnknownKey {
            help: suggestion_help(&key, expected, "setting"),
            key,
            place: place.clone(),
            span: span.into(),
            label: "not a setting of this stage kind".to_owned(),
        });
    }
    let valid = outcome.errors.is_empty();
    for error in outcome.errors {
        let at_unresolved = error
            .span
            .and_then(|span| path_to(node, span))
            .and_then(|path| node.lookup(&path))
            .and_then(Node::as_scalar)
            .is_some_and(|scalar| scalar.text == UNRESOLVED);
        if !at_unresolved {
            errors.push(setting_error(error, node, id, kind));
        }
    }
    Typed {
        value: outcome.value,
        valid,
        skipped: outcome.skipped,
    }
}

fn setting_error(error: DeError, root: &Node, id: &Key, kind: StageKind) -> ModelError {
    let DeError {
        message,
        help,
        span,
        from_param,
        ..
    } = error;
    let span = span.unwrap_or(id.span);
    let location = path_to(root, span)
        .filter(|path| !path.is_empty())
        .map(|path| format!(", `{}`", path.join(".")))
        .unwrap_or_default();
    let is_missing = message.starts_with("missing setting");
    let help = match (help, from_param) {
        (_, Some(_)) => "the value comes from a param: change the param's value, or use the param only where its type fits".to_owned(),
        (Some(help), None) => help,
        (None, None) => format!("see the `{kind}` settings in docs/spec.md"),
    };
    ModelError::InvalidValue {
        message: format!("in stage `{}`{location}: {message}", id.value),
        span: span.into(),
        label: if is_missing {
            "required here".to_owned()
        } else {
            "invalid value".to_owned()
        },
        param: from_param.map(Into::into),
        help,
    }
}

/// The key path from `root` to the node (or key) at `span`, for messages.
fn path_to(root: &Node, span: Span) -> Option<Vec<String>> {
    if root.span == span {
        return Some(Vec::new());
    }
    match &root.value {
        Value::Scalar(_) => None,
        Value::Seq(items) => items.iter().enumerate().find_map(|(index, item)| {
            let mut path = path_to(item, span)?;
            path.insert(0, index.to_string());
            Some(path)
        }),
        Value::Map(entries) => entries.iter().find_map(|(key, value)| {
            if key.span == span {
                return Some(vec![key.value.to_string()]);
            }
            let mut path = path_to(value, span)?;
            path.insert(0, key.value.to_string());
            Some(path)
        }),
    }
}

fn example_inputs(kind: StageKind) -> String {
    kind.input_slots()
        .iter()
        .map(|(slot, _, _)| format!("{slot}: <stage>"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind_list() -> String {
    StageKind::ALL
        .iter()
        .map(|kind| format!("`{kind}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
