//! What the ML stage runners (`select-model`, `prepare-data`, `configure`, `train`,
//! `evaluate`, `deploy`) share: their error type, batched prediction and small file helpers.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::batching::{eval_batches, lengths};
use crate::data::dataset::{Dataset, SplitData};
use crate::data::DataError;
use crate::exec::runner::{StageContext, StageError};
use crate::ml::{Batch, Classifier};
use crate::model::stages::SplitName;
use crate::model::InputSlot;

/// The typed errors of the ML stage runners (data, model and their own); a runner returns them
/// boxed in the scheduler's one [`StageError`], which keeps the code, help and labels whole.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum MlStageError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Ml(#[from] crate::ml::MlError),

    #[error("stage `{stage}` has no `{slot}` input")]
    #[diagnostic(
        code(taper::stages::missing_input),
        help("wire it in the pipeline: `inputs: {{ {slot}: <stage> }}`")
    )]
    MissingInput { stage: String, slot: String },

    #[error("cannot write `{path}`")]
    #[diagnostic(
        code(taper::stages::write),
        help("check free disk space and permissions")
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the model source `{path}` is a file, not a model directory")]
    #[diagnostic(
        code(taper::stages::model_not_directory),
        help("point `source` at a directory with `config.json`, `tokenizer.json` and `model.safetensors`")
    )]
    ModelNotDirectory { path: PathBuf },

    #[error("the data source `{path}` is a directory, not a table")]
    #[diagnostic(
        code(taper::stages::data_not_file),
        help("point `source` at a `.csv`, `.tsv` or `.jsonl` file (optionally `.bz2`/`.gz`)")
    )]
    DataNotFile { path: PathBuf },

    #[error("`{path}`: architecture `{model_type}` is not supported")]
    #[diagnostic(
        code(taper::stages::unsupported_architecture),
        help("supported `model_type`s: {supported}")
    )]
    UnsupportedArchitecture {
        path: PathBuf,
        model_type: String,
        supported: String,
    },

    #[error("`{path}`: {message}")]
    #[diagnostic(
        code(taper::stages::inconsistent_model),
        help("the config, tokenizer and weights must come from the same model")
    )]
    InconsistentModel { path: PathBuf, message: String },

    #[error("stage `{stage}` keeps `layers: {layers}` of a model that has {available} (`{path}`)")]
    #[diagnostic(
        code(taper::stages::too_many_layers),
        help("set `layers` of `{stage}` to at most {available}; a student usually keeps half (`layers: {half}`)")
    )]
    TooManyLayers {
        stage: String,
        path: PathBuf,
        layers: usize,
        available: u64,
        half: u64,
    },

    #[error("stage `{stage}` sets `layers`, which needs `model.safetensors`, but `{path}` has pickle weights only")]
    #[diagnostic(
        code(taper::stages::layers_need_safetensors),
        help("convert the weights to safetensors, or remove `layers` from `{stage}`")
    )]
    LayersNeedSafetensors { stage: String, path: PathBuf },

    #[error("invalid training settings of stage `{stage}`: {problems}")]
    #[diagnostic(
        code(taper::stages::invalid_config),
        help("fix the listed fields of the `configure` stage")
    )]
    InvalidConfig { stage: String, problems: String },

    #[error("stage `{stage}` was given to the `{runner}` runner")]
    #[diagnostic(
        code(taper::stages::wrong_runner),
        help("this is a bug in the stage registry; please report it")
    )]
    WrongRunner { stage: String, runner: &'static str },

    #[error(
        "deploy gate failed: {metric} is {value:.4}, the gate requires {direction} {threshold}"
    )]
    #[diagnostic(
        code(taper::stages::gate_failed),
        help("nothing was published; improve the model or change `require` of the deploy stage")
    )]
    GateFailed {
        metric: String,
        value: f64,
        threshold: f64,
        /// `≥`, or `≤` for metrics where lower is better.
        direction: &'static str,
    },

    #[error("deploy gate on `{metric}`: the metrics input does not report it")]
    #[diagnostic(
        code(taper::stages::gate_metric_missing),
        help("`roc_auc` exists for two classes only; `typo_*`, `delete_*` and `casing_*` need that kind in the evaluate stage's `robustness`, `ood_*` an `ood` input")
    )]
    GateMetricMissing { metric: String },

    #[error("the `ood` dataset has the labels {ood}, the evaluated data {data}")]
    #[diagnostic(
        code(taper::stages::ood_labels),
        help("the out-of-domain data must map the same label names to the same ids: give its `prepare-data` stage `labels: {data}`")
    )]
    OodLabels { data: String, ood: String },

    #[error("the dataset has no `{split}` split")]
    #[diagnostic(
        code(taper::stages::missing_split),
        help("give `prepare-data` a `{split}` size, or pick another split")
    )]
    MissingSplit { split: String },

    #[error("`precision: int8` needs the f32 evaluation to compare with, and there is none")]
    #[diagnostic(
        code(taper::stages::int8_without_metrics),
        help("give the deploy stage `metrics: <evaluate stage>` and `data: <prepare-data stage>` inputs")
    )]
    Int8WithoutMetrics,
}

impl From<MlStageError> for StageError {
    fn from(error: MlStageError) -> Self {
        StageError::new(error)
    }
}

/// The directory of an input slot, or an error naming the stage and slot.
pub fn input_dir(ctx: &StageContext<'_>, slot: InputSlot) -> Result<PathBuf, MlStageError> {
    ctx.inputs
        .get(&slot)
        .cloned()
        .ok_or_else(|| MlStageError::MissingInput {
            stage: ctx.stage.id.to_string(),
            slot: slot.as_str().to_owned(),
        })
}

/// Reads a JSON file an upstream stage wrote, as `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, MlStageError> {
    let text = std::fs::read_to_string(path).map_err(|error| DataError::io(path, error))?;
    serde_json::from_str(&text).map_err(|error| {
        MlStageError::from(DataError::Malformed {
            path: path.to_path_buf(),
            message: error.to_string(),
        })
    })
}

/// Writes `value` as pretty JSON with a trailing newline (stable bytes: struct field order
/// and `BTreeMap`s only, so equal values hash equal in the store).
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), MlStageError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|error| MlStageError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(error),
    })?;
    text.push('\n');
    write_bytes(path, text.as_bytes())
}

pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), MlStageError> {
    std::fs::write(path, bytes).map_err(|source| MlStageError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Places `from` at `to`: a hard link when possible (the download cache and the store are
/// usually on one disk, and a 90 MB model should not be copied), else a copy.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<(), MlStageError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| MlStageError::Write {
            path: to.to_path_buf(),
            source,
        })
}

pub fn wrong_runner(ctx: &StageContext<'_>, runner: &'static str) -> MlStageError {
    MlStageError::WrongRunner {
        stage: ctx.stage.id.to_string(),
        runner,
    }
}

/// Class probabilities of every example of `data`, in dataset order: length-sorted batches
/// padded per batch, scattered back, so the result does not depend on the batch size beyond
/// float rounding. `train` (validation loss, early stopping) and `evaluate` (log loss, metrics)
/// both call this, so the two losses are computed from the same probabilities.
/// The examples of `split`, or the error naming a split the dataset does not have.
pub fn split_of(dataset: &Dataset, split: SplitName) -> Result<&SplitData, MlStageError> {
    dataset
        .splits
        .get(&split)
        .ok_or_else(|| MlStageError::MissingSplit {
            split: split.as_str().to_owned(),
        })
}

pub fn predict(
    classifier: &Classifier,
    data: &SplitData,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>, MlStageError> {
    let pad = classifier.config().pad_token_id;
    let mut out = vec![Vec::new(); data.len()];
    for indices in eval_batches(&lengths(data), batch_size) {
        let sequences: Vec<&[u32]> = indices.iter().map(|&i| data.example(i)).collect();
        let batch = Batch::new(&sequences, &[], pad)?;
        for (&index, row) in indices.iter().zip(classifier.probabilities(&batch)?) {
            out[index] = row;
        }
    }
    Ok(out)
}
