//! `RawPipeline` → [`Pipeline`]: every check, every error collected in one pass.
//!
//! Order of work, and why: top-level keys → params → each stage on its own (name, keys,
//! kind, `${params.…}` substitution, typed settings) → the edges between stages (input slots,
//! implied `command` edges, output clashes) → cycles. Stage-local checks run for every stage
//! even when another is broken, and edge checks skip only the edges whose ends are unknown,
//! so fixing one error never reveals a batch of new ones that were there all along.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use miette::LabeledSpan;
use serde::de::DeserializeOwned;

use super::checks::Issue;
use super::de::{from_node, DeError, UnknownField};
use super::error::ModelError;
use super::paths::{is_strictly_inside, normalize, PathIndex};
use super::{ArtifactKind, Command, InputSlot, Pipeline, Stage, StageId, StageKind, StageSettings};
use crate::spec::{
    abbreviate, did_you_mean, suggestion_help, Key, Node, RawPipeline, Resolved, ScalarStyle, Span,
    Value,
};

/// The keys a stage may have. `run`, `deps`, `outs` and `env` belong to `command` stages and
/// sit at stage level (as in DVC); the other kinds take their settings under `with:`.
pub const STAGE_KEYS: [&str; 8] = [
    "kind",
    "description",
    "inputs",
    "with",
    "run",
    "deps",
    "outs",
    "env",
];
const COMMAND_KEYS: [&str; 4] = ["run", "deps", "outs", "env"];

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
        .map(|(id, body)| check_stage(id, body, &params, errors))
        .collect();

    let stages_by_id: HashMap<&str, &Checked<'_>> = checked
        .iter()
        .map(|stage| (stage.id.value.as_str(), stage))
        .collect();
    let stage_names: Vec<&str> = checked
        .iter()
        .map(|stage| stage.id.value.as_str())
        .collect();

    // Edges: (upstream index, downstream index, span of the reference).
    let index_of: HashMap<&str, usize> = stage_names
        .iter()
        .enumerate()
        .map(|(index, name)| (*name, index))
        .collect();
    let mut edges: Vec<(usize, usize, Span)> = Vec::new();
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
            edges.push((index_of[reference_name], index, reference.span));
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

    // Outputs: one producer per path. Then implied edges: a dep at or under an out of another
    // stage, or under `out/<stage>/` where ML stages materialize their artifacts.
    // Indexed by path, so each dep and out is compared with the few outs on its own path
    // instead of with all of them (O(n²) made validation half of a 1,000-stage `plan`).
    // Values: (position in file order, owning stage, span); the position keeps the first
    // clash reported and the edges in file order, as a scan of all outs would.
    let mut out_owner: PathIndex<(usize, usize, Span)> = PathIndex::new();
    let mut out_count = 0;
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
            out_count += 1;
        }
    }
    check_outs(&checked, path, errors);
    check_across_stages(&checked, &resolved_inputs, errors);
    for (index, stage) in checked.iter().enumerate() {
        for (dep, span) in &stage.deps {
            // A stage reading its own output is a self-edge, reported as a cycle: its key
            // would depend on the output it is about to produce.
            let mut owners: Vec<&(usize, usize, Span)> = out_owner.overlapping(dep).collect();
            owners.sort_unstable_by_key(|(position, _, _)| *position);
            edges.extend(
                owners
                    .into_iter()
                    .map(|(_, owner, _)| (*owner, index, *span)),
            );
            if let Some(owner) = ml_output_owner(dep, &index_of) {
                edges.push((owner, index, *span));
            }
        }
    }

    report_cycles(&checked, &edges, errors);

    if !errors.is_empty() {
        return None;
    }
    let stages = checked
        .into_iter()
        .zip(resolved_inputs)
        .filter_map(|(stage, inputs)| {
            Some(Stage {
                id: StageId(stage.id.value.clone()),
                settings: stage.settings?,
                inputs,
            })
        })
        .collect();
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
    })
}

/// The stage that owns `out/<stage>/…`, the directory where ML stages' artifacts appear.
pub(crate) fn ml_output_owner(dep: &Path, index_of: &HashMap<&str, usize>) -> Option<usize> {
    let mut components = dep.components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(first)), Some(Component::Normal(stage))) if first == "out" => {
            index_of.get(stage.to_str()?).copied()
        }
        _ => None,
    }
}

/// Outs are deleted before their stage runs and replaced from the store, so an out over a path
/// taper itself owns destroys it: `outs: [cache]` wiped the whole default store on the first
/// run, and an out over the pipeline file, its lock file, or an ML stage's `out/<stage>/` or a
/// stage log lost them. (Outs outside the pipeline directory are reported where they are
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
        let log = super::stage_log_path(&id);
        reserved.insert(
            &log,
            format!("the log of stage `{id}` (`{}`)", log.display()),
        );
        if stage.kind.is_some_and(|kind| kind != StageKind::Command) {
            let dir = super::stage_output_dir(&id);
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
    params: &BTreeMap<String, Param>,
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
            (_, "run" | "deps" | "outs" | "env") => Some((
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

/// Replaces `${params.<name>}` in every scalar under `node`. A whole-value reference takes
/// the param's node (a number stays a number); inside a longer string the param's text is
/// spliced in. `$${` writes a literal `${`.
fn substitute(node: &mut Node, params: &BTreeMap<String, Param>, errors: &mut Vec<ModelError>) {
    let before = errors.len();
    substitute_inner(node, params, errors);
    if errors.len() > before {
        mark_unresolved(node, errors, before);
    }
}

/// A value whose reference did not resolve already has its error; mark it so the type check
/// that follows does not report the same value again as "found the string `${…}`".
fn mark_unresolved(node: &mut Node, errors: &[ModelError], from: usize) {
    let spans: Vec<miette::SourceSpan> = errors[from..]
        .iter()
        .filter_map(|error| match error {
            ModelError::UnresolvedReference { span, .. } => Some(*span),
            _ => None,
        })
        .collect();
    mark(node, &spans);
}

fn mark(node: &mut Node, spans: &[miette::SourceSpan]) {
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|item| mark(item, spans)),
        Value::Map(entries) => entries.iter_mut().for_each(|(_, value)| mark(value, spans)),
        Value::Scalar(scalar) => {
            if spans.contains(&node.span.into()) {
                scalar.style = ScalarStyle::Block;
                scalar.text = UNRESOLVED.to_owned();
            }
        }
    }
}

/// Text of a value whose `${…}` could not be resolved (already reported).
const UNRESOLVED: &str = "\u{0}unresolved";

fn substitute_inner(
    node: &mut Node,
    params: &BTreeMap<String, Param>,
    errors: &mut Vec<ModelError>,
) {
    match &mut node.value {
        Value::Seq(items) => items
            .iter_mut()
            .for_each(|item| substitute(item, params, errors)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, value)| substitute(value, params, errors)),
        Value::Scalar(scalar) => {
            if !scalar.text.contains("${") {
                return;
            }
            let text = scalar.text.clone();
            let use_span = node.span;
            if let Some(name) = text
                .strip_prefix("${params.")
                .and_then(|rest| rest.strip_suffix('}'))
                .filter(|name| !name.contains(['}', '$']))
            {
                match params.get(name) {
                    Some(param) => {
                        *node = Node {
                            span: use_span,
                            value: param.node.value.clone(),
                            from_param: Some(param.key_span),
                        };
                    }
                    None => errors.push(unresolved_param(&text, name, use_span, params)),
                }
                return;
            }
            let mut output = String::with_capacity(text.len());
            let mut rest = text.as_str();
            let mut from_param = None;
            while let Some(position) = rest.find('$') {
                output.push_str(&rest[..position]);
                let after = &rest[position..];
                if let Some(escaped) = after.strip_prefix("$${") {
                    output.push_str("${");
                    rest = escaped;
                } else if let Some(reference) = after.strip_prefix("${") {
                    let Some(end) = reference.find('}') else {
                        errors.push(ModelError::UnresolvedReference {
                            reference: abbreviate(after),
                            span: use_span.into(),
                            label: "`${` is never closed".to_owned(),
                            help:
                                "close it as `${params.<name>}`, or write `$${` for a literal `${`"
                                    .to_owned(),
                        });
                        return;
                    };
                    let inner = &reference[..end];
                    match inner
                        .strip_prefix("params.")
                        .map(|name| (name, params.get(name)))
                    {
                        Some((_, Some(param))) => match param.node.as_scalar() {
                            Some(value) => {
                                output.push_str(&value.text);
                                from_param = Some(param.key_span);
                            }
                            None => {
                                errors.push(ModelError::UnresolvedReference {
                                    reference: format!("${{{inner}}}"),
                                    span: use_span.into(),
                                    label: format!("`{inner}` is {}, which cannot be spliced into text", param.node.describe()),
                                    help: "use a list or mapping param only as a whole value: `key: ${params.<name>}`".to_owned(),
                                });
                                return;
                            }
                        },
                        Some((name, None)) => {
                            errors.push(unresolved_param(
                                &format!("${{{inner}}}"),
                                name,
                                use_span,
                                params,
                            ));
                            return;
                        }
                        None => {
                            errors.push(ModelError::UnresolvedReference {
                                reference: format!("${{{inner}}}"),
                                span: use_span.into(),
                                label: "only `${params.<name>}` can be referenced".to_owned(),
                                help: "define the value under `params:` and write `${params.<name>}`; write `$${` for a literal `${`".to_owned(),
                            });
                            return;
                        }
                    }
                    rest = &reference[end + 1..];
                } else {
                    output.push('$');
                    rest = &after[1..];
                }
            }
            output.push_str(rest);
            *node = Node {
                span: use_span,
                value: Value::Scalar(crate::spec::Scalar {
                    text: output,
                    style: ScalarStyle::Quoted,
                }),
                from_param,
            };
        }
    }
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

/// Reports each cycle (one per strongly connected component) with its path, labelling every
/// edge on it at the reference that created it.
fn report_cycles(
    checked: &[Checked<'_>],
    edges: &[(usize, usize, Span)],
    errors: &mut Vec<ModelError>,
) {
    let mut graph = petgraph::graph::DiGraph::<usize, Span>::new();
    let nodes: Vec<_> = (0..checked.len())
        .map(|index| graph.add_node(index))
        .collect();
    for (from, to, span) in edges {
        graph.add_edge(nodes[*from], nodes[*to], *span);
    }
    let mut components = petgraph::algo::tarjan_scc(&graph);
    components.sort_by_key(|component| component.iter().map(|node| node.index()).min());
    for component in components {
        let first = *component
            .iter()
            .min_by_key(|node| node.index())
            .expect("tarjan_scc yields non-empty components");
        let is_cycle = component.len() > 1 || graph.find_edge(first, first).is_some();
        if !is_cycle {
            continue;
        }
        // The shortest way back to the component's first stage (in file order): a breadth-
        // first search inside the component, so the reported path is a real, minimal cycle.
        let mut parent: HashMap<petgraph::graph::NodeIndex, (petgraph::graph::NodeIndex, Span)> =
            HashMap::new();
        let mut queue = std::collections::VecDeque::from([first]);
        let mut closing = None;
        'search: while let Some(current) = queue.pop_front() {
            let mut outgoing: Vec<_> = graph
                .edges(current)
                .map(|edge| (edge_target(&edge), *edge.weight()))
                .filter(|(target, _)| component.contains(target))
                .collect();
            outgoing.sort_by_key(|(target, span)| (target.index(), span.start));
            for (target, span) in outgoing {
                if target == first {
                    closing = Some((current, span));
                    break 'search;
                }
                if let std::collections::hash_map::Entry::Vacant(entry) = parent.entry(target) {
                    entry.insert((current, span));
                    queue.push_back(target);
                }
            }
        }
        let (mut current, closing_span) =
            closing.expect("a strongly connected component with an edge has a cycle");
        let mut path = vec![first, current];
        let mut spans = vec![(current, first, closing_span)];
        while current != first {
            let (previous, span) = parent[&current];
            spans.push((previous, current, span));
            path.push(previous);
            current = previous;
        }
        path.reverse();
        spans.reverse();
        let spans: Vec<LabeledSpan> = spans
            .into_iter()
            .map(|(from, to, span)| {
                LabeledSpan::new_with_span(
                    Some(format!(
                        "`{}` uses `{}`",
                        checked[to.index()].id.value,
                        checked[from.index()].id.value
                    )),
                    span,
                )
            })
            .collect();
        let names: Vec<String> = path
            .iter()
            .map(|node| format!("`{}`", checked[node.index()].id.value))
            .collect();
        errors.push(ModelError::Cycle {
            path: names.join(" → "),
            edges: spans,
        });
    }
}

fn edge_target(edge: &petgraph::graph::EdgeReference<'_, Span>) -> petgraph::graph::NodeIndex {
    use petgraph::visit::EdgeRef;
    edge.target()
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
                "out/m/config.json",
                "out/m/config.json",
                "the artifacts of stage `m` (`out/m`)",
            ),
            ("out/m", "out/m", "the artifacts of stage `m` (`out/m`)"),
            (
                "out/a.log",
                "out/a.log",
                "the log of stage `a` (`out/a.log`)",
            ),
            ("out", "out", "the log of stage `a` (`out/a.log`)"),
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
        for fine in ["cach", "caches/x", "out/report.txt", "out/mm", "p.yaml.bak"] {
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
                ("invalid `require` in stage `blind`: gates need metrics, but the stage has no `metrics` input", "{ accuracy: 0.8 }"),
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
}
