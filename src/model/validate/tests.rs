//! Validation end to end: pipeline text in, the pipeline or its errors out. Through
//! `load_str`, so each test states a rule as a user meets it.

use std::path::{Path, PathBuf};

use crate::model::{load_str, LoadError, ModelError, Pipeline, StageSettings};

fn load(text: &str) -> Result<Pipeline, LoadError> {
    load_str(Path::new("p.yaml"), text, PathBuf::from("."), &[])
}

fn errors(text: &str) -> Vec<ModelError> {
    load(text).expect_err("invalid").errors().to_vec()
}

const HEAD: &str = "version: 1\nname: t\nparams: { lr: 2e-5, rows: 10, tag: v1 }\nstages:\n";

#[test]
fn whole_value_params_keep_their_type_and_spliced_ones_become_text() {
    let pipeline = load(&format!(
        "{HEAD}  c: {{ kind: configure, with: {{ learning_rate: \"${{params.lr}}\", epochs: \"${{params.rows}}\" }} }}\n  r: {{ kind: command, run: \"x --rows ${{params.rows}} $${{HOME}} ${{params.tag}}\" }}\n"
    ))
    .expect("valid");
    let StageSettings::Configure(configure) = &pipeline.stages[0].settings else {
        panic!("configure")
    };
    assert_eq!(configure.learning_rate, 0.00002);
    assert_eq!(configure.epochs, 10);
    let StageSettings::Command(command) = &pipeline.stages[1].settings else {
        panic!("command")
    };
    assert_eq!(command.run, "x --rows 10 ${HOME} v1");
    assert_eq!(pipeline.params["lr"], serde_json::json!(2e-5));
}

#[test]
fn an_empty_with_means_all_defaults() {
    let pipeline = load(&format!("{HEAD}  c:\n    kind: configure\n    with:\n")).expect("valid");
    let StageSettings::Configure(configure) = &pipeline.stages[0].settings else {
        panic!("configure")
    };
    assert_eq!(configure.batch_size, 16);
}

#[test]
fn command_paths_are_normalized() {
    let pipeline = load(&format!(
        "{HEAD}  a: {{ kind: command, run: x, deps: [./data/../raw.csv], outs: [out.d/] }}\n"
    ))
    .expect("valid");
    let StageSettings::Command(command) = &pipeline.stages[0].settings else {
        panic!("command")
    };
    assert_eq!(command.deps, [PathBuf::from("raw.csv")]);
    assert_eq!(command.outs, [PathBuf::from("out.d")]);
}

#[test]
fn each_independent_problem_is_reported() {
    let found = errors(&format!(
        "{HEAD}  a: {{ kind: configure, with: {{ epochs: x }} }}\n  b: {{ kind: nope }}\n  c: {{ kind: train, inputs: {{ model: zz }} }}\n"
    ));
    let codes: Vec<String> = found
        .iter()
        .map(|error| {
            miette::Diagnostic::code(error)
                .map(|code| code.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        codes,
        [
            "taper::model::invalid_value",
            "taper::model::unknown_kind",
            "taper::model::missing_input",
            "taper::model::missing_input",
            "taper::model::unknown_stage",
        ]
    );
}

/// Each error's message and the text its first label covers.
fn located(text: &str) -> Vec<(String, String)> {
    errors(text)
        .iter()
        .map(|error| {
            let label = miette::Diagnostic::labels(error)
                .and_then(|mut labels| labels.next())
                .expect("every error is labelled");
            let at = &text[label.offset()..label.offset() + label.len()];
            (error.to_string(), at.to_owned())
        })
        .collect()
}

/// [`located`]'s pairs as `&str`s, to compare with literals.
fn borrowed(found: &[(String, String)]) -> Vec<(&str, &str)> {
    found
        .iter()
        .map(|(message, at)| (message.as_str(), at.as_str()))
        .collect()
}

fn command_paths(text: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let pipeline = load(text).expect("valid");
    let StageSettings::Command(command) = &pipeline.stages[0].settings else {
        panic!("command")
    };
    (command.deps.clone(), command.outs.clone())
}

#[test]
fn a_dep_above_the_pipeline_directory_keeps_its_parents() {
    let (deps, _) = command_paths(&format!(
        "{HEAD}  a: {{ kind: command, run: x, deps: [../../secret.txt, a/../../up.txt, /abs/f] }}\n"
    ));
    assert_eq!(
        deps,
        [
            PathBuf::from("../../secret.txt"),
            PathBuf::from("../up.txt"),
            PathBuf::from("/abs/f")
        ]
    );
}

#[test]
fn outs_leaving_the_pipeline_directory_are_refused() {
    let found = located(&format!(
        "{HEAD}  a: {{ kind: command, run: x, outs: [../../secret.txt, /tmp/x, ., a/.., ok.txt] }}\n"
    ));
    let at: Vec<&str> = found.iter().map(|(_, at)| at.as_str()).collect();
    assert_eq!(at, ["../../secret.txt", "/tmp/x", ".", "a/.."]);
}

#[test]
fn outs_over_paths_taper_writes_are_refused_at_the_item() {
    for (out, normalized, what) in [
        ("cache", "cache", "the default store `cache`"),
        (
            "./cache/objects/",
            "cache/objects",
            "the default store `cache`",
        ),
        ("p.yaml", "p.yaml", "the pipeline file `p.yaml`"),
        ("p.lock", "p.lock", "the lock file `p.lock`"),
        (
            "out/p/m/config.json",
            "out/p/m/config.json",
            "the artifacts of stage `m` (`out/p/m`)",
        ),
        (
            "out/p/m",
            "out/p/m",
            "the artifacts of stage `m` (`out/p/m`)",
        ),
        (
            "out/p/a.log",
            "out/p/a.log",
            "the log of stage `a` (`out/p/a.log`)",
        ),
        ("out", "out", "the log of stage `a` (`out/p/a.log`)"),
    ] {
        let found = located(&format!(
            "{HEAD}  m: {{ kind: configure }}\n  a: {{ kind: command, run: x, outs: [\"{out}\"] }}\n"
        ));
        assert_eq!(
            found,
            [(
                format!("output `{normalized}` of stage `a` overlaps {what}"),
                format!("\"{out}\"")
            )]
        );
    }
    for fine in [
        "cach",
        "caches/x",
        "out/p/report.txt",
        "out/p/mm",
        "out/m",
        "p.yaml.bak",
    ] {
        assert!(
            load(&format!(
                "{HEAD}  m: {{ kind: configure }}\n  a: {{ kind: command, run: x, outs: [{fine}] }}\n"
            ))
            .is_ok(),
            "{fine}"
        );
    }
}

#[test]
fn every_wrong_value_of_a_with_block_is_reported_in_words() {
    let found = located(&format!(
        "{HEAD}  c: {{ kind: configure, with: {{ epochs: -1, batch_size: x, seed: -2, warmup_ratio: 1.5, weight_decay: .inf }} }}\n"
    ));
    let at: Vec<&str> = found.iter().map(|(_, at)| at.as_str()).collect();
    assert_eq!(at, ["-1", "x", "-2", "1.5", ".inf"]);
    assert_eq!(
        found[0].0,
        "in stage `c`, `epochs`: expected a whole number ≥ 0, found -1"
    );
}

const TRAINED: &str = "  base: { kind: select-model, with: { source: { path: m } } }\n  data:\n    kind: prepare-data\n    inputs: { model: base }\n    with: { source: { path: d.csv }, split: { train: 0.8, test: 0.2 } }\n  conf: { kind: configure }\n  tuned: { kind: train, inputs: { model: base, data: data, config: conf } }\n  eval: { kind: evaluate, inputs: { model: tuned, data: data } }\n";

#[test]
fn deploy_gates_name_known_metrics_in_range_and_need_metrics() {
    assert!(load(&format!(
        "{HEAD}{TRAINED}  ship: {{ kind: deploy, inputs: {{ model: tuned, metrics: eval }}, with: {{ require: {{ accuracy: 0.8, log_loss: 2 }} }} }}\n"
    ))
    .is_ok());
    let found = located(&format!(
        "{HEAD}{TRAINED}  ship: {{ kind: deploy, inputs: {{ model: tuned, metrics: eval }}, with: {{ require: {{ accuracy: .nan, macro_f1: 1.5, acuracy: 0.8 }} }} }}\n  blind: {{ kind: deploy, inputs: {{ model: tuned }}, with: {{ require: {{ accuracy: 0.8 }} }} }}\n"
    ));
    assert_eq!(
        borrowed(&found),
        [
            ("invalid `require.accuracy` in stage `ship`: the minimum for `accuracy` must be a number from 0 to 1, not NaN", ".nan"),
            ("invalid `require.macro_f1` in stage `ship`: the minimum for `macro_f1` must be a number from 0 to 1, not 1.5", "1.5"),
            ("invalid `require.acuracy` in stage `ship`: `acuracy` is not a metric that `evaluate` reports", "0.8"),
            ("invalid `require` in stage `blind`: gates need metrics, but the stage has no `metrics` input", "{ accuracy: 0.8 }"),
        ]
    );
    let acuracy = &errors(&format!(
        "{HEAD}{TRAINED}  ship: {{ kind: deploy, inputs: {{ model: tuned, metrics: eval }}, with: {{ require: {{ acuracy: 0.8 }} }} }}\n"
    ))[0];
    assert_eq!(
        miette::Diagnostic::help(acuracy).map(|help| help.to_string()),
        Some("did you mean `accuracy`?".to_owned())
    );
}

#[test]
fn an_int8_deploy_needs_metrics_and_data_to_evaluate_on() {
    assert!(load(&format!(
        "{HEAD}{TRAINED}  ship: {{ kind: deploy, inputs: {{ model: tuned, metrics: eval, data: data }}, with: {{ precision: int8 }} }}\n"
    ))
    .is_ok());
    let found = located(&format!(
        "{HEAD}{TRAINED}  ship: {{ kind: deploy, inputs: {{ model: tuned, metrics: eval }}, with: {{ precision: int8 }} }}\n  bare: {{ kind: deploy, inputs: {{ model: tuned }}, with: {{ precision: int8 }} }}\n  odd: {{ kind: deploy, inputs: {{ model: tuned }}, with: {{ precision: int4 }} }}\n"
    ));
    let summary: Vec<(&str, &str)> = found
        .iter()
        .map(|(message, at)| (message.as_str(), at.as_str()))
        .collect();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert_eq!(
        summary[..2],
        [
            ("invalid `precision` in stage `ship`: `precision: int8` evaluates the quantized model again, but the stage has no `data` input", "int8"),
            ("invalid `precision` in stage `bare`: `precision: int8` evaluates the quantized model again, but the stage has no `metrics` or `data` input", "int8"),
        ]
    );
    assert!(
        summary[2].0.contains("int4") && summary[2].1 == "int4",
        "{summary:?}"
    );
}

#[test]
fn split_fractions_over_one_are_refused() {
    let found = located(&format!(
        "{HEAD}  base: {{ kind: select-model, with: {{ source: {{ path: m }} }} }}\n  data:\n    kind: prepare-data\n    inputs: {{ model: base }}\n    with: {{ source: {{ path: d.csv }}, split: {{ train: 0.7, validation: 100, test: 0.5 }} }}\n"
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].0,
        "invalid `split` in stage `data`: the split fractions add up to 1.2, more than all the rows"
    );
}

#[test]
fn evaluating_a_split_the_data_never_makes_is_refused() {
    // An `ood` dataset is read at the same split as `data`: `other` makes no `validation`.
    let pipeline = TRAINED.replace(
        "  eval: { kind: evaluate, inputs: { model: tuned, data: data } }\n",
        "  other:\n    kind: prepare-data\n    inputs: { model: base }\n    with: { source: { path: o.csv }, split: { train: 0.5, test: 0.5 } }\n  eval: { kind: evaluate, inputs: { model: tuned, data: data, ood: other }, with: { split: validation } }\n  why: { kind: explain, inputs: { model: tuned, data: data } }\n",
    );
    let found = located(&format!("{HEAD}{pipeline}"));
    assert_eq!(
        found,
        [
            (
                "invalid `split` in stage `eval`: stage `data` makes no `validation` split"
                    .to_owned(),
                "validation".to_owned()
            ),
            (
                "invalid `split` in stage `eval`: stage `other` makes no `validation` split"
                    .to_owned(),
                "validation".to_owned()
            )
        ]
    );
}

#[test]
fn a_stage_reading_its_own_output_is_a_cycle() {
    let found = errors(&format!(
        "{HEAD}  a: {{ kind: command, run: x, deps: [o/x], outs: [o] }}\n"
    ));
    assert!(
        matches!(&found[..], [ModelError::Cycle { path, .. }] if path == "`a` → `a`"),
        "{found:?}"
    );
}

fn render(error: &LoadError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(200)
        .render_report(&mut out, error)
        .expect("rendering into a String cannot fail");
    out
}

#[test]
fn a_param_bomb_is_an_error_at_the_use_that_passes_the_bound() {
    let big = "x".repeat(200_000);
    let uses: String = (0..6_000)
        .map(|index| format!("  s{index}: {{ kind: command, run: \"${{params.big}}\" }}\n"))
        .collect();
    let found = errors(&format!(
        "version: 1\nname: t\nparams:\n  big: {big}\nstages:\n{uses}"
    ));
    let [ModelError::ExpansionTooLarge {
        param, size, span, ..
    }] = &found[..]
    else {
        panic!("{found:?}")
    };
    assert_eq!(param, "big");
    assert!(*size > 200_000);
    // 8 MiB hold 41 copies of 200 KB: the 42nd use, in stage `s41`, is the one refused.
    let text = format!("version: 1\nname: t\nparams:\n  big: {big}\nstages:\n{uses}");
    let at = text.find("  s41:").expect("stage s41") + "  s41: { kind: command, run: ".len();
    assert_eq!(span.offset(), at);
}

#[test]
fn params_using_params_resolve_and_doubling_them_is_bounded() {
    let pipeline = load(
        "version: 1\nname: t\nparams: { a: \"${params.b}-x\", b: \"${params.c}\", c: 7 }\nstages:\n  s: { kind: command, run: \"go ${params.a}\" }\n",
    )
    .expect("valid");
    let StageSettings::Command(command) = &pipeline.stages[0].settings else {
        panic!("command")
    };
    assert_eq!(command.run, "go 7-x");
    // Each level doubles the one below: 2^40 bytes if nothing stopped it.
    let mut params = String::from("  p0: xxxxxxxxxxxxxxxx\n");
    for level in 1..=40 {
        let below = level - 1;
        params.push_str(&format!(
            "  p{level}: \"${{params.p{below}}}${{params.p{below}}}\"\n"
        ));
    }
    let found = errors(&format!(
        "version: 1\nname: t\nparams:\n{params}stages:\n  s: {{ kind: command, run: \"${{params.p40}}\" }}\n"
    ));
    assert!(
        matches!(&found[..], [ModelError::ExpansionTooLarge { .. }]),
        "{found:?}"
    );
}

#[test]
fn params_in_a_loop_are_one_error_naming_the_loop() {
    let found = errors(
        "version: 1\nname: t\nparams: { a: \"${params.b}\", b: \"x ${params.a}\", c: \"${params.c}\" }\nstages:\n  s: { kind: command, run: \"${params.a} ${params.c}\", deps: [\"${params.a}\", \"${params.c}\"] }\n",
    );
    let paths: Vec<&str> = found
        .iter()
        .map(|error| match error {
            ModelError::ParamCycle { path, .. } => path.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(paths, ["`a` → `b` → `a`", "`c` → `c`"]);
}

#[test]
fn a_cycle_through_50_000_stages_is_reported_with_a_short_path() {
    let count = 50_000;
    let stages: String = (0..count)
        .map(|index| {
            let next = (index + 1) % count;
            format!("  s{index}: {{ kind: command, run: x, deps: [d{next}], outs: [d{index}] }}\n")
        })
        .collect();
    let found = errors(&format!("version: 1\nname: t\nstages:\n{stages}"));
    let [ModelError::Cycle { path, edges }] = &found[..] else {
        panic!("{} errors", found.len())
    };
    assert!(path.starts_with("`s0` → `s49999` → `s49998`"), "{path}");
    assert!(
        path.contains("… (49989 more stages) → `s1` → `s0`"),
        "{path}"
    );
    assert_eq!(edges.len(), super::edges::CYCLE_LABELS_SHOWN);
}

#[test]
fn a_report_of_many_errors_renders_the_first_ones_and_counts_the_rest() {
    let stages: String = (0..60)
        .map(|index| format!("  s{index}: {{ kind: command, run: x, bogus: 1 }}\n"))
        .collect();
    let error = load(&format!("version: 1\nname: t\nstages:\n{stages}")).expect_err("invalid");
    assert_eq!(error.errors().len(), 60);
    let out = render(&error);
    assert_eq!(
        out.matches("unknown key `bogus`").count(),
        crate::model::MAX_RENDERED_ERRORS
    );
    assert!(out.contains("…and 10 more errors"), "{out}");
    assert!(out.contains("60 errors"), "{out}");
}

#[test]
fn augmentation_and_robustness_settings_are_checked_at_their_place() {
    let pipeline = TRAINED
        .replace(
            "split: { train: 0.8, test: 0.2 } }",
            "split: { train: 0.8, test: 0.2 }, augment: { copies: 0, ops: { delete: 1.5, typo: .nan } } }",
        )
        .replace(
            "  eval: { kind: evaluate, inputs: { model: tuned, data: data } }\n",
            "  eval: { kind: evaluate, inputs: { model: tuned, data: data }, with: { robustness: { typo: 0, draws: 0 } } }\n  none: { kind: evaluate, inputs: { model: tuned, data: data }, with: { robustness: { seed: 1 } } }\n",
        );
    let found = located(&format!("{HEAD}{pipeline}"));
    assert_eq!(
        borrowed(&found),
        [
            ("invalid `augment.copies` in stage `data`: must be between 1 and 16", "0"),
            ("invalid `augment.ops.delete` in stage `data`: must be a rate from 0 to 1, not 1.5", "1.5"),
            ("invalid `augment.ops.typo` in stage `data`: must be a rate from 0 to 1, not NaN", ".nan"),
            ("invalid `robustness.typo` in stage `eval`: must be a rate above 0 and at most 1, not 0", "0"),
            ("invalid `robustness.draws` in stage `eval`: must be from 1 to 32, not 0", "0"),
            ("invalid `robustness` in stage `none`: names no perturbation", "{ seed: 1 }"),
        ]
    );
    let no_ops = TRAINED.replace(
        "split: { train: 0.8, test: 0.2 } }",
        "split: { train: 0.8, test: 0.2 }, augment: { ops: { swap: 0 } } }",
    );
    assert_eq!(
        located(&format!("{HEAD}{no_ops}"))[0].0,
        "invalid `augment.ops` in stage `data`: gives no op a rate above 0, so nothing would be augmented"
    );
    let valid = TRAINED
        .replace(
            "split: { train: 0.8, test: 0.2 } }",
            "split: { train: 0.8, test: 0.2 }, augment: { ops: { delete: 0.1, typo: 0.05 } } }",
        )
        .replace(
            "inputs: { model: tuned, data: data } }",
            "inputs: { model: tuned, data: data }, with: { robustness: { casing: true } } }",
        );
    let pipeline = load(&format!("{HEAD}{valid}")).expect("valid");
    let StageSettings::PrepareData(data) = &pipeline.stages[1].settings else {
        panic!("prepare-data")
    };
    let augment = data.augment.as_ref().expect("augment");
    assert_eq!(
        (augment.copies, augment.seed, augment.ops.swap),
        (1, 7, 0.0)
    );
}

/// A `path:` source under another stage's outputs is an edge, as a `command` dep there is:
/// a 3-layer student cut from the model `train` writes must wait for it (and key on it), not
/// read what an earlier run left in `out/p/train/`.
#[test]
fn a_path_source_under_a_stage_output_is_an_edge() {
    let pipeline = load(&format!(
        "{HEAD}  base: {{ kind: select-model, with: {{ source: {{ path: models/minilm }} }} }}\n  data: {{ kind: prepare-data, inputs: {{ model: base }}, with: {{ source: {{ path: ./d/../reviews.csv }}, labels: [a, b], split: {{ train: 0.5, test: 0.5 }} }} }}\n  cfg: {{ kind: configure }}\n  train: {{ kind: train, inputs: {{ model: base, data: data, config: cfg }} }}\n  student: {{ kind: select-model, with: {{ source: {{ path: out/p/train/model }}, layers: 3 }} }}\n"
    ))
    .expect("valid");
    let edges: Vec<(&str, &str, String)> = pipeline
        .dependencies()
        .iter()
        .filter(|edge| edge.downstream.as_str() == "student")
        .map(|edge| {
            let via = format!("{:?}", edge.via);
            (edge.upstream.as_str(), edge.downstream.as_str(), via)
        })
        .collect();
    assert_eq!(
        edges,
        [("train", "student", "Path(\"out/p/train/model\")".to_owned())]
    );
    let external = |id: &str| pipeline.external_paths(&crate::model::StageId(id.to_owned()));
    assert!(external("student").is_empty());
    assert_eq!(external("data"), [PathBuf::from("reviews.csv")]);
    assert_eq!(external("base"), [PathBuf::from("models/minilm")]);
}
