//! End-to-end tests of what `taper run` may write and delete (issue 9): nothing outside the
//! project, nothing through a symlink, no FIFO opened, no edited output clobbered without
//! `--force`, one output root per pipeline file. Each test builds `<tmp>/project/` with an
//! `<tmp>/outside/` beside it and runs the real binary there.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{stderr, Project};

/// `<tmp>/project/` holding `files`, beside `<tmp>/outside/` (which holds `secret.txt`).
fn new_project(files: &[(&str, &str)]) -> Project {
    let project = Project::beside_outside();
    for (name, text) in files {
        project.write(name, text);
    }
    project
}

fn mkfifo(project: &Project, name: &str) {
    let status = Command::new("mkfifo")
        .arg(project.path(name))
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {name}");
}

/// The names in `outside/`: only `secret.txt` unless a run wrote there.
fn outside_names(project: &Project) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(project.outside(""))
        .expect("list outside/")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Exit code 1 and a message that contains every one of `needles` (compared with whitespace
/// collapsed: diagnostics wrap long lines).
fn refused(output: &Output, needles: &[&str]) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in needles {
        assert!(flat.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

fn succeeded(output: &Output) {
    assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
}

const ONE_OUT: &str = "version: 1
name: demo
params: { word: one }
stages:
  make:
    kind: command
    run: echo ${params.word} > a.txt
    outs: [a.txt]
";

#[test]
fn an_out_behind_a_symlinked_directory_is_neither_deleted_nor_written() {
    let project = new_project(&[(
        "p.yaml",
        "version: 1
name: demo
stages:
  make:
    kind: command
    run: echo new > shared/x.txt
    outs: [shared/x.txt]
",
    )]);
    fs::write(project.outside("x.txt"), "keep\n").expect("write");
    symlink("../outside", project.path("shared")).expect("symlink");
    let output = project.taper(&["run", "p.yaml"]);
    refused(&output, &["`./shared`", "symbolic link", "symlink_in_path"]);
    assert_eq!(
        fs::read_to_string(project.outside("x.txt")).expect("x"),
        "keep\n"
    );
}

#[test]
fn a_restore_never_writes_through_a_symlinked_directory() {
    let project = new_project(&[(
        "p.yaml",
        "version: 1
name: demo
stages:
  make:
    kind: command
    run: mkdir -p shared && echo new > shared/x.txt
    outs: [shared/x.txt]
",
    )]);
    succeeded(&project.taper(&["run", "p.yaml"]));
    fs::remove_dir_all(project.path("shared")).expect("remove");
    symlink("../outside", project.path("shared")).expect("symlink");
    let output = project.taper(&["run", "p.yaml"]);
    refused(&output, &["`./shared`", "symbolic link"]);
    assert!(
        outside_names(&project) == ["secret.txt"],
        "a restore wrote into outside/"
    );
}

#[test]
fn an_output_directory_behind_a_symlinked_out_is_refused() {
    let project = new_project(&[(
        "p.yaml",
        "version: 1
name: demo
stages:
  hparams:
    kind: configure
    with: { learning_rate: 0.001, epochs: 1, batch_size: 4, method: { name: full } }
",
    )]);
    symlink("../outside", project.path("out")).expect("symlink");
    let output = project.taper(&["run", "p.yaml"]);
    refused(&output, &["`./out`", "symbolic link"]);
    assert!(
        outside_names(&project) == ["secret.txt"],
        "taper wrote into outside/"
    );
}

#[test]
fn an_out_that_is_a_symlink_is_removed_as_a_link_only_when_forced() {
    let project = new_project(&[("p.yaml", ONE_OUT)]);
    symlink("../outside/secret.txt", project.path("a.txt")).expect("symlink");
    let output = project.taper(&["run", "p.yaml"]);
    refused(&output, &["`./a.txt`", "symbolic link", "--force make"]);
    succeeded(&project.taper(&["run", "p.yaml", "--force", "make"]));
    assert_eq!(project.read("a.txt"), "one\n");
    let link = fs::symlink_metadata(project.path("a.txt")).expect("a.txt");
    assert!(link.is_file(), "a.txt is a regular file now");
    assert_eq!(
        fs::read_to_string(project.outside("secret.txt")).expect("secret"),
        "secret\n"
    );
}

#[test]
fn an_out_the_command_makes_a_fifo_is_refused_without_hanging() {
    let project = new_project(&[(
        "p.yaml",
        "version: 1
name: demo
stages:
  make:
    kind: command
    run: mkdir -p d && echo a > d/a.txt && mkfifo d/pipe
    outs: [d]
",
    )]);
    let output = project.taper(&["run", "p.yaml"]);
    refused(&output, &["d/pipe", "FIFO", "special_file"]);
}

#[test]
fn an_existing_fifo_out_is_refused_before_the_command_runs() {
    let project = new_project(&[("p.yaml", ONE_OUT)]);
    mkfifo(&project, "a.txt");
    let output = project.taper(&["run", "p.yaml"]);
    refused(&output, &["`./a.txt`", "FIFO"]);
}

#[test]
fn a_fifo_lock_file_is_refused_without_hanging() {
    let project = new_project(&[("p.yaml", ONE_OUT)]);
    mkfifo(&project, "p.lock");
    refused(&project.taper(&["run", "p.yaml"]), &["p.lock", "FIFO"]);
    refused(&project.taper(&["plan", "p.yaml"]), &["p.lock", "FIFO"]);
    let kept = fs::symlink_metadata(project.path("p.lock")).expect("p.lock");
    assert!(!kept.is_file(), "the FIFO was replaced");
}

#[test]
fn an_edited_output_is_refused_until_forced_and_an_unedited_one_is_restored() {
    let project = new_project(&[("p.yaml", ONE_OUT)]);
    succeeded(&project.taper(&["run", "p.yaml"]));
    // A normal switch back and forth: the workspace holds the last run's output.
    succeeded(&project.taper(&["run", "p.yaml", "-S", "params.word=two"]));
    assert_eq!(project.read("a.txt"), "two\n");
    succeeded(&project.taper(&["run", "p.yaml"]));
    assert_eq!(project.read("a.txt"), "one\n");

    project.write("a.txt", "mine\n");
    // Neither a restore from the store (`two` is cached) nor a rerun (`three`) may clobber it.
    for word in ["params.word=two", "params.word=three"] {
        let output = project.taper(&["run", "p.yaml", "-S", word]);
        refused(
            &output,
            &[
                "`./a.txt` was changed outside taper",
                "taper run --force make",
                "modified_output",
            ],
        );
        assert_eq!(project.read("a.txt"), "mine\n");
    }
    succeeded(&project.taper(&["run", "p.yaml", "-S", "params.word=two", "--force", "make"]));
    assert_eq!(project.read("a.txt"), "two\n");
}

#[test]
fn an_untracked_file_in_an_output_directory_is_kept() {
    let project = new_project(&[(
        "p.yaml",
        "version: 1
name: demo
params: { word: one }
stages:
  make:
    kind: command
    run: mkdir -p d && echo ${params.word} > d/a.txt
    outs: [d]
  hparams:
    kind: configure
    with: { learning_rate: 0.001, epochs: 1, batch_size: 4, method: { name: full } }
",
    )]);
    succeeded(&project.taper(&["run", "p.yaml"]));
    project.write("d/notes.txt", "mine\n");
    project.write("out/p/hparams/notes.txt", "mine too\n");
    let output = project.taper(&["run", "p.yaml", "-S", "params.word=two"]);
    refused(&output, &["`./d/notes.txt` was added outside taper"]);
    assert_eq!(project.read("d/notes.txt"), "mine\n");
    let output = project.taper(&["run", "p.yaml", "-S", "hparams.epochs=2"]);
    refused(
        &output,
        &["out/p/hparams/notes.txt` was added outside taper"],
    );
    assert_eq!(project.read("out/p/hparams/notes.txt"), "mine too\n");
}

/// Every file under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in fs::read_dir(&next).expect("list").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("under dir");
                files.push(relative.display().to_string());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_default_store_is_never_an_out() {
    let first = "version: 1
name: demo
stages:
  first:
    kind: command
    run: echo a > a.txt
    outs: [a.txt]
";
    let project = new_project(&[("p.yaml", first)]);
    succeeded(&project.taper(&["run", "p.yaml"]));
    let before = listing(&project.path("cache"));
    assert!(
        before.iter().any(|file| file.starts_with("blobs-v1")),
        "{before:?}"
    );
    project.write(
        "p.yaml",
        &format!("{first}  wipe:\n    kind: command\n    run: echo x > x\n    outs: [cache]\n"),
    );
    let output = project.taper(&["run", "p.yaml"]);
    refused(&output, &["cache"]);
    let after = listing(&project.path("cache"));
    let lost: Vec<&String> = before.iter().filter(|file| !after.contains(file)).collect();
    assert!(lost.is_empty(), "the store lost {lost:?}");
}

const HPARAMS: &str = "version: 1
name: NAME
stages:
  hparams:
    kind: configure
    with: { learning_rate: LR, epochs: 1, batch_size: 4, method: { name: full } }
";

#[test]
fn two_pipelines_in_one_folder_keep_their_own_outputs() {
    let project = new_project(&[
        (
            "a.yaml",
            &HPARAMS.replace("NAME", "a").replace("LR", "0.001"),
        ),
        (
            "b.yaml",
            &HPARAMS.replace("NAME", "b").replace("LR", "0.002"),
        ),
    ]);
    succeeded(&project.taper(&["run", "a.yaml"]));
    succeeded(&project.taper(&["run", "b.yaml"]));
    let a = project.read("out/a/hparams/config.json");
    let b = project.read("out/b/hparams/config.json");
    assert_ne!(a, b);
    assert!(project.path("out/a/hparams.log").is_file());
    assert!(project.path("out/b/hparams.log").is_file());
    assert!(!project.path("out/hparams").exists());
    // Running `a` again restores nothing: its outputs were never overwritten by `b`.
    let again = project.taper(&["run", "a.yaml"]);
    succeeded(&again);
    assert!(!stderr(&again).contains("restored"), "{}", stderr(&again));
    assert_eq!(project.read("out/a/hparams/config.json"), a);
}

#[test]
fn a_dep_that_is_a_fifo_does_not_hang() {
    let project = new_project(&[(
        "p.yaml",
        "version: 1
name: demo
stages:
  make:
    kind: command
    run: cat in.txt > a.txt
    deps: [in.txt]
    outs: [a.txt]
",
    )]);
    mkfifo(&project, "in.txt");
    refused(
        &project.taper(&["run", "p.yaml"]),
        &["`./in.txt` is a FIFO"],
    );
    refused(
        &project.taper(&["plan", "p.yaml"]),
        &["`./in.txt` is a FIFO"],
    );
}

#[test]
fn a_failed_command_leaves_no_partial_out_and_the_fixed_rerun_runs() {
    let broken = ONE_OUT.replace("> a.txt", "> a.txt && exit 3");
    let project = new_project(&[("p.yaml", &broken)]);
    refused(&project.taper(&["run", "p.yaml"]), &["exit_status"]);
    assert!(!project.path("a.txt").exists(), "the partial out was kept");
    project.write("p.yaml", ONE_OUT);
    succeeded(&project.taper(&["run", "p.yaml"]));
    assert_eq!(project.read("a.txt"), "one\n");
}
