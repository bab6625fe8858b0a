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

/// `taper explain` on a deploy bundle (label names from its `id2label`, the same scores as the
/// trained model it came from), on `PIPELINE.yaml:STAGE` for a `train` and a `deploy` stage
/// (their output directories), and refusals: a tampered bundle, a stage the pipeline lacks.
#[test]
fn explain_takes_a_bundle_or_a_pipeline_stage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    let out = work.join("out").join("quickstart");
    let bundle = out.join("deploy");
    taper::stages::fixtures::write_tiny_bundle(work, &bundle, "key").expect("tiny bundle");
    let trained = work.join("trained");
    std::fs::create_dir_all(&out).expect("out dir");
    std::fs::rename(&trained, out.join("train")).expect("move the trained model");
    let pipeline = work.join("quickstart.yaml");
    std::fs::copy("pipelines/quickstart.yaml", &pipeline).expect("pipeline copy");
    std::fs::create_dir(work.join("specs")).expect("specs dir");
    std::fs::copy(
        "pipelines/specs/text-classification.yaml",
        work.join("specs/text-classification.yaml"),
    )
    .expect("spec copy");
    let text = "the film was good";
    let explain = |target: &str| {
        let (code, stdout, stderr) = taper(&["explain", target, text, "--steps", "16", "--json"]);
        assert_eq!(code, 0, "{target}: {stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).expect("JSON")
    };
    let from_bundle = explain(bundle.to_str().expect("utf-8 path"));
    assert_eq!(
        from_bundle["words"],
        serde_json::json!(["the", "film", "was", "good"])
    );
    let prediction = from_bundle["prediction"].as_str().expect("a label");
    assert!(["LABEL_0", "LABEL_1"].contains(&prediction), "{prediction}");
    let pipeline = pipeline.to_str().expect("utf-8 path");
    let from_deploy = explain(&format!("{pipeline}:deploy"));
    assert_eq!(from_deploy, from_bundle);
    let from_train = explain(&format!("{pipeline}:train"));
    assert_eq!(from_train["words"], from_bundle["words"]);
    let scores = |value: &serde_json::Value| -> Vec<f64> {
        value["scores"]
            .as_array()
            .expect("scores")
            .iter()
            .map(|score| score.as_f64().expect("a number"))
            .collect()
    };
    for (a, b) in scores(&from_train).iter().zip(scores(&from_bundle)) {
        assert!((a - b).abs() < 1e-4, "{from_train} vs {from_bundle}");
    }

    let (code, _, stderr) = taper(&["explain", &format!("{pipeline}:nope"), text]);
    assert_eq!(code, 2);
    assert!(stderr.contains("taper::explain::no_such_stage"), "{stderr}");
    assert!(stderr.contains("train"), "{stderr}");

    std::fs::write(bundle.join("vocab.txt"), "tampered").expect("tamper");
    let (code, _, stderr) = taper(&["explain", bundle.to_str().expect("utf-8 path"), text]);
    assert_ne!(code, 0);
    assert!(stderr.contains("taper::bundle::tampered"), "{stderr}");
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
