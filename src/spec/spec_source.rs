//! Where a `use:` reads its spec from: a path beside the pipeline, or a spec a team published
//! in a pip wheel or at a URL, pinned by the blake3 of its bytes.
//!
//! Contract: `spec` never downloads. A published spec is fetched through a [`SpecFetcher`]
//! that the caller passes in (the CLI's fetches with `data::sources` into the store's
//! downloads bucket), so this layer stays below `data` and `cache`. Whatever the fetcher
//! returns, the bytes read are checked against the pin here, so a fetcher that forgot to
//! check cannot let a re-published spec change a pipeline silently.

use std::fmt;
use std::path::PathBuf;

use super::error::SpecError;
use super::node::{Node, Value};
use super::suggestion_help;

/// The keys of a published `use:` source (`use: { url: …, blake3: … }`).
pub const SOURCE_KEYS: [&str; 4] = ["pip", "member", "url", "blake3"];

/// Where a spec comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecSource {
    /// A file, as written, relative to the pipeline's directory.
    Path(String),
    /// A member of the wheel `pip download --no-deps <pip>` fetches.
    Pip {
        pip: String,
        member: String,
        blake3: String,
    },
    /// A file at a URL.
    Url { url: String, blake3: String },
}

impl SpecSource {
    /// The pinned blake3 of a published spec (none for a path).
    pub fn pin(&self) -> Option<&str> {
        match self {
            SpecSource::Path(_) => None,
            SpecSource::Pip { blake3, .. } | SpecSource::Url { blake3, .. } => Some(blake3),
        }
    }
}

/// How a spec source is named in diagnostics, `plan` and `--json`: the path as written, the
/// URL, or `member (pip package==version)`.
impl fmt::Display for SpecSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecSource::Path(path) => f.write_str(path),
            SpecSource::Pip { pip, member, .. } => write!(f, "{member} (pip {pip})"),
            SpecSource::Url { url, .. } => f.write_str(url),
        }
    }
}

/// Fetches published specs for [`super::expand_uses`]; never asked for a [`SpecSource::Path`].
pub trait SpecFetcher {
    /// Where the spec's bytes now lie locally, or why they could not be fetched (shown at the
    /// `use:` site).
    fn fetch(&self, source: &SpecSource) -> Result<PathBuf, FetchError>;
}

/// Why a published spec could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The bytes fetched do not hash to the pin; `found` is their blake3 (hex).
    Mismatch { found: String },
    /// The store is read-only (`--read-only-store`) and does not hold the spec yet; the
    /// reason in one line.
    NotDownloaded(String),
    /// Anything else, in one line (no network, no such package, …).
    Failed(String),
}

/// The fetcher of callers with no store to download into: every published spec is an error
/// that says how to load the pipeline instead.
pub struct NoFetcher;

impl SpecFetcher for NoFetcher {
    fn fetch(&self, _source: &SpecSource) -> Result<PathBuf, FetchError> {
        Err(FetchError::Failed(
            "published specs are fetched only with a store to download into \
             (the `taper` commands, or `model::load_file_with` and a fetcher)"
                .to_owned(),
        ))
    }
}

/// Reads the `use:` value: a path (a plain string) or `{ pip, member, blake3 }` /
/// `{ url, blake3 }`. Every problem is pushed to `errors`; `None` when there was one.
pub fn parse_source(node: &Node, errors: &mut Vec<SpecError>) -> Option<SpecSource> {
    let fields = match &node.value {
        Value::Scalar(scalar) if !scalar.text.is_empty() => {
            return Some(SpecSource::Path(scalar.text.to_string()))
        }
        Value::Map(fields) => fields,
        Value::Scalar(_) | Value::Seq(_) => {
            errors.push(bad_source(
                "`use:` takes the path of a spec file or a published spec",
                node,
                "not a spec",
                "write e.g. `use: specs/text-classification.yaml` (relative to the pipeline) \
                 or `use: { url: https://…/spec.yaml, blake3: <hex> }`",
            ));
            return None;
        }
    };
    let before = errors.len();
    let mut text = |key: &str| -> Option<String> {
        let (_, value) = fields.iter().find(|(name, _)| name.value == key)?;
        match value.as_scalar() {
            Some(scalar) if !scalar.text.is_empty() => Some(scalar.text.to_string()),
            _ => {
                errors.push(bad_source(
                    &format!("`{key}` of a published spec must be a string"),
                    value,
                    "not a string",
                    &format!("write e.g. `{key}: {}`", example(key)),
                ));
                None
            }
        }
    };
    let (pip, member, url, blake3) = (text("pip"), text("member"), text("url"), text("blake3"));
    for (key, _) in fields {
        if !SOURCE_KEYS.contains(&key.value.as_str()) {
            errors.push(SpecError::UnknownKey {
                key: super::abbreviate(&key.value),
                place: "a published spec (`use: { … }`)".to_owned(),
                span: key.span.into(),
                help: suggestion_help(&key.value, &SOURCE_KEYS, "key"),
            });
        }
    }
    if errors.len() > before {
        return None;
    }
    let shape = "a published spec is `{ pip: \"package==version\", member: path/in/wheel.yaml, \
                 blake3: <hex> }` or `{ url: https://…/spec.yaml, blake3: <hex> }`";
    let source = match (pip, member, url) {
        (Some(pip), Some(member), None) => SpecSource::Pip {
            pip,
            member,
            blake3: String::new(),
        },
        (None, None, Some(url)) => SpecSource::Url {
            url,
            blake3: String::new(),
        },
        (Some(_), None, None) => {
            errors.push(bad_source(
                "a pip spec needs the `member` of the wheel that holds the spec",
                node,
                "add `member:`",
                "write e.g. `member: team_specs/text-classification.yaml`",
            ));
            return None;
        }
        (pip, member, url) => {
            let given: Vec<&str> = [
                pip.is_some().then_some("`pip`"),
                member.is_some().then_some("`member`"),
                url.is_some().then_some("`url`"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let message = if given.is_empty() {
                "a published spec names a `pip` package or a `url`".to_owned()
            } else {
                format!("a published spec cannot have {}", given.join(" and "))
            };
            errors.push(bad_source(&message, node, "not a spec source", shape));
            return None;
        }
    };
    let Some(blake3) = blake3 else {
        errors.push(bad_source(
            "a published spec must be pinned by `blake3`",
            node,
            "add `blake3: <hex>` here",
            "the pin is the blake3 of the spec file's bytes (`b3sum FILE`); it keeps a \
             re-published spec from changing this pipeline silently",
        ));
        return None;
    };
    if blake3.len() != 64 || !blake3.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        let (_, value) = fields.iter().find(|(name, _)| name.value == "blake3")?;
        errors.push(bad_source(
            "`blake3` must be 64 hex digits",
            value,
            "not a blake3 digest",
            "copy the digest `b3sum FILE` prints for the spec file",
        ));
        return None;
    }
    let blake3 = blake3.to_ascii_lowercase();
    Some(match source {
        SpecSource::Pip { pip, member, .. } => SpecSource::Pip {
            pip,
            member,
            blake3,
        },
        SpecSource::Url { url, .. } => SpecSource::Url { url, blake3 },
        SpecSource::Path(path) => SpecSource::Path(path),
    })
}

fn example(key: &str) -> &'static str {
    match key {
        "pip" => "\"team-specs==1.2.0\"",
        "member" => "team_specs/text-classification.yaml",
        "url" => "https://example.org/specs/text-classification.yaml",
        _ => "<64 hex digits>",
    }
}

fn bad_source(message: &str, node: &Node, label: &str, help: &str) -> SpecError {
    SpecError::UseSpec {
        message: message.to_owned(),
        span: node.span.into(),
        label: label.to_owned(),
        other: Vec::new(),
        help: help.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_yaml;

    fn parse(text: &str) -> (Option<SpecSource>, Vec<String>) {
        let (root, errors) = parse_yaml(text);
        assert!(errors.is_empty(), "{errors:?}");
        let root = root.expect("a node");
        let mut errors = Vec::new();
        let source = parse_source(&root, &mut errors);
        let rendered = errors
            .into_iter()
            .map(|error| {
                let help = miette::Diagnostic::help(&error)
                    .map(|help| help.to_string())
                    .unwrap_or_default();
                format!("{error} (help: {help})")
            })
            .collect();
        (source, rendered)
    }

    const PIN: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn the_three_forms_parse() {
        assert_eq!(
            parse("specs/x.yaml").0,
            Some(SpecSource::Path("specs/x.yaml".into()))
        );
        let (url, errors) = parse(&format!(
            "{{ url: http://h/x.yaml, blake3: {} }}",
            PIN.to_uppercase()
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            url,
            Some(SpecSource::Url {
                url: "http://h/x.yaml".into(),
                blake3: PIN.into()
            })
        );
        let (pip, errors) = parse(&format!(
            "{{ pip: \"team-specs==1.2.0\", member: team_specs/x.yaml, blake3: {PIN} }}"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        let pip = pip.expect("a pip source");
        assert_eq!(pip.pin(), Some(PIN));
        assert_eq!(pip.to_string(), "team_specs/x.yaml (pip team-specs==1.2.0)");
    }

    #[test]
    fn bad_sources_say_what_to_write() {
        let cases = [
            "{ url: http://h/x.yaml }".to_owned(),
            "{ pip: \"team-specs==1.2.0\", member: team_specs/x.yaml }".to_owned(),
            format!("{{ url: http://h/x.yaml, blak3: {PIN} }}"),
            format!("{{ pip: team-specs, blake3: {PIN} }}"),
            format!("{{ pip: team-specs, url: http://h/x.yaml, blake3: {PIN} }}"),
            format!("{{ blake3: {PIN} }}"),
            "{ url: http://h/x.yaml, blake3: abc }".to_owned(),
            "{ url: [a], blake3: abc }".to_owned(),
            "[a, b]".to_owned(),
        ];
        let mut report = String::new();
        for case in &cases {
            let (source, errors) = parse(case);
            assert_eq!(source, None, "{case}");
            report.push_str(&format!("{case}\n  {}\n", errors.join("\n  ")));
        }
        insta::assert_snapshot!(report);
    }
}
