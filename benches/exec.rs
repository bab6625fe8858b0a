//! Benchmarks of the execution engine (issue 3):
//! - first hash of a 1 GiB file with taper's hasher vs the blake3 crate's reference
//!   multi-threaded hasher (what `b3sum` runs) and its single-threaded one;
//! - a no-op `run` of a pipeline that reads that file, hash cache warm;
//! - `plan` of a 1,000-stage pipeline whose stages are all cached;
//! - a no-op `run` of a `command` stage whose dep is a directory of 10,000 small files (the
//!   side-by-side with `dvc repro` through the real binary is `benches/dir_deps/run.sh`).
//!
//! Run: `cargo bench --profile dev --bench exec` (dependencies are built at opt-level 3 in the
//! dev profile, so blake3 runs at full speed; taper's own code is unoptimized there, which
//! only makes the figures conservative). The 1 GiB file is generated under /tmp (override with
//! `TAPER_BENCH_DIR`) and removed afterwards.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use taper::cache::Store;
use taper::exec::{Engine, LocalExecutor, RunOptions};
use taper::fingerprint::manifest::hash_file_uncached;
use taper::fingerprint::HashCache;
use taper::model::{Command, Pipeline, Stage, StageId, StageSettings};

const GIB: u64 = 1024 * 1024 * 1024;

fn bench_dir() -> PathBuf {
    std::env::var_os("TAPER_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// 1 GiB of pseudo-random bytes (incompressible, so no filesystem shortcut), mtime in the
/// past so the hash cache may record it.
fn big_file(dir: &Path) -> PathBuf {
    let path = dir.join("big.bin");
    let mut file = fs::File::create(&path).expect("create the 1 GiB file");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 8 * 1024 * 1024];
    for _ in 0..(GIB / chunk.len() as u64) {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk).expect("write");
    }
    file.set_modified(SystemTime::now() - Duration::from_secs(60))
        .expect("set mtime");
    // Flushed before timing: otherwise the first benchmark competes with 1 GiB of writeback.
    file.sync_all().expect("sync");
    path
}

fn command(id: &str, run: String, deps: Vec<PathBuf>, outs: Vec<PathBuf>) -> Stage {
    Stage {
        id: StageId(id.to_owned()),
        settings: StageSettings::Command(Command {
            run,
            deps,
            outs,
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            metrics: Vec::new(),
        }),
        inputs: BTreeMap::new(),
    }
}

fn pipeline(root: &Path, stages: Vec<Stage>) -> Pipeline {
    Pipeline::new(
        "bench".to_owned(),
        root.join("bench.yaml"),
        root.to_path_buf(),
        stages,
    )
    .expect("an acyclic pipeline")
}

/// Runs every stage once, so that what is benchmarked next is the cached path; returns the
/// options the benchmark reuses.
fn first_run(pipeline: &Pipeline, store: &Store, executor: &LocalExecutor) -> RunOptions {
    let options = RunOptions {
        jobs: 2,
        ..RunOptions::default()
    };
    let first = Engine::new(pipeline, store, executor)
        .expect("valid")
        .run(&options, &|_| {})
        .expect("first run");
    assert!(!first.failed(), "{first:?}");
    options
}

fn hashing_and_noop_run(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("bench dir");
    let big = big_file(dir.path());
    let mut group = c.benchmark_group("hash_1gib");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(GIB));
    group.bench_function("taper_first_hash", |b| {
        b.iter(|| HashCache::default().hash_file(&big).expect("hash"));
    });
    group.bench_function("taper_hash_file_uncached", |b| {
        b.iter(|| hash_file_uncached(&big).expect("hash"));
    });
    group.bench_function("blake3_reference_mmap_rayon", |b| {
        b.iter(|| {
            blake3::Hasher::new()
                .update_mmap_rayon(&big)
                .expect("hash")
                .finalize()
        });
    });
    group.bench_function("blake3_single_thread", |b| {
        b.iter(|| {
            blake3::Hasher::new()
                .update_mmap(&big)
                .expect("hash")
                .finalize()
        });
    });
    group.finish();

    let stage = command(
        "checksum",
        "wc -c < big.bin > size.txt".to_owned(),
        vec![PathBuf::from("big.bin")],
        vec![PathBuf::from("size.txt")],
    );
    let pipeline = pipeline(dir.path(), vec![stage]);
    let store = Store::open(&dir.path().join("store")).expect("store");
    let executor = LocalExecutor::new(taper::stages::runner_for);
    let options = first_run(&pipeline, &store, &executor);
    let mut group = c.benchmark_group("noop_run");
    group.bench_function("run_reading_1gib_warm_hash_cache", |b| {
        b.iter(|| {
            let engine = Engine::new(&pipeline, &store, &executor).expect("valid");
            let summary = engine.run(&options, &|_| {}).expect("run");
            assert!(summary.executed().is_empty());
        });
    });
    group.finish();
}

fn plan_thousand_stages(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("bench dir");
    let root = dir.path();
    fs::write(root.join("seed.txt"), "0\n").expect("write");
    // Ten independent chains of 100 stages: each reads its predecessor's out.
    let mut stages = Vec::new();
    for chain in 0..10 {
        for step in 0..100 {
            let out = PathBuf::from(format!("c{chain}/s{step}.txt"));
            let dep = if step == 0 {
                PathBuf::from("seed.txt")
            } else {
                PathBuf::from(format!("c{chain}/s{}.txt", step - 1))
            };
            stages.push(command(
                &format!("c{chain}_s{step}"),
                format!("mkdir -p c{chain} && echo {step} > {}", out.display()),
                vec![dep],
                vec![out],
            ));
        }
    }
    let pipeline = pipeline(root, stages);
    let store = Store::open(&root.join("store")).expect("store");
    let executor = LocalExecutor::new(taper::stages::runner_for);
    let options = first_run(&pipeline, &store, &executor);
    // Age the outputs past the racy window so the hash cache may trust them.
    std::thread::sleep(Duration::from_secs(3));
    Engine::new(&pipeline, &store, &executor)
        .expect("valid")
        .plan(&options)
        .expect("warm-up plan");
    c.bench_function("plan_1000_stages_all_cached", |b| {
        b.iter(|| {
            let engine = Engine::new(&pipeline, &store, &executor).expect("valid");
            let plan = engine.plan(&options).expect("plan");
            assert_eq!(plan.len(), 1000);
        });
    });
}

fn noop_run_ten_thousand_file_dep(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("bench dir");
    let root = dir.path();
    fs::create_dir(root.join("data")).expect("mkdir");
    for index in 0..10_000 {
        fs::write(
            root.join(format!("data/f{index:05}.txt")),
            format!("row {index}\n"),
        )
        .expect("write");
    }
    let stage = command(
        "count",
        "ls data | wc -l > count.txt".to_owned(),
        vec![PathBuf::from("data")],
        vec![PathBuf::from("count.txt")],
    );
    let pipeline = pipeline(root, vec![stage]);
    let store = Store::open(&root.join("store")).expect("store");
    let executor = LocalExecutor::new(taper::stages::runner_for);
    let options = first_run(&pipeline, &store, &executor);
    // Past the racy window, one more run records every file and the directory summary.
    std::thread::sleep(Duration::from_secs(3));
    Engine::new(&pipeline, &store, &executor)
        .expect("valid")
        .run(&options, &|_| {})
        .expect("recording run");
    c.bench_function("noop_run_10000_file_dep_dir", |b| {
        b.iter(|| {
            let engine = Engine::new(&pipeline, &store, &executor).expect("valid");
            let summary = engine.run(&options, &|_| {}).expect("run");
            assert!(summary.executed().is_empty());
        });
    });
}

criterion_group!(
    benches,
    hashing_and_noop_run,
    plan_thousand_stages,
    noop_run_ten_thousand_file_dep
);
criterion_main!(benches);
