//! Shared specs (`use:`), sweeps (`matrix:`) and `taper spec`: the fixtures are in
//! `tests/fixtures/specs/`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use taper::fingerprint::{settings_digest, settings_value};
use taper::model::load_file;

use super::diagnostics::render;

fn load(name: &str) -> Result<taper::model::Pipeline, taper::model::LoadError> {
    load_file(Path::new(&format!("tests/fixtures/specs/{name}.yaml")), &[])
}

fn taper(args: &[&str], dir: &Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_taper"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("TAPER_STORE")
        .output()
        .expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Stage keys are kind, settings, upstream content and external content, never the name or
/// how a value was written: equal stages (with equal edges) give equal keys.
#[test]
fn a_spec_use_equals_the_pipeline_written_out() {
    let used = load("uses").expect("valid");
    let full = load("written-out").expect("valid");
    assert_eq!(used.stages, full.stages);
    assert_eq!(used.dependencies(), full.dependencies());
    for (left, right) in used.stages.iter().zip(&full.stages) {
        assert_eq!(
            settings_digest(&settings_value(left)),
            settings_digest(&settings_value(right))
        );
    }
    assert_eq!(used.specs.len(), 1);
    assert_eq!(used.specs[0].name, "greet");
    assert_eq!(used.specs[0].blake3.len(), 64);
}

/// What makes a stage's key, stage names aside: its kind, its settings' digest and where its
/// inputs come from (upstream named through `rename`).
fn key_parts(
    pipeline: &taper::model::Pipeline,
    rename: impl Fn(&str) -> String,
) -> BTreeMap<String, (String, String, Vec<String>)> {
    pipeline
        .stages
        .iter()
        .map(|stage| {
            let mut edges: Vec<String> = pipeline
                .dependencies()
                .iter()
                .filter(|edge| edge.downstream == stage.id)
                .map(|edge| format!("{} via {:?}", rename(edge.upstream.as_str()), edge.via))
                .collect();
            edges.sort();
            let parts = (
                stage.kind().to_string(),
                settings_digest(&settings_value(stage)).to_string(),
                edges,
            );
            (rename(stage.id.as_str()), parts)
        })
        .collect()
}

/// The quickstart `use:`s the text-classification spec; each of its stages has the kind,
/// settings and edges of the stage it replaced in the quickstart written out in full (kept as
/// `tests/fixtures/written-out/quickstart.yaml`), so the same keys: the spec's names are the
/// only change (`reviews` → `data`, `hparams` → `config`, `finetune` → `train`).
#[test]
fn the_quickstart_through_the_spec_keeps_the_written_out_keys() {
    let used = load_file(Path::new("pipelines/quickstart.yaml"), &[]).expect("valid");
    let full =
        load_file(Path::new("tests/fixtures/written-out/quickstart.yaml"), &[]).expect("valid");
    let renamed = |name: &str| {
        match name {
            "reviews" => "data",
            "hparams" => "config",
            "finetune" => "train",
            other => other,
        }
        .to_owned()
    };
    let used_parts = key_parts(&used, str::to_owned);
    assert_eq!(used_parts.len(), 8);
    assert_eq!(used_parts, key_parts(&full, renamed));
    assert_eq!(used.specs.len(), 1);
    assert_eq!(used.specs[0].name, "text-classification");
}

/// The committed `pipelines/quickstart.lock` is the lock of the committed quickstart: the same
/// stages with the same kinds and settings digests, and the spec's current content hash (a
/// changed pipeline or spec without a regenerated lock fails here).
#[test]
fn the_committed_quickstart_lock_matches_the_pipeline() {
    let pipeline = load_file(Path::new("pipelines/quickstart.yaml"), &[]).expect("valid");
    let lock = taper::cache::LockFile::load(Path::new("pipelines/quickstart.lock"))
        .expect("a readable lock file");
    let locked: BTreeMap<String, (String, String)> = lock
        .stages
        .iter()
        .map(|(name, stage)| {
            let digest = stage.settings_digest.to_string();
            (name.clone(), (stage.kind.to_string(), digest))
        })
        .collect();
    let expected: BTreeMap<String, (String, String)> = pipeline
        .stages
        .iter()
        .map(|stage| {
            let digest = settings_digest(&settings_value(stage)).to_string();
            (stage.id.to_string(), (stage.kind().to_string(), digest))
        })
        .collect();
    assert_eq!(locked, expected);
    let spec = std::fs::read("pipelines/specs/text-classification.yaml").expect("the spec");
    let recorded: Vec<&str> = lock
        .specs
        .values()
        .map(|spec| spec.blake3.as_str())
        .collect();
    assert_eq!(recorded, [blake3::hash(&spec).to_hex().as_str()]);
}

/// A bad name, type, range and choice in a `use:`: each error at the `use:` line and at the
/// declaration in the spec file.
#[test]
fn bad_params_in_a_use_show_both_places() {
    let error = load("bad-use").expect_err("invalid");
    assert_eq!(error.errors().len(), 4);
    insta::assert_snapshot!("spec_bad_use", render(&error));
}

/// A value that passes the spec's declaration but not the stage it feeds: the error is at
/// the spec's line, and the value's origin at the `use:`.
#[test]
fn an_error_inside_a_spec_names_the_use_site() {
    let error = load("value-from-use").expect_err("invalid");
    let rendered = render(&error);
    assert!(rendered.contains("greet.yaml:"), "{rendered}");
    assert!(rendered.contains("value-from-use.yaml:"), "{rendered}");
    insta::assert_snapshot!("spec_value_from_use", rendered);
}

/// 3 × 2 less one excluded plus one included: six variants of the stages that read a swept
/// param; the stages that do not (`hello`, `upper`) exist once.
#[test]
fn a_matrix_expands_variants_and_shares_upstream_stages() {
    let pipeline = load("sweep").expect("valid");
    let names: Vec<&str> = pipeline
        .stages
        .iter()
        .map(|stage| stage.id.as_str())
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|name| name.starts_with("config-"))
            .count(),
        6
    );
    assert_eq!(names.iter().filter(|name| **name == "hello").count(), 1);
    assert_eq!(names.iter().filter(|name| **name == "upper").count(), 1);
    assert!(names.contains(&"config-epochs1-lr1e-4"), "{names:?}");
    assert!(names.contains(&"config-epochs3-lr3e-4"), "{names:?}");
    assert!(!names.contains(&"config-epochs2-lr1e-5"), "{names:?}");
    let variants = &pipeline.specs[0].variants;
    assert_eq!(variants.len(), 6);
    assert_eq!(variants[0].params["lr"], "1e-4");
    assert!(variants[0].stages.contains(&"hello".to_owned()));
}

/// Changing one default of the spec reruns only the stage that reads it, `plan` names the
/// spec line, and the lock file records the spec's hash and param values.
#[test]
fn a_changed_spec_default_reruns_only_what_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["greet", "uses"] {
        std::fs::copy(
            format!("tests/fixtures/specs/{name}.yaml"),
            dir.path().join(format!("{name}.yaml")),
        )
        .expect("copy");
    }
    std::fs::create_dir(dir.path().join(".taper")).expect(".taper");
    let (code, _, stderr) = taper(&["run", "uses.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    let lock = std::fs::read_to_string(dir.path().join("uses.lock")).expect("lock");
    assert!(
        lock.contains("specs:\n  greet:\n    path: greet.yaml\n    spec: greet"),
        "{lock}"
    );

    let spec = dir.path().join("greet.yaml");
    let text = std::fs::read_to_string(&spec).expect("spec");
    std::fs::write(&spec, text.replace("default: 1\n", "default: 2\n")).expect("write");
    let (code, stdout, stderr) = taper(&["plan", "uses.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    let plan = format!("{stdout}{stderr}");
    let runs: Vec<&str> = plan.lines().filter(|line| line.contains("run")).collect();
    assert!(plan.contains("g-config"), "{plan}");
    // The spec line that caused it.
    assert!(
        plan.contains("spec `greet` param `epochs` changed (1 → 2) at greet.yaml:16"),
        "{plan}"
    );
    assert!(
        runs.iter()
            .all(|line| !line.contains("g-hello") && !line.contains("after")),
        "{plan}"
    );
}

#[test]
fn spec_show_documents_params_and_spec_new_writes_a_valid_starter() {
    let fixtures = Path::new("tests/fixtures/specs")
        .canonicalize()
        .expect("dir");
    let (code, stdout, stderr) = taper(&["spec", "show", "greet.yaml"], &fixtures);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("spec_show_text", stdout);
    let (code, stdout, stderr) = taper(&["spec", "show", "greet.yaml", "--md"], &fixtures);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("spec_show_md", stdout);

    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = taper(&["spec", "new", "specs/team.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = taper(&["spec", "show", "specs/team.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("learning_rate: float = 5e-5"), "{stdout}");
    // Never over a spec someone wrote.
    let (code, _, _) = taper(&["spec", "new", "specs/team.yaml"], dir.path());
    assert_eq!(code, 2);
}

/// `taper plan` shows how a sweep expanded: the shared stages, then each variant's values.
#[test]
fn plan_shows_the_expansion() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["greet", "sweep"] {
        std::fs::copy(
            format!("tests/fixtures/specs/{name}.yaml"),
            dir.path().join(format!("{name}.yaml")),
        )
        .expect("copy");
    }
    std::fs::create_dir(dir.path().join(".taper")).expect(".taper");
    let (code, stdout, stderr) = taper(&["plan", "sweep.yaml"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("sweep `greet` (greet.yaml): 6 variants; shared: `hello`, `upper`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  epochs=3 lr=3e-4  `config-epochs3-lr3e-4`"),
        "{stdout}"
    );
}

/// `taper validate --json`: one object per file; each error with its code and every label's
/// file, line and column, the spec's included.
#[test]
fn validate_json_lists_errors_with_both_files() {
    let fixtures = Path::new("tests/fixtures/specs")
        .canonicalize()
        .expect("dir");
    let (code, stdout, stderr) = taper(
        &["validate", "--json", "uses.yaml", "bad-use.yaml"],
        &fixtures,
    );
    assert_eq!(code, 1, "{stderr}");
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["ok"], true);
    assert_eq!(records[0]["stages"], 4);
    let errors = records[1]["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 4);
    assert_eq!(errors[0]["code"], "taper::spec::use_spec");
    assert_eq!(errors[0]["labels"][0]["file"], "bad-use.yaml");
    assert_eq!(errors[0]["labels"][0]["line"], 7);
    assert_eq!(errors[0]["labels"][1]["file"], "greet.yaml");
    assert_eq!(errors[0]["labels"][1]["line"], 4);
}
