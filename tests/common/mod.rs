//! What the end-to-end CLI tests share: a tiny project in a temp dir (`p.yaml` plus an
//! `in.txt`), the real `taper` binary run in it, and its output shown with the temp path and
//! durations masked for snapshots.

// Each test binary compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A project holding `pipeline` as `p.yaml` and `hello\n` as `in.txt`.
    pub fn new(pipeline: &str) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("p.yaml"), pipeline).expect("write pipeline");
        fs::write(dir.path().join("in.txt"), "hello\n").expect("write input");
        Project { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `taper ARGS` in the project, without colour or the caller's store and log settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_taper"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("TAPER_STORE")
            .env_remove("TAPER_JOBS")
            .env_remove("RUST_LOG");
        command
    }

    pub fn taper(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("taper runs")
    }

    /// Exit code, stdout and stderr, with the temp dir shown as `[ROOT]` and durations as
    /// `[TIME]`.
    pub fn show(&self, output: &Output) -> String {
        let text = format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let root = self.dir.path().display().to_string();
        mask(&text.replace(&root, "[ROOT]"))
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
