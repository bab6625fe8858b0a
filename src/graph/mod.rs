//! The pipeline as a DAG: which stage feeds which, in what order they may run, and which can
//! run at the same time.
//!
//! Contract: the graph is built from the edges the pipeline carries
//! ([`Pipeline::dependencies`], derived once by `model/edges.rs`); it derives none itself.
//! Every `Pipeline` is acyclic with edges between existing stages (validation or
//! [`Pipeline::new`] refused anything else), so building the graph cannot fail. This module
//! owns the one topological order: every order it returns is deterministic, ties broken by the
//! stages' order in the file, so two runs schedule and print alike.

mod render;

use std::collections::{BTreeSet, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::model::{Dependency, DependencyVia, Pipeline, StageId};

pub use render::{render, DagFormat};

/// The dependency graph of a validated pipeline.
#[derive(Debug, Clone)]
pub struct PipelineGraph {
    graph: DiGraph<StageId, DependencyVia>,
    /// Node indexes are file order: stage `i` of the pipeline is node `i`.
    index: HashMap<StageId, NodeIndex>,
    topo: Vec<NodeIndex>,
}

impl PipelineGraph {
    pub fn new(pipeline: &Pipeline) -> PipelineGraph {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for stage in &pipeline.stages {
            index.insert(stage.id.clone(), graph.add_node(stage.id.clone()));
        }
        for Dependency {
            upstream,
            downstream,
            via,
        } in pipeline.dependencies()
        {
            // Both ends exist: the pipeline's constructors checked every edge.
            if let (Some(from), Some(to)) = (index.get(upstream), index.get(downstream)) {
                graph.add_edge(*from, *to, via.clone());
            }
        }
        let topo = kahn(&graph);
        PipelineGraph { graph, index, topo }
    }

    /// Stage positions in file order (`pipeline.stages[i]`), upstream before downstream; among
    /// ready stages, file order first. The order [`Self::topo_order`] names.
    pub fn topo_indices(&self) -> Vec<usize> {
        self.topo.iter().map(|node| node.index()).collect()
    }

    /// All stages, upstream before downstream; among ready stages, file order first.
    pub fn topo_order(&self) -> Vec<StageId> {
        self.topo
            .iter()
            .map(|node| self.graph[*node].clone())
            .collect()
    }

    /// Stages grouped by depth (the longest chain of inputs above them): every stage of a level
    /// depends only on earlier levels, so the stages of one level can run in parallel.
    pub fn levels(&self) -> Vec<Vec<StageId>> {
        let mut depth = vec![0usize; self.graph.node_count()];
        for node in &self.topo {
            for edge in self.graph.edges_directed(*node, Direction::Incoming) {
                depth[node.index()] = depth[node.index()].max(depth[edge.source().index()] + 1);
            }
        }
        let count = depth.iter().max().map_or(0, |deepest| deepest + 1);
        let mut levels = vec![Vec::new(); count];
        for node in self.graph.node_indices() {
            levels[depth[node.index()]].push(self.graph[node].clone());
        }
        levels
    }

    /// Every stage `id` depends on, directly or not, in topological order.
    pub fn upstream(&self, id: &StageId) -> Vec<StageId> {
        self.reachable(id, Direction::Incoming)
    }

    /// Every stage that depends on `id`, directly or not, in topological order.
    pub fn downstream(&self, id: &StageId) -> Vec<StageId> {
        self.reachable(id, Direction::Outgoing)
    }

    /// The direct upstream stages of `id`, in file order.
    pub fn parents(&self, id: &StageId) -> Vec<StageId> {
        let Some(node) = self.index.get(id) else {
            return Vec::new();
        };
        let parents: BTreeSet<NodeIndex> = self
            .graph
            .neighbors_directed(*node, Direction::Incoming)
            .collect();
        parents
            .into_iter()
            .map(|parent| self.graph[parent].clone())
            .collect()
    }

    /// Every edge, sorted by downstream then upstream stage in file order.
    pub fn edges(&self) -> Vec<Dependency> {
        let mut edges: Vec<_> = self
            .graph
            .edge_references()
            .map(|edge| {
                (
                    edge.target().index(),
                    edge.source().index(),
                    Dependency {
                        upstream: self.graph[edge.source()].clone(),
                        downstream: self.graph[edge.target()].clone(),
                        via: edge.weight().clone(),
                    },
                )
            })
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, _, edge)| edge).collect()
    }

    fn reachable(&self, id: &StageId, direction: Direction) -> Vec<StageId> {
        let Some(start) = self.index.get(id) else {
            return Vec::new();
        };
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack = vec![*start];
        while let Some(node) = stack.pop() {
            for next in self.graph.neighbors_directed(node, direction) {
                if !seen[next.index()] {
                    seen[next.index()] = true;
                    stack.push(next);
                }
            }
        }
        self.topo
            .iter()
            .filter(|node| seen[node.index()])
            .map(|node| self.graph[*node].clone())
            .collect()
    }
}

/// Kahn's algorithm taking the lowest ready index (file order) first. The graph is acyclic
/// (see the module contract), so every stage is ordered.
fn kahn(graph: &DiGraph<StageId, DependencyVia>) -> Vec<NodeIndex> {
    let mut in_degree: Vec<usize> = graph
        .node_indices()
        .map(|node| graph.edges_directed(node, Direction::Incoming).count())
        .collect();
    let mut ready: BTreeSet<NodeIndex> = graph
        .node_indices()
        .filter(|node| in_degree[node.index()] == 0)
        .collect();
    let mut order = Vec::with_capacity(graph.node_count());
    while let Some(node) = ready.pop_first() {
        order.push(node);
        for next in graph.neighbors_directed(node, Direction::Outgoing) {
            in_degree[next.index()] -= 1;
            if in_degree[next.index()] == 0 {
                ready.insert(next);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests;
