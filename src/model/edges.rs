//! The edges of a pipeline: the one owner of the rule that says which stage reads what another
//! produces, and of the search for cycles among them.
//!
//! Contract: validation builds a pipeline's edges here once ([`edges`]) and the validated
//! [`Pipeline`] carries them ([`Pipeline::dependencies`]); `graph`, `plan` and `exec` read them
//! and never derive an edge themselves. A pipeline built in code gets its edges from the same
//! rule through [`Pipeline::new`], which refuses unknown stages and cycles, so every
//! `Pipeline` is acyclic and its edges name existing stages.
//!
//! The rule: stage `b` depends on stage `a` when
//! - a typed input of `b` names `a` (`inputs: { model: a }`), or
//! - a path `b` reads (a `command` dep, or a `path:` source of an ML stage: [`StageSettings::read_paths`])
//!   overlaps an output of `a` (DVC's rule: either path contains the
//!   other): `a`'s `outs`, or, for kinds other than `command`, `out/<file stem>/<a>/`
//!   ([`super::stage_output_dir`]) where taper materializes their artifacts; or
//! - a `command` dep of `b` lies inside `out/<file stem>/<a>/` for a `command` stage `a`: the
//!   directory is named after `a`, so reading there reads from `a` (a stage reading its own
//!   is a cycle), but taper writes nothing there, so a dep above it does not wait for `a`. A dep at or under the output reads inside it
//!   ([`DependencyVia::Path`]); a dep on a directory that holds the output
//!   ([`DependencyVia::Containing`]) can only be hashed once `a` has written it.
//!
//! Outputs are looked up in a [`PathIndex`], one lookup per path component, so building the
//! edges is linear in stages, deps and outs (comparing every dep with every out was O(n²) and
//! half of a 1,000-stage `plan`). The cycle search is Kosaraju's algorithm, also linear:
//! petgraph's Tarjan recurses once per stage of a chain and overflowed the stack on a cycle
//! through 50,000 stages.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use thiserror::Error;

use super::paths::{normalize, PathIndex};
use super::{
    stage_output_dir, Dependency, DependencyVia, InputSlot, Pipeline, Stage, StageId, StageKind,
    StageSettings,
};

/// A pipeline built in code that breaks the invariants validation guarantees.
#[derive(Debug, Error, Diagnostic, Clone, PartialEq, Eq)]
pub enum EdgeError {
    #[error("stage `{downstream}` depends on unknown stage `{upstream}`")]
    #[diagnostic(
        code(taper::graph::unknown_stage),
        help("load pipelines with `taper::model::load_file`, which validates every edge")
    )]
    UnknownStage {
        upstream: String,
        downstream: String,
    },
    #[error("the stages depend on each other in a cycle: {path}")]
    #[diagnostic(
        code(taper::graph::cycle),
        help("a stage cannot use its own output, even indirectly; remove one of these edges")
    )]
    Cycle { path: String },
}

/// What the edge rule reads of one stage, by position in file order. `T` says where a
/// reference was written: a span during validation, nothing for a pipeline built in code.
pub(crate) struct StageEnds<'a, T> {
    pub id: &'a str,
    /// Whether taper materializes the stage's artifacts in `out/<file stem>/<id>/` (every
    /// kind but `command`).
    pub materialized: bool,
    /// The `outs` of a `command` stage.
    pub outs: Vec<&'a Path>,
    /// Typed inputs: slot and the position of the stage that fills it.
    pub inputs: Vec<(InputSlot, usize, T)>,
    /// Paths the stage reads ([`StageSettings::read_paths`]: `command` deps, `path:` sources),
    /// normalized.
    pub deps: Vec<(&'a Path, T)>,
}

/// An edge between stages given by position in file order; `at` is where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Edge<T> {
    pub upstream: usize,
    pub downstream: usize,
    pub via: DependencyVia,
    pub at: T,
}

/// Every edge, in file order of the downstream stage: typed inputs, then one edge per `command`
/// dep and stage whose outputs it overlaps (in file order). A stage reading its own output
/// gets a self-edge, which [`cycles`] reports: its key would depend on what it produces.
pub(crate) fn edges<T: Copy>(stages: &[StageEnds<'_, T>], pipeline_file: &Path) -> Vec<Edge<T>> {
    // (owning stage, whether a dep above the path holds what the stage writes there)
    let mut mounts: PathIndex<(usize, bool)> = PathIndex::new();
    // Only read paths (`command` deps, `path:` sources) are looked up in it: a pipeline
    // without any does not build it (for 150,000 stages, an entry per output directory was a
    // tenth of validation's memory).
    let has_deps = stages.iter().any(|stage| !stage.deps.is_empty());
    for (index, stage) in stages.iter().enumerate().filter(|_| has_deps) {
        for out in &stage.outs {
            mounts.insert(out, (index, true));
        }
        let dir = stage_output_dir(pipeline_file, &StageId(stage.id.to_owned()));
        mounts.insert(&dir, (index, stage.materialized));
    }
    let mut edges = Vec::new();
    for (index, stage) in stages.iter().enumerate() {
        for (slot, upstream, at) in &stage.inputs {
            edges.push(Edge {
                upstream: *upstream,
                downstream: index,
                via: DependencyVia::Input(*slot),
                at: *at,
            });
        }
        for (dep, at) in &stage.deps {
            // (owner, whether the dep holds the output rather than reads inside it); outputs
            // overlap each other only in a pipeline validation rejects, and then reading
            // inside wins.
            let mut read: Vec<(usize, bool)> = mounts
                .at_or_above(dep)
                .flatten()
                .map(|(owner, _)| (*owner, false))
                .chain(
                    mounts
                        .below(dep)
                        .flatten()
                        .filter(|(_, written)| *written)
                        .map(|(owner, _)| (*owner, true)),
                )
                .collect();
            read.sort_unstable();
            read.dedup_by_key(|(owner, _)| *owner);
            edges.extend(read.into_iter().map(|(upstream, containing)| Edge {
                upstream,
                downstream: index,
                via: if containing {
                    DependencyVia::Containing(dep.to_path_buf())
                } else {
                    DependencyVia::Path(dep.to_path_buf())
                },
                at: *at,
            }));
        }
    }
    edges
}

/// One cycle: the stages along it, the first repeated at the end, and the positions (in the
/// edge list given to [`cycles`]) of the edges that close it, in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cycle {
    pub stages: Vec<usize>,
    pub edges: Vec<usize>,
}

/// One cycle per strongly connected component that has one, ordered by the component's first
/// stage in file order; each is a shortest way from that stage back to itself.
pub(crate) fn cycles<T>(count: usize, edges: &[Edge<T>]) -> Vec<Cycle> {
    let mut graph = DiGraph::<(), usize>::with_capacity(count, edges.len());
    let nodes: Vec<NodeIndex> = (0..count).map(|_| graph.add_node(())).collect();
    for (position, edge) in edges.iter().enumerate() {
        graph.add_edge(nodes[edge.upstream], nodes[edge.downstream], position);
    }
    let mut components = petgraph::algo::kosaraju_scc(&graph);
    for component in &mut components {
        component.sort_unstable();
    }
    components.sort_by_key(|component| component[0]);
    let mut component_of = vec![usize::MAX; count];
    for (number, component) in components.iter().enumerate() {
        for node in component {
            component_of[node.index()] = number;
        }
    }
    let mut parent: Vec<Option<(NodeIndex, usize)>> = vec![None; count];
    let mut found = Vec::new();
    for (number, component) in components.iter().enumerate() {
        let first = component[0];
        if component.len() == 1 && graph.find_edge(first, first).is_none() {
            continue;
        }
        // The shortest way back to the component's first stage: a breadth-first search inside
        // the component, so the reported path is a real, minimal cycle.
        let mut queue = VecDeque::from([first]);
        let mut closing = None;
        'search: while let Some(current) = queue.pop_front() {
            let mut outgoing: Vec<(NodeIndex, usize)> = graph
                .edges(current)
                .map(|edge| (edge.target(), *edge.weight()))
                .filter(|(target, _)| component_of[target.index()] == number)
                .collect();
            outgoing.sort_unstable();
            for (target, position) in outgoing {
                if target == first {
                    closing = Some((current, position));
                    break 'search;
                }
                if parent[target.index()].is_none() {
                    parent[target.index()] = Some((current, position));
                    queue.push_back(target);
                }
            }
        }
        let Some((mut current, closing_edge)) = closing else {
            continue;
        };
        let mut stages = vec![first.index(), current.index()];
        let mut on_path = vec![closing_edge];
        while current != first {
            let Some((previous, position)) = parent[current.index()] else {
                break;
            };
            on_path.push(position);
            stages.push(previous.index());
            current = previous;
        }
        stages.reverse();
        on_path.reverse();
        found.push(Cycle {
            stages,
            edges: on_path,
        });
    }
    found
}

impl Pipeline {
    /// A pipeline built in code (tests, benchmarks, tools) with its edges derived by the same
    /// rule as validation's; `command` deps and outs are normalized as validation does, and
    /// `description` and `params` start empty. Refuses an input naming no stage and a cycle,
    /// the two edge faults validation reports for a pipeline file.
    pub fn new(
        name: String,
        path: PathBuf,
        root: PathBuf,
        mut stages: Vec<Stage>,
    ) -> Result<Pipeline, EdgeError> {
        for stage in &mut stages {
            if let StageSettings::Command(command) = &mut stage.settings {
                for path in command.deps.iter_mut().chain(command.outs.iter_mut()) {
                    *path = normalize(path);
                }
            }
        }
        let index_of: HashMap<&StageId, usize> = stages
            .iter()
            .enumerate()
            .map(|(index, stage)| (&stage.id, index))
            .collect();
        let read: Vec<Vec<PathBuf>> = stages
            .iter()
            .map(|stage| stage.settings.read_paths())
            .collect();
        let mut ends = Vec::with_capacity(stages.len());
        for (stage, read) in stages.iter().zip(&read) {
            let mut inputs = Vec::new();
            for (slot, upstream) in &stage.inputs {
                let Some(position) = index_of.get(upstream) else {
                    return Err(EdgeError::UnknownStage {
                        upstream: upstream.to_string(),
                        downstream: stage.id.to_string(),
                    });
                };
                inputs.push((*slot, *position, ()));
            }
            let outs = match &stage.settings {
                StageSettings::Command(command) => {
                    command.outs.iter().map(PathBuf::as_path).collect()
                }
                _ => Vec::new(),
            };
            let deps = read.iter().map(|dep| (dep.as_path(), ())).collect();
            ends.push(StageEnds {
                id: stage.id.as_str(),
                materialized: stage.kind() != StageKind::Command,
                outs,
                inputs,
                deps,
            });
        }
        let edges = edges(&ends, &path);
        if let Some(cycle) = cycles(stages.len(), &edges).first() {
            return Err(EdgeError::Cycle {
                path: cycle
                    .stages
                    .iter()
                    .map(|index| format!("`{}`", stages[*index].id))
                    .collect::<Vec<_>>()
                    .join(" → "),
            });
        }
        let dependencies = dependencies(&edges, &stages);
        Ok(Pipeline {
            name,
            description: None,
            path,
            root,
            params: Default::default(),
            stages,
            specs: Vec::new(),
            dependencies,
        })
    }
}

/// The edges as the validated pipeline carries them: by stage name.
pub(crate) fn dependencies<T>(edges: &[Edge<T>], stages: &[Stage]) -> Vec<Dependency> {
    edges
        .iter()
        .map(|edge| Dependency {
            upstream: stages[edge.upstream].id.clone(),
            downstream: stages[edge.downstream].id.clone(),
            via: edge.via.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Command;

    fn command(id: &str, deps: &[&str], outs: &[&str]) -> Stage {
        Stage {
            id: StageId(id.to_owned()),
            settings: StageSettings::Command(Command {
                run: "true".to_owned(),
                deps: deps.iter().map(PathBuf::from).collect(),
                outs: outs.iter().map(PathBuf::from).collect(),
                env: BTreeMap::new(),
                pass_env: Vec::new(),
                metrics: Vec::new(),
            }),
            inputs: BTreeMap::new(),
        }
    }

    fn build(stages: Vec<Stage>) -> Result<Pipeline, EdgeError> {
        Pipeline::new("p".to_owned(), "p.yaml".into(), ".".into(), stages)
    }

    #[test]
    fn deps_inside_and_above_outputs_are_edges_of_their_own_kind() {
        let pipeline = build(vec![
            command("clean", &["raw.csv"], &["data/clean.csv"]),
            command("stats", &["data/clean.csv/part-0"], &["stats.json"]),
            command("lint", &["data", "."], &[]),
        ])
        .expect("acyclic");
        let edges: Vec<(&str, &str, &DependencyVia)> = pipeline
            .dependencies()
            .iter()
            .map(|edge| (edge.upstream.as_str(), edge.downstream.as_str(), &edge.via))
            .collect();
        assert_eq!(
            edges,
            [
                (
                    "clean",
                    "stats",
                    &DependencyVia::Path("data/clean.csv/part-0".into())
                ),
                ("clean", "lint", &DependencyVia::Containing("data".into())),
                ("clean", "lint", &DependencyVia::Containing("".into())),
                ("stats", "lint", &DependencyVia::Containing("".into())),
            ]
        );
    }

    #[test]
    fn a_cycle_built_in_code_is_refused_with_its_path() {
        let error = build(vec![
            command("report", &["data/clean.csv"], &["report.html"]),
            command("clean", &["report.html"], &["data/clean.csv"]),
        ])
        .expect_err("report.html feeds clean again");
        assert_eq!(
            error,
            EdgeError::Cycle {
                path: "`report` → `clean` → `report`".to_owned()
            }
        );
    }

    #[test]
    fn an_input_naming_no_stage_is_refused() {
        let mut stage = command("fit", &[], &[]);
        stage
            .inputs
            .insert(InputSlot::Model, StageId("base".to_owned()));
        assert_eq!(
            build(vec![stage]).expect_err("no stage `base`"),
            EdgeError::UnknownStage {
                upstream: "base".to_owned(),
                downstream: "fit".to_owned()
            }
        );
    }

    /// Kosaraju's algorithm and the path search are linear: a cycle through 50,000 stages is
    /// found without recursing once per stage.
    #[test]
    fn a_50_000_stage_cycle_is_found_in_one_pass() {
        let count = 50_000;
        let edges: Vec<Edge<()>> = (0..count)
            .map(|index| Edge {
                upstream: index,
                downstream: (index + 1) % count,
                via: DependencyVia::Input(InputSlot::Data),
                at: (),
            })
            .collect();
        let found = cycles(count, &edges);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].stages.len(), count + 1);
        assert_eq!(found[0].edges.len(), count);
    }
}
