//! Writing values into a pipeline file's text (`taper exp apply`): each edit replaces one
//! scalar's bytes, found through the spans of the raw layer, or inserts one missing key line,
//! so comments, quoting elsewhere, key order and layout all survive. Serializing the parsed
//! file instead would lose every comment.

use super::node::{Key, Node, Value};
use super::raw::Override;
use super::source_text::{SourceText, Span};

/// One value to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// What `-S` set for one run, written into the file (same addressing: stage settings under
    /// `with:`, except for `command` stages and `inputs`).
    Override(Override),
    /// One value of a `use:`'s `matrix:` axis, kept alone: the sweep becomes that variant, with
    /// the same stage names and keys.
    MatrixValue {
        entry: String,
        param: String,
        value: String,
    },
}

/// Where an edit could not be made, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[error("cannot write `{what}` into the pipeline file: {reason}")]
#[diagnostic(code(taper::spec::cannot_edit), help("{help}"))]
pub struct EditError {
    pub what: String,
    pub reason: String,
    pub help: String,
}

/// `text` with every edit made; the file is parsed once, and edits apply from the end so
/// earlier spans stay valid.
pub fn apply_edits(text: &str, edits: &[Edit]) -> Result<String, EditError> {
    let source = SourceText::new("pipeline", text, &[]);
    let (raw, errors) = super::parse(&source);
    let raw = match raw {
        Some(raw) if errors.is_empty() => raw,
        _ => {
            return Err(EditError {
                what: "the experiment".to_owned(),
                reason: "the file does not parse".to_owned(),
                help: "`taper validate` shows what is wrong with it".to_owned(),
            })
        }
    };
    let mut changes: Vec<(Span, String)> = Vec::with_capacity(edits.len());
    for edit in edits {
        changes.push(match edit {
            Edit::Override(item) => override_change(text, &raw, item)?,
            Edit::MatrixValue {
                entry,
                param,
                value,
            } => matrix_change(&raw, entry, param, value)?,
        });
    }
    changes.sort_by_key(|(span, _)| std::cmp::Reverse(span.start()));
    let mut edited = text.to_owned();
    for (span, replacement) in changes {
        edited.replace_range(span.start()..span.end(), &replacement);
    }
    Ok(edited)
}

fn override_change(
    text: &str,
    raw: &super::RawPipeline,
    item: &Override,
) -> Result<(Span, String), EditError> {
    let fail = |reason: String, help: &str| EditError {
        what: item.text.clone(),
        reason,
        help: help.to_owned(),
    };
    let (root, path): (Option<&Node>, Vec<&str>) = if item.path[0] == "params" {
        (
            raw.params.as_ref().map(|(_, node)| node),
            item.path[1..].iter().map(String::as_str).collect(),
        )
    } else {
        let stage = raw
            .stages
            .as_ref()
            .and_then(|(_, node)| node.get(&item.path[0]))
            .ok_or_else(|| {
                fail(
                    format!("the file has no stage `{}`", item.path[0]),
                    "a stage made by a `use:` is set through the `use:` entry's `with:` (or its `stages:`); edit that by hand",
                )
            })?;
        let is_command = stage
            .get("kind")
            .and_then(Node::as_scalar)
            .is_some_and(|kind| kind.text == "command");
        let mut path: Vec<&str> = item.path[1..].iter().map(String::as_str).collect();
        if !is_command && item.path[1] != "inputs" {
            path.insert(0, "with");
        }
        (Some(stage), path)
    };
    let Some(mut node) = root else {
        return Err(fail(
            "the file has no `params:`".to_owned(),
            "add the param to `params:` first",
        ));
    };
    // Walk down as far as the file goes; what is missing is inserted below the last mapping
    // found.
    let mut depth = 0;
    while depth < path.len() {
        match node.get(path[depth]) {
            Some(child) => {
                node = child;
                depth += 1;
            }
            None => break,
        }
    }
    if depth == path.len() {
        return match node.value {
            Value::Scalar(_) => Ok((node.span, item.value.clone())),
            Value::Seq(_) | Value::Map(_) => Err(fail(
                "the value in the file is a list or mapping".to_owned(),
                "edit the pipeline file by hand",
            )),
        };
    }
    let Value::Map(entries) = &node.value else {
        return Err(fail(
            format!("`{}` in the file is not a mapping", path[..depth].join(".")),
            "edit the pipeline file by hand",
        ));
    };
    insertion(text, node.span, entries, &path[depth..], &item.value).ok_or_else(|| {
        fail(
            "no place to insert it".to_owned(),
            "edit the pipeline file by hand",
        )
    })
}

/// Text inserting `keys` (nested) with `value` into the mapping at `span`: inside the braces
/// of a flow mapping, or as a line below the last entry of a block mapping, indented like its
/// first key.
fn insertion(
    text: &str,
    span: Span,
    entries: &[(Key, Node)],
    keys: &[&str],
    value: &str,
) -> Option<(Span, String)> {
    if text.as_bytes().get(span.start()) == Some(&b'{') {
        let mut nested = value.to_owned();
        for key in keys[1..].iter().rev() {
            nested = format!("{{ {key}: {nested} }}");
        }
        let separator = if entries.is_empty() { " " } else { ", " };
        let close = span.end().checked_sub(1)?;
        let before = text[..close].trim_end().len();
        let insert = format!("{separator}{}: {nested} ", keys[0]);
        return Some((Span::new(before, close), insert));
    }
    let (first, _) = entries.first()?;
    let (_, last) = entries.last()?;
    let line_start = text[..first.span.start()]
        .rfind('\n')
        .map_or(0, |at| at + 1);
    let indent = &text[line_start..first.span.start()];
    if !indent.bytes().all(|byte| byte == b' ') {
        return None;
    }
    let mut lines = String::new();
    for (depth, key) in keys.iter().enumerate() {
        let pad = format!("{indent}{}", "  ".repeat(depth));
        if depth + 1 == keys.len() {
            lines.push_str(&format!("{pad}{key}: {value}\n"));
        } else {
            lines.push_str(&format!("{pad}{key}:\n"));
        }
    }
    let at = text[last.span.end()..]
        .find('\n')
        .map_or(text.len(), |offset| last.span.end() + offset + 1);
    if at == text.len() && !text.ends_with('\n') {
        lines.insert(0, '\n');
    }
    Some((Span::new(at, at), lines))
}

fn matrix_change(
    raw: &super::RawPipeline,
    entry: &str,
    param: &str,
    value: &str,
) -> Result<(Span, String), EditError> {
    let axis = raw
        .stages
        .as_ref()
        .and_then(|(_, node)| node.get(entry))
        .and_then(|body| body.get("matrix"))
        .and_then(|matrix| matrix.get(param))
        .filter(|axis| matches!(axis.value, Value::Seq(_)));
    match axis {
        Some(axis) => Ok((axis.span, format!("[{value}]"))),
        None => Err(EditError {
            what: format!("{param}={value}"),
            reason: format!("the `use:` entry `{entry}` has no `matrix:` axis `{param}`"),
            help: "a value set only by an `include` entry cannot be kept alone; edit the `matrix:` by hand".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPELINE: &str = "# top comment\nversion: 1\nname: p\nparams:\n  lr: 2e-3  # the rate\nstages:\n  hparams:\n    kind: configure\n    with:\n      epochs: 4  # keep small\n      batch_size: 8\n  flow:\n    kind: configure\n    with: { epochs: 1 }\n  bare:\n    kind: configure\n  tc:\n    use: spec.yaml\n    matrix:\n      lr: [1e-3, 2e-3]\n      seed:\n        - 1\n        - 2\n";

    fn set(text: &str) -> Edit {
        Edit::Override(text.parse().expect("override"))
    }

    #[test]
    fn a_scalar_is_replaced_in_place_and_comments_survive() {
        let edited =
            apply_edits(PIPELINE, &[set("hparams.epochs=3"), set("params.lr=1e-4")]).unwrap();
        assert_eq!(
            edited,
            PIPELINE
                .replace("epochs: 4  # keep small", "epochs: 3  # keep small")
                .replace("lr: 2e-3  # the rate", "lr: 1e-4  # the rate")
        );
    }

    #[test]
    fn a_missing_key_is_inserted_in_the_style_of_its_mapping() {
        let edited = apply_edits(
            PIPELINE,
            &[
                set("hparams.seed=5"),
                set("flow.seed=2"),
                set("bare.optimizer.name=adamw"),
            ],
        )
        .unwrap();
        assert!(
            edited.contains("      batch_size: 8\n      seed: 5\n  flow:"),
            "{edited}"
        );
        assert!(
            edited.contains("with: { epochs: 1, seed: 2 }\n"),
            "{edited}"
        );
        assert!(
            edited.contains(
                "    kind: configure\n    with:\n      optimizer:\n        name: adamw\n  tc:"
            ),
            "{edited}"
        );
        let source = SourceText::new("p", &edited, &[]);
        assert!(super::super::parse(&source).1.is_empty(), "{edited}");
    }

    #[test]
    fn a_matrix_axis_keeps_one_value() {
        let edited = apply_edits(
            PIPELINE,
            &[
                Edit::MatrixValue {
                    entry: "tc".into(),
                    param: "lr".into(),
                    value: "2e-3".into(),
                },
                Edit::MatrixValue {
                    entry: "tc".into(),
                    param: "seed".into(),
                    value: "1".into(),
                },
            ],
        )
        .unwrap();
        assert!(
            edited.contains("      lr: [2e-3]\n      seed:\n        [1]\n"),
            "{edited}"
        );
    }

    #[test]
    fn stages_from_a_use_are_not_guessed() {
        let error = apply_edits(PIPELINE, &[set("tc-train.epochs=3")]).unwrap_err();
        assert!(error.reason.contains("no stage `tc-train`"), "{error:?}");
    }
}
