//! The `taper` binary: exit codes, where output goes, and DAG renderings of the examples.

use std::process::Command;

fn taper(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_taper"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every example pipeline validates, with exit code 0 and a status line per file on stderr.
#[test]
fn examples_validate() {
    let examples: Vec<String> = std::fs::read_dir("pipelines")
        .expect("pipelines/")
        .map(|entry| entry.expect("entry").path().display().to_string())
        .filter(|path| path.ends_with(".yaml"))
        .collect();
    assert!(examples.len() >= 3);
    let mut args = vec!["validate"];
    args.extend(examples.iter().map(String::as_str));
    let (code, stdout, stderr) = taper(&args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr
            .lines()
            .filter(|line| line.starts_with("ok "))
            .count(),
        examples.len()
    );
}

/// An invalid file exits 1; a valid one next to it does not hide it.
#[test]
fn invalid_file_exits_1() {
    let (code, stdout, stderr) = taper(&[
        "validate",
        "pipelines/quickstart.yaml",
        "tests/fixtures/errors/wrong-type.yaml",
    ]);
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert!(stderr.contains("wrong-type.yaml:7:15"), "{stderr}");
}

/// Usage errors exit 2: a missing file, no file, a malformed override, an unknown format.
#[test]
fn usage_errors_exit_2() {
    for args in [
        &["validate", "does/not/exist.yaml"][..],
        &["metrics", "does/not/exist.json"][..],
        &["metrics", "does/not/exist.yaml"][..],
        &["validate"][..],
        &["validate", "-S", "epochs", "pipelines/quickstart.yaml"][..],
        &["dag", "pipelines/quickstart.yaml", "--format", "png"][..],
        &["frobnicate"][..],
    ] {
        let (code, _, stderr) = taper(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
}

/// Garbage input never crashes the binary: it exits 1 with a diagnostic.
#[test]
fn garbage_exits_1_without_a_panic() {
    for file in [
        "binary",
        "deeply-nested-flow",
        "empty",
        "control-characters",
    ] {
        let path = format!("tests/fixtures/errors/{file}.yaml");
        let (code, _, stderr) = taper(&["validate", &path]);
        assert_eq!(code, 1, "{file}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The DAG goes to stdout in each format; parallel stages share a level.
#[test]
fn dag_renders_examples_in_every_format() {
    for format in ["text", "mermaid", "dot"] {
        let (code, stdout, stderr) =
            taper(&["dag", "pipelines/lora-sweep.yaml", "--format", format]);
        assert_eq!(code, 0, "{stderr}");
        insta::assert_snapshot!(format!("dag-lora-sweep-{format}"), stdout);
    }
    let (code, stdout, _) = taper(&["dag", "pipelines/quickstart.yaml"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("dag-quickstart-text", stdout);
}

/// `taper schema` prints the checked-in schema.
#[test]
fn schema_command_prints_the_schema() {
    let (code, stdout, _) = taper(&["schema"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        std::fs::read_to_string("schemas/pipeline.schema.json").expect("schema")
    );
}

/// `taper explain` on a tiny exported model: one line per word (punctuation is a word), the
/// same words and scores as `--json`, and a usage error for a directory that is no model.
#[test]
fn explain_prints_each_word_with_its_score() {
    let dir = tempfile::tempdir().expect("temp dir");
    taper::stages::fixtures::write_tiny_trained_model(dir.path()).expect("tiny model");
    let model = dir.path().join("model");
    let model = model.to_str().expect("utf-8 path");
    let text = "A fun film, but the plot was weak.";
    let (code, stdout, stderr) = taper(&["explain", model, text, "--steps", "16"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("explain-text", stdout);

    let (code, stdout, stderr) = taper(&["explain", model, text, "--steps", "16", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["method"], "integrated-gradients");
    assert_eq!(
        json["words"],
        serde_json::json!(["A", "fun", "film", ",", "but", "the", "plot", "was", "weak", "."])
    );
    assert!(json["completeness_gap"].as_f64().expect("a gap") < 0.05);

    let base = dir.path().join("base");
    let (code, _, stderr) = taper(&["explain", base.to_str().expect("utf-8"), text]);
    assert_eq!(code, 2);
    assert!(stderr.contains("taper::explain::not_a_model"), "{stderr}");
}

/// `taper completions SHELL` prints a script that knows the subcommands, new ones included.
#[test]
fn completions_know_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, stderr) = taper(&["completions", shell]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stdout.contains("validate") && stdout.contains("spec"),
            "{shell}: {stdout}"
        );
    }
    let (code, _, _) = taper(&["completions", "tcsh"]);
    assert_eq!(code, 2);
}
