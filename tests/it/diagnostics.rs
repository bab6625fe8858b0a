//! The error corpus: every file under `tests/fixtures/errors/` is an invalid pipeline (one
//! failure class each, plus cases found by fuzzing), and its rendered diagnostic, with file
//! name, line and column, is a snapshot. A new fixture without a test here fails
//! `every_fixture_has_a_snapshot_test`.

use std::path::Path;

use miette::{GraphicalReportHandler, GraphicalTheme};
use taper::model::{load_file, LoadError, Override};

pub fn render(error: &LoadError) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(80)
        .render_report(&mut out, error)
        .expect("rendering into a String cannot fail");
    out
}

fn assert_fixture(name: &str) {
    let path = format!("tests/fixtures/errors/{name}.yaml");
    let error = load_file(Path::new(&path), &[]).expect_err("every fixture is invalid");
    insta::assert_snapshot!(name, render(&error));
}

macro_rules! fixtures {
    ($($test:ident => $name:literal),* $(,)?) => {
        const FIXTURES: &[&str] = &[$($name),*];
        $(
            #[test]
            fn $test() {
                assert_fixture($name);
            }
        )*
    };
}

fixtures!(
    alias => "alias",
    ambiguous_source => "ambiguous-source",
    bad_interpolation => "bad-interpolation",
    binary => "binary",
    command_settings_under_with => "command-settings-under-with",
    complex_key => "complex-key",
    control_characters => "control-characters",
    cycle => "cycle",
    cycle_self => "cycle-self",
    cycle_with_bystander => "cycle-with-bystander",
    deploy_gates => "deploy-gates",
    distillation => "distillation",
    deeply_nested => "deeply-nested",
    deeply_nested_flow => "deeply-nested-flow",
    duplicate_key => "duplicate-key",
    duplicate_key_far_apart => "duplicate-key-far-apart",
    duplicate_output => "duplicate-output",
    edge_type_mismatch => "edge-type-mismatch",
    empty => "empty",
    every_bad_field => "every-bad-field",
    invalid_stage_name => "invalid-stage-name",
    many_errors => "many-errors",
    missing_input => "missing-input",
    missing_kind => "missing-kind",
    missing_setting => "missing-setting",
    missing_stages => "missing-stages",
    multiple_documents => "multiple-documents",
    non_ascii => "non-ascii",
    not_a_mapping => "not-a-mapping",
    only_comments => "only-comments",
    out_of_range => "out-of-range",
    quoted_number_crlf => "quoted-number-crlf",
    output_outside_project => "output-outside-project",
    output_climbing_out => "output-climbing-out",
    reserved_output => "reserved-output",
    run_on_ml_stage => "run-on-ml-stage",
    stage_not_a_mapping => "stage-not-a-mapping",
    split_rules => "split-rules",
    syntax_error => "syntax-error",
    tag => "tag",
    tab_indent => "tab-indent",
    unclosed_flow => "unclosed-flow",
    unknown_enum_value => "unknown-enum-value",
    unknown_input_slot => "unknown-input-slot",
    unknown_kind => "unknown-kind",
    unknown_setting => "unknown-setting",
    unknown_stage_key => "unknown-stage-key",
    unknown_stage_reference => "unknown-stage-reference",
    unknown_top_level_key => "unknown-top-level-key",
    unresolved_param => "unresolved-param",
    wrong_type => "wrong-type",
    wrong_type_from_param => "wrong-type-from-param",
    wrong_version => "wrong-version"
);

/// Every fixture file is covered by a snapshot test above.
#[test]
fn every_fixture_has_a_snapshot_test() {
    let mut files: Vec<String> = std::fs::read_dir("tests/fixtures/errors")
        .expect("the corpus directory exists")
        .map(|entry| {
            entry
                .expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|name| name.strip_suffix(".yaml").map(str::to_owned))
        .collect();
    files.sort();
    let mut tested = FIXTURES.to_vec();
    tested.sort_unstable();
    assert_eq!(files, tested);
    assert!(FIXTURES.len() >= 25);
}

/// A file over the size limit is refused before parsing, with its size in the message.
#[test]
fn huge_file_is_refused() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("huge.yaml");
    let mut text = String::from("version: 1\nname: huge\nstages:\n");
    let mut index = 0;
    while text.len() <= 9 * 1024 * 1024 {
        text.push_str(&format!(
            "  stage-{index}: {{ kind: command, run: echo {index} }}\n"
        ));
        index += 1;
    }
    std::fs::write(&path, &text).expect("write");
    let error = load_file(&path, &[]).expect_err("too large");
    let rendered = render(&error).replace(&path.display().to_string(), "[TEMP]/huge.yaml");
    insta::assert_snapshot!("huge-file", rendered);
}

/// A bad override is reported like a bad line of the file, pointing at the override text; one
/// that breaks a stage from a `use:` points at the spec's line and at the `use:` entry.
#[test]
fn bad_overrides_point_at_the_override_text() {
    let overrides: Vec<Override> = [
        "config.epochs=many",
        "nope.epochs=1",
        "params.rate=1",
        "config.method.r=4",
    ]
    .iter()
    .map(|text| text.parse().expect("well-formed"))
    .collect();
    let error = load_file(Path::new("pipelines/quickstart.yaml"), &overrides).expect_err("invalid");
    insta::assert_snapshot!("bad-overrides", render(&error));
}

/// Overrides apply to the raw layer after `use:` expansion: settings of a spec's stages (by
/// their expanded names), nested settings and command stage keys.
#[test]
fn overrides_change_spec_stages_settings_and_commands() {
    use taper::model::StageSettings;
    let overrides: Vec<Override> = [
        "config.learning_rate=0.00002",
        "config.epochs=3",
        "report.run=make report",
        "data.split.seed=7",
    ]
    .iter()
    .map(|text| text.parse().expect("well-formed"))
    .collect();
    let pipeline = load_file(Path::new("pipelines/quickstart.yaml"), &overrides).expect("valid");
    let settings = |id: &str| {
        &pipeline
            .stages
            .iter()
            .find(|stage| stage.id.as_str() == id)
            .expect("stage")
            .settings
    };
    let StageSettings::Configure(configure) = settings("config") else {
        panic!("configure")
    };
    assert_eq!(configure.epochs, 3);
    assert_eq!(configure.learning_rate, 2e-5);
    let StageSettings::Command(command) = settings("report") else {
        panic!("command")
    };
    assert_eq!(command.run, "make report");
    let StageSettings::PrepareData(prepare) = settings("data") else {
        panic!("prepare-data")
    };
    assert_eq!(prepare.split.seed, 7);
    assert_eq!(prepare.max_length, 64);
}

/// A UTF-8 byte-order mark (added by some Windows editors) is not part of the first key.
#[test]
fn byte_order_mark_is_ignored() {
    let text = "\u{feff}version: 1\nname: bom\nstages:\n  a: { kind: command, run: x }\n";
    let pipeline =
        taper::model::load_str(Path::new("bom.yaml"), text, ".".into(), &[]).expect("valid");
    assert_eq!(pipeline.name, "bom");
}
