//! Stage 1: the validated, typed pipeline.
//!
//! Contract: a [`Pipeline`] exists only after `spec` parsed the YAML and `model::validate`
//! accepted every part of it. Everything downstream (graph, fingerprint, exec, stages) reads
//! these types and never sees YAML or spans. Values here are fully resolved: `${params.x}` is
//! substituted, `-S stage.key=value` overrides are applied, and defaults are filled in, so two
//! pipelines that *mean* the same thing are equal here however they were written.

pub mod stages;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use stages::{
    Command, Configure, Deploy, Evaluate, Explain, PrepareData, SelectModel, Source, Train,
};

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
}

impl Pipeline {
    pub fn stage(&self, id: &StageId) -> Option<&Stage> {
        self.stages.iter().find(|stage| &stage.id == id)
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
            ],
            StageKind::Evaluate | StageKind::Explain => &[
                (S::Model, A::TrainedModel, true),
                (S::Data, A::Dataset, true),
            ],
            StageKind::Deploy => &[
                (S::Model, A::TrainedModel, true),
                (S::Metrics, A::Metrics, false),
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
}

impl InputSlot {
    pub const ALL: [InputSlot; 4] = [
        InputSlot::Model,
        InputSlot::Data,
        InputSlot::Config,
        InputSlot::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InputSlot::Model => "model",
            InputSlot::Data => "data",
            InputSlot::Config => "config",
            InputSlot::Metrics => "metrics",
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
    PrepareData(PrepareData),
    Configure(Configure),
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
            StageKind::SelectModel
            | StageKind::PrepareData
            | StageKind::Configure
            | StageKind::Train
            | StageKind::Evaluate
            | StageKind::Explain
            | StageKind::Deploy
            | StageKind::Command => 1,
        }
    }
}

impl Stage {
    /// Local files and directories this stage reads that no upstream stage produces, relative
    /// to the pipeline root: `command` deps and `path:` sources. Their content is part of the
    /// stage key.
    pub fn external_paths(&self) -> Vec<PathBuf> {
        fn source_path(source: &Source) -> Option<PathBuf> {
            match source {
                Source::Path { path } => Some(path.clone()),
                Source::Pip { .. } | Source::Hf { .. } | Source::Url { .. } => None,
            }
        }
        match &self.settings {
            StageSettings::SelectModel(select) => source_path(&select.source).into_iter().collect(),
            StageSettings::PrepareData(prepare) => {
                let mut paths: Vec<PathBuf> = source_path(&prepare.source).into_iter().collect();
                if let Some(files) = &prepare.split.files {
                    paths.extend(files.values().cloned());
                }
                paths
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
