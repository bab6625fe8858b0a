//! `RawPipeline` → [`Pipeline`]: every check, every error collected in one pass.
//!
//! Contract: [`validate`] returns a pipeline only when it pushed no error, and pushes every
//! error it can find, in one pass. This file orchestrates; each concern has its own file:
//! `params.rs` (the `params:` block and `${params.…}` substitution, bounded), `stage.rs` (one
//! stage on its own: name, keys, kind, typed settings, range checks, `command` paths),
//! `outs.rs` (one producer per output, outputs over paths taper writes itself), `semantic.rs`
//! (settings that are wrong only given the stage they read from), and `edges.rs` (typed inputs
//! resolved and type-checked, the edges built with the one rule of `model/edges.rs`, cycles).
//!
//! Order of work, and why: top-level keys → params → each stage on its own → the edges between
//! stages (input slots, output clashes, implied `command` edges) → cycles. Stage-local checks
//! run for every stage even when another is broken, and edge checks skip only the edges whose
//! ends are unknown, so fixing one error never reveals a batch of new ones that were there all
//! along.

mod edges;
mod outs;
mod params;
mod semantic;
mod stage;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::checks::Issue;
use super::error::ModelError;
use super::{Pipeline, Stage, StageId, StageKind, StageSettings};
use crate::spec::{Key, Node, RawPipeline, ScalarValue, Span, Value};
use edges::{check_edges, resolve_inputs};
use outs::{check_output_clashes, check_outs};
use params::{check_params, Substitution};
use semantic::check_across_stages;
use stage::check_stage;

/// The keys a stage may have. `run`, `deps`, `outs`, `env`, `pass_env` and `metrics` belong to `command`
/// stages and sit at stage level (as in DVC); the other kinds take their settings under `with:`.
pub const STAGE_KEYS: [&str; 10] = [
    "kind",
    "description",
    "inputs",
    "with",
    "run",
    "deps",
    "outs",
    "env",
    "pass_env",
    "metrics",
];

/// A stage after its own checks, before the edges are checked.
struct Checked<'a> {
    id: &'a Key,
    kind: Option<StageKind>,
    kind_span: Span,
    /// Boxed: `StageSettings` is 280 bytes, and every stage has a `Checked`.
    settings: Option<Box<StageSettings>>,
    /// `(slot key, referenced stage)` as written.
    inputs: Vec<(&'a Key, &'a Node)>,
    inputs_span: Option<Span>,
    /// The settings of an ML stage as written (after substitution), to place errors found
    /// after typing (the stage itself for a command stage), and the key they sit under.
    settings_node: SettingsNode<'a>,
    settings_key_span: Span,
    /// Normalized paths the stage reads (a command's `deps`, an ML stage's `path:` sources)
    /// and a command's `outs`, with spans.
    deps: Vec<(PathBuf, Span)>,
    outs: Vec<(PathBuf, Span)>,
}

/// A stage's settings node: the file's own, or a copy with `${params.…}` substituted. Not a
/// `Cow`, which holds an owned `Node` inline: every stage has one, and most borrow.
enum SettingsNode<'a> {
    Written(&'a Node),
    Substituted(Box<Node>),
}

impl<'a> From<Cow<'a, Node>> for SettingsNode<'a> {
    fn from(node: Cow<'a, Node>) -> SettingsNode<'a> {
        match node {
            Cow::Borrowed(node) => SettingsNode::Written(node),
            Cow::Owned(node) => SettingsNode::Substituted(Box::new(node)),
        }
    }
}

impl std::ops::Deref for SettingsNode<'_> {
    type Target = Node;

    fn deref(&self) -> &Node {
        match self {
            SettingsNode::Written(node) => node,
            SettingsNode::Substituted(node) => node,
        }
    }
}

pub(crate) fn validate(
    raw: &RawPipeline,
    path: &Path,
    root: PathBuf,
    errors: &mut Vec<ModelError>,
) -> Option<Pipeline> {
    // Missing top-level keys are labelled at the first key of the file.
    let document_start = [
        &raw.version,
        &raw.name,
        &raw.description,
        &raw.params,
        &raw.stages,
    ]
    .into_iter()
    .flatten()
    .map(|(key, _)| key.span)
    .min_by_key(|span| span.start())
    .unwrap_or(raw.span);

    match &raw.version {
        None => errors.push(missing_top_level("version", "version: 1", document_start)),
        Some((_, node)) => {
            if node.as_scalar().map(|scalar| scalar.resolve()) != Some(ScalarValue::Int(1)) {
                errors.push(invalid(
                    format!("unsupported pipeline `version`: {}", node.describe()),
                    node,
                    "this taper reads version 1",
                    "write `version: 1`".to_owned(),
                ));
            }
        }
    }
    let name = match &raw.name {
        None => {
            errors.push(missing_top_level(
                "name",
                "name: my-pipeline",
                document_start,
            ));
            None
        }
        Some((_, node)) => string_value(node, "the pipeline `name`", errors),
    };
    let description = raw
        .description
        .as_ref()
        .and_then(|(_, node)| string_value(node, "the pipeline `description`", errors));

    let params = check_params(raw, errors);
    let substitution = Substitution::new(&params);

    let Some((stages_key, stages_node)) = &raw.stages else {
        errors.push(missing_top_level("stages", "stages:", document_start));
        return None;
    };
    let Some(stage_entries) = stages_node.as_map() else {
        errors.push(invalid(
            format!(
                "`stages` must be a mapping of stage names to stages, not {}",
                stages_node.describe()
            ),
            stages_node,
            "expected `<stage name>: { kind: …, … }` entries",
            "see `pipelines/quickstart.yaml` for the shape of a stage".to_owned(),
        ));
        return None;
    };
    if stage_entries.is_empty() && !raw.use_failed {
        errors.push(ModelError::MissingKey {
            key: "stages".to_owned(),
            place: "the pipeline".to_owned(),
            span: stages_key.span.into(),
            label: "no stages".to_owned(),
            help: "add at least one stage, e.g. `prepare: { kind: command, run: make data }`"
                .to_owned(),
        });
    }

    let checked: Vec<Checked<'_>> = stage_entries
        .iter()
        .map(|(id, body)| check_stage(id, body, &substitution, errors))
        .collect();

    let inputs = resolve_inputs(&checked, errors);
    let owned_outs = check_output_clashes(&checked, errors);
    check_outs(&checked, path, errors);
    check_across_stages(&checked, &inputs.by_slot, errors);
    let edges = check_edges(&checked, inputs.edges, owned_outs, path, errors);

    if !errors.is_empty() {
        return None;
    }
    // No errors means every stage was typed; a stage without settings would shift the
    // positions the edges refer to, so it fails the whole pipeline rather than being dropped.
    let stages: Vec<Stage> = checked
        .into_iter()
        .zip(inputs.by_slot)
        .map(|(stage, inputs)| {
            Some(Stage {
                id: StageId(stage.id.value.to_string()),
                settings: *stage.settings?,
                inputs,
            })
        })
        .collect::<Option<_>>()?;
    let dependencies = super::edges::dependencies(&edges, &stages);
    Some(Pipeline {
        name: name?,
        description,
        path: path.to_path_buf(),
        root,
        params: params
            .iter()
            .map(|(name, param)| (name.clone(), to_json(&param.node)))
            .collect(),
        stages,
        specs: raw.uses.clone(),
        dependencies,
    })
}

impl Checked<'_> {
    /// The error for a settings issue, labelled at the setting it names, or at the nearest
    /// block around it that is written (`adversarial:` for a missing `adversarial.alpha`; the
    /// `with` key when the whole setting was left to its default).
    fn issue_error(&self, settings_node: &Node, issue: Issue) -> ModelError {
        let node = (1..=issue.path.len())
            .rev()
            .find_map(|written| settings_node.lookup(&issue.path[..written]))
            .unwrap_or(settings_node);
        let span = if std::ptr::eq(node, settings_node) {
            self.settings_key_span
        } else {
            node.span
        };
        ModelError::InvalidValue {
            message: format!(
                "invalid `{}` in stage `{}`: {}",
                issue.path.join("."),
                self.id.value,
                issue.message
            ),
            span: span.into(),
            label: issue.label,
            param: node.from_param.as_deref().copied().map(Into::into),
            help: issue.help,
        }
    }
}

fn missing_top_level(key: &str, example: &str, span: Span) -> ModelError {
    ModelError::MissingKey {
        key: key.to_owned(),
        place: "the pipeline".to_owned(),
        span: span.into(),
        label: format!("the pipeline has no `{key}`"),
        help: format!("add `{example}` at the top level"),
    }
}

fn invalid(message: String, node: &Node, label: &str, help: String) -> ModelError {
    ModelError::InvalidValue {
        message,
        span: node.span.into(),
        label: label.to_owned(),
        param: node.from_param.as_deref().copied().map(Into::into),
        help,
    }
}

fn string_value(node: &Node, what: &str, errors: &mut Vec<ModelError>) -> Option<String> {
    match node.as_scalar() {
        Some(scalar) if scalar.resolve() != ScalarValue::Null => Some(scalar.text.to_string()),
        _ => {
            errors.push(invalid(
                format!("{what} must be text, not {}", node.describe()),
                node,
                "expected text",
                "write it on one line after the key, quoted if it contains `:` or `#`".to_owned(),
            ));
            None
        }
    }
}

fn to_json(node: &Node) -> serde_json::Value {
    match &node.value {
        Value::Scalar(scalar) => match scalar.resolve() {
            ScalarValue::Null => serde_json::Value::Null,
            ScalarValue::Bool(value) => serde_json::Value::Bool(value),
            ScalarValue::Int(value) => serde_json::Value::from(value),
            ScalarValue::Float(value) => serde_json::Number::from_f64(value).map_or_else(
                || serde_json::Value::String(scalar.text.to_string()),
                serde_json::Value::Number,
            ),
            ScalarValue::Str(text) => serde_json::Value::String(text.to_owned()),
        },
        Value::Seq(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(key, value)| (key.value.to_string(), to_json(value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests;
