//! Stage 0: pipeline YAML text → a spanned raw layer ([`RawPipeline`]).
//!
//! Contract: [`parse`] never panics, whatever the bytes (empty, binary-looking, ten thousand
//! levels deep), and reports every error it can find in one pass. The raw layer keeps a byte
//! [`Span`] on every key and value and knows nothing about stage kinds, graphs or hashing;
//! `model::validate` turns it into the typed `Pipeline` and is where semantic errors are
//! raised. `-S` overrides ([`Override`]) are applied here, to the raw layer, so a bad
//! override is reported exactly like a bad line of the file.

mod docs;
mod edit;
mod error;
mod node;
mod raw;
mod source_text;
mod spec_source;
mod uses;

pub use docs::{document, STARTER_SPEC};
pub use edit::{apply_edits, Edit, EditError};
pub use error::{SpecError, SpecNote};
pub use node::{
    abbreviate, parse_yaml, resolve_plain, Key, Node, Scalar, ScalarStyle, ScalarValue, Text,
    Value, MAX_DEPTH, MAX_LIST_ENTRIES,
};
pub use raw::{Override, OverrideParseError, RawPipeline, TOP_LEVEL_KEYS};
pub use source_text::{SourceText, Span, Spanned};
pub use spec_source::{parse_source, FetchError, NoFetcher, SpecFetcher, SpecSource, SOURCE_KEYS};
pub use uses::{
    expand_uses, parse_spec, ParamDecl, SpecFile, SpecUse, Variant, MAX_VARIANTS, PARAM_TYPES,
    USE_KEYS,
};

/// Parses the file part of `source`: the raw pipeline when the YAML could be read (possibly
/// with errors about parts of it), and every error found.
pub fn parse(source: &SourceText) -> (Option<RawPipeline>, Vec<SpecError>) {
    let (root, mut errors) = parse_yaml(source.file_text());
    if root.is_none() && !errors.is_empty() {
        return (None, errors);
    }
    let raw = RawPipeline::from_root(root, &mut errors);
    (raw, errors)
}

/// The candidate closest to `typed`, when it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    typed: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let typed_lower = typed.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            let score =
                strsim::normalized_damerau_levenshtein(&typed_lower, &candidate.to_lowercase());
            (candidate, score)
        })
        .filter(|(_, score)| *score >= 0.6)
        .max_by(|(_, left), (_, right)| left.total_cmp(right))
        .map(|(candidate, _)| candidate)
}

/// A help line for an unknown name: "did you mean `x`?" or the list of valid names.
pub fn suggestion_help(typed: &str, candidates: &[&str], noun: &str) -> String {
    match did_you_mean(typed, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None if candidates.is_empty() => format!("there are no {noun}s here"),
        None => format!(
            "expected one of the {noun}s {}",
            candidates
                .iter()
                .map(|candidate| format!("`{candidate}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests;
