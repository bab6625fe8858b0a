//! Shared specs: a stage entry `name: { use: specs/x.yaml, with: { … } }` is replaced by the
//! spec's stages before validation, so everything downstream sees an ordinary pipeline.
//!
//! Contract: a spec file declares typed, documented params and the stages that use them as
//! `${spec.<name>}`. Expansion happens on the raw layer, so the stages a spec produces are
//! validated, keyed and locked exactly like stages written out in full (stage names are not
//! part of a key, so `prefix:` changes no key). Each spec file becomes its own segment of the
//! [`SourceText`], so an error inside a spec is shown at the spec's line, and a value that
//! came from the `use:` carries that site as its `from_param`, shown as a second label.
//! A `matrix:` on a `use:` expands it once per variant; stages that read no swept param (and
//! no stage that does) are emitted once, so shared upstream work runs once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::error::{SpecError, SpecNote};
use super::node::{parse_yaml, Key, Node, ScalarValue, Value};
use super::raw::RawPipeline;
use super::source_text::{SourceText, Span, Spanned};
use super::spec_source::{parse_source, FetchError, SpecFetcher, SpecSource};
use super::suggestion_help;

/// The keys of a `use:` entry in a pipeline's `stages:`.
pub const USE_KEYS: [&str; 6] = ["use", "description", "with", "prefix", "stages", "matrix"];
/// The top-level keys of a spec file.
pub const SPEC_KEYS: [&str; 5] = ["spec", "version", "description", "params", "stages"];
/// The keys of one param declaration in a spec.
pub const PARAM_KEYS: [&str; 5] = ["type", "default", "range", "choices", "description"];
/// The types a spec param may declare.
pub const PARAM_TYPES: [&str; 6] = ["int", "float", "string", "bool", "list", "mapping"];
/// Spec files larger than this are refused: a spec is a page of stages, not data.
const MAX_SPEC_SIZE: u64 = 1024 * 1024;
/// Most variants one `matrix:` may expand to, so a typo (`seed: [0..100000]`) cannot make a
/// pipeline of millions of stages.
pub const MAX_VARIANTS: usize = 10_000;

/// A spec file, parsed and checked on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecFile {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub params: Vec<ParamDecl>,
    /// The span of the `params:` key (where an unknown param name is pointed to).
    pub params_span: Span,
    /// The stages, still raw: `${spec.…}` is substituted per use.
    pub stages: Vec<(Key, Node)>,
    pub stages_span: Span,
}

/// One declared spec param.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDecl {
    pub key: Key,
    pub ty: String,
    pub default: Option<Node>,
    pub range: Option<(f64, f64)>,
    pub choices: Vec<Node>,
    pub description: Option<String>,
}

/// What a pipeline used from a spec: recorded in the lock file (with the spec's content hash)
/// and shown by `plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecUse {
    /// The `use:` entry's name in the pipeline.
    pub entry: String,
    /// Where the spec was read from (a path as written, relative to the pipeline's directory).
    pub source: SpecSource,
    pub name: String,
    pub version: Option<String>,
    /// blake3 of the spec file's bytes.
    pub blake3: String,
    /// Each param's value (flow YAML) and where it was written (`file:line`: the default in
    /// the spec, or the `use:`'s `with:`); swept params are in [`SpecUse::variants`] instead.
    /// The lock file keeps the values, so `plan` can name the line of a changed one.
    pub params: BTreeMap<String, (String, String)>,
    pub variants: Vec<Variant>,
}

/// One expansion of a `use:` (exactly one without `matrix:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// The swept params' values as written (empty without `matrix:`).
    pub params: BTreeMap<String, String>,
    /// What its own stages' names end with, after a `-` (`lr1e-3-seed2`); empty without
    /// `matrix:`. Stripped, it names a variant's stage as the spec does, so experiments can
    /// compare `finetune` across variants.
    pub label: String,
    /// The pipeline stages this variant consists of (shared ones included).
    pub stages: Vec<String>,
}

/// Parses a spec file's text; `base` is where it starts in its [`SourceText`].
pub fn parse_spec(text: &str, base: usize) -> (Option<SpecFile>, Vec<SpecError>) {
    let (root, mut errors) = parse_yaml(text);
    let mut errors: Vec<SpecError> = errors.drain(..).map(|error| error.shifted(base)).collect();
    let Some(mut root) = root else {
        if errors.is_empty() {
            errors.push(SpecError::Empty);
        }
        return (None, errors);
    };
    root.shift(base);
    let Value::Map(entries) = root.value else {
        errors.push(bad_spec(
            "a spec must be a mapping of `spec`, `version`, `params`, `stages`",
            root.span,
            "expected `key: value` lines",
            "start the file with `spec: <name>`",
        ));
        return (None, errors);
    };
    let mut spec = SpecFile {
        name: String::new(),
        version: None,
        description: None,
        params: Vec::new(),
        params_span: root.span,
        stages: Vec::new(),
        stages_span: root.span,
    };
    let mut has_name = false;
    for (key, node) in entries {
        match key.value.as_str() {
            "spec" => {
                if let Some(name) = text_of(&node) {
                    spec.name = name;
                    has_name = true;
                }
            }
            "version" => spec.version = text_of(&node),
            "description" => spec.description = text_of(&node),
            "params" => {
                spec.params_span = key.span;
                match node.value {
                    Value::Map(params) => {
                        for (name, decl) in params {
                            if let Some(decl) = parse_decl(name, decl, &mut errors) {
                                spec.params.push(decl);
                            }
                        }
                    }
                    Value::Scalar(_) | Value::Seq(_) => errors.push(bad_spec(
                        "`params` of a spec must be a mapping of names to declarations",
                        node.span,
                        "expected `name: { type, default, description }`",
                        "write e.g. `params: { lr: { type: float, default: 5e-5 } }`",
                    )),
                }
            }
            "stages" => {
                spec.stages_span = key.span;
                match node.value {
                    Value::Map(stages) => spec.stages = stages,
                    Value::Scalar(_) | Value::Seq(_) => errors.push(bad_spec(
                        "`stages` of a spec must be a mapping of stage names to stages",
                        node.span,
                        "expected `<stage name>: { kind: …, … }`",
                        "see pipelines/specs/text-classification.yaml",
                    )),
                }
            }
            other => errors.push(SpecError::UnknownKey {
                key: super::abbreviate(other),
                place: "the spec".to_owned(),
                span: key.span.into(),
                help: suggestion_help(other, &SPEC_KEYS, "spec key"),
            }),
        }
    }
    if !has_name {
        errors.push(bad_spec(
            "the spec has no `spec:` name",
            Span::new(root.span.start(), root.span.start()),
            "add `spec: <name>` here",
            "the name is shown by `taper spec show` and recorded in lock files",
        ));
    }
    (Some(spec), errors)
}

fn parse_decl(key: Key, node: Node, errors: &mut Vec<SpecError>) -> Option<ParamDecl> {
    let Value::Map(fields) = node.value else {
        errors.push(bad_spec(
            &format!("param `{}` must be declared as a mapping", key.value),
            node.span,
            "expected `{ type, default, description }`",
            "write e.g. `lr: { type: float, default: 5e-5, range: [0, 1], description: … }`",
        ));
        return None;
    };
    let mut decl = ParamDecl {
        key,
        ty: String::new(),
        default: None,
        range: None,
        choices: Vec::new(),
        description: None,
    };
    let mut type_span = decl.key.span;
    for (field, value) in fields {
        match field.value.as_str() {
            "type" => {
                type_span = value.span;
                match text_of(&value) {
                    Some(ty) if PARAM_TYPES.contains(&ty.as_str()) => decl.ty = ty,
                    _ => errors.push(bad_spec(
                        &format!("unknown param type {}", value.describe()),
                        value.span,
                        "not a param type",
                        &suggestion_help(
                            value.as_scalar().map_or("", |scalar| scalar.text.as_str()),
                            &PARAM_TYPES,
                            "type",
                        ),
                    )),
                }
            }
            "default" => decl.default = Some(value),
            "range" => match value.value {
                Value::Seq(ref bounds) if bounds.len() == 2 => {
                    match (number(&bounds[0]), number(&bounds[1])) {
                        (Some(low), Some(high)) if low <= high => decl.range = Some((low, high)),
                        _ => errors.push(bad_spec(
                            "a range is `[low, high]`, two numbers with low ≤ high",
                            value.span,
                            "not a range",
                            "write e.g. `range: [0, 1]`",
                        )),
                    }
                }
                _ => errors.push(bad_spec(
                    "a range is `[low, high]`",
                    value.span,
                    "not a range",
                    "write e.g. `range: [0, 1]`",
                )),
            },
            "choices" => match value.value {
                Value::Seq(items) => decl.choices = items,
                Value::Scalar(_) | Value::Map(_) => errors.push(bad_spec(
                    "`choices` is a list of allowed values",
                    value.span,
                    "not a list",
                    "write e.g. `choices: [lora, full]`",
                )),
            },
            "description" => decl.description = text_of(&value),
            other => errors.push(SpecError::UnknownKey {
                key: super::abbreviate(other),
                place: format!("the declaration of param `{}`", decl.key.value),
                span: field.span.into(),
                help: suggestion_help(other, &PARAM_KEYS, "declaration key"),
            }),
        }
    }
    if decl.ty.is_empty() {
        errors.push(bad_spec(
            &format!("param `{}` has no `type`", decl.key.value),
            type_span,
            "declare its type",
            &format!("add `type:`, one of {}", PARAM_TYPES.join(", ")),
        ));
        return None;
    }
    if let Some(default) = &decl.default {
        if let Err(problem) = decl.check(default) {
            errors.push(bad_spec(
                &format!("the default of `{}` {problem}", decl.key.value),
                default.span,
                "invalid default",
                "fix the default or the declaration",
            ));
        }
    }
    Some(decl)
}

impl ParamDecl {
    /// Whether `value` fits this declaration; the problem, worded to follow "the value".
    pub fn check(&self, value: &Node) -> Result<(), String> {
        let scalar = value.as_scalar().map(|scalar| scalar.resolve());
        let fits = match self.ty.as_str() {
            "int" => matches!(scalar, Some(ScalarValue::Int(_))),
            "float" => matches!(scalar, Some(ScalarValue::Int(_) | ScalarValue::Float(_))),
            "string" => matches!(scalar, Some(ScalarValue::Str(_))),
            "bool" => matches!(scalar, Some(ScalarValue::Bool(_))),
            "list" => matches!(value.value, Value::Seq(_)),
            _ => matches!(value.value, Value::Map(_)),
        };
        if !fits {
            let article = if self.ty == "int" { "an" } else { "a" };
            return Err(format!(
                "is {}, not {article} {}",
                value.describe(),
                self.ty
            ));
        }
        if let (Some((low, high)), Some(number)) = (self.range, number(value)) {
            if !(low..=high).contains(&number) {
                return Err(format!("is {number}, outside its range [{low}, {high}]"));
            }
        }
        if !self.choices.is_empty()
            && !self
                .choices
                .iter()
                .any(|choice| choice.as_scalar().map(|scalar| scalar.resolve()) == scalar)
        {
            let choices: Vec<String> = self
                .choices
                .iter()
                .map(|choice| {
                    choice
                        .as_scalar()
                        .map_or_else(|| choice.describe(), |scalar| scalar.text.to_string())
                })
                .collect();
            return Err(format!(
                "is {}, not one of {}",
                value.describe(),
                choices.join(", ")
            ));
        }
        Ok(())
    }
}

fn number(node: &Node) -> Option<f64> {
    match node.as_scalar()?.resolve() {
        ScalarValue::Int(value) => Some(value as f64),
        ScalarValue::Float(value) => Some(value),
        ScalarValue::Null | ScalarValue::Bool(_) | ScalarValue::Str(_) => None,
    }
}

fn text_of(node: &Node) -> Option<String> {
    node.as_scalar().map(|scalar| scalar.text.to_string())
}

fn bad_spec(message: &str, span: Span, label: &str, help: &str) -> SpecError {
    SpecError::UseSpec {
        message: message.to_owned(),
        span: span.into(),
        label: label.to_owned(),
        other: Vec::new(),
        help: help.to_owned(),
    }
}

/// Replaces every `use:` entry of the pipeline's stages by the spec's stages, appending each
/// spec file read to `source`; paths are relative to `root` (the pipeline's directory), and
/// published specs are fetched through `fetcher`.
pub fn expand_uses(
    raw: &mut RawPipeline,
    source: &mut SourceText,
    root: &Path,
    fetcher: &dyn SpecFetcher,
    errors: &mut Vec<SpecError>,
) {
    let Some((
        _,
        Node {
            value: Value::Map(entries),
            ..
        },
    )) = &mut raw.stages
    else {
        return;
    };
    if !entries.iter().any(|(_, body)| body.get("use").is_some()) {
        return;
    }
    let mut expanded = Vec::with_capacity(entries.len());
    for (key, body) in std::mem::take(entries) {
        if body.get("use").is_none() {
            expanded.push((key, body));
            continue;
        }
        let before = errors.len();
        let used = expand_one(&key, &body, source, root, fetcher, &mut expanded, errors);
        raw.use_failed |= errors.len() > before;
        raw.uses.extend(used);
    }
    *entries = expanded;
}

/// One `use:` entry: its stages are pushed onto `out`.
fn expand_one(
    entry: &Key,
    body: &Node,
    source: &mut SourceText,
    root: &Path,
    fetcher: &dyn SpecFetcher,
    out: &mut Vec<(Key, Node)>,
    errors: &mut Vec<SpecError>,
) -> Option<SpecUse> {
    let mut path_node = None;
    let mut settings: &[(Key, Node)] = &[];
    let mut prefix = String::new();
    let mut stage_overrides: &[(Key, Node)] = &[];
    let mut matrix = None;
    for (key, value) in body.as_map().unwrap_or_default() {
        match key.value.as_str() {
            "use" => path_node = Some(value),
            "description" => {}
            "with" => settings = mapping(value, "with", errors).unwrap_or_default(),
            "prefix" => prefix = text_of(value).unwrap_or_default(),
            "stages" => stage_overrides = mapping(value, "stages", errors).unwrap_or_default(),
            "matrix" => matrix = Some(value),
            other => errors.push(SpecError::UnknownKey {
                key: super::abbreviate(other),
                place: format!("the `use:` entry `{}`", entry.value),
                span: key.span.into(),
                help: suggestion_help(other, &USE_KEYS, "key"),
            }),
        }
    }
    let path_node = path_node?;
    let spec_source = parse_source(path_node, errors)?;
    let (segment, text) = read_source(&spec_source, path_node, root, fetcher, errors)?;
    let base = source.push_segment(&segment, &text);
    let (spec, spec_errors) = parse_spec(&text, base);
    let failed = !spec_errors.is_empty();
    errors.extend(spec_errors);
    let spec = spec?;
    if failed {
        return None;
    }

    let with = check_settings(&spec, entry, settings, errors)?;
    let variants = match matrix {
        None => vec![BTreeMap::new()],
        Some(matrix) => expand_matrix(&spec, matrix, errors)?,
    };
    for (key, _) in stage_overrides {
        if !spec.stages.iter().any(|(name, _)| name.value == key.value) {
            let names: Vec<&str> = spec.stages.iter().map(|(k, _)| k.value.as_str()).collect();
            errors.push(SpecError::UseSpec {
                message: format!("spec `{}` has no stage `{}`", spec.name, key.value),
                span: key.span.into(),
                label: "not a stage of the spec".to_owned(),
                other: SpecNote::at(spec.stages_span, "the spec's stages".to_owned()),
                help: suggestion_help(&key.value, &names, "stage"),
            });
        }
    }

    // Every param some variant sets (an `include` may set one no axis sweeps).
    let swept: BTreeSet<&str> = variants
        .iter()
        .flat_map(|variant| variant.keys().map(String::as_str))
        .collect();
    let varies = varying_stages(&spec, &swept);
    let mut used = SpecUse {
        entry: entry.value.to_string(),
        source: spec_source,
        name: spec.name.clone(),
        version: spec.version.clone(),
        blake3: blake3::hash(text.as_bytes()).to_hex().to_string(),
        params: with
            .iter()
            .filter(|(name, _)| !swept.contains(name.as_str()))
            .map(|(name, node)| {
                let origin =
                    source.location(node.from_param.as_deref().unwrap_or(&node.span).start());
                (name.clone(), (node.flow_text(), origin))
            })
            .collect(),
        variants: Vec::with_capacity(variants.len()),
    };
    for (index, variant) in variants.iter().enumerate() {
        let label = variant_label(variant);
        let stage_name = |name: &str| {
            if varies.contains(name) && !label.is_empty() {
                format!("{prefix}{name}-{label}")
            } else {
                format!("{prefix}{name}")
            }
        };
        let mut values = with.clone();
        values.extend(
            variant
                .iter()
                .map(|(name, node)| (name.clone(), node.clone())),
        );
        let mut stages = Vec::with_capacity(spec.stages.len());
        for (key, stage) in &spec.stages {
            let name = stage_name(&key.value);
            stages.push(name.clone());
            // Shared stages are emitted by the first variant only.
            if index > 0 && !varies.contains(key.value.as_str()) {
                continue;
            }
            let mut stage = stage.clone();
            if let Some((_, changes)) = stage_overrides.iter().find(|(k, _)| k.value == key.value) {
                merge(&mut stage, changes);
            }
            substitute(&mut stage, &spec, &values, errors);
            rename_inputs(&mut stage, &spec, &stage_name);
            out.push((
                Spanned {
                    value: name.into(),
                    span: key.span,
                },
                stage,
            ));
        }
        used.variants.push(Variant {
            params: variant
                .iter()
                .map(|(name, node)| (name.clone(), scalar_text(node)))
                .collect(),
            label,
            stages,
        });
    }
    Some(used)
}

/// The spec's text and the name its [`SourceText`] segment gets: the path as the user would
/// type it, or the published source (a store path would mean nothing to the reader).
fn read_source(
    spec_source: &SpecSource,
    site: &Node,
    root: &Path,
    fetcher: &dyn SpecFetcher,
    errors: &mut Vec<SpecError>,
) -> Option<(String, String)> {
    let pinned_error = |found: &str, pin: &str| {
        bad_spec(
            &format!(
                "the blake3 of spec `{spec_source}` is `{found}`, but the `use:` pins `{pin}`"
            ),
            site.span,
            "pinned here",
            "the published spec changed; review it, then pin the new digest if it is expected",
        )
    };
    let (segment, read) = match spec_source {
        SpecSource::Path(path) => {
            // Named as the user would type it: `specs/x.yaml` beside a pipeline in `.`, not
            // `./specs/…`.
            let full_path = if root == Path::new(".") {
                Path::new(path).to_path_buf()
            } else {
                root.join(path)
            };
            (full_path.display().to_string(), read_spec(&full_path))
        }
        SpecSource::Pip { .. } | SpecSource::Url { .. } => {
            let read = match fetcher.fetch(spec_source) {
                Ok(fetched) => read_spec(&fetched),
                Err(FetchError::Mismatch { found }) => {
                    errors.push(pinned_error(&found, spec_source.pin().unwrap_or_default()));
                    return None;
                }
                Err(FetchError::NotDownloaded(reason)) => {
                    errors.push(bad_spec(
                        &format!("cannot fetch spec `{spec_source}`: {reason}"),
                        site.span,
                        "this spec",
                        "`--read-only-store` never writes to the store: run once without it to \
                         download the spec, then it is read from there offline",
                    ));
                    return None;
                }
                Err(FetchError::Failed(reason)) => Err(reason),
            };
            (spec_source.to_string(), read)
        }
    };
    let text = match read {
        Ok(text) => text,
        Err(reason) => {
            let (verb, help) = match spec_source {
                SpecSource::Path(_) => (
                    "read",
                    "the path is relative to the pipeline file's directory",
                ),
                SpecSource::Pip { .. } | SpecSource::Url { .. } => (
                    "fetch",
                    "a published spec is downloaded once into the store (`downloads-v1/`) and \
                     read from there offline; check the URL or the package (pip reads `PIP_*`)",
                ),
            };
            errors.push(bad_spec(
                &format!("cannot {verb} spec `{spec_source}`: {reason}"),
                site.span,
                "this spec",
                help,
            ));
            return None;
        }
    };
    // Also when the fetcher said nothing: a fetcher that did not check cannot let a
    // re-published spec through.
    if let Some(pin) = spec_source.pin() {
        let found = blake3::hash(text.as_bytes()).to_hex().to_string();
        if found != pin {
            errors.push(pinned_error(&found, pin));
            return None;
        }
    }
    Some((segment, text))
}

fn read_spec(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let metadata = std::fs::metadata(path).map_err(|error| error.to_string())?;
    // A FIFO or a device (`use: /dev/zero`) would block or never end.
    if !metadata.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SPEC_SIZE + 1).read_to_end(&mut bytes))
        .map_err(|error| error.to_string())?;
    if bytes.len() as u64 > MAX_SPEC_SIZE {
        return Err(format!("more than {MAX_SPEC_SIZE} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())
}

fn mapping<'a>(
    node: &'a Node,
    key: &str,
    errors: &mut Vec<SpecError>,
) -> Option<&'a [(Key, Node)]> {
    let entries = node.as_map();
    if entries.is_none() {
        errors.push(bad_spec(
            &format!(
                "`{key}` of a `use:` must be a mapping, not {}",
                node.describe()
            ),
            node.span,
            "expected `name: value` entries",
            "write e.g. `with: { learning_rate: 1e-4 }`",
        ));
    }
    entries
}

/// The value of every spec param for this use: the `with:` value, checked against the
/// declaration (errors at the use site and the declaration), or the default. The node keeps
/// where its value was written in `from_param`.
fn check_settings(
    spec: &SpecFile,
    entry: &Key,
    settings: &[(Key, Node)],
    errors: &mut Vec<SpecError>,
) -> Option<BTreeMap<String, Node>> {
    let before = errors.len();
    let mut values = BTreeMap::new();
    for (key, value) in settings {
        let Some(decl) = declared(spec, key, "", errors) else {
            continue;
        };
        if let Err(problem) = decl.check(value) {
            errors.push(param_error(spec, decl, value.span, &problem));
            continue;
        }
        let mut node = value.clone();
        node.from_param = Some(Box::new(value.span));
        values.insert(key.value.to_string(), node);
    }
    for decl in &spec.params {
        if values.contains_key(decl.key.value.as_str()) {
            continue;
        }
        match &decl.default {
            Some(default) => {
                let mut node = default.clone();
                node.from_param = Some(Box::new(default.span));
                values.insert(decl.key.value.to_string(), node);
            }
            None if settings.iter().any(|(key, _)| key.value == decl.key.value) => {}
            None => errors.push(SpecError::UseSpec {
                message: format!(
                    "spec `{}` needs param `{}`, which has no default",
                    spec.name, decl.key.value
                ),
                span: entry.span.into(),
                label: "set it under `with:` here".to_owned(),
                other: SpecNote::at(decl.key.span, "declared here".to_owned()),
                help: format!("add `with: {{ {}: … }}`", decl.key.value),
            }),
        }
    }
    (errors.len() == before).then_some(values)
}

fn param_error(spec: &SpecFile, decl: &ParamDecl, span: Span, problem: &str) -> SpecError {
    SpecError::UseSpec {
        message: format!(
            "param `{}` of spec `{}` {problem}",
            decl.key.value, spec.name
        ),
        span: span.into(),
        label: "invalid value".to_owned(),
        other: SpecNote::at(
            decl.key.span,
            format!("`{}` is declared here", decl.key.value),
        ),
        help: decl.description.clone().map_or_else(
            || format!("`{}`: {}", decl.key.value, decl.ty),
            |text| format!("`{}` ({}): {text}", decl.key.value, decl.ty),
        ),
    }
}

/// `matrix: { lr: [1e-4, 5e-5], rank: [4, 8], include: [{…}], exclude: [{…}] }`: the cross
/// product of the lists, less each variant matching an `exclude` entry, plus each `include`.
fn expand_matrix(
    spec: &SpecFile,
    matrix: &Node,
    errors: &mut Vec<SpecError>,
) -> Option<Vec<BTreeMap<String, Node>>> {
    let before = errors.len();
    let entries = mapping(matrix, "matrix", errors)?;
    let mut axes: Vec<(String, Vec<Node>)> = Vec::new();
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    let combination = |items: &Node, errors: &mut Vec<SpecError>| -> Vec<Vec<(Key, Node)>> {
        match &items.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|item| mapping(item, "an include/exclude entry", errors))
                .map(<[(Key, Node)]>::to_vec)
                .collect(),
            Value::Scalar(_) | Value::Map(_) => {
                errors.push(bad_spec(
                    "`include` and `exclude` are lists of `{ param: value }` mappings",
                    items.span,
                    "not a list",
                    "write e.g. `exclude: [{ lr: 1e-3, rank: 16 }]`",
                ));
                Vec::new()
            }
        }
    };
    for (key, value) in entries {
        match key.value.as_str() {
            "include" => include = combination(value, errors),
            "exclude" => exclude = combination(value, errors),
            name => {
                let Some(decl) = declared(spec, key, " to sweep", errors) else {
                    continue;
                };
                let Value::Seq(items) = &value.value else {
                    errors.push(bad_spec(
                        &format!("matrix axis `{name}` must be a list of values"),
                        value.span,
                        "not a list",
                        &format!("write e.g. `{name}: [a, b]`"),
                    ));
                    continue;
                };
                for item in items {
                    if let Err(problem) = decl.check(item) {
                        errors.push(param_error(spec, decl, item.span, &problem));
                    }
                }
                axes.push((name.to_owned(), items.clone()));
            }
        }
    }
    for (key, value) in include.iter().chain(&exclude).flatten() {
        if let Some(decl) = declared(spec, key, " to sweep", errors) {
            if let Err(problem) = decl.check(value) {
                errors.push(param_error(spec, decl, value.span, &problem));
            }
        }
    }
    let count = axes
        .iter()
        .try_fold(1usize, |count, (_, items)| count.checked_mul(items.len()))
        .filter(|count| *count <= MAX_VARIANTS);
    let Some(count) = count else {
        errors.push(bad_spec(
            &format!("the matrix expands to more than {MAX_VARIANTS} variants"),
            matrix.span,
            "too many variants",
            "sweep fewer values at once",
        ));
        return None;
    };
    if errors.len() != before {
        return None;
    }
    let mut variants = Vec::with_capacity(count);
    for index in 0..count {
        let mut rest = index;
        let mut variant = BTreeMap::new();
        for (name, items) in axes.iter().rev() {
            let mut node = items[rest % items.len()].clone();
            node.from_param = Some(Box::new(node.span));
            variant.insert(name.clone(), node);
            rest /= items.len();
        }
        let excluded = exclude.iter().any(|pattern| {
            pattern.iter().all(|(key, value)| {
                variant
                    .get(key.value.as_str())
                    .is_some_and(|node| scalar_text(node) == scalar_text(value))
            })
        });
        if !excluded {
            variants.push(variant);
        }
    }
    for extra in include {
        let mut variant = BTreeMap::new();
        for (key, mut value) in extra {
            value.from_param = Some(Box::new(value.span));
            variant.insert(key.value.to_string(), value);
        }
        variants.push(variant);
    }
    // Every variant names every swept param, so stage names stay unique and comparable.
    let swept: BTreeSet<String> = variants.iter().flat_map(|v| v.keys().cloned()).collect();
    for variant in &mut variants {
        for name in &swept {
            if !variant.contains_key(name) {
                if let Some(default) = spec
                    .params
                    .iter()
                    .find(|decl| decl.key.value == name)
                    .and_then(|decl| decl.default.clone())
                {
                    variant.insert(name.clone(), default);
                }
            }
        }
    }
    Some(variants)
}

/// The declaration of the param `key` names; an error at `key` when the spec has none
/// (`purpose`, e.g. " to sweep", ends the message).
fn declared<'a>(
    spec: &'a SpecFile,
    key: &Key,
    purpose: &str,
    errors: &mut Vec<SpecError>,
) -> Option<&'a ParamDecl> {
    let decl = spec.params.iter().find(|decl| decl.key.value == key.value);
    if decl.is_none() {
        let names: Vec<&str> = spec.params.iter().map(|d| d.key.value.as_str()).collect();
        errors.push(SpecError::UseSpec {
            message: format!("spec `{}` has no param `{}`{purpose}", spec.name, key.value),
            span: key.span.into(),
            label: "not a param of the spec".to_owned(),
            other: SpecNote::at(
                spec.params_span,
                "the spec's params are declared here".to_owned(),
            ),
            help: suggestion_help(&key.value, &names, "param"),
        });
    }
    decl
}

/// A scalar's text (the YAML of anything else), for labels and comparisons.
fn scalar_text(node: &Node) -> String {
    node.as_scalar()
        .map_or_else(|| node.describe(), |scalar| scalar.text.to_string())
}

/// `lr1e-4-rank8`: the swept values in a stage name (letters, digits, `_`, `-` only).
fn variant_label(variant: &BTreeMap<String, Node>) -> String {
    variant
        .iter()
        .map(|(name, node)| {
            let value: String = scalar_text(node)
                .chars()
                .map(|character| match character {
                    '.' => 'p',
                    c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c,
                    _ => '_',
                })
                .collect();
            format!("{name}{value}")
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The spec stages whose settings read a swept param, directly or through an input.
fn varying_stages<'a>(spec: &'a SpecFile, swept: &BTreeSet<&str>) -> BTreeSet<&'a str> {
    let mut varies: BTreeSet<&str> = spec
        .stages
        .iter()
        .filter(|(_, stage)| {
            references(stage)
                .iter()
                .any(|name| swept.contains(name.as_str()))
        })
        .map(|(key, _)| key.value.as_str())
        .collect();
    // Inputs point upstream; iterate to a fixed point (specs are a handful of stages).
    loop {
        let before = varies.len();
        for (key, stage) in &spec.stages {
            let reads_varying = stage
                .get("inputs")
                .and_then(Node::as_map)
                .unwrap_or_default()
                .iter()
                .any(|(_, upstream)| {
                    upstream
                        .as_scalar()
                        .is_some_and(|scalar| varies.contains(scalar.text.as_str()))
                });
            if reads_varying {
                varies.insert(key.value.as_str());
            }
        }
        if varies.len() == before {
            return varies;
        }
    }
}

/// The `${spec.<name>}` names used under `node`.
fn references(node: &Node) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![node];
    while let Some(node) = stack.pop() {
        match &node.value {
            Value::Scalar(scalar) => {
                let mut rest = scalar.text.as_str();
                while let Some(position) = rest.find("${spec.") {
                    // `$${spec.…}` is a literal, not a use.
                    let escaped = position > 0 && rest.as_bytes()[position - 1] == b'$';
                    let after = &rest[position + "${spec.".len()..];
                    let Some(end) = after.find('}') else { break };
                    if !escaped {
                        names.push(after[..end].to_owned());
                    }
                    rest = &after[end..];
                }
            }
            Value::Seq(items) => stack.extend(items),
            Value::Map(entries) => stack.extend(entries.iter().map(|(_, value)| value)),
        }
    }
    names
}

/// Deep-merges `changes` into `stage`: mappings merge key by key, anything else replaces.
fn merge(stage: &mut Node, changes: &Node) {
    match (&mut stage.value, &changes.value) {
        (Value::Map(entries), Value::Map(updates)) => {
            for (key, update) in updates {
                match entries
                    .iter_mut()
                    .find(|(existing, _)| existing.value == key.value)
                {
                    Some((_, existing)) => merge(existing, update),
                    None => entries.push((key.clone(), update.clone())),
                }
            }
        }
        _ => *stage = changes.clone(),
    }
}

/// Replaces `${spec.<name>}` under `node`: a whole value takes the param's node (typed), text
/// splices the param's text. Unknown names are errors at the use in the spec.
fn substitute(
    node: &mut Node,
    spec: &SpecFile,
    values: &BTreeMap<String, Node>,
    errors: &mut Vec<SpecError>,
) {
    match &mut node.value {
        Value::Seq(items) => items
            .iter_mut()
            .for_each(|item| substitute(item, spec, values, errors)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, value)| substitute(value, spec, values, errors)),
        Value::Scalar(scalar) => {
            if !scalar.text.contains("${spec.") {
                return;
            }
            let text = scalar.text.clone();
            let whole = text
                .strip_prefix("${spec.")
                .and_then(|rest| rest.strip_suffix('}'))
                .filter(|name| !name.contains('}'));
            if let Some(name) = whole {
                if let Some(value) = lookup(name, node.span, spec, values, errors) {
                    node.value = value.value.clone();
                    node.from_param = value.from_param.clone();
                }
                return;
            }
            let mut output = String::with_capacity(text.len());
            let mut rest = text.as_str();
            while let Some(position) = rest.find("${spec.") {
                // `$${spec.…}` is a literal, left for the params step to unescape.
                let escaped = position > 0 && rest.as_bytes()[position - 1] == b'$';
                output.push_str(&rest[..position]);
                let after = &rest[position + "${spec.".len()..];
                let Some(end) = after.find('}') else {
                    output.push_str(&rest[position..]);
                    rest = "";
                    break;
                };
                if escaped {
                    output.push_str(&rest[position..position + "${spec.".len() + end + 1]);
                } else if let Some(value) = lookup(&after[..end], node.span, spec, values, errors) {
                    match value.as_scalar() {
                        Some(scalar) => output.push_str(&scalar.text),
                        None => errors.push(bad_spec(
                            &format!(
                                "`{}` is {}, which cannot be spliced into text",
                                &after[..end],
                                value.describe()
                            ),
                            node.span,
                            "used inside text",
                            "use a list or mapping param only as a whole value",
                        )),
                    }
                }
                rest = &after[end + 1..];
            }
            output.push_str(rest);
            node.value = Value::Scalar(super::node::Scalar {
                text: output.into(),
                style: super::node::ScalarStyle::Quoted,
            });
        }
    }
}

fn lookup<'a>(
    name: &str,
    span: Span,
    spec: &SpecFile,
    values: &'a BTreeMap<String, Node>,
    errors: &mut Vec<SpecError>,
) -> Option<&'a Node> {
    let value = values.get(name);
    if value.is_none() && !spec.params.iter().any(|decl| decl.key.value == name) {
        let names: Vec<&str> = spec.params.iter().map(|d| d.key.value.as_str()).collect();
        errors.push(SpecError::UseSpec {
            message: format!("spec `{}` uses undeclared param `{name}`", spec.name),
            span: span.into(),
            label: "not declared under `params:`".to_owned(),
            other: SpecNote::at(spec.params_span, "the spec's params".to_owned()),
            help: suggestion_help(name, &names, "param"),
        });
    }
    value
}

/// Renames `inputs:` that name a stage of the spec to that stage's name in the pipeline.
fn rename_inputs(stage: &mut Node, spec: &SpecFile, stage_name: &dyn Fn(&str) -> String) {
    let Value::Map(entries) = &mut stage.value else {
        return;
    };
    for (key, inputs) in entries.iter_mut() {
        if key.value != "inputs" {
            continue;
        }
        let Value::Map(slots) = &mut inputs.value else {
            continue;
        };
        for (_, upstream) in slots.iter_mut() {
            if let Value::Scalar(scalar) = &mut upstream.value {
                if spec
                    .stages
                    .iter()
                    .any(|(name, _)| name.value == scalar.text)
                {
                    scalar.text = stage_name(&scalar.text).into();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse, NoFetcher};

    const SPEC: &str = "spec: s
params:
  n: { type: int, default: 2, range: [1, 5] }
  word: { type: string, choices: [a, b] }
stages:
  one:
    kind: command
    run: echo ${spec.word}-$${spec.n} > one.txt
    outs: [one.txt]
  two:
    kind: configure
    with: { epochs: \"${spec.n}\" }
    inputs: { x: one }
";

    /// Expands `pipeline` (whose stages `use:` `s.yaml`, holding [`SPEC`]).
    fn expand(pipeline: &str) -> (RawPipeline, Vec<SpecError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("s.yaml"), SPEC).expect("write");
        let mut source = SourceText::new("p.yaml", pipeline, &[]);
        let (raw, mut errors) = parse(&source);
        let mut raw = raw.expect("a pipeline");
        expand_uses(&mut raw, &mut source, dir.path(), &NoFetcher, &mut errors);
        (raw, errors)
    }

    fn stage<'a>(raw: &'a RawPipeline, name: &str) -> Option<&'a Node> {
        raw.stages.as_ref()?.1.get(name)
    }

    #[test]
    fn a_whole_value_keeps_its_type_and_text_is_spliced() {
        let (raw, errors) =
            expand("stages:\n  u: { use: s.yaml, with: { word: b }, prefix: p- }\n");
        assert!(errors.is_empty(), "{errors:?}");
        let two = stage(&raw, "p-two").expect("prefixed");
        let epochs = two
            .lookup(&["with".into(), "epochs".into()])
            .expect("epochs");
        assert_eq!(
            epochs.as_scalar().map(|s| s.resolve()),
            Some(ScalarValue::Int(2))
        );
        // `$${spec.n}` is left for the params step, which unescapes `$${`.
        let run = stage(&raw, "p-one")
            .and_then(|one| one.get("run"))
            .expect("run");
        assert_eq!(
            run.as_scalar().expect("text").text,
            "echo b-$${spec.n} > one.txt"
        );
        let input = two.lookup(&["inputs".into(), "x".into()]).expect("input");
        assert_eq!(input.as_scalar().expect("name").text, "p-one");
        assert_eq!(
            raw.uses[0].blake3,
            blake3::hash(SPEC.as_bytes()).to_hex().to_string()
        );
    }

    #[test]
    fn a_missing_required_param_stops_the_use() {
        let (raw, errors) = expand("stages:\n  u: { use: s.yaml }\n");
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            ["spec `s` needs param `word`, which has no default"],
            "the use stops at its params"
        );
        assert!(raw.use_failed);
    }

    #[test]
    fn a_matrix_crosses_excludes_and_includes() {
        let (raw, errors) = expand(
            "stages:\n  u:\n    use: s.yaml\n    with: { word: a }\n    matrix: { n: [1, 2, 3], exclude: [{ n: 2 }], include: [{ n: 5 }] }\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<&str> = raw
            .stages
            .as_ref()
            .expect("stages")
            .1
            .as_map()
            .expect("map")
            .iter()
            .map(|(key, _)| key.value.as_str())
            .collect();
        assert_eq!(names, ["one", "two-n1", "two-n3", "two-n5"]);
    }

    /// A device would never end, a FIFO would block: only regular files are read.
    #[test]
    fn a_spec_that_is_not_a_regular_file_is_refused() {
        let (raw, errors) = expand("stages:\n  u: { use: /dev/zero }\n");
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            ["cannot read spec `/dev/zero`: not a regular file"]
        );
        assert!(raw.use_failed);
    }

    /// Serves every published spec from one local file, unchecked.
    struct FileFetcher(std::path::PathBuf);

    impl SpecFetcher for FileFetcher {
        fn fetch(&self, _source: &SpecSource) -> Result<std::path::PathBuf, FetchError> {
            Ok(self.0.clone())
        }
    }

    /// A published spec expands like the path spec; bytes that miss the pin are refused even
    /// when the fetcher did not check them; without a fetcher, the `use:` says how to load.
    #[test]
    fn published_specs_are_checked_against_their_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("fetched.yaml");
        std::fs::write(&file, SPEC).expect("write");
        let pin = blake3::hash(SPEC.as_bytes()).to_hex().to_string();
        let run = |pin: &str, fetcher: &dyn SpecFetcher| {
            let pipeline = format!(
                "stages:\n  u: {{ use: {{ url: http://h/s.yaml, blake3: {pin} }}, with: {{ word: a }} }}\n"
            );
            let mut source = SourceText::new("p.yaml", &pipeline, &[]);
            let (raw, mut errors) = parse(&source);
            let mut raw = raw.expect("a pipeline");
            expand_uses(&mut raw, &mut source, dir.path(), fetcher, &mut errors);
            let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
            (raw, messages)
        };
        let (raw, messages) = run(&pin, &FileFetcher(file.clone()));
        assert!(messages.is_empty(), "{messages:?}");
        assert!(stage(&raw, "one").is_some());
        assert_eq!(raw.uses[0].blake3, pin);
        assert_eq!(raw.uses[0].source.to_string(), "http://h/s.yaml");

        let wrong = "1".repeat(64);
        let (raw, messages) = run(&wrong, &FileFetcher(file));
        assert_eq!(
            messages,
            [format!(
                "the blake3 of spec `http://h/s.yaml` is `{pin}`, but the `use:` pins `{wrong}`"
            )]
        );
        assert!(raw.use_failed);

        // An error inside a published spec is shown in a segment named by its URL.
        let bad = "spec: s\nbogus: 1\nstages: {}\n";
        std::fs::write(dir.path().join("bad.yaml"), bad).expect("write");
        let bad_pin = blake3::hash(bad.as_bytes()).to_hex().to_string();
        let pipeline =
            format!("stages:\n  u: {{ use: {{ url: http://h/s.yaml, blake3: {bad_pin} }} }}\n");
        let mut source = SourceText::new("p.yaml", &pipeline, &[]);
        let (raw, mut errors) = parse(&source);
        let mut raw = raw.expect("a pipeline");
        let fetcher = FileFetcher(dir.path().join("bad.yaml"));
        expand_uses(&mut raw, &mut source, dir.path(), &fetcher, &mut errors);
        let [SpecError::UnknownKey { span, .. }] = errors.as_slice() else {
            panic!("{errors:?}");
        };
        assert_eq!(source.location(span.offset()), "http://h/s.yaml:2");

        let (_, messages) = run(&pin, &NoFetcher);
        assert_eq!(messages.len(), 1);
        assert!(
            messages[0].starts_with("cannot fetch spec `http://h/s.yaml`: published specs"),
            "{messages:?}"
        );
    }

    #[test]
    fn declarations_are_checked() {
        let (spec, errors) = parse_spec(
            "spec: s\nparams:\n  a: { type: integer }\n  b: { type: int, default: 9, range: [1, 5] }\n  c: { default: 1 }\nstages: {}\n",
            0,
        );
        assert!(spec.is_some());
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "unknown param type the string `integer`",
                "param `a` has no `type`",
                "the default of `b` is 9, outside its range [1, 5]",
                "param `c` has no `type`",
            ]
        );
    }
}
