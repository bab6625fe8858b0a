//! End-to-end tests of what users see of taper's processes (issue 9): secrets passed with
//! `pass_env` that are never written, redacted `env:` values, signals that stop a run without
//! leaving a stage's processes behind, a lock file that cannot be written, warnings on stderr,
//! a failed stage's log tail, `plan`'s "may run", and `-j 0`. Each builds a tiny project in a
//! temp dir and runs the real binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Project;

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|entry| entry.path()));
            }
        } else if metadata.is_file() {
            let bytes = fs::read(&path).unwrap_or_default();
            if bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

const SECRET: &str = "tok-9f8e7d6c5b4a";

/// The command checks it received the token (compared with a file that is not a dep, so the
/// value reaches neither the key nor the store through it) and never prints it.
const PASS_ENV: &str = r#"version: 1
name: passing
stages:
  fetch:
    kind: command
    run: test "$HF_TOKEN" = "$(cat expected)" && echo fetched >> runs.txt && echo ok > fetched.txt
    outs: [fetched.txt]
    pass_env: [HF_TOKEN]
"#;

/// The value of a `pass_env` variable reaches the command, but not the lock file, the store,
/// the log, or `plan`/`run -v` output; a new value reruns nothing; an unset one is an error
/// naming it.
#[test]
fn pass_env_values_reach_the_command_and_nothing_else() {
    let project = Project::new(PASS_ENV);
    fs::write(project.path("expected"), SECRET).expect("write expected");
    let run = project
        .command(&["run", "-v", "p.yaml"])
        .env("HF_TOKEN", SECRET)
        .output()
        .expect("taper runs");
    assert!(run.status.success(), "{}", project.show(&run));
    assert!(
        !project.show(&run).contains(SECRET),
        "{}",
        project.show(&run)
    );
    assert_eq!(
        fs::read_to_string(project.path("runs.txt")).expect("ran"),
        "fetched\n"
    );
    let lock = fs::read_to_string(project.path("p.lock")).expect("lock file");
    assert!(
        lock.contains("pass_env") && lock.contains("HF_TOKEN"),
        "{lock}"
    );
    for place in ["p.lock", "cache", "out"] {
        let leaked = files_containing(&project.path(place), SECRET);
        assert!(leaked.is_empty(), "the value leaked into {leaked:?}");
    }

    // Another value: the key is the same, nothing reruns.
    let plan = project
        .command(&["plan", "p.yaml"])
        .env("HF_TOKEN", "another-value")
        .output()
        .expect("taper runs");
    insta::assert_snapshot!(project.show(&plan), @r"
    exit: 0
    --- stdout
    plan for `passing`: 1 stages, 1 cached, 0 will run
    fetch  cached
    --- stderr
    ");
    let again = project
        .command(&["run", "p.yaml"])
        .env("HF_TOKEN", "another-value")
        .output()
        .expect("taper runs");
    assert!(again.status.success(), "{}", project.show(&again));
    assert_eq!(
        fs::read_to_string(project.path("runs.txt")).expect("ran"),
        "fetched\n"
    );

    // Unset, with the stage forced to run: a clear error before the command starts.
    let unset = project
        .command(&["run", "p.yaml", "--force", "fetch"])
        .env_remove("HF_TOKEN")
        .output()
        .expect("taper runs");
    insta::assert_snapshot!(project.show(&unset));
}

/// A secret-looking `env:` value is shown as `***` by `plan` and `run -v`, other values as
/// they are, and `validate` warns that it is committed, suggesting `pass_env`.
#[test]
fn secret_env_values_are_redacted_and_warned_about() {
    let pipeline = r#"version: 1
name: secrets
stages:
  publish:
    kind: command
    run: echo published > published.txt
    outs: [published.txt]
    env: { API_TOKEN: hunter2-first, MODE: fast }
"#;
    let project = Project::new(pipeline);
    let validate = project.taper(&["validate", "p.yaml"]);
    insta::assert_snapshot!(project.show(&validate));
    assert!(project.taper(&["run", "p.yaml"]).status.success());
    fs::write(
        project.path("p.yaml"),
        pipeline
            .replace("hunter2-first", "hunter2-second")
            .replace("fast", "slow"),
    )
    .expect("edit");
    let plan = project.taper(&["plan", "p.yaml"]);
    insta::assert_snapshot!(project.show(&plan));
    let run = project.taper(&["run", "-v", "p.yaml"]);
    let shown = project.show(&run);
    assert!(run.status.success(), "{shown}");
    assert!(
        shown.contains("`env.API_TOKEN` changed (*** → ***)"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}

/// `pass_env` names are checked where they are written.
#[test]
fn bad_pass_env_names_are_validation_errors() {
    let project = Project::new(
        r#"version: 1
name: bad
stages:
  fetch:
    kind: command
    run: echo ok > ok.txt
    outs: [ok.txt]
    env: { HF_HOME: /tmp/hf }
    pass_env: [1TOKEN, HF_HOME, OK, OK]
"#,
    );
    let validate = project.taper(&["validate", "p.yaml"]);
    insta::assert_snapshot!(project.show(&validate));
}

const SLOW: &str = r#"version: 1
name: slow
stages:
  slow:
    kind: command
    run: cut -d' ' -f5 /proc/$$/stat > group.txt; sleep 30; echo late > late.txt
    outs: [late.txt]
  other:
    kind: command
    run: echo other > other.txt
    outs: [other.txt]
"#;

/// Whether any process of process group `group` still runs (zombies excluded), from `/proc`.
fn group_alive(group: &str) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp …`; comm may contain spaces, so split after the `)`.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == group
    })
}

/// Starts `taper run -j 1` on [`SLOW`] and waits until the slow stage's shell has started;
/// returns taper and the shell's process group (read from `/proc`: the group's leader is
/// taper's guard process, not the shell).
// The child is returned to the caller, which signals and reaps it; the lint sees only this body.
#[allow(clippy::zombie_processes)]
fn start_slow(project: &Project) -> (Child, String) {
    let mut child = project
        .command(&["run", "p.yaml", "-j", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn taper");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(group) = fs::read_to_string(project.path("group.txt")) {
            if group.ends_with('\n') {
                let group = group.trim().to_owned();
                // Else every later "the group is gone" would hold for a wrong id.
                assert!(
                    group_alive(&group),
                    "group {group} of the stage has no process"
                );
                return (child, group);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stage `slow` never started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most 20 s) until no process of `group` is left.
fn wait_gone(group: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while group_alive(group) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// SIGTERM, SIGINT and SIGHUP stop the stage's shell *and* its `sleep`, start nothing new,
/// record nothing of the interrupted stage, and exit with 128 + signal.
#[test]
fn signals_stop_the_whole_stage_and_exit_128_plus_signal() {
    for (signal, number) in [("TERM", 15), ("INT", 2), ("HUP", 1)] {
        let project = Project::new(SLOW);
        let (child, group) = start_slow(&project);
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let output = child.wait_with_output().expect("taper exits");
        let shown = project.show(&output);
        assert_eq!(output.status.code(), Some(128 + number), "{shown}");
        assert!(
            wait_gone(&group),
            "SIG{signal}: the stage's processes survived"
        );
        assert!(!project.path("late.txt").exists(), "SIG{signal}");
        assert!(
            !project.path("other.txt").exists(),
            "SIG{signal}: a new stage started"
        );
        let lock = fs::read_to_string(project.path("p.lock")).unwrap_or_default();
        assert!(!lock.contains("slow:"), "SIG{signal}: {lock}");
        if signal == "TERM" {
            insta::assert_snapshot!(shown);
        }
    }
}

/// `kill -9` of taper: its handler cannot run, yet the stage's shell and `sleep` die with it.
#[test]
fn kill_9_of_taper_leaves_no_stage_process() {
    let project = Project::new(SLOW);
    let (mut child, group) = start_slow(&project);
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(
        wait_gone(&group),
        "the stage's processes survived `kill -9`"
    );
    assert!(!project.path("late.txt").exists());
}

/// A lock file that cannot be written (here a directory) fails the run (exit 1) naming it,
/// before any stage runs; once it is fixed the run succeeds and writes it.
#[test]
fn an_unwritable_lock_file_fails_the_run_and_loses_nothing() {
    let project = Project::new(SLOW.replace("sleep 30; ", "").as_str());
    fs::create_dir(project.path("p.lock")).expect("mkdir p.lock");
    let run = project.taper(&["run", "p.yaml", "-j", "1"]);
    insta::assert_snapshot!(project.show(&run));
    assert!(!project.path("late.txt").exists(), "a stage ran");
    fs::remove_dir(project.path("p.lock")).expect("rmdir");
    let fixed = project.taper(&["run", "p.yaml", "-j", "1"]);
    insta::assert_snapshot!(project.show(&fixed));
    assert!(project.path("p.lock").is_file());
}

/// Warnings reach stderr (no subscriber was installed before); `-q` hides them.
#[test]
fn warnings_are_shown_unless_quiet() {
    let project = Project::new(SLOW.replace("sleep 30; ", "").as_str());
    fs::write(project.path("p.lock"), "version: [\n").expect("garbage lock");
    let run = project.taper(&["run", "p.yaml"]);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("ignoring unreadable `p.lock`"),
        "{stderr}"
    );
    fs::write(project.path("p.lock"), "version: [\n").expect("garbage lock");
    let quiet = project.taper(&["run", "-q", "p.yaml"]);
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
}

/// A failed stage's report ends with the last 20 lines of its log.
#[test]
fn a_failed_stage_shows_the_end_of_its_log() {
    let project = Project::new(
        r#"version: 1
name: noisy
stages:
  noisy:
    kind: command
    run: exec 2>&1; for i in $(seq 1 30); do echo "line $i"; done; echo "the cause" >&2; exit 3
    outs: [never.txt]
"#,
    );
    let run = project.taper(&["run", "p.yaml"]);
    insta::assert_snapshot!(project.show(&run));
}

/// A stage whose key waits for an upstream stage that will run "may run": early cutoff skips
/// it when the upstream output comes out the same.
#[test]
fn plan_says_may_run_when_it_depends_on_upstream_output() {
    let project = Project::new(
        r#"version: 1
name: cutoff
stages:
  first:
    kind: command
    run: cut -c1-3 in.txt > first.txt
    deps: [in.txt]
    outs: [first.txt]
  second:
    kind: command
    run: tr a-z A-Z < first.txt > second.txt
    deps: [first.txt]
    outs: [second.txt]
"#,
    );
    assert!(project.taper(&["run", "p.yaml"]).status.success());
    fs::write(project.path("in.txt"), "help\n").expect("edit input");
    let plan = project.taper(&["plan", "p.yaml"]);
    insta::assert_snapshot!(project.show(&plan));
    let run = project.taper(&["run", "p.yaml"]);
    assert!(
        project.show(&run).contains("cached   second"),
        "{}",
        project.show(&run)
    );
}

/// `-j 0` is a usage error.
#[test]
fn zero_jobs_is_a_usage_error() {
    let project = Project::new(SLOW);
    let run = project.taper(&["run", "p.yaml", "-j", "0"]);
    insta::assert_snapshot!(project.show(&run));
    assert!(!project.path("group.txt").exists());
}
