//! The raw pipeline: the top-level keys of the file, each kept as a spanned [`Node`], and the
//! `-S` overrides that edit it before validation.

use std::fmt;
use std::str::FromStr;

use miette::Diagnostic;
use thiserror::Error;

use super::error::SpecError;
use super::node::{Key, Node, ScalarStyle, Value};
use super::source_text::{Span, Spanned};
use super::suggestion_help;

/// The keys a pipeline file may have at its top level.
pub const TOP_LEVEL_KEYS: [&str; 5] = ["version", "name", "description", "params", "stages"];

/// A pipeline file as written: each top-level entry is `(key, value)`; unknown top-level keys
/// were already reported. Stages stay raw nodes until `model::validate`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPipeline {
    /// The whole document, for errors about a missing top-level key.
    pub span: Span,
    pub version: Option<(Key, Node)>,
    pub name: Option<(Key, Node)>,
    pub description: Option<(Key, Node)>,
    pub params: Option<(Key, Node)>,
    pub stages: Option<(Key, Node)>,
    /// The specs `use:`d, filled in by [`super::expand_uses`].
    pub uses: Vec<super::SpecUse>,
    /// A `use:` could not be expanded (already reported): its stages are missing, so "no
    /// stages" or an unknown upstream would be a consequence, not a problem of its own.
    pub use_failed: bool,
}

impl RawPipeline {
    pub(super) fn from_root(
        root: Option<Node>,
        errors: &mut Vec<SpecError>,
    ) -> Option<RawPipeline> {
        let Some(root) = root else {
            errors.push(SpecError::Empty);
            return None;
        };
        let span = root.span;
        let Value::Map(entries) = root.value else {
            errors.push(SpecError::NotAMapping {
                found: Node {
                    span,
                    value: root.value,
                    from_param: None,
                }
                .describe(),
                span: span.into(),
            });
            return None;
        };
        let mut raw = RawPipeline {
            span,
            version: None,
            name: None,
            description: None,
            params: None,
            stages: None,
            uses: Vec::new(),
            use_failed: false,
        };
        for (key, node) in entries {
            let slot = match key.value.as_str() {
                "version" => &mut raw.version,
                "name" => &mut raw.name,
                "description" => &mut raw.description,
                "params" => &mut raw.params,
                "stages" => &mut raw.stages,
                other => {
                    errors.push(SpecError::UnknownKey {
                        key: super::abbreviate(other),
                        place: "the pipeline".to_owned(),
                        span: key.span.into(),
                        help: suggestion_help(other, &TOP_LEVEL_KEYS, "top-level key"),
                    });
                    continue;
                }
            };
            *slot = Some((key, node));
        }
        Some(raw)
    }

    /// Applies one `-S` override whose text starts at byte `base` of the source. Stage
    /// settings go under the stage's `with:`, except for `command` stages (whose `run`,
    /// `deps`, `outs` and `env` sit at stage level) and the stage-level `inputs`.
    pub fn apply_override(&mut self, spec: &Override, base: usize) -> Result<(), SpecError> {
        // `Override`'s fields are public; one built by hand may skip `FromStr`'s checks.
        if spec.path.len() < 2 || !spec.text.ends_with(&spec.value) {
            return Err(SpecError::InvalidOverride {
                message: format!("`{}` is not of the form `stage.key=value`", spec.text),
                span: Span::new(base, base + spec.text.len()).into(),
                label: "malformed override".to_owned(),
                help: "build overrides with `str::parse`, e.g. `\"train.epochs=3\".parse()`"
                    .to_owned(),
            });
        }
        let path_span = |index: usize| {
            let start = base
                + spec.path[..index]
                    .iter()
                    .map(|part| part.len() + 1)
                    .sum::<usize>();
            Span::new(start, start + spec.path[index].len())
        };
        let value_start = base + spec.text.len() - spec.value.len();
        let value_node = Node::scalar(
            spec.value.clone(),
            ScalarStyle::Plain,
            Span::new(value_start, base + spec.text.len()),
        );
        let invalid =
            |message: String, index: usize, label: &str, help: String| SpecError::InvalidOverride {
                message,
                span: path_span(index).into(),
                label: label.to_owned(),
                help,
            };

        if spec.path[0] == "params" {
            let params = self.params.as_mut().map(|(_, node)| node);
            let names: Vec<String> = params
                .as_ref()
                .and_then(|node| node.as_map())
                .map(|entries| {
                    entries
                        .iter()
                        .map(|(key, _)| key.value.to_string())
                        .collect()
                })
                .unwrap_or_default();
            let name = &spec.path[1];
            if spec.path.len() != 2 || !names.contains(name) {
                let candidates: Vec<&str> = names.iter().map(String::as_str).collect();
                return Err(invalid(
                    format!("the pipeline has no param `{}`", spec.path[1..].join(".")),
                    1,
                    "unknown param",
                    if candidates.is_empty() {
                        format!(
                            "this pipeline declares no params: add `{name}` under a top-level `params:` block, or override a stage setting with `<stage>.<key>=<value>`"
                        )
                    } else {
                        suggestion_help(name, &candidates, "param")
                    },
                ));
            }
            if let Some(Node {
                value: Value::Map(entries),
                ..
            }) = params
            {
                for (key, node) in entries.iter_mut() {
                    if key.value == name {
                        *node = value_node.clone();
                    }
                }
            }
            return Ok(());
        }

        let stage_ids: Vec<String> = self
            .stages
            .as_ref()
            .and_then(|(_, node)| node.as_map())
            .map(|entries| {
                entries
                    .iter()
                    .map(|(key, _)| key.value.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let stage_entry = self
            .stages
            .as_mut()
            .and_then(|(_, node)| match &mut node.value {
                Value::Map(entries) => entries
                    .iter_mut()
                    .find(|(key, _)| key.value == spec.path[0])
                    .map(|(_, body)| body),
                Value::Scalar(_) | Value::Seq(_) => None,
            });
        let Some(body) = stage_entry else {
            let candidates: Vec<&str> = stage_ids.iter().map(String::as_str).collect();
            let mut help = suggestion_help(&spec.path[0], &candidates, "stage");
            help.push_str("; to set a pipeline param, write `params.<name>=<value>`");
            return Err(invalid(
                format!("the pipeline has no stage `{}`", spec.path[0]),
                0,
                "unknown stage",
                help,
            ));
        };
        let is_command = body
            .get("kind")
            .and_then(Node::as_scalar)
            .is_some_and(|kind| kind.text == "command");
        let stage_level = is_command || spec.path[1] == "inputs";
        let mut node = body;
        let mut steps: Vec<(String, Span)> = Vec::new();
        if !stage_level {
            steps.push(("with".to_owned(), path_span(1)));
        }
        for index in 1..spec.path.len() - 1 {
            steps.push((spec.path[index].clone(), path_span(index)));
        }
        for (step, span) in steps {
            node = match child_map(node, &step, span) {
                Some(child) => child,
                None => {
                    return Err(SpecError::InvalidOverride {
                        message: format!("`{step}` of stage `{}` is not a mapping", spec.path[0]),
                        span: span.into(),
                        label: "cannot set a key inside this".to_owned(),
                        help: "override a whole value instead, e.g. `stage.key=value`".to_owned(),
                    })
                }
            };
        }
        let last = spec.path.len() - 1;
        let Value::Map(entries) = &mut node.value else {
            return Err(invalid(
                "the target is not a mapping".to_owned(),
                last,
                "cannot set this",
                "override a whole value instead".to_owned(),
            ));
        };
        let key = Spanned {
            value: spec.path[last].as_str().into(),
            span: path_span(last),
        };
        match entries
            .iter_mut()
            .find(|(entry_key, _)| entry_key.value == key.value)
        {
            Some((_, existing)) => *existing = value_node,
            None => entries.push((key, value_node)),
        }
        Ok(())
    }
}

/// The mapping under `key` of a mapping node, created (spanned at the override) if absent.
fn child_map<'a>(node: &'a mut Node, key: &str, span: Span) -> Option<&'a mut Node> {
    let Value::Map(entries) = &mut node.value else {
        return None;
    };
    let index = match entries
        .iter()
        .position(|(entry_key, _)| entry_key.value == key)
    {
        Some(index) => index,
        None => {
            entries.push((
                Spanned {
                    value: key.to_owned().into(),
                    span,
                },
                Node::empty_map(span),
            ));
            entries.len() - 1
        }
    };
    let child = &mut entries[index].1;
    matches!(child.value, Value::Map(_)).then_some(child)
}

/// A `-S stage.key.sub=value` (or `-S params.name=value`) command-line override. The value is
/// a YAML scalar, typed like a plain scalar in the file (`3` is a number, `abc` a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The whole text as given, shown in diagnostics.
    pub text: String,
    /// `stage`, `key`, `sub`, …; at least two parts.
    pub path: Vec<String>,
    pub value: String,
}

#[derive(Debug, Error, Diagnostic, Clone, PartialEq, Eq)]
pub enum OverrideParseError {
    #[error("override `{0}` has no `=`")]
    #[diagnostic(
        code(taper::spec::override_syntax),
        help("write `-S <stage>.<key>=<value>`, e.g. `-S finetune.epochs=3`")
    )]
    MissingEquals(String),
    #[error("override `{0}` needs a stage (or `params`) and a key before `=`")]
    #[diagnostic(
        code(taper::spec::override_path),
        help(
            "write `-S <stage>.<key>=<value>` or `-S params.<name>=<value>`, without empty parts"
        )
    )]
    BadPath(String),
}

impl FromStr for Override {
    type Err = OverrideParseError;

    fn from_str(text: &str) -> Result<Override, OverrideParseError> {
        let (path, value) = text
            .split_once('=')
            .ok_or_else(|| OverrideParseError::MissingEquals(text.to_owned()))?;
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        if path.len() < 2
            || path
                .iter()
                .any(|part| part.trim().is_empty() || part != part.trim())
        {
            return Err(OverrideParseError::BadPath(text.to_owned()));
        }
        Ok(Override {
            text: text.to_owned(),
            path,
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
