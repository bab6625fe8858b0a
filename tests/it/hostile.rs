//! The hostile-input corpus: every directory under `tests/fixtures/hostile/` is a small project
//! a careless or malicious user could hand to taper (malformed sizes and encodings, paths that
//! try to leave the project, symlinks, FIFOs, expansion bombs, bad gates and splits…), with a
//! `case.yaml` that says what to run and which exit code each step must give.
//!
//! For each case the harness copies the project (without `case.yaml`) to `<tmp>/project/`, puts
//! `<tmp>/outside/secret.txt` beside it, runs the optional `setup:` shell script in the project,
//! then runs every step of `steps:` (the real `taper` binary, cwd = the project, `NO_COLOR=1`,
//! `TAPER_JOBS=1`, no `TAPER_STORE`), and asserts:
//! - no step outlives its timeout (a hang is a failure: the step's process group is killed);
//! - no step panics (exit 101 or "panicked at" on stderr);
//! - every exit code is the declared one;
//! - nothing under `<tmp>/outside/` changed (no write, delete or chmod escapes the project);
//! - the steps' exit codes, stdout and stderr match the case's insta snapshot
//!   (`tests/it/snapshots/it__hostile__<case>.snap`), with the temp path shown as `[TMP]`.
//!
//! All cases run and every failing one is named before the test fails, so one regression does
//! not hide the others. Accept new or changed snapshots with `INSTA_UPDATE=always` (or
//! `cargo insta accept`), then read them: a snapshot is only as good as what it says.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

const CORPUS: &str = "tests/fixtures/hostile";

/// A step's output lines kept in a snapshot: the head and the tail, so a 10,000-error report
/// stays readable while its cap line and its last lines are still checked.
const KEPT_LINES: usize = 60;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// One sentence: the hostile input, and what taper must do.
    about: String,
    /// Shell script run (`sh -e`) in the project copy before the steps.
    #[serde(default)]
    setup: Option<String>,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    args: Vec<String>,
    exit: i32,
    #[serde(default = "default_timeout")]
    timeout_s: u64,
    /// Extra environment variables for this step.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

fn default_timeout() -> u64 {
    30
}

/// What a step did.
struct Outcome {
    code: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

/// Copies a case directory (`top`: without its `case.yaml`), keeping symlinks as links.
fn copy_project(from: &Path, to: &Path, top: bool) {
    fs::create_dir_all(to).expect("create the project copy");
    for entry in fs::read_dir(from).expect("read a case directory") {
        let entry = entry.expect("case entry");
        let name = entry.file_name();
        if top && name == "case.yaml" {
            continue;
        }
        let source = entry.path();
        let target = to.join(&name);
        let kind = fs::symlink_metadata(&source).expect("stat").file_type();
        if kind.is_symlink() {
            let link = fs::read_link(&source).expect("read link");
            std::os::unix::fs::symlink(link, &target).expect("copy link");
        } else if kind.is_dir() {
            copy_project(&source, &target, false);
        } else {
            fs::copy(&source, &target).expect("copy file");
        }
    }
}

/// Every entry under `dir` with its type, mode and content (or link target), to tell whether a
/// step changed anything there.
fn inventory(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = metadata.file_type();
        let mode = metadata.permissions().mode() & 0o7777;
        let description = if kind.is_symlink() {
            format!("link {mode:o} -> {:?}", fs::read_link(&path).ok())
        } else if kind.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                pending.extend(entries.filter_map(Result::ok).map(|entry| entry.path()));
            }
            format!("dir {mode:o}")
        } else if kind.is_file() {
            let bytes = fs::read(&path).unwrap_or_default();
            format!("file {mode:o} {}", blake3::hash(&bytes).to_hex())
        } else if kind.is_fifo() {
            format!("fifo {mode:o}")
        } else {
            format!("special {mode:o}")
        };
        found.insert(
            path.strip_prefix(dir).unwrap_or(&path).to_path_buf(),
            description,
        );
    }
    found
}

fn read_all(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `command` in its own process group; past `timeout` the whole group is killed, so a
/// hung stage's shell goes too.
fn run_bounded(mut command: Command, timeout: Duration) -> Outcome {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().expect("the taper binary starts");
    let stdout = read_all(child.stdout.take().expect("piped stdout"));
    let stderr = read_all(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for taper") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // The whole group (`kill -KILL -PGID`); without a `kill` program, taper alone.
            let group_killed = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status()
                .is_ok_and(|status| status.success());
            if !group_killed {
                let _ = child.kill();
            }
            break child.wait().expect("wait for the killed taper");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A stage's process that escaped the group would keep the pipes open forever; the group
    // kill above covers the ones taper started.
    Outcome {
        code: status.code(),
        timed_out,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Keeps the first and last lines of a long output.
fn abridge(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 2 * KEPT_LINES {
        return text.to_owned();
    }
    format!(
        "{}\n[... {} lines ...]\n{}\n",
        lines[..KEPT_LINES].join("\n"),
        lines.len() - 2 * KEPT_LINES,
        lines[lines.len() - KEPT_LINES..].join("\n")
    )
}

/// Runs one case; `Err` lists what went wrong besides the snapshot.
fn run_case(name: &str, dir: &Path) -> Result<String, Vec<String>> {
    let text = fs::read_to_string(dir.join("case.yaml")).expect("case.yaml");
    let case: Case = serde_yaml::from_str(&text)
        .unwrap_or_else(|error| panic!("{name}/case.yaml is malformed: {error}"));
    let temp = tempfile::tempdir().expect("temp dir");
    let root = fs::canonicalize(temp.path()).expect("canonical temp dir");
    let project = root.join("project");
    let outside = root.join("outside");
    copy_project(dir, &project, true);
    fs::create_dir_all(&outside).expect("create outside/");
    fs::write(outside.join("secret.txt"), "secret\n").expect("write outside/secret.txt");
    fs::create_dir_all(root.join("home")).expect("create home/");
    if let Some(setup) = &case.setup {
        let status = Command::new("sh")
            .arg("-ec")
            .arg(setup)
            .current_dir(&project)
            .status()
            .expect("sh runs");
        assert!(status.success(), "{name}: setup failed ({status})");
    }
    let before = inventory(&outside);

    let mut problems = Vec::new();
    let mut report = format!("about: {}\n", case.about.trim());
    for step in &case.steps {
        let mut command = Command::new(env!("CARGO_BIN_EXE_taper"));
        command
            .args(&step.args)
            .current_dir(&project)
            .env("NO_COLOR", "1")
            .env("HOME", root.join("home"))
            .env("COLUMNS", "100")
            // One stage at a time: independent stages finishing in either order would make
            // the progress lines, and so the snapshot, differ from run to run.
            .env("TAPER_JOBS", "1")
            .env_remove("TAPER_STORE")
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .envs(&step.env);
        let outcome = run_bounded(command, Duration::from_secs(step.timeout_s));
        let shown = step.args.join(" ");
        if outcome.timed_out {
            problems.push(format!("`taper {shown}` ran past {} s", step.timeout_s));
        }
        if outcome.code == Some(101) || outcome.stderr.contains("panicked at") {
            problems.push(format!("`taper {shown}` panicked:\n{}", outcome.stderr));
        }
        if !outcome.timed_out && outcome.code != Some(step.exit) {
            problems.push(format!(
                "`taper {shown}` exited with {:?}, expected {}\n{}",
                outcome.code, step.exit, outcome.stderr
            ));
        }
        let code = if outcome.timed_out {
            "timed out".to_owned()
        } else {
            outcome
                .code
                .map_or_else(|| "killed by a signal".to_owned(), |code| code.to_string())
        };
        report.push_str(&format!(
            "\n$ taper {shown}\nexit: {code}\n--- stdout\n{}--- stderr\n{}",
            abridge(&outcome.stdout),
            abridge(&outcome.stderr)
        ));
    }
    let after = inventory(&outside);
    if before != after {
        problems.push(format!(
            "`outside/` changed:\nbefore {before:#?}\nafter {after:#?}"
        ));
    }
    let root_text = root.display().to_string();
    let report = report.replace(&root_text, "[TMP]");
    let temp_text = temp.path().display().to_string();
    let report = report.replace(&temp_text, "[TMP]");
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems)
    }
}

fn cases() -> Vec<(String, PathBuf)> {
    let mut cases: Vec<(String, PathBuf)> = fs::read_dir(CORPUS)
        .expect("the hostile corpus directory exists")
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.join("case.yaml").is_file())
        .map(|path| {
            let name = path
                .file_name()
                .expect("a case directory has a name")
                .to_string_lossy()
                .into_owned();
            (name, path)
        })
        .collect();
    cases.sort();
    cases
}

/// Every hostile case: no panic, no hang, the declared exit codes, nothing outside the project
/// touched, and output as snapshotted. `HOSTILE=name-prefix` runs only matching cases.
#[test]
fn hostile_corpus() {
    let only = std::env::var("HOSTILE").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (name, dir) in cases() {
        if only
            .as_deref()
            .is_some_and(|prefix| !name.starts_with(prefix))
        {
            continue;
        }
        ran += 1;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let report = run_case(&name, &dir);
            let mut settings = insta::Settings::clone_current();
            // Durations and digests differ from run to run and machine to machine.
            settings.add_filter(r"\b[0-9a-f]{64}\b", "[DIGEST]");
            settings.add_filter(r"\b\d+(\.\d+)?\s?(ms|s)\b", "[TIME]");
            match report {
                Ok(report) => {
                    settings.bind(|| insta::assert_snapshot!(name.as_str(), report));
                    Ok(())
                }
                Err(problems) => Err(problems),
            }
        }));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(problems)) => failures.push(format!("{name}:\n  {}", problems.join("\n  "))),
            Err(_) => failures.push(format!(
                "{name}: snapshot mismatch or harness panic (above)"
            )),
        }
    }
    assert!(ran > 0 || only.is_some(), "the corpus is empty");
    assert!(
        failures.is_empty(),
        "{} of {ran} hostile cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
