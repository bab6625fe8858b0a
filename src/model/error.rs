//! Errors of loading and validating a pipeline.

use std::path::PathBuf;

use miette::{Diagnostic, LabeledSpan, SourceSpan};
use thiserror::Error;

use crate::spec::{Source, SpecError};

/// Everything wrong with one pipeline file, or why it could not be read.
#[derive(Debug, Error, Diagnostic)]
pub enum LoadError {
    #[error("cannot read `{}`", path.display())]
    #[diagnostic(
        code(taper::model::unreadable),
        help("check the path; pipelines usually live in `pipelines/`, e.g. `pipelines/quickstart.yaml`")
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{}` is not UTF-8 text (invalid byte at line {line}, byte offset {offset})", path.display())]
    #[diagnostic(
        code(taper::model::not_utf8),
        help("a pipeline is a YAML text file; save it as UTF-8, or check that this is the right file")
    )]
    NotUtf8 {
        path: PathBuf,
        offset: usize,
        line: usize,
    },

    #[error("`{}` is {size} bytes; pipeline files are limited to {limit} bytes", path.display())]
    #[diagnostic(
        code(taper::model::too_large),
        help("a pipeline describes stages, not data; keep large data in files that stages read")
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    #[error("`{name}` is not a valid pipeline: {summary}")]
    #[diagnostic(
        code(taper::model::invalid_pipeline),
        help("fix the problems listed below; `taper validate` reports all of them at once")
    )]
    Invalid {
        name: String,
        summary: String,
        #[source_code]
        source_code: Source,
        #[related]
        errors: Vec<ModelError>,
    },
}

impl LoadError {
    /// The individual problems (empty for read errors).
    pub fn errors(&self) -> &[ModelError] {
        match self {
            LoadError::Invalid { errors, .. } => errors,
            LoadError::Read { .. } | LoadError::NotUtf8 { .. } | LoadError::TooLarge { .. } => &[],
        }
    }
}

/// One problem of a pipeline, placed at the YAML node it is about.
#[derive(Debug, Error, Diagnostic, Clone, PartialEq)]
pub enum ModelError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Spec(#[from] SpecError),

    #[error("missing `{key}` in {place}")]
    #[diagnostic(code(taper::model::missing_key))]
    MissingKey {
        key: String,
        place: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: String,
    },

    #[error("unknown key `{key}` in {place}")]
    #[diagnostic(code(taper::model::unknown_key))]
    UnknownKey {
        key: String,
        place: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: String,
    },

    #[error("unknown stage kind `{kind}` in stage `{stage}`")]
    #[diagnostic(code(taper::model::unknown_kind))]
    UnknownKind {
        kind: String,
        stage: String,
        #[label("not a stage kind")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("{message}")]
    #[diagnostic(code(taper::model::invalid_value))]
    InvalidValue {
        message: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[label("the value comes from this param")]
        param: Option<SourceSpan>,
        #[help]
        help: String,
    },

    #[error("stage `{stage}` refers to unknown stage `{reference}`")]
    #[diagnostic(code(taper::model::unknown_stage))]
    UnknownStage {
        stage: String,
        reference: String,
        #[label("no stage has this name")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("`{kind}` stages have no input `{slot}`")]
    #[diagnostic(code(taper::model::unknown_input))]
    UnknownInput {
        kind: String,
        slot: String,
        #[label("not an input of `{kind}`")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("`{kind}` stage `{stage}` needs input `{slot}` ({expected})")]
    #[diagnostic(code(taper::model::missing_input))]
    MissingInput {
        kind: String,
        stage: String,
        slot: String,
        expected: String,
        #[label("no `{slot}` input here")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error(
        "input `{slot}` of stage `{stage}` takes a {expected}, but `{upstream}` produces a {found}"
    )]
    #[diagnostic(code(taper::model::input_type_mismatch))]
    InputTypeMismatch {
        stage: String,
        slot: String,
        expected: String,
        upstream: String,
        found: String,
        #[label("a {found}, not a {expected}")]
        span: SourceSpan,
        #[label("`{upstream}` is defined here")]
        upstream_span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("the stages depend on each other in a cycle: {path}")]
    #[diagnostic(
        code(taper::model::cycle),
        help("a stage cannot use its own output, even indirectly; remove one of these edges")
    )]
    Cycle {
        path: String,
        #[label(collection)]
        edges: Vec<LabeledSpan>,
    },

    #[error("cannot resolve `{reference}`")]
    #[diagnostic(code(taper::model::unresolved_reference))]
    UnresolvedReference {
        reference: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: String,
    },

    #[error("invalid stage name `{stage}`")]
    #[diagnostic(
        code(taper::model::invalid_stage_name),
        help("use letters, digits, `_` and `-`, starting with a letter or digit (names become directories and `-S` paths)")
    )]
    InvalidStageName {
        stage: String,
        #[label("not a valid stage name")]
        span: SourceSpan,
    },

    #[error("output `{path}` is declared by both `{first}` and `{second}`")]
    #[diagnostic(
        code(taper::model::duplicate_output),
        help("each file must have exactly one producer; rename one output")
    )]
    DuplicateOutput {
        path: String,
        first: String,
        second: String,
        #[label("first declared here")]
        first_span: SourceSpan,
        #[label(primary, "declared again here")]
        second_span: SourceSpan,
    },
}
