//! Scheduler scenarios through the library API on `command` pipelines built in Rust
//! (`exec_cli.rs` covers the same through pipeline files and the binary).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use taper::cache::{LockFile, Store};
use taper::exec::runner::{self, StageContext, StageOutcome, StageRunner};
use taper::exec::{
    report, Dag, Engine, ExecError, LocalExecutor, RunOptions, RunSummary, StageStatus,
};
use taper::model::{Command, Pipeline, Stage, StageId, StageKind, StageSettings};

struct CountingCommand {
    runs: Mutex<Vec<String>>,
}

impl CountingCommand {
    /// Removes and returns the stages run under `root` (tests run in parallel, each in its
    /// own root).
    fn take(&self, root: &Path) -> Vec<String> {
        let prefix = format!("{}:", root.display());
        let mut runs = self.runs.lock().expect("not poisoned");
        let (mine, others): (Vec<String>, Vec<String>) =
            runs.drain(..).partition(|entry| entry.starts_with(&prefix));
        *runs = others;
        let mut mine: Vec<String> = mine
            .into_iter()
            .map(|entry| entry[prefix.len()..].to_owned())
            .collect();
        mine.sort();
        mine
    }
}

static COUNTER: std::sync::LazyLock<CountingCommand> =
    std::sync::LazyLock::new(|| CountingCommand {
        runs: Mutex::new(Vec::new()),
    });

struct Recording;

impl StageRunner for Recording {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, runner::StageError> {
        COUNTER.runs.lock().expect("not poisoned").push(format!(
            "{}:{}",
            ctx.pipeline_root.display(),
            ctx.stage.id
        ));
        taper::stages::command::CommandRunner.run(ctx)
    }
}

fn registry(kind: StageKind) -> Option<&'static dyn StageRunner> {
    (kind == StageKind::Command).then_some(&Recording as &dyn StageRunner)
}

fn command(id: &str, run: &str, deps: &[&str], outs: &[&str]) -> Stage {
    Stage {
        id: StageId(id.to_owned()),
        settings: StageSettings::Command(Command {
            run: run.to_owned(),
            deps: deps.iter().map(PathBuf::from).collect(),
            outs: outs.iter().map(PathBuf::from).collect(),
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            metrics: Vec::new(),
        }),
        inputs: BTreeMap::new(),
    }
}

fn pipeline(root: &Path, stages: Vec<Stage>) -> Pipeline {
    Pipeline::new(
        "test".to_owned(),
        root.join("pipeline.yaml"),
        root.to_path_buf(),
        stages,
    )
    .expect("an acyclic pipeline")
}

/// `first` reads `in.txt`; `second` reads `first`'s out; `other` is independent.
fn chain(root: &Path, first_run: &str) -> Pipeline {
    pipeline(
        root,
        vec![
            command("first", first_run, &["in.txt"], &["first.txt"]),
            command(
                "second",
                "tr a-z A-Z < first.txt > second.txt",
                &["first.txt"],
                &["second.txt"],
            ),
            command("other", "echo other > other.txt", &[], &["other.txt"]),
        ],
    )
}

fn run(pipeline: &Pipeline, store: &Store, options: &RunOptions) -> RunSummary {
    let executor = LocalExecutor::new(registry);
    let engine = Engine::new(pipeline, store, &executor).expect("valid pipeline");
    engine.run(options, &|_| {}).expect("run completes")
}

fn ran(root: &Path) -> Vec<String> {
    COUNTER.take(root)
}

fn options() -> RunOptions {
    RunOptions {
        jobs: 2,
        ..RunOptions::default()
    }
}

// One test drives the whole freshness story: the counter is shared by every test thread, so
// each scenario filters by its own root.
#[test]
fn reruns_exactly_what_changed() {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path();
    let store = Store::open(&root.join("store")).expect("store");
    fs::write(root.join("in.txt"), "hello\n").expect("write");
    let first_run = "cut -c1-3 in.txt > first.txt";
    let summary = run(&chain(root, first_run), &store, &options());
    assert!(!summary.failed(), "{summary:?}");
    assert_eq!(ran(root), ["first", "other", "second"]);
    assert_eq!(
        fs::read_to_string(root.join("second.txt")).expect("out"),
        "HEL\n"
    );
    assert!(LockFile::load(&root.join("pipeline.lock")).is_some());

    // Nothing changed: nothing runs.
    let summary = run(&chain(root, first_run), &store, &options());
    assert!(summary.executed().is_empty(), "{summary:?}");
    assert_eq!(ran(root), Vec::<String>::new());

    // The input changes but `first`'s output does not: early cutoff keeps `second` cached.
    fs::write(root.join("in.txt"), "help\n").expect("write");
    let pipeline = chain(root, first_run);
    let executor = LocalExecutor::new(registry);
    let engine = Engine::new(&pipeline, &store, &executor).expect("valid");
    let plan = engine.plan(&options()).expect("plan");
    insta::assert_snapshot!(report::render_plan("test", &plan), @r"
    plan for `test`: 3 stages, 1 cached, 1 will run, 1 may run
    first   will run  input `in.txt` changed
    second  may run   upstream `first` will run (runs only if its outputs change)
    other   cached
    ");
    let summary = engine.run(&options(), &|_| {}).expect("run");
    assert_eq!(ran(root), ["first"]);
    assert!(matches!(
        summary.stages[0].1,
        StageStatus::Ran {
            outputs_unchanged: true,
            ..
        }
    ));

    // A deleted output is restored from the store, not recomputed.
    fs::remove_file(root.join("second.txt")).expect("remove");
    let summary = run(&chain(root, first_run), &store, &options());
    assert_eq!(ran(root), Vec::<String>::new());
    assert!(
        summary.stages.iter().any(|(id, status)| id.as_str() == "second"
            && matches!(status, StageStatus::Cached { restored } if restored == &["second.txt"])),
        "{summary:?}"
    );
    assert_eq!(
        fs::read_to_string(root.join("second.txt")).expect("out"),
        "HEL\n"
    );

    // A changed command reruns that stage and, since its output changes, its dependent; the
    // plan names the setting with its old and new value.
    let changed = chain(root, "cut -c1-2 in.txt > first.txt");
    let engine = Engine::new(&changed, &store, &executor).expect("valid");
    fs::remove_file(root.join("other.txt")).expect("remove");
    insta::assert_snapshot!(report::render_plan("test", &engine.plan(&options()).expect("plan")), @r"
    plan for `test`: 3 stages, 1 cached, 1 will run, 1 may run
    first   will run  setting `run` changed (cut -c1-3 in.txt > first.txt → cut -c1-2 in.txt > first.txt)
    second  may run   upstream `first` will run (runs only if its outputs change)
    other   cached    restore `other.txt`
    ");
    let summary = run(&changed, &store, &options());
    assert!(!summary.failed());
    assert_eq!(ran(root), ["first", "second"]);
}

/// A stage removed from the pipeline leaves the lock file at the next run, even when every
/// stage that is left is cached (nothing else would write the file).
#[test]
fn a_removed_stage_leaves_the_lock_file_on_a_cached_run() {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path();
    let store = Store::open(&root.join("store")).expect("store");
    fs::write(root.join("in.txt"), "hello\n").expect("write");
    let first_run = "cut -c1-3 in.txt > first.txt";
    assert!(!run(&chain(root, first_run), &store, &options()).failed());
    let lock_path = root.join("pipeline.lock");
    let names = |path: &Path| -> Vec<String> {
        LockFile::load(path)
            .expect("lock file")
            .stages
            .into_keys()
            .collect()
    };
    assert_eq!(names(&lock_path), ["first", "other", "second"]);

    let mut without_other = chain(root, first_run);
    without_other
        .stages
        .retain(|stage| stage.id.as_str() != "other");
    let without_other = pipeline(root, without_other.stages);
    let summary = run(&without_other, &store, &options());
    assert!(summary.executed().is_empty(), "{summary:?}");
    assert_eq!(names(&lock_path), ["first", "second"]);
}

#[test]
fn a_failing_stage_stops_only_its_dependents() {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path();
    let store = Store::open(&root.join("store")).expect("store");
    fs::write(root.join("in.txt"), "x\n").expect("write");
    let summary = run(&chain(root, "exit 3"), &store, &options());
    assert!(summary.failed());
    let statuses: Vec<String> = summary
        .stages
        .iter()
        .map(|(id, status)| {
            let word = match status {
                StageStatus::Failed(_) => "failed",
                StageStatus::Skipped { .. } => "skipped",
                StageStatus::Ran { .. } => "ran",
                StageStatus::Cached { .. } => "cached",
            };
            format!("{id} {word}")
        })
        .collect();
    assert_eq!(statuses, ["first failed", "second skipped", "other ran"]);
    assert_eq!(ran(root), ["first", "other"]);
    let lock = LockFile::load(&root.join("pipeline.lock")).expect("lock written");
    assert_eq!(lock.stages.keys().collect::<Vec<_>>(), ["other"]);

    // Fixing the command resumes: `other` stays cached.
    run(&chain(root, "cat in.txt > first.txt"), &store, &options());
    assert_eq!(ran(root), ["first", "second"]);
}

#[test]
fn a_missing_dep_or_out_is_a_clear_error() {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path();
    let store = Store::open(&root.join("store")).expect("store");
    let summary = run(&chain(root, "true"), &store, &options());
    let messages: Vec<String> = summary
        .stages
        .iter()
        .filter_map(|(_, status)| match status {
            StageStatus::Failed(error) => Some(error.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages,
        ["dependency `in.txt` of stage `first` does not exist"]
    );
    fs::write(root.join("in.txt"), "x\n").expect("write");
    let summary = run(&chain(root, "true"), &store, &options());
    let failure = summary
        .stages
        .iter()
        .find_map(|(_, status)| match status {
            StageStatus::Failed(ExecError::StageFailed { source, .. }) => Some(source.to_string()),
            _ => None,
        })
        .expect("first fails");
    assert_eq!(
        failure,
        "stage `first` declares out `first.txt`, but its command did not create it"
    );
}

#[test]
fn concurrent_runs_compute_each_key_once() {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path();
    let store = Store::open(&root.join("store")).expect("store");
    fs::write(root.join("in.txt"), "x\n").expect("write");
    let pipeline = chain(root, "sleep 0.3; cat in.txt > first.txt");
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let summary = run(&pipeline, &store, &options());
                assert!(!summary.failed(), "{summary:?}");
            });
        }
    });
    assert_eq!(ran(root), ["first", "other", "second"]);
    assert!(store.verify().expect("verify").quarantined.is_empty());
}

/// The engine's adjacency (read from the edges the pipeline carries) is exactly the model's
/// `Pipeline::dependencies()` on every example pipeline.
#[test]
fn edges_agree_with_the_model() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut checked = 0;
    for entry in fs::read_dir(&examples).expect("pipelines/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|ext| ext.to_str()) != Some("yaml") {
            continue;
        }
        let pipeline = taper::model::load_file(&path, &[]).expect("examples are valid");
        let dag = Dag::new(&pipeline);
        let mut expected: Vec<(String, String)> = pipeline
            .dependencies()
            .iter()
            .map(|edge| (edge.upstream.to_string(), edge.downstream.to_string()))
            .collect();
        expected.sort();
        expected.dedup();
        let mut actual: Vec<(String, String)> = (0..dag.len())
            .flat_map(|index| {
                dag.upstream(index)
                    .iter()
                    .map(|up| (dag.id(*up).to_string(), dag.id(index).to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        actual.sort();
        assert_eq!(actual, expected, "edges of `{}`", path.display());
        checked += 1;
    }
    assert!(checked > 0, "no example pipelines found");
}

/// A dep on the pipeline directory itself (`.`, normalized to the empty path) contains every
/// out, for the engine as for the model (`Path::starts_with`): the stage waits for all
/// producers before the directory is hashed, instead of hashing it while they still write.
#[test]
fn a_dep_on_the_whole_directory_waits_for_every_producer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut stages = chain(dir.path(), "cp in.txt first.txt").stages;
    stages.push(command("lint", "ls -R", &[""], &[]));
    let pipeline = pipeline(dir.path(), stages);
    let dag = Dag::new(&pipeline);
    let lint = dag.index_of("lint").expect("lint exists");
    let upstream: Vec<&str> = dag
        .upstream(lint)
        .iter()
        .map(|index| dag.id(*index).as_str())
        .collect();
    assert_eq!(upstream, ["first", "second", "other"]);
    let mut expected: Vec<String> = pipeline
        .dependencies()
        .iter()
        .filter(|edge| edge.downstream.as_str() == "lint")
        .map(|edge| edge.upstream.to_string())
        .collect();
    expected.sort();
    let mut actual: Vec<String> = upstream.iter().map(|id| (*id).to_owned()).collect();
    actual.sort();
    assert_eq!(actual, expected);
}
