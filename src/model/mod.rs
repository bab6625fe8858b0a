//! Stage 1: the validated, typed pipeline.
//!
//! Contract: a [`Pipeline`] exists only after `spec` parsed the YAML and `model::validate`
//! accepted every part of it. Everything downstream (graph, fingerprint, exec, stages) reads
//! these types and never sees YAML or spans. Values here are fully resolved: `${params.x}` is
//! substituted, `-S stage.key=value` overrides are applied, and defaults are filled in, so two
//! pipelines that *mean* the same thing are equal here however they were written.

mod checks;
mod de;
mod edges;
mod error;
pub mod paths;
pub mod schema;
pub mod stages;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::spec::Override;
pub use edges::EdgeError;
pub use error::{ErrorList, LoadError, ModelError, MoreErrors, MAX_RENDERED_ERRORS};
pub use paths::PathIndex;
pub use stages::{
    Command, Configure, Deploy, Evaluate, Explain, PrepareData, SelectModel, Source, Train,
};
pub use validate::STAGE_KEYS;

use crate::spec;

/// Pipeline files larger than this are refused before parsing: a pipeline describes stages,
/// and a multi-megabyte file is almost surely the wrong file (a dataset, a binary).
pub const MAX_FILE_SIZE: u64 = 8 * 1024 * 1024;

/// Reads, parses and validates a pipeline file, applying `-S` overrides to the raw layer
/// first. Relative paths in the pipeline resolve against the file's directory. A `use:` of a
/// published spec is an error here: see [`load_file_with`].
pub fn load_file(path: &Path, overrides: &[Override]) -> Result<Pipeline, LoadError> {
    load_file_with(path, overrides, &spec::NoFetcher)
}

/// [`load_file`], fetching published specs (`use: { url: …, blake3: … }`) through `fetcher`.
pub fn load_file_with(
    path: &Path,
    overrides: &[Override],
    fetcher: &dyn spec::SpecFetcher,
) -> Result<Pipeline, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_FILE_SIZE {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_FILE_SIZE,
        });
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    let text = String::from_utf8(bytes).map_err(|error| {
        let offset = error.utf8_error().valid_up_to();
        let line = error.as_bytes()[..offset]
            .iter()
            .filter(|byte| **byte == b'\n')
            .count()
            + 1;
        LoadError::NotUtf8 {
            path: path.to_path_buf(),
            offset,
            line,
        }
    })?;
    let root = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    load_str_with(path, text, root, overrides, fetcher)
}

/// Reads and checks a spec file on its own, for `taper spec show` (its stages are checked
/// when a pipeline `use:`s it, with that pipeline's values).
pub fn load_spec_file(path: &Path) -> Result<spec::SpecFile, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let name = path.display().to_string();
    let source = spec::SourceText::new(&name, &text, &[]);
    let (spec, errors) = spec::parse_spec(&text, 0);
    match spec {
        Some(spec) if errors.is_empty() => Ok(spec),
        _ => Err(invalid(
            name,
            source,
            errors.into_iter().map(ModelError::from).collect(),
        )),
    }
}

/// Parses and validates pipeline text; `path` names it in diagnostics and in [`Pipeline::path`].
pub fn load_str(
    path: &Path,
    text: impl Into<String>,
    root: PathBuf,
    overrides: &[Override],
) -> Result<Pipeline, LoadError> {
    load_str_with(path, text, root, overrides, &spec::NoFetcher)
}

/// [`load_str`], fetching published specs through `fetcher`.
pub fn load_str_with(
    path: &Path,
    text: impl Into<String>,
    root: PathBuf,
    overrides: &[Override],
    fetcher: &dyn spec::SpecFetcher,
) -> Result<Pipeline, LoadError> {
    let name = path.display().to_string();
    let mut text: String = text.into();
    // Editors on Windows may start a UTF-8 file with a byte-order mark; it is not part of the
    // first key.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    let segments: Vec<(String, String)> = overrides
        .iter()
        .map(|item| ("command-line override".to_owned(), item.text.clone()))
        .collect();
    let mut source = spec::SourceText::new(&name, text, &segments);
    let (raw, spec_errors) = spec::parse(&source);
    let mut errors: Vec<ModelError> = spec_errors.into_iter().map(ModelError::from).collect();
    let mut pipeline = None;
    if let Some(mut raw) = raw {
        // Overrides address the pipeline as written (`-S tc-train.epochs=3` names an expanded
        // stage only after expansion), so specs are expanded first.
        let mut use_errors = Vec::new();
        spec::expand_uses(&mut raw, &mut source, &root, fetcher, &mut use_errors);
        errors.extend(use_errors.into_iter().map(ModelError::from));
        for (index, item) in overrides.iter().enumerate() {
            let base = source
                .segment_start(index)
                .expect("one segment was created per override");
            if let Err(error) = raw.apply_override(item, base) {
                errors.push(error.into());
            }
        }
        pipeline = validate::validate(&raw, path, root, &mut errors);
    }
    for error in &mut errors {
        error.compact_labels(&source);
    }
    // Report in reading order (file first, then overrides); the sort is stable, so errors at
    // one place keep the order in which validation found them.
    errors.sort_by_key(|error| {
        miette::Diagnostic::labels(error)
            .and_then(|labels| labels.map(|label| label.offset()).min())
            .unwrap_or(0)
    });
    match pipeline {
        Some(pipeline) if errors.is_empty() => Ok(pipeline),
        _ => Err(invalid(name, source, errors)),
    }
}

/// Why one stage depends on another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DependencyVia {
    /// A typed input slot (`inputs: { model: base }`).
    Input(InputSlot),
    /// A `command` dep at or under an upstream stage's output (`outs`, or
    /// `out/<file stem>/<stage>/`): it reads inside what that stage produced.
    Path(PathBuf),
    /// A `command` dep on a directory that holds an upstream stage's output: its content is
    /// known only once that stage has written there.
    Containing(PathBuf),
}

/// An edge of the pipeline: `downstream` reads what `upstream` produces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Dependency {
    pub upstream: StageId,
    pub downstream: StageId,
    pub via: DependencyVia,
}

/// Where a pipeline's outputs and logs are materialized, relative to its directory:
/// `out/<file stem>/`. Per pipeline file, not one `out/` per folder: `quickstart.yaml` and
/// `sentiment-full.yaml` side by side both have a `finetune` stage, and with a shared
/// `out/finetune/` each run replaced the other's model, so `out/finetune/` belonged to whichever
/// ran last. File stems are unique in one folder, as are the lock files named after them.
pub fn output_root(pipeline_file: &Path) -> PathBuf {
    let stem = pipeline_file
        .file_stem()
        .map_or_else(|| "pipeline".into(), |stem| stem.to_string_lossy());
    Path::new("out").join(&*stem)
}

/// Where an ML stage's artifacts are materialized, relative to the pipeline root
/// (`out/<file stem>/<stage>/`); a `command` dep under it is an edge from that stage.
pub fn stage_output_dir(pipeline_file: &Path, id: &StageId) -> PathBuf {
    output_root(pipeline_file).join(id.as_str())
}

/// The log of stage `id`, relative to the pipeline root: `out/<file stem>/<stage>.log`.
pub fn stage_log_path(pipeline_file: &Path, id: &StageId) -> PathBuf {
    output_root(pipeline_file).join(format!("{id}.log"))
}

/// The lock file of a pipeline file: `x.yaml` → `x.lock`, beside it.
pub fn lock_path_for(pipeline_file: &Path) -> PathBuf {
    pipeline_file.with_extension("lock")
}

/// The store directory when neither `--store` nor `TAPER_STORE` names one (relative to the
/// working directory).
pub const DEFAULT_STORE_DIR: &str = "cache";

/// A validated pipeline, stages in file order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// The pipeline file this came from (as given on the command line).
    pub path: PathBuf,
    /// The directory relative paths in the pipeline are resolved against.
    pub root: PathBuf,
    /// Resolved pipeline-level params, for display; stages already have them substituted.
    pub params: BTreeMap<String, serde_json::Value>,
    pub stages: Vec<Stage>,
    /// The shared specs the pipeline `use:`s, with their content hashes (for the lock file).
    #[serde(skip)]
    pub specs: Vec<spec::SpecUse>,
    /// The edges, derived once from the stages (see [`Pipeline::dependencies`]); private so
    /// that a pipeline cannot be built with edges that disagree with its stages.
    #[serde(skip)]
    dependencies: Vec<Dependency>,
}

impl Pipeline {
    pub fn stage(&self, id: &StageId) -> Option<&Stage> {
        self.stages.iter().find(|stage| &stage.id == id)
    }

    /// The local paths stage `id` reads that no other stage produces: its
    /// [`StageSettings::read_paths`] minus those that are edges (overlapping another
    /// stage's outputs). Those must not be hashed from disk before the upstream stage runs:
    /// they may not exist yet, and their content comes from the upstream stage.
    pub fn external_paths(&self, id: &StageId) -> Vec<PathBuf> {
        let Some(stage) = self.stage(id) else {
            return Vec::new();
        };
        let produced: Vec<&PathBuf> = self
            .dependencies
            .iter()
            .filter(|dependency| &dependency.downstream == id)
            .filter_map(|dependency| match &dependency.via {
                DependencyVia::Path(path) | DependencyVia::Containing(path) => Some(path),
                DependencyVia::Input(_) => None,
            })
            .collect();
        stage
            .settings
            .read_paths()
            .into_iter()
            .filter(|path| !produced.contains(&path))
            .collect()
    }

    /// Every edge, in file order of the downstream stage: typed inputs, then `command` deps
    /// (the rule is in `model/edges.rs`). Built once, when the pipeline was validated or
    /// made by [`Pipeline::new`]; both ends exist and there is no cycle.
    pub fn dependencies(&self) -> &[Dependency] {
        &self.dependencies
    }
}

/// The name of a stage: its key under `stages:`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StageId(pub String);

impl StageId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One validated stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub id: StageId,
    /// Typed, resolved settings; the variant determines the kind.
    pub settings: StageSettings,
    /// Typed edges: input slot → the upstream stage whose artifact fills it.
    pub inputs: BTreeMap<InputSlot, StageId>,
}

impl Stage {
    pub fn kind(&self) -> StageKind {
        self.settings.kind()
    }
}

/// The kinds of stage, in the order of the fine-tuning lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    SelectModel,
    PrepareData,
    Configure,
    Train,
    Evaluate,
    Explain,
    Deploy,
    Command,
}

impl StageKind {
    pub const ALL: [StageKind; 8] = [
        StageKind::SelectModel,
        StageKind::PrepareData,
        StageKind::Configure,
        StageKind::Train,
        StageKind::Evaluate,
        StageKind::Explain,
        StageKind::Deploy,
        StageKind::Command,
    ];

    /// The spelling used in pipeline files (`kind: select-model`).
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::SelectModel => "select-model",
            StageKind::PrepareData => "prepare-data",
            StageKind::Configure => "configure",
            StageKind::Train => "train",
            StageKind::Evaluate => "evaluate",
            StageKind::Explain => "explain",
            StageKind::Deploy => "deploy",
            StageKind::Command => "command",
        }
    }

    pub fn from_name(name: &str) -> Option<StageKind> {
        StageKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// What this kind of stage produces; an edge is valid only when the upstream output kind
    /// matches the slot's expected kind.
    pub fn output(self) -> ArtifactKind {
        match self {
            StageKind::SelectModel => ArtifactKind::Model,
            StageKind::PrepareData => ArtifactKind::Dataset,
            StageKind::Configure => ArtifactKind::TrainingConfig,
            StageKind::Train => ArtifactKind::TrainedModel,
            StageKind::Evaluate => ArtifactKind::Metrics,
            StageKind::Explain => ArtifactKind::Explanations,
            StageKind::Deploy => ArtifactKind::Bundle,
            StageKind::Command => ArtifactKind::Files,
        }
    }

    /// The input slots of this kind: `(slot, expected artifact, required)`.
    pub fn input_slots(self) -> &'static [(InputSlot, ArtifactKind, bool)] {
        use ArtifactKind as A;
        use InputSlot as S;
        match self {
            StageKind::SelectModel | StageKind::Configure | StageKind::Command => &[],
            // The tokenizer comes from the model, so data preparation depends on it.
            StageKind::PrepareData => &[(S::Model, A::Model, true)],
            StageKind::Train => &[
                (S::Model, A::Model, true),
                (S::Data, A::Dataset, true),
                (S::Config, A::TrainingConfig, true),
                // The model `distillation` learns from (its settings live in `configure`).
                (S::Teacher, A::TrainedModel, false),
            ],
            // `ood`: a second dataset, out of the training domain, evaluated on the same split.
            StageKind::Evaluate => &[
                (S::Model, A::TrainedModel, true),
                (S::Data, A::Dataset, true),
                (S::Ood, A::Dataset, false),
            ],
            StageKind::Explain => &[
                (S::Model, A::TrainedModel, true),
                (S::Data, A::Dataset, true),
            ],
            // `data` only for `precision: int8`, which evaluates the quantized model again.
            StageKind::Deploy => &[
                (S::Model, A::TrainedModel, true),
                (S::Metrics, A::Metrics, false),
                (S::Data, A::Dataset, false),
            ],
        }
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named input of a stage (`inputs: { model: train, data: data }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputSlot {
    Model,
    Data,
    Config,
    Metrics,
    Teacher,
    Ood,
}

impl InputSlot {
    pub const ALL: [InputSlot; 6] = [
        InputSlot::Model,
        InputSlot::Data,
        InputSlot::Config,
        InputSlot::Metrics,
        InputSlot::Teacher,
        InputSlot::Ood,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InputSlot::Model => "model",
            InputSlot::Data => "data",
            InputSlot::Config => "config",
            InputSlot::Metrics => "metrics",
            InputSlot::Teacher => "teacher",
            InputSlot::Ood => "ood",
        }
    }
}

impl fmt::Display for InputSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of artifact a stage produces and a slot consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A pretrained model: config, tokenizer and weights.
    Model,
    /// A prepared, split and tokenized dataset.
    Dataset,
    /// Resolved training settings.
    TrainingConfig,
    /// Fine-tuned weights and their head.
    TrainedModel,
    Metrics,
    Explanations,
    Bundle,
    /// Declared `outs` of a `command` stage.
    Files,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Model => "model",
            ArtifactKind::Dataset => "dataset",
            ArtifactKind::TrainingConfig => "training config",
            ArtifactKind::TrainedModel => "trained model",
            ArtifactKind::Metrics => "metrics",
            ArtifactKind::Explanations => "explanations",
            ArtifactKind::Bundle => "deployment bundle",
            ArtifactKind::Files => "files",
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed settings (`with:`) of a stage; the variant is the stage's kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StageSettings {
    SelectModel(SelectModel),
    /// Boxed, as is `Configure`: both are over 300 bytes, the other kinds at most 144, and
    /// every stage of a pipeline holds one `StageSettings`.
    PrepareData(Box<PrepareData>),
    Configure(Box<Configure>),
    Train(Train),
    Evaluate(Evaluate),
    Explain(Explain),
    Deploy(Deploy),
    Command(Command),
}

impl StageSettings {
    pub fn kind(&self) -> StageKind {
        match self {
            StageSettings::SelectModel(_) => StageKind::SelectModel,
            StageSettings::PrepareData(_) => StageKind::PrepareData,
            StageSettings::Configure(_) => StageKind::Configure,
            StageSettings::Train(_) => StageKind::Train,
            StageSettings::Evaluate(_) => StageKind::Evaluate,
            StageSettings::Explain(_) => StageKind::Explain,
            StageSettings::Deploy(_) => StageKind::Deploy,
            StageSettings::Command(_) => StageKind::Command,
        }
    }
}

impl StageKind {
    /// Bumped when a kind's semantics change (what it computes from the same settings and
    /// inputs), so every cached result of that kind becomes stale. Part of the stage key.
    pub fn implementation_version(self) -> u32 {
        match self {
            // 2: `model.json`'s `source_blake3` of a directory source became its manifest
            // digest (one content-digest scheme); the same key must not name two outputs.
            StageKind::SelectModel => 2,
            // 2: an int8 deploy scores the evaluation's perturbed copies again, so its
            // manifest and lock metrics gain `typo_drop` & co.
            StageKind::Deploy => 2,
            StageKind::PrepareData
            | StageKind::Configure
            | StageKind::Train
            | StageKind::Evaluate
            | StageKind::Explain
            | StageKind::Command => 1,
        }
    }
}

impl StageSettings {
    /// Local files and directories a stage reads, relative to the pipeline root and
    /// normalized: `command` deps and `path:` sources (of a model, data or split files). One
    /// under another stage's outputs is an edge (`model/edges.rs`); the others are hashed from
    /// disk. Their content is part of the stage key either way.
    pub fn read_paths(&self) -> Vec<PathBuf> {
        fn source_path(source: &Source) -> Option<PathBuf> {
            match source {
                Source::Path { path } => Some(paths::normalize(path)),
                Source::Pip { .. } | Source::Hf { .. } | Source::Url { .. } => None,
            }
        }
        match self {
            StageSettings::SelectModel(select) => source_path(&select.source).into_iter().collect(),
            StageSettings::PrepareData(prepare) => {
                let mut read: Vec<PathBuf> = source_path(&prepare.source).into_iter().collect();
                if let Some(files) = &prepare.split.files {
                    read.extend(files.values().map(|path| paths::normalize(path)));
                }
                read
            }
            StageSettings::Command(command) => command.deps.clone(),
            StageSettings::Configure(_)
            | StageSettings::Train(_)
            | StageSettings::Evaluate(_)
            | StageSettings::Explain(_)
            | StageSettings::Deploy(_) => Vec::new(),
        }
    }
}

/// The error of a file that did not validate: its errors, counted in the summary.
fn invalid(name: String, source: spec::SourceText, errors: Vec<ModelError>) -> LoadError {
    LoadError::Invalid {
        name,
        summary: match errors.len() {
            1 => "1 error".to_owned(),
            count => format!("{count} errors"),
        },
        source_code: source,
        errors: errors.into(),
    }
}
