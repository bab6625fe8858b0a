use std::path::{Path, PathBuf};

use super::*;
use crate::model::load_str;

fn pipeline(text: &str) -> Pipeline {
    load_str(Path::new("p.yaml"), text, PathBuf::from("."), &[]).expect("valid pipeline")
}

fn ids(stages: &[StageId]) -> Vec<&str> {
    stages.iter().map(StageId::as_str).collect()
}

const COMMANDS: &str = "version: 1
name: commands
stages:
  report: { kind: command, run: make report, deps: [data/clean.csv, out/train-set], outs: [report.html] }
  clean: { kind: command, run: make clean, deps: [raw.csv], outs: [data/clean.csv] }
  split: { kind: command, run: make split, deps: [data], outs: [out/train-set/] }
  lint: { kind: command, run: make lint }
";

#[test]
fn command_edges_follow_deps_under_outs() {
    let graph = PipelineGraph::new(&pipeline(COMMANDS));
    assert_eq!(
        ids(&graph.topo_order()),
        ["clean", "split", "report", "lint"]
    );
    assert_eq!(
        ids(&graph.upstream(&StageId("report".into()))),
        ["clean", "split"]
    );
    assert_eq!(
        ids(&graph.downstream(&StageId("clean".into()))),
        ["split", "report"]
    );
    let levels = graph.levels();
    let levels: Vec<Vec<&str>> = levels.iter().map(|level| ids(level)).collect();
    assert_eq!(
        levels,
        [vec!["clean", "lint"], vec!["split"], vec!["report"]]
    );
}

#[test]
fn ml_outputs_under_out_stage_are_edges_and_inputs_are_typed_edges() {
    let text = "version: 1
name: ml
stages:
  base: { kind: select-model, with: { source: { path: model } } }
  data: { kind: prepare-data, inputs: { model: base }, with: { source: { path: d.csv }, split: { train: 0.8, test: 0.2 } } }
  config: { kind: configure }
  fit: { kind: train, inputs: { model: base, data: data, config: config } }
  plot: { kind: command, run: python3 plot.py, deps: [out/p/fit/metrics.json] }
";
    let pipeline = pipeline(text);
    let graph = PipelineGraph::new(&pipeline);
    let levels = graph.levels();
    let levels: Vec<Vec<&str>> = levels.iter().map(|level| ids(level)).collect();
    assert_eq!(
        levels,
        [
            vec!["base", "config"],
            vec!["data"],
            vec!["fit"],
            vec!["plot"]
        ]
    );
    let edges = graph.edges();
    assert_eq!(edges.len(), 5);
    assert_eq!(
        edges.last().map(|edge| &edge.via),
        Some(&DependencyVia::Path(PathBuf::from(
            "out/p/fit/metrics.json"
        )))
    );
}

#[test]
fn renderings_group_parallel_stages() {
    let pipeline = pipeline(COMMANDS);
    let graph = PipelineGraph::new(&pipeline);
    let text = render(&pipeline, &graph, DagFormat::Text);
    assert!(
        text.contains("level 1\n  clean [command]\n  lint [command]\nlevel 2\n  split [command] <- clean (data)\n"),
        "{text}"
    );
    let dot = render(&pipeline, &graph, DagFormat::Dot);
    assert!(dot.contains("{ rank=same; \"clean\"; \"lint\"; }"), "{dot}");
    let mermaid = render(&pipeline, &graph, DagFormat::Mermaid);
    assert!(
        mermaid.contains("s_clean -->|\"data/clean.csv\"| s_report"),
        "{mermaid}"
    );
}

#[test]
fn external_paths_leave_out_files_other_stages_produce() {
    let pipeline = pipeline(COMMANDS);
    let report = StageId("report".into());
    assert_eq!(pipeline.external_paths(&report), Vec::<PathBuf>::new());
    let clean = StageId("clean".into());
    assert_eq!(pipeline.external_paths(&clean), [PathBuf::from("raw.csv")]);
}

/// The text layout scanned every edge for every stage (26 s for this chain); it must list
/// each stage once, on its own level, with its one input.
#[test]
fn a_50_000_stage_chain_renders_every_stage_with_its_input() {
    let count = 50_000;
    let mut text = String::from(
        "version: 1\nname: chain\nstages:\n  s0: { kind: command, run: x, outs: [d0] }\n",
    );
    for index in 1..count {
        let previous = index - 1;
        text.push_str(&format!(
            "  s{index}: {{ kind: command, run: x, deps: [d{previous}], outs: [d{index}] }}\n"
        ));
    }
    let pipeline = pipeline(&text);
    let graph = PipelineGraph::new(&pipeline);
    let out = render(&pipeline, &graph, DagFormat::Text);
    assert!(
        out.starts_with("chain: 50000 stages in 50000 levels"),
        "{}",
        &out[..80]
    );
    assert!(out.ends_with("level 50000\n  s49999 [command] <- s49998 (d49998)\n"));
    assert_eq!(out.matches(" <- ").count(), count - 1);
}
