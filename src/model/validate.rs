//! `RawPipeline` → [`Pipeline`]: every check, every error collected in one pass.
//!
//! Order of work, and why: top-level keys → params → each stage on its own (name, keys,
//! kind, `${params.…}` substitution, typed settings) → the edges between stages (input slots,
//! implied `command` edges, output clashes) → cycles. Stage-local checks run for every stage
//! even when another is broken, and edge checks skip only the edges whose ends are unknown,
//! so fixing one error never reveals a batch of new ones that were there all along.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use miette::LabeledSpan;
use serde::de::DeserializeOwned;

use super::checks::Issue;
use super::de::{from_node, DeError, UnknownField};
use super::edges::{self, Edge, StageEnds};
use super::error::ModelError;
use super::paths::{is_strictly_inside, normalize, PathIndex};
use super::{ArtifactKind, Command, InputSlot, Pipeline, Stage, StageId, StageKind, StageSettings};
use crate::spec::{
    abbreviate, did_you_mean, suggestion_help, Key, Node, RawPipeline, Resolved, ScalarStyle, Span,
    Value,
};

/// The keys a stage may have. `run`, `deps`, `outs`, `env` and `pass_env` belong to `command`
/// stages and sit at stage level (as in DVC); the other kinds take their settings under `with:`.
pub const STAGE_KEYS: [&str; 9] = [
    "kind",
    "description",
    "inputs",
    "with",
    "run",
    "deps",
    "outs",
    "env",
    "pass_env",
];
const COMMAND_KEYS: [&str; 5] = ["run", "deps", "outs", "env", "pass_env"];

/// A stage after its own checks, before the edges are checked.
struct Checked<'a> {
    id: &'a Key,
    kind: Option<StageKind>,
    kind_span: Span,
    settings: Option<StageSettings>,
    /// `(slot key, referenced stage)` as written.
    inputs: Vec<(&'a Key, &'a Node)>,
    inputs_span: Option<Span>,
    /// The settings as written (after substitution), to place errors found after typing, and
    /// the key they sit under.
    settings_node: Node,
    settings_key_span: Span,
    /// Normalized `deps` and `outs` of a command stage, with spans.
    deps: Vec<(PathBuf, Span)>,
    outs: Vec<(PathBuf, Span)>,
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
    .min_by_key(|span| span.start)
    .unwrap_or(raw.span);

    match &raw.version {
        None => errors.push(missing_top_level("version", "version: 1", document_start)),
        Some((_, node)) => {
            if node.as_scalar().map(|scalar| scalar.resolve()) != Some(Resolved::Int(1)) {
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
    if stage_entries.is_empty() {
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

    let stages_by_id: HashMap<&str, &Checked<'_>> = checked
        .iter()
        .map(|stage| (stage.id.value.as_str(), stage))
        .collect();
    let stage_names: Vec<&str> = checked
        .iter()
        .map(|stage| stage.id.value.as_str())
        .collect();

    let index_of: HashMap<&str, usize> = stage_names
        .iter()
        .enumerate()
        .map(|(index, name)| (*name, index))
        .collect();
    // Per stage: typed inputs as (slot, upstream position, span of the reference).
    let mut input_edges: Vec<Vec<(InputSlot, usize, Span)>> = vec![Vec::new(); checked.len()];
    let mut resolved_inputs: Vec<BTreeMap<InputSlot, StageId>> =
        vec![BTreeMap::new(); checked.len()];

    for (index, stage) in checked.iter().enumerate() {
        let Some(kind) = stage.kind else { continue };
        let slots = kind.input_slots();
        for (slot_key, reference) in &stage.inputs {
            let Some((slot, expected, _)) = slots
                .iter()
                .find(|(slot, _, _)| slot.as_str() == slot_key.value)
            else {
                let names: Vec<&str> = slots.iter().map(|(slot, _, _)| slot.as_str()).collect();
                errors.push(ModelError::UnknownInput {
                    kind: kind.to_string(),
                    slot: slot_key.value.clone(),
                    span: slot_key.span.into(),
                    help: if names.is_empty() {
                        format!("`{kind}` stages take no inputs; remove `inputs`")
                    } else {
                        suggestion_help(&slot_key.value, &names, "input")
                    },
                });
                continue;
            };
            let Some(reference_name) = reference
                .as_scalar()
                .filter(|scalar| !matches!(scalar.resolve(), Resolved::Null))
                .map(|scalar| scalar.text.as_str())
            else {
                errors.push(invalid(
                    format!(
                        "input `{slot}` of stage `{}` must name a stage, not {}",
                        stage.id.value,
                        reference.describe()
                    ),
                    reference,
                    "expected a stage name",
                    format!("write `{slot}: <stage name>`"),
                ));
                continue;
            };
            let Some(upstream) = stages_by_id.get(reference_name) else {
                errors.push(ModelError::UnknownStage {
                    stage: stage.id.value.clone(),
                    reference: reference_name.to_owned(),
                    span: reference.span.into(),
                    help: suggestion_help(reference_name, &stage_names, "stage"),
                });
                continue;
            };
            input_edges[index].push((*slot, index_of[reference_name], reference.span));
            resolved_inputs[index].insert(*slot, StageId(reference_name.to_owned()));
            let Some(upstream_kind) = upstream.kind else {
                continue;
            };
            if upstream_kind.output() != *expected {
                errors.push(ModelError::InputTypeMismatch {
                    stage: stage.id.value.clone(),
                    slot: slot.to_string(),
                    expected: expected.to_string(),
                    upstream: reference_name.to_owned(),
                    found: upstream_kind.output().to_string(),
                    span: reference.span.into(),
                    upstream_span: Some(upstream.kind_span.into()),
                    note: String::new(),
                    help: mismatch_help(*slot, *expected, &checked),
                });
            }
        }
        for (slot, expected, required) in slots {
            if *required
                && !stage
                    .inputs
                    .iter()
                    .any(|(key, _)| key.value == slot.as_str())
            {
                errors.push(ModelError::MissingInput {
                    kind: kind.to_string(),
                    stage: stage.id.value.clone(),
                    slot: slot.to_string(),
                    expected: format!("a {expected}"),
                    span: stage.inputs_span.unwrap_or(stage.id.span).into(),
                    help: format!(
                        "add `{slot}: <stage>` under `inputs`, naming a stage that produces a {expected} ({})",
                        producers(*expected)
                    ),
                });
            }
        }
    }

    // Outputs: one producer per path. Indexed by path, so each out is compared with the few
    // outs on its own path instead of with all of them (O(n²) made validation half of a
    // 1,000-stage `plan`). Values: (position in file order, owning stage, span); the position
    // keeps the first clash reported, as a scan of all outs would. A clashing out is left out
    // of the edges: it is reported once, as a clash, not again as the cycles it would close.
    let mut out_owner: PathIndex<(usize, usize, Span)> = PathIndex::new();
    let mut out_count = 0;
    let mut owned_outs: Vec<Vec<&Path>> = vec![Vec::new(); checked.len()];
    for (index, stage) in checked.iter().enumerate() {
        for (out, span) in &stage.outs {
            if let Some((_, first, first_span)) = out_owner
                .overlapping(out)
                .min_by_key(|(position, _, _)| *position)
            {
                errors.push(ModelError::DuplicateOutput {
                    path: out.display().to_string(),
                    first: checked[*first].id.value.clone(),
                    second: stage.id.value.clone(),
                    first_span: Some((*first_span).into()),
                    note: String::new(),
                    second_span: (*span).into(),
                });
                continue;
            }
            out_owner.insert(out, (out_count, index, *span));
            owned_outs[index].push(out);
            out_count += 1;
        }
    }
    check_outs(&checked, path, errors);
    check_across_stages(&checked, &resolved_inputs, errors);

    let ends: Vec<StageEnds<'_, Span>> = checked
        .iter()
        .zip(input_edges)
        .zip(owned_outs)
        .map(|((stage, inputs), outs)| StageEnds {
            id: &stage.id.value,
            materialized: stage.kind.is_some_and(|kind| kind != StageKind::Command),
            outs,
            inputs,
            deps: stage
                .deps
                .iter()
                .map(|(dep, span)| (dep.as_path(), *span))
                .collect(),
        })
        .collect();
    let edges = edges::edges(&ends, path);
    report_cycles(&checked, &edges, errors);

    if !errors.is_empty() {
        return None;
    }
    // No errors means every stage was typed; a stage without settings would shift the
    // positions the edges refer to, so it fails the whole pipeline rather than being dropped.
    let stages: Vec<Stage> = checked
        .into_iter()
        .zip(resolved_inputs)
        .map(|(stage, inputs)| {
            Some(Stage {
                id: StageId(stage.id.value.clone()),
                settings: stage.settings?,
                inputs,
            })
        })
        .collect::<Option<_>>()?;
    let dependencies = edges::dependencies(&edges, &stages);
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
        dependencies,
    })
}

/// Outs are deleted before their stage runs and replaced from the store, so an out over a path
/// taper itself owns destroys it: `outs: [cache]` wiped the whole default store on the first
/// run, and an out over the pipeline file, its lock file, or an ML stage's
/// `out/<file stem>/<stage>/` or a stage log lost them. (Outs outside the pipeline directory are reported where they are
/// normalized.) The store is checked at its default place, `cache` beside the pipeline; one
/// moved with `--store` is not known here, and the engine refuses it at run time.
fn check_outs(checked: &[Checked<'_>], pipeline_file: &Path, errors: &mut Vec<ModelError>) {
    let mut reserved: PathIndex<String> = PathIndex::new();
    reserved.insert(
        Path::new(super::DEFAULT_STORE_DIR),
        format!("the default store `{}`", super::DEFAULT_STORE_DIR),
    );
    if let Some(file) = pipeline_file.file_name() {
        reserved.insert(
            Path::new(file),
            format!("the pipeline file `{}`", Path::new(file).display()),
        );
        let lock = super::lock_path_for(Path::new(file));
        reserved.insert(&lock, format!("the lock file `{}`", lock.display()));
    }
    for stage in checked {
        let id = StageId(stage.id.value.clone());
        let log = super::stage_log_path(pipeline_file, &id);
        reserved.insert(
            &log,
            format!("the log of stage `{id}` (`{}`)", log.display()),
        );
        if stage.kind.is_some_and(|kind| kind != StageKind::Command) {
            let dir = super::stage_output_dir(pipeline_file, &id);
            reserved.insert(
                &dir,
                format!("the artifacts of stage `{id}` (`{}`)", dir.display()),
            );
        }
    }
    for stage in checked {
        for (out, span) in stage.outs.iter().filter(|(out, _)| is_strictly_inside(out)) {
            let Some(what) = reserved.overlapping(out).next() else {
                continue;
            };
            errors.push(ModelError::InvalidValue {
                message: format!(
                    "output `{}` of stage `{}` overlaps {what}",
                    out.display(),
                    stage.id.value
                ),
                span: (*span).into(),
                label: "a path taper writes itself".to_owned(),
                param: None,
                help: "outs are deleted before their stage runs and restored from the store; write the output under a path of your own, e.g. `build/`".to_owned(),
            });
        }
    }
}

struct Param {
    key_span: Span,
    node: Node,
}

fn check_params(raw: &RawPipeline, errors: &mut Vec<ModelError>) -> BTreeMap<String, Param> {
    let mut params = BTreeMap::new();
    let Some((_, node)) = &raw.params else {
        return params;
    };
    let Some(entries) = node.as_map() else {
        errors.push(invalid(
            format!(
                "`params` must be a mapping of names to values, not {}",
                node.describe()
            ),
            node,
            "expected `name: value` entries",
            "write e.g. `params: { lr: 5e-5, max_length: 64 }`".to_owned(),
        ));
        return params;
    };
    for (key, value) in entries {
        if !is_identifier(&key.value) {
            errors.push(ModelError::InvalidValue {
                message: format!("invalid param name `{}`", key.value),
                span: key.span.into(),
                label: "not a valid param name".to_owned(),
                param: None,
                help: "use letters, digits, `_` and `-`, starting with a letter or `_`, so `${params.<name>}` can refer to it".to_owned(),
            });
            continue;
        }
        params.insert(
            key.value.clone(),
            Param {
                key_span: key.span,
                node: value.clone(),
            },
        );
    }
    params
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '-'))
}

fn is_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric())
        && chars
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '-'))
}

fn check_stage<'a>(
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
        settings_node: Node::empty_map(id.span),
        settings_key_span: id.span,
        deps: Vec::new(),
        outs: Vec::new(),
    };
    if !is_stage_name(&id.value) {
        errors.push(ModelError::InvalidStageName {
            stage: id.value.clone(),
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
                        kind: scalar.text.clone(),
                        stage: id.value.clone(),
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
                key: key.value.clone(),
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
            (_, "run" | "deps" | "outs" | "env" | "pass_env") => Some((
                format!("`{name}` applies only to `command` stages"),
                format!("`{kind}` stages take their settings under `with:`; for a shell step, add a `kind: command` stage"),
            )),
            _ => None,
        };
        if let Some((label, help)) = misplaced {
            errors.push(ModelError::UnknownKey {
                key: key.value.clone(),
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
    let settings_node = if kind == StageKind::Command {
        let mut command_entries: Vec<(Key, Node)> = entries
            .iter()
            .filter(|(key, _)| COMMAND_KEYS.contains(&key.value.as_str()))
            .cloned()
            .collect();
        for (_, value) in &mut command_entries {
            substitute(value, params, errors);
        }
        Node {
            span: id.span,
            value: Value::Map(command_entries),
            from_param: None,
        }
    } else {
        // `with:` left empty (null) means "all defaults", like no `with` at all.
        let mut with = body
            .get("with")
            .filter(|node| {
                node.as_scalar().map(crate::spec::Scalar::resolve) != Some(Resolved::Null)
            })
            .cloned()
            .unwrap_or_else(|| Node::empty_map(id.span));
        substitute(&mut with, params, errors);
        with
    };
    let key_span = entries
        .iter()
        .find(|(key, _)| key.value == "with")
        .map_or(id.span, |(key, _)| key.span);
    let typed = match kind {
        StageKind::SelectModel => {
            typed(&settings_node, key_span, id, kind, errors).map(StageSettings::SelectModel)
        }
        StageKind::PrepareData => {
            typed(&settings_node, key_span, id, kind, errors).map(StageSettings::PrepareData)
        }
        StageKind::Configure => {
            typed(&settings_node, key_span, id, kind, errors).map(StageSettings::Configure)
        }
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
    checked.settings_node = settings_node;
    checked.settings_key_span = key_span;
    // Range checks run on what could be read even when a value was wrong (that entry then has
    // its default), so a block with a wrong type and an out-of-range value reports both; an
    // issue about a left-out entry would only repeat its error.
    if let Some(settings) = &typed.value {
        for issue in super::checks::check(settings) {
            if !typed.skips(&checked.settings_node, &issue.path) {
                errors.push(checked.issue_error(issue));
            }
        }
    }
    checked.settings = typed.value.filter(|_| typed.valid);
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
                Value::Map(entries) => entries.iter().find(|(key, _)| &key.value == step),
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

impl Checked<'_> {
    /// The error for a settings issue, labelled at the setting it names (at the `with` key when
    /// the setting was left to its default).
    fn issue_error(&self, issue: Issue) -> ModelError {
        let node = self
            .settings_node
            .lookup(&issue.path)
            .unwrap_or(&self.settings_node);
        let span = if std::ptr::eq(node, &self.settings_node) {
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
            param: node.from_param.map(Into::into),
            help: issue.help,
        }
    }
}

/// Settings that are wrong only given the stage they read from: an `evaluate` or `explain` of
/// a split its dataset never makes (it failed only after training, minutes in), and a `deploy`
/// gate with no metrics to check it against.
fn check_across_stages(
    checked: &[Checked<'_>],
    inputs: &[BTreeMap<InputSlot, StageId>],
    errors: &mut Vec<ModelError>,
) {
    let settings_of = |id: &StageId| {
        checked
            .iter()
            .find(|stage| stage.id.value == id.as_str())
            .and_then(|stage| stage.settings.as_ref())
    };
    for (stage, inputs) in checked.iter().zip(inputs) {
        let split = match &stage.settings {
            Some(StageSettings::Evaluate(evaluate)) => evaluate.split,
            Some(StageSettings::Explain(explain)) => explain.split,
            Some(StageSettings::Deploy(deploy)) => {
                if !deploy.require.is_empty() && !inputs.contains_key(&InputSlot::Metrics) {
                    errors.push(stage.issue_error(Issue {
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
        let Some(data) = inputs.get(&InputSlot::Data) else {
            continue;
        };
        let Some(StageSettings::PrepareData(prepare)) = settings_of(data) else {
            continue;
        };
        let made = prepare.split.made();
        if !made.contains(&split) {
            let names: Vec<String> = made
                .iter()
                .map(|name| format!("`{}`", name.as_str()))
                .collect();
            errors.push(stage.issue_error(Issue {
                path: vec!["split".to_owned()],
                message: format!("stage `{data}` makes no `{}` split", split.as_str()),
                label: "a split the data stage does not make".to_owned(),
                help: format!(
                    "`{data}` makes {}; use one of those, or add `{}` to the `split` of `{data}`",
                    names.join(", "),
                    split.as_str()
                ),
            }));
        }
    }
}

fn normalize_command_paths(
    command: &mut Command,
    node: &Node,
    checked: &mut Checked<'_>,
    errors: &mut Vec<ModelError>,
) {
    for (list, field) in [(&mut command.deps, "deps"), (&mut command.outs, "outs")] {
        for (index, path) in list.iter_mut().enumerate() {
            let span = node
                .lookup(&[field.to_owned(), index.to_string()])
                .map_or(checked.id.span, |item| item.span);
            let normalized = normalize(path);
            if field == "outs" && !is_strictly_inside(&normalized) {
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
            if field == "deps" {
                checked.deps.push((normalized, span));
            } else {
                checked.outs.push((normalized, span));
            }
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
    let place = if kind == StageKind::Command {
        format!("`command` stage `{}`", id.value)
    } else {
        format!("the settings of `{kind}` stage `{}`", id.value)
    };
    for UnknownField {
        key,
        span,
        expected,
    } in outcome.unknown
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
        (_, Some(_)) => "the value comes from a param; change the param, or use `${params.<name>}` only where its type fits".to_owned(),
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
                return Some(vec![key.value.clone()]);
            }
            let mut path = path_to(value, span)?;
            path.insert(0, key.value.clone());
            Some(path)
        }),
    }
}

/// The most `${params.…}` substitution may add to a pipeline: bytes of text, plus
/// [`NODE_COST`] for each node a whole-value use copies. Without a bound, a 266 KB file (one
/// 200 KB param used 6,000 times) took 2.4 GB to validate, and params using params could
/// double at each level. Real pipelines add kilobytes.
pub const MAX_EXPANSION: usize = 8 * 1024 * 1024;

/// About what one node of the tree costs in memory besides its text.
const NODE_COST: usize = 64;

/// The params while stages are substituted: each param's value with its own references
/// resolved (once, on its first use), and how much substitution has added so far.
struct Substitution<'a> {
    params: &'a BTreeMap<String, Param>,
    resolved: RefCell<HashMap<String, Resolution>>,
    /// The params being resolved, outermost first: using one of them again is a loop.
    resolving: RefCell<Vec<String>>,
    expanded: Cell<usize>,
    /// Set when the bound is passed: later uses stay unresolved without another error.
    exceeded: Cell<bool>,
}

enum Resolution {
    Resolved {
        node: Node,
        cost: usize,
    },
    /// Its value has an error, reported once, at the value.
    Failed,
}

impl<'a> Substitution<'a> {
    fn new(params: &'a BTreeMap<String, Param>) -> Substitution<'a> {
        Substitution {
            params,
            resolved: RefCell::new(HashMap::new()),
            resolving: RefCell::new(Vec::new()),
            expanded: Cell::new(0),
            exceeded: Cell::new(false),
        }
    }

    /// Resolves the references in param `name`'s value (first use only); its cost, or `None`
    /// when it cannot be resolved (the error is already recorded).
    fn resolve(&self, name: &str, use_span: Span, errors: &mut Vec<ModelError>) -> Option<usize> {
        match self.resolved.borrow().get(name) {
            Some(Resolution::Resolved { cost, .. }) => return Some(*cost),
            Some(Resolution::Failed) => return None,
            None => {}
        }
        let param = self.params.get(name)?;
        let position = self.resolving.borrow().iter().position(|open| open == name);
        if let Some(position) = position {
            let mut path: Vec<String> = self.resolving.borrow()[position..]
                .iter()
                .map(|open| format!("`{open}`"))
                .collect();
            path.push(format!("`{name}`"));
            errors.push(ModelError::ParamCycle {
                param: name.to_owned(),
                path: path.join(" → "),
                span: use_span.into(),
            });
            return None;
        }
        self.resolving.borrow_mut().push(name.to_owned());
        let mut node = param.node.clone();
        let resolved = substitute(&mut node, self, errors);
        self.resolving.borrow_mut().pop();
        let (resolution, cost) = if resolved {
            let cost = cost(&node);
            (Resolution::Resolved { node, cost }, Some(cost))
        } else {
            (Resolution::Failed, None)
        };
        self.resolved
            .borrow_mut()
            .insert(name.to_owned(), resolution);
        cost
    }

    /// A copy of param `name`'s resolved value (call [`Substitution::resolve`] first).
    fn value(&self, name: &str) -> Option<Node> {
        match self.resolved.borrow().get(name) {
            Some(Resolution::Resolved { node, .. }) => Some(node.clone()),
            Some(Resolution::Failed) | None => None,
        }
    }

    /// Accounts for `size` more bytes from a use of `name`; `None` once past the bound.
    fn spend(
        &self,
        name: &str,
        size: usize,
        use_span: Span,
        errors: &mut Vec<ModelError>,
    ) -> Option<()> {
        if self.exceeded.get() {
            return None;
        }
        let expanded = self.expanded.get();
        if expanded.saturating_add(size) <= MAX_EXPANSION {
            self.expanded.set(expanded + size);
            return Some(());
        }
        self.exceeded.set(true);
        errors.push(ModelError::ExpansionTooLarge {
            param: name.to_owned(),
            limit: MAX_EXPANSION,
            size,
            expanded,
            span: use_span.into(),
            param_span: self.params.get(name).map(|param| param.key_span.into()),
            help: "each use of a param copies its value; keep large values in a file that a stage reads (list it in `deps`), or use the param fewer times".to_owned(),
        });
        None
    }
}

/// What a copy of `node` costs towards [`MAX_EXPANSION`].
fn cost(node: &Node) -> usize {
    NODE_COST
        + match &node.value {
            Value::Scalar(scalar) => scalar.text.len(),
            Value::Seq(items) => items.iter().map(cost).sum(),
            Value::Map(entries) => entries
                .iter()
                .map(|(key, value)| NODE_COST + key.value.len() + cost(value))
                .sum(),
        }
}

/// Replaces `${params.<name>}` in every scalar under `node`. A whole-value reference takes
/// the param's node (a number stays a number); inside a longer string the param's text is
/// spliced in. `$${` writes a literal `${`. Params may use other params, not themselves.
/// False when a reference could not be resolved: its error is recorded, and the value is
/// marked so the type check that follows does not report it again as "found the string `${…}`".
fn substitute(node: &mut Node, params: &Substitution<'_>, errors: &mut Vec<ModelError>) -> bool {
    // Every item is substituted even after one fails, so each bad reference is reported.
    let mut resolved = true;
    match &mut node.value {
        Value::Seq(items) => {
            for item in items {
                resolved &= substitute(item, params, errors);
            }
            resolved
        }
        Value::Map(entries) => {
            for (_, value) in entries {
                resolved &= substitute(value, params, errors);
            }
            resolved
        }
        Value::Scalar(scalar) => {
            if !scalar.text.contains("${") {
                return true;
            }
            let text = std::mem::take(&mut scalar.text);
            match substitute_text(&text, node.span, params, errors) {
                Some(substituted) => {
                    *node = substituted;
                    true
                }
                None => {
                    *node = Node::scalar(UNRESOLVED, ScalarStyle::Block, node.span);
                    false
                }
            }
        }
    }
}

/// Text of a value whose `${…}` could not be resolved (already reported).
const UNRESOLVED: &str = "\u{0}unresolved";

/// The node that scalar `text`, written at `use_span`, stands for after substitution.
fn substitute_text(
    text: &str,
    use_span: Span,
    params: &Substitution<'_>,
    errors: &mut Vec<ModelError>,
) -> Option<Node> {
    if let Some(name) = text
        .strip_prefix("${params.")
        .and_then(|rest| rest.strip_suffix('}'))
        .filter(|name| !name.contains(['}', '$']))
    {
        let Some(param) = params.params.get(name) else {
            errors.push(unresolved_param(text, name, use_span, params.params));
            return None;
        };
        let cost = params.resolve(name, use_span, errors)?;
        params.spend(name, cost, use_span, errors)?;
        return Some(Node {
            span: use_span,
            value: params.value(name)?.value,
            from_param: Some(param.key_span),
        });
    }
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    let mut from_param = None;
    // A bad reference does not stop the scan: every bad reference of the text is reported.
    let mut failed = false;
    while let Some(position) = rest.find('$') {
        output.push_str(&rest[..position]);
        let after = &rest[position..];
        if let Some(escaped) = after.strip_prefix("$${") {
            output.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(reference) = after.strip_prefix("${") else {
            output.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = reference.find('}') else {
            errors.push(ModelError::UnresolvedReference {
                reference: abbreviate(after),
                span: use_span.into(),
                label: "`${` is never closed".to_owned(),
                help: "close it as `${params.<name>}`, or write `$${` for a literal `${`"
                    .to_owned(),
            });
            return None;
        };
        let inner = &reference[..end];
        let Some(name) = inner.strip_prefix("params.") else {
            errors.push(ModelError::UnresolvedReference {
                reference: format!("${{{inner}}}"),
                span: use_span.into(),
                label: "only `${params.<name>}` can be referenced".to_owned(),
                help: "define the value under `params:` and write `${params.<name>}`; write `$${` for a literal `${`".to_owned(),
            });
            failed = true;
            rest = &reference[end + 1..];
            continue;
        };
        let Some(param) = params.params.get(name) else {
            errors.push(unresolved_param(
                &format!("${{{inner}}}"),
                name,
                use_span,
                params.params,
            ));
            failed = true;
            rest = &reference[end + 1..];
            continue;
        };
        let Some(value) = params
            .resolve(name, use_span, errors)
            .and_then(|_| params.value(name))
        else {
            failed = true;
            rest = &reference[end + 1..];
            continue;
        };
        let Some(scalar) = value.as_scalar() else {
            errors.push(ModelError::UnresolvedReference {
                reference: format!("${{{inner}}}"),
                span: use_span.into(),
                label: format!(
                    "`{inner}` is {}, which cannot be spliced into text",
                    value.describe()
                ),
                help: "use a list or mapping param only as a whole value: `key: ${params.<name>}`"
                    .to_owned(),
            });
            failed = true;
            rest = &reference[end + 1..];
            continue;
        };
        params.spend(name, scalar.text.len(), use_span, errors)?;
        output.push_str(&scalar.text);
        from_param = Some(param.key_span);
        rest = &reference[end + 1..];
    }
    if failed {
        return None;
    }
    output.push_str(rest);
    Some(Node {
        span: use_span,
        value: Value::Scalar(crate::spec::Scalar {
            text: output,
            style: ScalarStyle::Quoted,
        }),
        from_param,
    })
}

fn unresolved_param(
    reference: &str,
    name: &str,
    span: Span,
    params: &BTreeMap<String, Param>,
) -> ModelError {
    let names: Vec<&str> = params.keys().map(String::as_str).collect();
    ModelError::UnresolvedReference {
        reference: reference.to_owned(),
        span: span.into(),
        label: format!("there is no param `{name}`"),
        help: if names.is_empty() {
            format!(
                "define it under `params:` at the top of the file, e.g. `params: {{ {name}: … }}`"
            )
        } else {
            suggestion_help(name, &names, "param")
        },
    }
}

/// Stage names and edge labels shown for one cycle: a generated pipeline can close a cycle
/// through 50,000 stages, and its report must stay readable (and renderable: miette draws
/// every line between a snippet's labels).
const CYCLE_NAMES_SHOWN: usize = 12;
const CYCLE_LABELS_SHOWN: usize = 8;

/// Reports each cycle ([`edges::cycles`]: one per strongly connected component, linear in
/// stages and edges) with its path, labelling the first edges on it at the references that
/// created them.
fn report_cycles(checked: &[Checked<'_>], edges: &[Edge<Span>], errors: &mut Vec<ModelError>) {
    for cycle in edges::cycles(checked.len(), edges) {
        let name = |index: usize| format!("`{}`", checked[index].id.value);
        let labels: Vec<LabeledSpan> = cycle
            .edges
            .iter()
            .take(CYCLE_LABELS_SHOWN)
            .map(|position| {
                let edge = &edges[*position];
                LabeledSpan::new_with_span(
                    Some(format!(
                        "{} uses {}",
                        name(edge.downstream),
                        name(edge.upstream)
                    )),
                    edge.at,
                )
            })
            .collect();
        let mut names: Vec<String> = cycle.stages.iter().map(|index| name(*index)).collect();
        if names.len() > CYCLE_NAMES_SHOWN {
            let hidden = names.len() - CYCLE_NAMES_SHOWN;
            names.splice(
                CYCLE_NAMES_SHOWN - 2..names.len() - 2,
                [format!("… ({hidden} more stages)")],
            );
        }
        errors.push(ModelError::Cycle {
            path: names.join(" → "),
            edges: labels,
        });
    }
}

fn mismatch_help(slot: InputSlot, expected: ArtifactKind, stages: &[Checked<'_>]) -> String {
    let candidates: Vec<String> = stages
        .iter()
        .filter(|stage| stage.kind.map(StageKind::output) == Some(expected))
        .map(|stage| format!("`{}`", stage.id.value))
        .collect();
    if candidates.is_empty() {
        format!(
            "`{slot}` needs a stage that produces a {expected} ({})",
            producers(expected)
        )
    } else {
        format!(
            "stages that produce a {expected}: {}",
            candidates.join(", ")
        )
    }
}

fn producers(artifact: ArtifactKind) -> String {
    StageKind::ALL
        .iter()
        .filter(|kind| kind.output() == artifact)
        .map(|kind| format!("a `{kind}` stage"))
        .collect::<Vec<_>>()
        .join(" or ")
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
        param: node.from_param.map(Into::into),
        help,
    }
}

fn string_value(node: &Node, what: &str, errors: &mut Vec<ModelError>) -> Option<String> {
    match node.as_scalar() {
        Some(scalar) if scalar.resolve() != Resolved::Null => Some(scalar.text.clone()),
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
            Resolved::Null => serde_json::Value::Null,
            Resolved::Bool(value) => serde_json::Value::Bool(value),
            Resolved::Int(value) => serde_json::Value::from(value),
            Resolved::Float(value) => serde_json::Number::from_f64(value).map_or_else(
                || serde_json::Value::String(scalar.text.clone()),
                serde_json::Value::Number,
            ),
            Resolved::Str(text) => serde_json::Value::String(text.to_owned()),
        },
        Value::Seq(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(key, value)| (key.value.clone(), to_json(value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::model::{load_str, LoadError, ModelError, Pipeline, StageSettings};

    fn load(text: &str) -> Result<Pipeline, LoadError> {
        load_str(Path::new("p.yaml"), text, PathBuf::from("."), &[])
    }

    fn errors(text: &str) -> Vec<ModelError> {
        load(text).expect_err("invalid").errors().to_vec()
    }

    const HEAD: &str = "version: 1\nname: t\nparams: { lr: 2e-5, rows: 10, tag: v1 }\nstages:\n";

    #[test]
    fn whole_value_params_keep_their_type_and_spliced_ones_become_text() {
        let pipeline = load(&format!(
            "{HEAD}  c: {{ kind: configure, with: {{ learning_rate: \"${{params.lr}}\", epochs: \"${{params.rows}}\" }} }}\n  r: {{ kind: command, run: \"x --rows ${{params.rows}} $${{HOME}} ${{params.tag}}\" }}\n"
        ))
        .expect("valid");
        let StageSettings::Configure(configure) = &pipeline.stages[0].settings else {
            panic!("configure")
        };
        assert_eq!(configure.learning_rate, 0.00002);
        assert_eq!(configure.epochs, 10);
        let StageSettings::Command(command) = &pipeline.stages[1].settings else {
            panic!("command")
        };
        assert_eq!(command.run, "x --rows 10 ${HOME} v1");
        assert_eq!(pipeline.params["lr"], serde_json::json!(2e-5));
    }

    #[test]
    fn an_empty_with_means_all_defaults() {
        let pipeline =
            load(&format!("{HEAD}  c:\n    kind: configure\n    with:\n")).expect("valid");
        let StageSettings::Configure(configure) = &pipeline.stages[0].settings else {
            panic!("configure")
        };
        assert_eq!(configure.batch_size, 16);
    }

    #[test]
    fn command_paths_are_normalized() {
        let pipeline = load(&format!(
            "{HEAD}  a: {{ kind: command, run: x, deps: [./data/../raw.csv], outs: [out.d/] }}\n"
        ))
        .expect("valid");
        let StageSettings::Command(command) = &pipeline.stages[0].settings else {
            panic!("command")
        };
        assert_eq!(command.deps, [PathBuf::from("raw.csv")]);
        assert_eq!(command.outs, [PathBuf::from("out.d")]);
    }

    #[test]
    fn each_independent_problem_is_reported() {
        let found = errors(&format!(
            "{HEAD}  a: {{ kind: configure, with: {{ epochs: x }} }}\n  b: {{ kind: nope }}\n  c: {{ kind: train, inputs: {{ model: zz }} }}\n"
        ));
        let codes: Vec<String> = found
            .iter()
            .map(|error| {
                miette::Diagnostic::code(error)
                    .map(|code| code.to_string())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            codes,
            [
                "taper::model::invalid_value",
                "taper::model::unknown_kind",
                "taper::model::missing_input",
                "taper::model::missing_input",
                "taper::model::unknown_stage",
            ]
        );
    }

    /// Each error's message and the text its first label covers.
    fn located(text: &str) -> Vec<(String, String)> {
        errors(text)
            .iter()
            .map(|error| {
                let label = miette::Diagnostic::labels(error)
                    .and_then(|mut labels| labels.next())
                    .expect("every error is labelled");
                let at = &text[label.offset()..label.offset() + label.len()];
                (error.to_string(), at.to_owned())
            })
            .collect()
    }

    fn command_paths(text: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let pipeline = load(text).expect("valid");
        let StageSettings::Command(command) = &pipeline.stages[0].settings else {
            panic!("command")
        };
        (command.deps.clone(), command.outs.clone())
    }

    #[test]
    fn a_dep_above_the_pipeline_directory_keeps_its_parents() {
        let (deps, _) = command_paths(&format!(
            "{HEAD}  a: {{ kind: command, run: x, deps: [../../secret.txt, a/../../up.txt, /abs/f] }}\n"
        ));
        assert_eq!(
            deps,
            [
                PathBuf::from("../../secret.txt"),
                PathBuf::from("../up.txt"),
                PathBuf::from("/abs/f")
            ]
        );
    }

    #[test]
    fn outs_leaving_the_pipeline_directory_are_refused() {
        let found = located(&format!(
            "{HEAD}  a: {{ kind: command, run: x, outs: [../../secret.txt, /tmp/x, ., a/.., ok.txt] }}\n"
        ));
        let at: Vec<&str> = found.iter().map(|(_, at)| at.as_str()).collect();
        assert_eq!(at, ["../../secret.txt", "/tmp/x", ".", "a/.."]);
    }

    #[test]
    fn outs_over_paths_taper_writes_are_refused_at_the_item() {
        for (out, normalized, what) in [
            ("cache", "cache", "the default store `cache`"),
            (
                "./cache/objects/",
                "cache/objects",
                "the default store `cache`",
            ),
            ("p.yaml", "p.yaml", "the pipeline file `p.yaml`"),
            ("p.lock", "p.lock", "the lock file `p.lock`"),
            (
                "out/p/m/config.json",
                "out/p/m/config.json",
                "the artifacts of stage `m` (`out/p/m`)",
            ),
            (
                "out/p/m",
                "out/p/m",
                "the artifacts of stage `m` (`out/p/m`)",
            ),
            (
                "out/p/a.log",
                "out/p/a.log",
                "the log of stage `a` (`out/p/a.log`)",
            ),
            ("out", "out", "the log of stage `a` (`out/p/a.log`)"),
        ] {
            let found = located(&format!(
                "{HEAD}  m: {{ kind: configure }}\n  a: {{ kind: command, run: x, outs: [\"{out}\"] }}\n"
            ));
            assert_eq!(
                found,
                [(
                    format!("output `{normalized}` of stage `a` overlaps {what}"),
                    format!("\"{out}\"")
                )]
            );
        }
        for fine in [
            "cach",
            "caches/x",
            "out/p/report.txt",
            "out/p/mm",
            "out/m",
            "p.yaml.bak",
        ] {
            assert!(
                load(&format!(
                    "{HEAD}  m: {{ kind: configure }}\n  a: {{ kind: command, run: x, outs: [{fine}] }}\n"
                ))
                .is_ok(),
                "{fine}"
            );
        }
    }

    #[test]
    fn every_wrong_value_of_a_with_block_is_reported_in_words() {
        let found = located(&format!(
            "{HEAD}  c: {{ kind: configure, with: {{ epochs: -1, batch_size: x, seed: -2, warmup_ratio: 1.5, weight_decay: .inf }} }}\n"
        ));
        let at: Vec<&str> = found.iter().map(|(_, at)| at.as_str()).collect();
        assert_eq!(at, ["-1", "x", "-2", "1.5", ".inf"]);
        assert_eq!(
            found[0].0,
            "in stage `c`, `epochs`: expected a whole number ≥ 0, found -1"
        );
    }

    const TRAINED: &str = "  base: { kind: select-model, with: { source: { path: m } } }\n  data:\n    kind: prepare-data\n    inputs: { model: base }\n    with: { source: { path: d.csv }, split: { train: 0.8, test: 0.2 } }\n  conf: { kind: configure }\n  tuned: { kind: train, inputs: { model: base, data: data, config: conf } }\n  eval: { kind: evaluate, inputs: { model: tuned, data: data } }\n";

    #[test]
    fn deploy_gates_name_known_metrics_in_range_and_need_metrics() {
        assert!(load(&format!(
            "{HEAD}{TRAINED}  ship: {{ kind: deploy, inputs: {{ model: tuned, metrics: eval }}, with: {{ require: {{ accuracy: 0.8, log_loss: 2 }} }} }}\n"
        ))
        .is_ok());
        let found = located(&format!(
            "{HEAD}{TRAINED}  ship: {{ kind: deploy, inputs: {{ model: tuned, metrics: eval }}, with: {{ require: {{ accuracy: .nan, macro_f1: 1.5, acuracy: 0.8 }} }} }}\n  blind: {{ kind: deploy, inputs: {{ model: tuned }}, with: {{ require: {{ accuracy: 0.8 }} }} }}\n"
        ));
        let summary: Vec<(&str, &str)> = found
            .iter()
            .map(|(message, at)| (message.as_str(), at.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("invalid `require.accuracy` in stage `ship`: the minimum for `accuracy` must be a number from 0 to 1, not NaN", ".nan"),
                ("invalid `require.macro_f1` in stage `ship`: the minimum for `macro_f1` must be a number from 0 to 1, not 1.5", "1.5"),
                ("invalid `require.acuracy` in stage `ship`: `acuracy` is not a metric that `evaluate` reports", "0.8"),
                ("invalid `require` in stage `blind`: gates need metrics, but the stage has no `metrics` input", "{ accuracy: 0.8"), // a flow mapping's span ends at its last value (the parser's end mark)
            ]
        );
        let acuracy = &errors(&format!(
            "{HEAD}{TRAINED}  ship: {{ kind: deploy, inputs: {{ model: tuned, metrics: eval }}, with: {{ require: {{ acuracy: 0.8 }} }} }}\n"
        ))[0];
        assert_eq!(
            miette::Diagnostic::help(acuracy).map(|help| help.to_string()),
            Some("did you mean `accuracy`?".to_owned())
        );
    }

    #[test]
    fn split_fractions_over_one_are_refused() {
        let found = located(&format!(
            "{HEAD}  base: {{ kind: select-model, with: {{ source: {{ path: m }} }} }}\n  data:\n    kind: prepare-data\n    inputs: {{ model: base }}\n    with: {{ source: {{ path: d.csv }}, split: {{ train: 0.7, validation: 100, test: 0.5 }} }}\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].0,
            "invalid `split` in stage `data`: the split fractions add up to 1.2, more than all the rows"
        );
    }

    #[test]
    fn evaluating_a_split_the_data_never_makes_is_refused() {
        let pipeline = TRAINED.replace(
            "  eval: { kind: evaluate, inputs: { model: tuned, data: data } }\n",
            "  eval: { kind: evaluate, inputs: { model: tuned, data: data }, with: { split: validation } }\n  why: { kind: explain, inputs: { model: tuned, data: data } }\n",
        );
        let found = located(&format!("{HEAD}{pipeline}"));
        assert_eq!(
            found,
            [(
                "invalid `split` in stage `eval`: stage `data` makes no `validation` split"
                    .to_owned(),
                "validation".to_owned()
            )]
        );
    }

    #[test]
    fn a_stage_reading_its_own_output_is_a_cycle() {
        let found = errors(&format!(
            "{HEAD}  a: {{ kind: command, run: x, deps: [o/x], outs: [o] }}\n"
        ));
        assert!(
            matches!(&found[..], [ModelError::Cycle { path, .. }] if path == "`a` → `a`"),
            "{found:?}"
        );
    }

    fn render(error: &LoadError) -> String {
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(200)
            .render_report(&mut out, error)
            .expect("rendering into a String cannot fail");
        out
    }

    #[test]
    fn a_param_bomb_is_an_error_at_the_use_that_passes_the_bound() {
        let big = "x".repeat(200_000);
        let uses: String = (0..6_000)
            .map(|index| format!("  s{index}: {{ kind: command, run: \"${{params.big}}\" }}\n"))
            .collect();
        let found = errors(&format!(
            "version: 1\nname: t\nparams:\n  big: {big}\nstages:\n{uses}"
        ));
        let [ModelError::ExpansionTooLarge {
            param, size, span, ..
        }] = &found[..]
        else {
            panic!("{found:?}")
        };
        assert_eq!(param, "big");
        assert!(*size > 200_000);
        // 8 MiB hold 41 copies of 200 KB: the 42nd use, in stage `s41`, is the one refused.
        let text = format!("version: 1\nname: t\nparams:\n  big: {big}\nstages:\n{uses}");
        let at = text.find("  s41:").expect("stage s41") + "  s41: { kind: command, run: ".len();
        assert_eq!(span.offset(), at);
    }

    #[test]
    fn params_using_params_resolve_and_doubling_them_is_bounded() {
        let pipeline = load(
            "version: 1\nname: t\nparams: { a: \"${params.b}-x\", b: \"${params.c}\", c: 7 }\nstages:\n  s: { kind: command, run: \"go ${params.a}\" }\n",
        )
        .expect("valid");
        let StageSettings::Command(command) = &pipeline.stages[0].settings else {
            panic!("command")
        };
        assert_eq!(command.run, "go 7-x");
        // Each level doubles the one below: 2^40 bytes if nothing stopped it.
        let mut params = String::from("  p0: xxxxxxxxxxxxxxxx\n");
        for level in 1..=40 {
            let below = level - 1;
            params.push_str(&format!(
                "  p{level}: \"${{params.p{below}}}${{params.p{below}}}\"\n"
            ));
        }
        let found = errors(&format!(
            "version: 1\nname: t\nparams:\n{params}stages:\n  s: {{ kind: command, run: \"${{params.p40}}\" }}\n"
        ));
        assert!(
            matches!(&found[..], [ModelError::ExpansionTooLarge { .. }]),
            "{found:?}"
        );
    }

    #[test]
    fn params_in_a_loop_are_one_error_naming_the_loop() {
        let found = errors(
            "version: 1\nname: t\nparams: { a: \"${params.b}\", b: \"x ${params.a}\", c: \"${params.c}\" }\nstages:\n  s: { kind: command, run: \"${params.a} ${params.c}\", deps: [\"${params.a}\", \"${params.c}\"] }\n",
        );
        let paths: Vec<&str> = found
            .iter()
            .map(|error| match error {
                ModelError::ParamCycle { path, .. } => path.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(paths, ["`a` → `b` → `a`", "`c` → `c`"]);
    }

    #[test]
    fn a_cycle_through_50_000_stages_is_reported_with_a_short_path() {
        let count = 50_000;
        let stages: String = (0..count)
            .map(|index| {
                let next = (index + 1) % count;
                format!(
                    "  s{index}: {{ kind: command, run: x, deps: [d{next}], outs: [d{index}] }}\n"
                )
            })
            .collect();
        let found = errors(&format!("version: 1\nname: t\nstages:\n{stages}"));
        let [ModelError::Cycle { path, edges }] = &found[..] else {
            panic!("{} errors", found.len())
        };
        assert!(path.starts_with("`s0` → `s49999` → `s49998`"), "{path}");
        assert!(
            path.contains("… (49989 more stages) → `s1` → `s0`"),
            "{path}"
        );
        assert_eq!(edges.len(), super::CYCLE_LABELS_SHOWN);
    }

    #[test]
    fn a_report_of_many_errors_renders_the_first_ones_and_counts_the_rest() {
        let stages: String = (0..60)
            .map(|index| format!("  s{index}: {{ kind: command, run: x, bogus: 1 }}\n"))
            .collect();
        let error = load(&format!("version: 1\nname: t\nstages:\n{stages}")).expect_err("invalid");
        assert_eq!(error.errors().len(), 60);
        let out = render(&error);
        assert_eq!(
            out.matches("unknown key `bogus`").count(),
            crate::model::MAX_RENDERED_ERRORS
        );
        assert!(out.contains("…and 10 more errors"), "{out}");
        assert!(out.contains("60 errors"), "{out}");
    }
}
