//! Errors of the YAML and top-level shape of a pipeline file.

use miette::{Diagnostic, SourceSpan};
use thiserror::Error;

#[derive(Debug, Error, Diagnostic, Clone, PartialEq)]
pub enum SpecError {
    #[error("invalid YAML: {message}")]
    #[diagnostic(
        code(taper::spec::syntax),
        help("check the indentation and the quoting around this position")
    )]
    Syntax {
        message: String,
        #[label("the YAML parser stopped here")]
        span: SourceSpan,
    },

    #[error("the pipeline file holds more than one YAML document")]
    #[diagnostic(
        code(taper::spec::multiple_documents),
        help("put each pipeline in its own file; remove this `---` and what follows")
    )]
    MultipleDocuments {
        #[label("a second document starts here")]
        span: SourceSpan,
    },

    #[error("YAML {what} are not supported in pipeline files")]
    #[diagnostic(
        code(taper::spec::unsupported_yaml),
        help(
            "write the value out in full; use `params:` and `${{params.<name>}}` to share a value"
        )
    )]
    Unsupported {
        what: &'static str,
        #[label("used here")]
        span: SourceSpan,
    },

    #[error("the YAML is nested more than {limit} levels deep")]
    #[diagnostic(
        code(taper::spec::too_deep),
        help("a pipeline needs only a few levels; this looks like generated or corrupted input")
    )]
    TooDeep {
        limit: usize,
        #[label("too deep here")]
        span: SourceSpan,
    },

    #[error("a list holds more than {limit} entries")]
    #[diagnostic(
        code(taper::spec::too_many_entries),
        help("a stage lists a few paths; list the directory that holds these files as one entry instead")
    )]
    TooManyEntries {
        limit: usize,
        #[label("this list has more than {limit} entries")]
        span: SourceSpan,
    },

    #[error("mapping keys must be plain strings")]
    #[diagnostic(
        code(taper::spec::non_scalar_key),
        help("write the key as a single word, e.g. `learning_rate:`")
    )]
    NonScalarKey {
        #[label("this key is a list or a mapping")]
        span: SourceSpan,
    },

    #[error("duplicate key `{key}`{note}")]
    #[diagnostic(
        code(taper::spec::duplicate_key),
        help("remove one of them or rename it; YAML keeps only one value per key")
    )]
    DuplicateKey {
        key: String,
        /// Dropped (and `note` names its line) when far from `second`: miette draws every line
        /// between two labels, and a duplicate 800 lines apart would fill the terminal.
        #[label("first defined here")]
        first: Option<SourceSpan>,
        note: String,
        #[label(primary, "defined again here")]
        second: SourceSpan,
    },

    #[error("the pipeline file is empty")]
    #[diagnostic(
        code(taper::spec::empty),
        help("a pipeline needs at least `version: 1`, a `name` and `stages:`; see docs/spec.md")
    )]
    Empty,

    #[error("a pipeline must be a mapping of `version`, `name`, `stages`, …, not {found}")]
    #[diagnostic(
        code(taper::spec::not_a_mapping),
        help("start the file with `version: 1` and `name: <pipeline name>`")
    )]
    NotAMapping {
        found: String,
        #[label("expected `key: value` lines")]
        span: SourceSpan,
    },

    #[error("unknown key `{key}` in {place}")]
    #[diagnostic(code(taper::spec::unknown_key))]
    UnknownKey {
        key: String,
        place: String,
        #[label("not a known key")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("the override cannot be applied: {message}")]
    #[diagnostic(code(taper::spec::invalid_override))]
    InvalidOverride {
        message: String,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: String,
    },

    /// A problem with a `use:` of a spec or inside the spec file; `other` is the second place
    /// (the declaration in the spec for a bad value at the `use:`, and so on).
    #[error("{message}")]
    #[diagnostic(code(taper::spec::use_spec))]
    UseSpec {
        message: String,
        #[label(primary, "{label}")]
        span: SourceSpan,
        label: String,
        /// A related note rather than a second label: the two places are in different files,
        /// and miette merges labels of one snippet by line number, file or not.
        #[related]
        other: Vec<SpecNote>,
        #[help]
        help: String,
    },
}

/// The second place of a [`SpecError::UseSpec`].
#[derive(Debug, Error, Diagnostic, Clone, PartialEq)]
#[error("{label}")]
#[diagnostic(severity(Advice))]
pub struct SpecNote {
    #[label("{label}")]
    pub span: SourceSpan,
    pub label: String,
}

impl SpecNote {
    pub fn at(span: impl Into<SourceSpan>, label: impl Into<String>) -> Vec<SpecNote> {
        vec![SpecNote {
            span: span.into(),
            label: label.into(),
        }]
    }
}

impl SpecError {
    /// The same error with every span `by` bytes later (see [`super::Node::shift`]).
    pub fn shifted(mut self, by: usize) -> SpecError {
        let moved = |span: &mut SourceSpan| {
            *span = SourceSpan::new((span.offset() + by).into(), span.len())
        };
        match &mut self {
            SpecError::Syntax { span, .. }
            | SpecError::MultipleDocuments { span }
            | SpecError::Unsupported { span, .. }
            | SpecError::TooDeep { span, .. }
            | SpecError::TooManyEntries { span, .. }
            | SpecError::NonScalarKey { span }
            | SpecError::NotAMapping { span, .. }
            | SpecError::UnknownKey { span, .. }
            | SpecError::InvalidOverride { span, .. } => moved(span),
            SpecError::DuplicateKey { first, second, .. } => {
                first.as_mut().map(moved);
                moved(second);
            }
            SpecError::UseSpec { span, other, .. } => {
                other.iter_mut().for_each(|note| moved(&mut note.span));
                moved(span);
            }
            SpecError::Empty => {}
        }
        self
    }
}
