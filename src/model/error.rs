//! Errors of loading and validating a pipeline.

use std::path::PathBuf;

use miette::{Diagnostic, LabeledSpan, SourceSpan};
use thiserror::Error;

use crate::spec::{SourceText, SpecError};

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
        source_code: SourceText,
        #[related]
        errors: ErrorList,
    },
}

impl LoadError {
    /// Every problem as JSON, for `taper validate --json`: code, message, help, and each label
    /// with its file (pipeline, override or spec), line and column.
    pub fn to_json(&self) -> serde_json::Value {
        let LoadError::Invalid {
            source_code,
            errors,
            ..
        } = self
        else {
            return serde_json::json!([{ "code": null, "message": self.to_string() }]);
        };
        let problems: Vec<serde_json::Value> = errors
            .errors
            .iter()
            .map(|error| {
                // A related note (a spec's declaration for an error at its `use:`) is a second
                // place of the same problem: its labels are listed with the error's own.
                let related = miette::Diagnostic::related(error)
                    .into_iter()
                    .flatten()
                    .flat_map(|note| note.labels().into_iter().flatten());
                let labels: Vec<serde_json::Value> = miette::Diagnostic::labels(error)
                    .into_iter()
                    .flatten()
                    .chain(related)
                    .map(|label| {
                        let (line, column) = source_code.line_column(label.offset());
                        serde_json::json!({
                            "file": source_code.segment_name(label.offset()),
                            "line": line,
                            "column": column,
                            "label": label.label(),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "code": miette::Diagnostic::code(error).map(|code| code.to_string()),
                    "message": error.to_string(),
                    "help": miette::Diagnostic::help(error).map(|help| help.to_string()),
                    "labels": labels,
                })
            })
            .collect();
        serde_json::Value::Array(problems)
    }

    /// The individual problems (empty for read errors).
    pub fn errors(&self) -> &[ModelError] {
        match self {
            LoadError::Invalid { errors, .. } => &errors.errors,
            LoadError::Read { .. } | LoadError::NotUtf8 { .. } | LoadError::TooLarge { .. } => &[],
        }
    }
}

/// At most this many problems of one file are rendered, then "…and N more errors": each one
/// is a snippet of the file, and a generated file with 50,000 broken stages would print
/// megabytes that nobody reads (the first ones are what to fix first; they come in file order).
pub const MAX_RENDERED_ERRORS: usize = 50;

/// Every problem of a pipeline file; renders as the first [`MAX_RENDERED_ERRORS`] of them.
#[derive(Debug)]
pub struct ErrorList {
    errors: Vec<ModelError>,
    /// Boxed: `LoadError` is returned by value, and clippy keeps error types small.
    more: Option<Box<MoreErrors>>,
}

impl ErrorList {
    /// What miette renders as related diagnostics (its derive calls `iter`).
    pub fn iter(&self) -> impl Iterator<Item = &dyn Diagnostic> {
        self.errors
            .iter()
            .take(MAX_RENDERED_ERRORS)
            .map(|error| error as &dyn Diagnostic)
            .chain(self.more.iter().map(|more| &**more as &dyn Diagnostic))
    }
}

impl From<Vec<ModelError>> for ErrorList {
    fn from(errors: Vec<ModelError>) -> ErrorList {
        let hidden = errors.len().saturating_sub(MAX_RENDERED_ERRORS);
        ErrorList {
            errors,
            more: (hidden > 0).then(|| {
                Box::new(MoreErrors {
                    hidden,
                    noun: if hidden == 1 { "error" } else { "errors" },
                    shown: MAX_RENDERED_ERRORS,
                })
            }),
        }
    }
}

/// The last line of a capped report.
#[derive(Debug, Error, Diagnostic)]
#[error("…and {hidden} more {noun}")]
#[diagnostic(
    code(taper::model::more_errors),
    help(
        "only the first {shown} are shown, in file order; fix those and run `taper validate` again"
    )
)]
pub struct MoreErrors {
    hidden: usize,
    noun: &'static str,
    shown: usize,
}

/// A typed input that reads a stage of the wrong output type.
#[derive(Debug, Error, Diagnostic, Clone, PartialEq)]
#[error(
    "input `{slot}` of stage `{stage}` takes a {expected}, but `{upstream}`{note} produces a {found}"
)]
#[diagnostic(code(taper::model::input_type_mismatch))]
pub struct InputTypeMismatch {
    pub stage: String,
    pub slot: String,
    pub expected: String,
    pub upstream: String,
    pub found: String,
    #[label("a {found}, not a {expected}")]
    pub span: SourceSpan,
    #[label("`{upstream}` is defined here")]
    pub upstream_span: Option<SourceSpan>,
    pub note: String,
    #[help]
    pub help: String,
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

    /// Boxed: the largest variant by far, and a file can hold 100,000 errors.
    #[error(transparent)]
    #[diagnostic(transparent)]
    InputTypeMismatch(Box<InputTypeMismatch>),

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

    #[error("param `{param}` refers to itself: {path}")]
    #[diagnostic(
        code(taper::model::param_cycle),
        help("a param cannot use its own value, even through other params; write the value out in one of them")
    )]
    ParamCycle {
        param: String,
        path: String,
        #[label("`{param}` is used again here")]
        span: SourceSpan,
    },

    #[error("`${{params.{param}}}` makes the params expand past {limit} bytes")]
    #[diagnostic(code(taper::model::expansion_too_large))]
    ExpansionTooLarge {
        param: String,
        limit: usize,
        size: usize,
        expanded: usize,
        #[label("{size} bytes more here, after {expanded} bytes of earlier substitutions")]
        span: SourceSpan,
        #[label("`{param}` is defined here")]
        param_span: Option<SourceSpan>,
        #[help]
        help: String,
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

    #[error("output `{path}` is declared by both `{first}`{note} and `{second}`")]
    #[diagnostic(
        code(taper::model::duplicate_output),
        help("each file must have exactly one producer; rename one output")
    )]
    DuplicateOutput {
        path: String,
        first: String,
        second: String,
        #[label("first declared here")]
        first_span: Option<SourceSpan>,
        note: String,
        #[label(primary, "declared again here")]
        second_span: SourceSpan,
    },
}

/// Secondary labels further than this many lines from the primary one are replaced by a line
/// number in the message: miette draws every line between two labels of one snippet.
const NEAR_LINES: usize = 6;

impl ModelError {
    /// Drops far-away secondary labels, naming their line instead (see [`NEAR_LINES`]).
    pub(crate) fn compact_labels(&mut self, source: &SourceText) {
        let line = |span: &SourceSpan| source.line(span.offset());
        // Labels in different segments (a spec and the pipeline `use:`ing it) are drawn as
        // separate snippets, so their distance does not matter.
        let far = |secondary: &SourceSpan, primary: &SourceSpan| {
            source.segment_index(secondary.offset()) == source.segment_index(primary.offset())
                && line(secondary).abs_diff(line(primary)) > NEAR_LINES
        };
        match self {
            ModelError::Spec(SpecError::DuplicateKey {
                first,
                note,
                second,
                ..
            })
            | ModelError::DuplicateOutput {
                first_span: first,
                note,
                second_span: second,
                ..
            } => {
                if let Some(span) = first.filter(|span| far(span, second)) {
                    *note = format!(" (first on line {})", line(&span));
                    *first = None;
                }
            }
            ModelError::InputTypeMismatch(mismatch) => {
                let InputTypeMismatch {
                    upstream_span,
                    note,
                    span,
                    ..
                } = &mut **mismatch;
                if let Some(upstream) = upstream_span.filter(|upstream| far(upstream, span)) {
                    *note = format!(" (line {})", line(&upstream));
                    *upstream_span = None;
                }
            }
            ModelError::InvalidValue {
                param, span, help, ..
            }
            | ModelError::ExpansionTooLarge {
                param_span: param,
                span,
                help,
                ..
            } => {
                if let Some(definition) = param.filter(|definition| far(definition, span)) {
                    // A spec's param is defined in the spec file, which the line alone would
                    // not say.
                    let file = if source.segment_index(definition.offset()) == 0 {
                        String::new()
                    } else {
                        format!(" of `{}`", source.segment_name(definition.offset()))
                    };
                    help.push_str(&format!(
                        " (the param is defined on line {}{file})",
                        line(&definition)
                    ));
                    *param = None;
                }
            }
            ModelError::Spec(_)
            | ModelError::MissingKey { .. }
            | ModelError::UnknownKey { .. }
            | ModelError::UnknownKind { .. }
            | ModelError::UnknownStage { .. }
            | ModelError::UnknownInput { .. }
            | ModelError::MissingInput { .. }
            | ModelError::Cycle { .. }
            | ModelError::ParamCycle { .. }
            | ModelError::UnresolvedReference { .. }
            | ModelError::InvalidStageName { .. } => {}
        }
    }
}
