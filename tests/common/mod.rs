//! What the end-to-end CLI tests share: a project in a temp dir, the real `taper` binary run
//! in it (killed, and the test failed, if it hangs), and its output shown with the temp path
//! and durations masked for snapshots.
//!
//! Two layouts: [`Project::new`]/[`Project::empty`] make the temp dir itself the project;
//! [`Project::beside_outside`] makes `<temp>/project/` the project with `<temp>/outside/`
//! beside it, holding a `secret.txt` that no run may read into an output, change or delete.

// Each test binary compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one `taper` call may take before the test calls it hung. Generous: a hang is a
/// bug to report, not a slowness to measure.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Project {
    temp: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    /// A project holding `pipeline` as `p.yaml` and `hello\n` as `in.txt`.
    pub fn new(pipeline: &str) -> Project {
        let project = Project::empty();
        project.write("p.yaml", pipeline);
        project.write("in.txt", "hello\n");
        project
    }

    /// An empty project: the temp dir itself.
    pub fn empty() -> Project {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = temp.path().to_path_buf();
        Project { temp, root }
    }

    /// An empty project in `<temp>/project/`, with `<temp>/outside/secret.txt` beside it.
    pub fn beside_outside() -> Project {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = temp.path().join("project");
        fs::create_dir_all(&root).expect("project dir");
        fs::create_dir_all(temp.path().join("outside")).expect("outside dir");
        fs::write(temp.path().join("outside/secret.txt"), "secret\n").expect("write secret");
        Project { temp, root }
    }

    /// The temp dir holding everything (the project itself, or `project/` and `outside/`).
    pub fn temp(&self) -> &Path {
        self.temp.path()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path in the project (`""` is the project itself).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A path under `outside/` (see [`Project::beside_outside`]).
    pub fn outside(&self, name: &str) -> PathBuf {
        self.temp.path().join("outside").join(name)
    }

    /// Writes `text` to `name` in the project, making its directories.
    pub fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_else(|error| panic!("read {name}: {error}"))
    }

    /// `taper ARGS` in the project, without colour or the caller's store, jobs and log
    /// settings, stdin closed.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_taper"));
        command
            .args(args)
            .current_dir(&self.root)
            .env("NO_COLOR", "1")
            .env_remove("TAPER_STORE")
            .env_remove("TAPER_JOBS")
            .env_remove("TAPER_REMOTE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs `taper ARGS` to completion; see [`finish`].
    pub fn taper(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("taper starts");
        finish(child)
    }

    /// Exit code, stdout and stderr, with the project shown as `[ROOT]`, the temp dir around
    /// it as `[TEMP]` and durations as `[TIME]`.
    pub fn show(&self, output: &Output) -> String {
        let text = format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let root = self.root.display().to_string();
        let temp = self.temp.path().display().to_string();
        mask(&text.replace(&root, "[ROOT]").replace(&temp, "[TEMP]"))
    }
}

/// Waits for `child` (stdout and stderr piped) and returns its output; kills it and fails the
/// test if it outlives [`WAIT`], so a hang (on a FIFO, a lock) fails one test, not the suite.
/// The pipes are drained while waiting: a child that writes more than a pipe holds would
/// otherwise block and be taken for hung.
pub fn finish(mut child: Child) -> Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    );
    let status = wait_bounded(&mut child);
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Waits for `child`; kills it and fails the test if it outlives [`WAIT`].
pub fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("poll taper") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("taper did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Replaces durations (`0.03s`, `1.5s)`) with `[TIME]`.
pub fn mask(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<String> = line
            .split(' ')
            .map(|word| {
                let trimmed = word.trim_end_matches(['s', ')', ',']);
                if trimmed.parse::<f64>().is_ok() && word.contains('.') && word.contains('s') {
                    "[TIME]".to_owned()
                } else {
                    word.to_owned()
                }
            })
            .collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

/// Stages the commands ran since the last call: the test pipelines' commands append their
/// stage's name to `runs.txt`, which this reads (sorted) and removes.
pub fn runs(project: &Project) -> Vec<String> {
    let text = fs::read_to_string(project.path("runs.txt")).unwrap_or_default();
    let _ = fs::remove_file(project.path("runs.txt"));
    let mut runs: Vec<String> = text.lines().map(str::to_owned).collect();
    runs.sort();
    runs
}

/// A run's stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
