//! The edges between stages: typed inputs resolved and type-checked, then every edge built
//! with the one rule (`model/edges.rs`) and every cycle reported.
//!
//! Contract: an input naming no stage is reported and left out, so the edges name existing
//! stages; each cycle is one error with its path and the references that close it labelled.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use miette::LabeledSpan;

use super::{invalid, Checked};
use crate::model::edges::{self, Edge, StageEnds};
use crate::model::error::{InputTypeMismatch, ModelError};
use crate::model::{ArtifactKind, InputSlot, StageId, StageKind};
use crate::spec::{suggestion_help, ScalarValue, Span};

/// The typed inputs of every stage, resolved to the stages they name.
pub(super) struct Inputs {
    /// Per stage: (slot, upstream position, span of the reference), for the edges.
    pub edges: Vec<Vec<(InputSlot, usize, Span)>>,
    /// Per stage: slot → upstream stage, as the validated stage carries them.
    pub by_slot: Vec<BTreeMap<InputSlot, StageId>>,
}

/// Resolves each stage's `inputs:` against the stages of the file: the slot must be one of
/// its kind's, the reference must name a stage, and that stage must produce the artifact the
/// slot expects; required slots must be filled. An input that names no stage is left out, so
/// the edge checks see only edges whose ends exist.
pub(super) fn resolve_inputs(checked: &[Checked<'_>], errors: &mut Vec<ModelError>) -> Inputs {
    let stages_by_id: HashMap<&str, &Checked<'_>> = checked
        .iter()
        .map(|stage| (stage.id.value.as_str(), stage))
        .collect();
    let stage_names: Vec<&str> = checked
        .iter()
        .map(|stage| stage.id.value.as_str())
        .collect();

    let index_of: HashMap<&str, usize> = stage_names
        .iter()
        .enumerate()
        .map(|(index, name)| (*name, index))
        .collect();
    let mut input_edges: Vec<Vec<(InputSlot, usize, Span)>> = vec![Vec::new(); checked.len()];
    let mut resolved_inputs: Vec<BTreeMap<InputSlot, StageId>> =
        vec![BTreeMap::new(); checked.len()];

    for (index, stage) in checked.iter().enumerate() {
        let Some(kind) = stage.kind else { continue };
        let slots = kind.input_slots();
        for (slot_key, reference) in &stage.inputs {
            let Some((slot, expected, _)) = slots
                .iter()
                .find(|(slot, _, _)| slot.as_str() == slot_key.value)
            else {
                let names: Vec<&str> = slots.iter().map(|(slot, _, _)| slot.as_str()).collect();
                errors.push(ModelError::UnknownInput {
                    kind: kind.to_string(),
                    slot: slot_key.value.to_string(),
                    span: slot_key.span.into(),
                    help: if names.is_empty() {
                        format!("`{kind}` stages take no inputs; remove `inputs`")
                    } else {
                        suggestion_help(&slot_key.value, &names, "input")
                    },
                });
                continue;
            };
            let Some(reference_name) = reference
                .as_scalar()
                .filter(|scalar| !matches!(scalar.resolve(), ScalarValue::Null))
                .map(|scalar| scalar.text.as_str())
            else {
                errors.push(invalid(
                    format!(
                        "input `{slot}` of stage `{}` must name a stage, not {}",
                        stage.id.value,
                        reference.describe()
                    ),
                    reference,
                    "expected a stage name",
                    format!("write `{slot}: <stage name>`"),
                ));
                continue;
            };
            let Some(upstream) = stages_by_id.get(reference_name) else {
                errors.push(ModelError::UnknownStage {
                    stage: stage.id.value.to_string(),
                    reference: reference_name.to_owned(),
                    span: reference.span.into(),
                    help: suggestion_help(reference_name, &stage_names, "stage"),
                });
                continue;
            };
            input_edges[index].push((*slot, index_of[reference_name], reference.span));
            resolved_inputs[index].insert(*slot, StageId(reference_name.to_owned()));
            let Some(upstream_kind) = upstream.kind else {
                continue;
            };
            if upstream_kind.output() != *expected {
                errors.push(ModelError::InputTypeMismatch(Box::new(InputTypeMismatch {
                    stage: stage.id.value.to_string(),
                    slot: slot.to_string(),
                    expected: expected.to_string(),
                    upstream: reference_name.to_owned(),
                    found: upstream_kind.output().to_string(),
                    span: reference.span.into(),
                    upstream_span: Some(upstream.kind_span.into()),
                    note: String::new(),
                    help: mismatch_help(*slot, *expected, checked),
                })));
            }
        }
        for (slot, expected, required) in slots {
            if *required
                && !stage
                    .inputs
                    .iter()
                    .any(|(key, _)| key.value == slot.as_str())
            {
                errors.push(ModelError::MissingInput {
                    kind: kind.to_string(),
                    stage: stage.id.value.to_string(),
                    slot: slot.to_string(),
                    expected: format!("a {expected}"),
                    span: stage.inputs_span.unwrap_or(stage.id.span).into(),
                    help: format!(
                        "add `{slot}: <stage>` under `inputs`, naming a stage that produces a {expected} ({})",
                        producers(*expected)
                    ),
                });
            }
        }
    }
    Inputs {
        edges: input_edges,
        by_slot: resolved_inputs,
    }
}

/// Builds the pipeline's edges with the one rule ([`edges::edges`]) from what the stage checks
/// found, and reports every cycle among them. The edges keep the spans of the references that
/// made them, for the cycle labels.
pub(super) fn check_edges(
    checked: &[Checked<'_>],
    inputs: Vec<Vec<(InputSlot, usize, Span)>>,
    owned_outs: Vec<Vec<&Path>>,
    pipeline_file: &Path,
    errors: &mut Vec<ModelError>,
) -> Vec<Edge<Span>> {
    let ends: Vec<StageEnds<'_, Span>> = checked
        .iter()
        .zip(inputs)
        .zip(owned_outs)
        .map(|((stage, inputs), outs)| StageEnds {
            id: &stage.id.value,
            materialized: stage.kind.is_some_and(|kind| kind != StageKind::Command),
            outs,
            inputs,
            deps: stage
                .deps
                .iter()
                .map(|(dep, span)| (dep.as_path(), *span))
                .collect(),
        })
        .collect();
    let edges = edges::edges(&ends, pipeline_file);
    report_cycles(checked, &edges, errors);
    edges
}

/// Stage names and edge labels shown for one cycle: a generated pipeline can close a cycle
/// through 50,000 stages, and its report must stay readable (and renderable: miette draws
/// every line between a snippet's labels).
const CYCLE_NAMES_SHOWN: usize = 12;

pub(super) const CYCLE_LABELS_SHOWN: usize = 8;

/// Reports each cycle ([`edges::cycles`]: one per strongly connected component, linear in
/// stages and edges) with its path, labelling the first edges on it at the references that
/// created them.
fn report_cycles(checked: &[Checked<'_>], edges: &[Edge<Span>], errors: &mut Vec<ModelError>) {
    for cycle in edges::cycles(checked.len(), edges) {
        let name = |index: usize| format!("`{}`", checked[index].id.value);
        let labels: Vec<LabeledSpan> = cycle
            .edges
            .iter()
            .take(CYCLE_LABELS_SHOWN)
            .map(|position| {
                let edge = &edges[*position];
                LabeledSpan::new_with_span(
                    Some(format!(
                        "{} uses {}",
                        name(edge.downstream),
                        name(edge.upstream)
                    )),
                    edge.at,
                )
            })
            .collect();
        let mut names: Vec<String> = cycle.stages.iter().map(|index| name(*index)).collect();
        if names.len() > CYCLE_NAMES_SHOWN {
            let hidden = names.len() - CYCLE_NAMES_SHOWN;
            names.splice(
                CYCLE_NAMES_SHOWN - 2..names.len() - 2,
                [format!("… ({hidden} more stages)")],
            );
        }
        errors.push(ModelError::Cycle {
            path: names.join(" → "),
            edges: labels,
        });
    }
}

fn mismatch_help(slot: InputSlot, expected: ArtifactKind, stages: &[Checked<'_>]) -> String {
    let candidates: Vec<String> = stages
        .iter()
        .filter(|stage| stage.kind.map(StageKind::output) == Some(expected))
        .map(|stage| format!("`{}`", stage.id.value))
        .collect();
    if candidates.is_empty() {
        format!(
            "`{slot}` needs a stage that produces a {expected} ({})",
            producers(expected)
        )
    } else {
        format!(
            "stages that produce a {expected}: {}",
            candidates.join(", ")
        )
    }
}

fn producers(artifact: ArtifactKind) -> String {
    StageKind::ALL
        .iter()
        .filter(|kind| kind.output() == artifact)
        .map(|kind| format!("a `{kind}` stage"))
        .collect::<Vec<_>>()
        .join(" or ")
}
