//! The one error type of the ML core.

use std::path::PathBuf;

/// Everything that can go wrong while loading, training, checkpointing or exporting a model.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum MlError {
    #[error("cannot read `{path}`")]
    #[diagnostic(
        code(taper::ml::io),
        help("check that the path exists and is readable (a model directory needs `config.json` and `model.safetensors`)")
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{path}` is not a usable model configuration: {reason}")]
    #[diagnostic(
        code(taper::ml::bad_config),
        help("the file must be a HuggingFace `config.json` of a BERT-family model (`bert` or `distilbert`)")
    )]
    BadConfig { path: PathBuf, reason: String },

    #[error("`{path}` lacks {} tensor(s) the encoder needs: {}", names.len(), names.join(", "))]
    #[diagnostic(
        code(taper::ml::missing_tensors),
        help("the weights do not belong to this architecture, or use names taper does not know (it accepts an optional `bert.`/`distilbert.` prefix and `gamma`/`beta` LayerNorm names)")
    )]
    MissingTensors { path: PathBuf, names: Vec<String> },

    #[error("tensor `{name}` in `{path}` has shape {found:?}, expected {expected:?}")]
    #[diagnostic(
        code(taper::ml::tensor_shape),
        help("the weights and `config.json` disagree; use the `config.json` that came with the weights")
    )]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("fine-tuning target `{target}` matches no module of the encoder")]
    #[diagnostic(
        code(taper::ml::unmatched_target),
        help("targets are module-name suffixes such as `query`, `value`, `output.dense` (BERT) or `q_lin`, `v_lin` (DistilBERT); available: {available}")
    )]
    UnmatchedTarget { target: String, available: String },

    #[error("invalid fine-tuning setting: {reason}")]
    #[diagnostic(
        code(taper::ml::bad_method),
        help("fix the `configure` stage settings")
    )]
    BadMethod { reason: String },

    #[error("invalid batch: {reason}")]
    #[diagnostic(
        code(taper::ml::bad_batch),
        help("every sequence needs at least one token, ids below the vocabulary size, a length within `max_position_embeddings`, and one label per sequence when training")
    )]
    BadBatch { reason: String },

    #[error("the checkpoint in `{path}` does not fit this trainer: {reason}")]
    #[diagnostic(
        code(taper::ml::checkpoint_mismatch),
        help("resume with the same model, method and settings that wrote the checkpoint, or delete it to start over")
    )]
    CheckpointMismatch { path: PathBuf, reason: String },

    #[error("cannot checkpoint in the middle of gradient accumulation ({pending} of {total} micro-batches done)")]
    #[diagnostic(
        code(taper::ml::checkpoint_mid_accumulation),
        help(
            "save right after a `step` that reported `optimizer_step_taken`, or call `flush` first"
        )
    )]
    CheckpointMidAccumulation { pending: usize, total: usize },

    #[error("`{path}` is not a trained taper classifier: {reason}")]
    #[diagnostic(
        code(taper::ml::bad_export),
        help("load a directory written by `Trainer::export`")
    )]
    BadExport { path: PathBuf, reason: String },

    #[error("cannot write a HuggingFace checkpoint: {reason}")]
    #[diagnostic(
        code(taper::ml::not_exportable),
        help("a HF sequence-classification checkpoint needs the pooler head and one label name per class")
    )]
    NotExportable { reason: String },

    #[error("tensor computation failed: {0}")]
    #[diagnostic(
        code(taper::ml::tensor),
        help("this is a bug in taper's model code or an out-of-memory condition; please report it with the model and settings")
    )]
    Tensor(#[from] candle_core::Error),

    #[error("cannot encode or decode `{path}` as JSON")]
    #[diagnostic(
        code(taper::ml::json),
        help("the file is corrupt or was written by another version; delete it")
    )]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = MlError> = std::result::Result<T, E>;

pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> MlError + '_ {
    move |source| MlError::Io {
        path: path.to_path_buf(),
        source,
    }
}
