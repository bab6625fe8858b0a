//! Text, Mermaid and Graphviz renderings of a pipeline's DAG. Stages are grouped by level, so
//! stages that can run in parallel are visibly side by side.
//!
//! Linear in stages and edges: each stage's kind and inputs are looked up in maps built once
//! (a scan of all edges per stage made `taper dag` of a 50,000-stage chain take 26 s).

use std::collections::HashMap;
use std::fmt::Write as _;

use super::PipelineGraph;
use crate::model::{DependencyVia, Pipeline, StageId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DagFormat {
    Text,
    Mermaid,
    Dot,
}

/// Renders the DAG; the output ends with a newline.
pub fn render(pipeline: &Pipeline, graph: &PipelineGraph, format: DagFormat) -> String {
    match format {
        DagFormat::Text => text(pipeline, graph),
        DagFormat::Mermaid => mermaid(pipeline, graph),
        DagFormat::Dot => dot(pipeline, graph),
    }
}

/// Each stage's kind, by name.
struct Kinds<'a>(HashMap<&'a StageId, &'static str>);

impl<'a> Kinds<'a> {
    fn new(pipeline: &'a Pipeline) -> Kinds<'a> {
        Kinds(
            pipeline
                .stages
                .iter()
                .map(|stage| (&stage.id, stage.kind().as_str()))
                .collect(),
        )
    }

    fn of(&self, id: &StageId) -> &'static str {
        self.0.get(id).copied().unwrap_or("?")
    }
}

fn edge_label(via: &DependencyVia) -> String {
    match via {
        DependencyVia::Input(slot) => slot.to_string(),
        DependencyVia::Path(path) | DependencyVia::Containing(path) => path.display().to_string(),
    }
}

fn text(pipeline: &Pipeline, graph: &PipelineGraph) -> String {
    let levels = graph.levels();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} stages in {} levels (stages on one level can run in parallel)",
        pipeline.name,
        pipeline.stages.len(),
        levels.len()
    );
    let edges = graph.edges();
    let kinds = Kinds::new(pipeline);
    // `edges` is sorted by downstream stage, so each stage's inputs keep their order.
    let mut inputs_of: HashMap<&StageId, Vec<String>> = HashMap::new();
    for edge in &edges {
        inputs_of.entry(&edge.downstream).or_default().push(format!(
            "{} ({})",
            edge.upstream,
            edge_label(&edge.via)
        ));
    }
    for (depth, level) in levels.iter().enumerate() {
        let _ = writeln!(out, "level {}", depth + 1);
        for id in level {
            let inputs = inputs_of.get(id).map_or(&[][..], Vec::as_slice);
            let _ = write!(out, "  {id} [{}]", kinds.of(id));
            if !inputs.is_empty() {
                let _ = write!(out, " <- {}", inputs.join(", "));
            }
            out.push('\n');
        }
    }
    out
}

/// Mermaid node ids must be simple words; stage names may contain `-`.
fn mermaid_id(id: &StageId) -> String {
    format!("s_{}", id.as_str().replace('-', "_"))
}

fn mermaid(pipeline: &Pipeline, graph: &PipelineGraph) -> String {
    let mut out = String::from("flowchart TD\n");
    let kinds = Kinds::new(pipeline);
    for (depth, level) in graph.levels().iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph level{}[\"level {}\"]",
            depth + 1,
            depth + 1
        );
        out.push_str("    direction LR\n");
        for id in level {
            let _ = writeln!(
                out,
                "    {}[\"{id}<br/><i>{}</i>\"]",
                mermaid_id(id),
                kinds.of(id)
            );
        }
        out.push_str("  end\n");
    }
    for edge in graph.edges() {
        let _ = writeln!(
            out,
            "  {} -->|\"{}\"| {}",
            mermaid_id(&edge.upstream),
            edge_label(&edge.via).replace('"', "'"),
            mermaid_id(&edge.downstream)
        );
    }
    out
}

fn dot_quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn dot(pipeline: &Pipeline, graph: &PipelineGraph) -> String {
    let mut out = String::new();
    let kinds = Kinds::new(pipeline);
    let _ = writeln!(out, "digraph {} {{", dot_quote(&pipeline.name));
    out.push_str("  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\"];\n");
    for (depth, level) in graph.levels().iter().enumerate() {
        let _ = writeln!(
            out,
            "  // level {}: these stages can run in parallel",
            depth + 1
        );
        out.push_str("  { rank=same;");
        for id in level {
            let _ = write!(out, " {};", dot_quote(id.as_str()));
        }
        out.push_str(" }\n");
        for id in level {
            let quoted = dot_quote(id.as_str());
            // `\n` is Graphviz's centred line break inside a label.
            let _ = writeln!(
                out,
                "  {quoted} [label={}\\n{}\"];",
                quoted.trim_end_matches('"'),
                kinds.of(id)
            );
        }
    }
    for edge in graph.edges() {
        let _ = writeln!(
            out,
            "  {} -> {} [label={}];",
            dot_quote(edge.upstream.as_str()),
            dot_quote(edge.downstream.as_str()),
            dot_quote(&edge_label(&edge.via))
        );
    }
    out.push_str("}\n");
    out
}
