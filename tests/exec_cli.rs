//! End-to-end tests of `taper plan`, `taper run` and `taper cache` on `command` pipelines
//! (issue 3): each builds a tiny project in a temp dir and runs the real binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{runs, Project};

const PIPELINE: &str = r#"version: 1
name: demo
params:
  width: 3
stages:
  first:
    kind: command
    run: echo first >> runs.txt && cut -c1-${params.width} in.txt > first.txt
    deps: [in.txt]
    outs: [first.txt]
  second:
    kind: command
    run: echo second >> runs.txt && tr a-z A-Z < first.txt > second.txt
    deps: [first.txt]
    outs: [second.txt]
  other:
    kind: command
    run: echo other >> runs.txt && echo other > other.txt
    outs: [other.txt]
"#;

fn succeeded(output: &Output) -> bool {
    output.status.success()
}

/// A second run with nothing changed executes no stage.
#[test]
fn second_run_executes_nothing() {
    let project = Project::new(PIPELINE);
    let first = project.taper(&["run", "p.yaml", "-j", "2"]);
    assert!(succeeded(&first), "{}", project.show(&first));
    assert_eq!(runs(&project), ["first", "other", "second"]);
    assert_eq!(
        fs::read_to_string(project.path("second.txt")).expect("out"),
        "HEL\n"
    );
    let lock = fs::read_to_string(project.path("p.lock")).expect("lock file written");
    assert!(
        lock.contains("first:") && lock.contains("settings_digest"),
        "{lock}"
    );

    let second = project.taper(&["run", "p.yaml", "-j", "1"]);
    assert!(succeeded(&second));
    assert_eq!(runs(&project), Vec::<String>::new());
    insta::assert_snapshot!(project.show(&second), @r"
    exit: 0
    --- stdout
    --- stderr
    cached   first
    cached   second
    cached   other
    3 stages: 0 ran, 3 cached
    ");
    // The lock file is deterministic: an identical run leaves it byte for byte.
    assert_eq!(
        fs::read_to_string(project.path("p.lock")).expect("lock"),
        lock
    );
}

/// Changing one setting reruns exactly that stage and its dependents, and `plan` says which
/// setting changed from what to what.
#[test]
fn one_changed_setting_reruns_that_stage_and_its_dependents() {
    let project = Project::new(PIPELINE);
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    runs(&project);
    let edited = PIPELINE.replace("tr a-z A-Z", "tr a-y A-Y");
    fs::write(project.path("p.yaml"), edited).expect("edit");
    let plan = project.taper(&["plan", "p.yaml"]);
    insta::assert_snapshot!(project.show(&plan), @r"
    exit: 0
    --- stdout
    plan for `demo`: 3 stages, 2 cached, 1 will run
    first   cached
    second  will run  setting `run` changed (echo second >> runs.txt && tr a-z A-Z < first.txt > second.txt → echo second >> runs.txt && tr a-y A-Y < first.txt > second.txt)
    other   cached
    --- stderr
    ");
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    assert_eq!(runs(&project), ["second"]);
}

/// `-S` overrides a setting for one run: the stage and its dependents rerun, and going back
/// to the file's value finds the earlier result cached.
#[test]
fn set_override_reruns_and_reverting_is_cached() {
    let project = Project::new(PIPELINE);
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    runs(&project);
    let plan = project.taper(&["plan", "p.yaml", "-S", "params.width=2"]);
    insta::assert_snapshot!(project.show(&plan), @r"
    exit: 0
    --- stdout
    plan for `demo`: 3 stages, 1 cached, 1 will run, 1 may run
    first   will run  setting `run` changed (echo first >> runs.txt && cut -c1-3 in.txt > first.txt → echo first >> runs.txt && cut -c1-2 in.txt > first.txt)
    second  may run   upstream `first` will run (runs only if its outputs change)
    other   cached
    --- stderr
    ");
    assert!(succeeded(&project.taper(&[
        "run",
        "p.yaml",
        "-S",
        "params.width=2"
    ])));
    assert_eq!(runs(&project), ["first", "second"]);
    assert_eq!(
        fs::read_to_string(project.path("second.txt")).expect("out"),
        "HE\n"
    );
    let back = project.taper(&["run", "p.yaml"]);
    assert!(succeeded(&back));
    assert_eq!(
        runs(&project),
        Vec::<String>::new(),
        "{}",
        project.show(&back)
    );
    assert_eq!(
        fs::read_to_string(project.path("second.txt")).expect("out"),
        "HEL\n"
    );
}

/// A stage that reruns but produces identical output leaves its dependents cached.
#[test]
fn early_cutoff_keeps_dependents_cached() {
    let project = Project::new(PIPELINE);
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    runs(&project);
    // Same first three characters: `first` reruns, its output is unchanged.
    fs::write(project.path("in.txt"), "help\n").expect("edit input");
    let run = project.taper(&["run", "p.yaml", "-j", "1"]);
    assert!(succeeded(&run));
    assert_eq!(runs(&project), ["first"]);
    insta::assert_snapshot!(project.show(&run), @r"
    exit: 0
    --- stdout
    --- stderr
    running  first: input `in.txt` changed
    done     first in [TIME] (outputs unchanged: dependents stay cached)
    cached   second
    cached   other
    3 stages: 1 ran, 2 cached
    ");
}

/// A failing stage stops its dependents, independent stages finish, the exit code is 1 and
/// the error names the log; fixing it resumes from the last good stage.
#[test]
fn a_failure_stops_dependents_and_a_rerun_resumes() {
    let project =
        Project::new(&PIPELINE.replace("cut -c1-", "echo broken >&2 && exit 4 && cut -c1-"));
    let run = project.taper(&["run", "p.yaml", "-j", "1"]);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(runs(&project), ["first", "other"]);
    let shown = project.show(&run);
    assert!(
        shown.contains("skipped  second: upstream `first` failed"),
        "{shown}"
    );
    assert!(
        shown.contains("taper::stages::command::exit_status"),
        "{shown}"
    );
    assert!(shown.contains("(log: `./out/p/first.log`)"), "{shown}");
    let log = fs::read_to_string(project.path("out/p/first.log")).expect("log");
    assert!(log.contains("broken"), "{log}");

    fs::write(project.path("p.yaml"), PIPELINE).expect("fix");
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    assert_eq!(runs(&project), ["first", "second"]);
}

/// A missing dep is reported before anything runs, naming the stage and the path.
#[test]
fn a_missing_dep_is_a_clear_error() {
    let project = Project::new(PIPELINE);
    fs::remove_file(project.path("in.txt")).expect("remove");
    let plan = project.taper(&["plan", "p.yaml"]);
    assert_eq!(plan.status.code(), Some(1));
    let shown = project.show(&plan);
    assert!(
        shown.contains("first   error     dependency `in.txt` of stage `first` does not exist"),
        "{shown}"
    );
    assert!(shown.contains("taper::exec::missing_dependency"), "{shown}");
}

/// `taper cache verify` detects a corrupted blob and quarantines it; the next run recomputes.
#[test]
fn verify_detects_a_corrupted_blob() {
    let project = Project::new(PIPELINE);
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    runs(&project);
    let blob = blob_with_content(&project.path("cache/blobs-v1"), "HEL\n").expect("blob");
    let mut permissions = fs::metadata(&blob).expect("blob").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    fs::set_permissions(&blob, permissions).expect("chmod");
    fs::write(&blob, "EVIL\n").expect("corrupt");

    let verify = project.taper(&["cache", "verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", project.show(&verify));
    let shown = project.show(&verify);
    assert!(shown.contains("corrupt  blob"), "{shown}");
    assert!(shown.contains("its stage will rerun"), "{shown}");
    let plan = project.taper(&["plan", "p.yaml"]);
    assert!(
        project
            .show(&plan)
            .contains("second  will run  output missing from the store"),
        "{}",
        project.show(&plan)
    );
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    assert_eq!(runs(&project), ["second"]);
    assert!(succeeded(&project.taper(&["cache", "verify"])));
}

fn blob_with_content(dir: &Path, content: &str) -> Option<PathBuf> {
    for shard in fs::read_dir(dir).ok()?.flatten() {
        for blob in fs::read_dir(shard.path()).ok()?.flatten() {
            if fs::read_to_string(blob.path()).ok().as_deref() == Some(content) {
                return Some(blob.path());
            }
        }
    }
    None
}

/// Two `taper run`s on one store at once: each stage key runs once, the store stays
/// consistent, and both runs succeed.
#[test]
fn concurrent_runs_run_each_key_once() {
    let project = Project::new(&PIPELINE.replace("echo first >>", "sleep 1 && echo first >>"));
    let children: Vec<_> = (0..2)
        .map(|_| {
            project
                .command(&["run", "p.yaml"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn taper")
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().expect("wait"))
        .collect();
    for output in &outputs {
        assert!(succeeded(output), "{}", project.show(output));
    }
    assert_eq!(runs(&project), ["first", "other", "second"]);
    let waited = outputs
        .iter()
        .any(|output| String::from_utf8_lossy(&output.stderr).contains("waiting  first"));
    assert!(waited, "neither run reported waiting for the other");
    assert!(succeeded(&project.taper(&["cache", "verify"])));
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    assert_eq!(runs(&project), Vec::<String>::new());
}

/// `kill -9` during a stage leaves no action record, lock entry or blob for it; the next run
/// runs it from scratch and the store verifies clean.
#[test]
fn a_killed_run_leaves_no_partial_entry() {
    let project = Project::new(&PIPELINE.replace(
        "echo second >> runs.txt &&",
        "echo second >> runs.txt && touch started && sleep 10 &&",
    ));
    let mut child = project
        .command(&["run", "p.yaml", "-j", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn taper");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !project.path("started").exists() {
        assert!(Instant::now() < deadline, "stage `second` never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let lock = fs::read_to_string(project.path("p.lock")).expect("lock of finished stages");
    assert!(
        lock.contains("first:") && !lock.contains("second:"),
        "{lock}"
    );
    let listing = String::from_utf8_lossy(&project.taper(&["cache", "ls"]).stdout).into_owned();
    assert!(!listing.contains("second"), "{listing}");
    assert!(succeeded(&project.taper(&["cache", "verify"])));

    fs::write(project.path("p.yaml"), PIPELINE).expect("make it quick");
    runs(&project);
    let rerun = project.taper(&["run", "p.yaml"]);
    assert!(succeeded(&rerun), "{}", project.show(&rerun));
    // `other` had not started yet (`-j 1`); `first` finished before the kill and stays cached.
    assert_eq!(runs(&project), ["other", "second"]);
}

/// `cache gc` keeps what the lock file reaches and removes results nothing refers to
/// (recorded experiments are roots too: `--ignore-experiments` sets them aside here; see
/// `exp_cli.rs` for them).
#[test]
fn gc_keeps_locked_results() {
    let project = Project::new(PIPELINE);
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    assert!(succeeded(&project.taper(&[
        "run",
        "p.yaml",
        "-S",
        "params.width=2"
    ])));
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    let gc = project.taper(&["cache", "gc", "--keep-runs", "0", "--ignore-experiments"]);
    assert!(succeeded(&gc), "{}", project.show(&gc));
    assert!(
        project.show(&gc).contains("removed"),
        "{}",
        project.show(&gc)
    );
    runs(&project);
    assert!(succeeded(&project.taper(&["run", "p.yaml"])));
    assert_eq!(runs(&project), Vec::<String>::new());
    assert!(succeeded(&project.taper(&[
        "run",
        "p.yaml",
        "-S",
        "params.width=2"
    ])));
    assert_eq!(runs(&project), ["first", "second"]);
}
