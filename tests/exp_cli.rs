//! End-to-end tests of experiments (issue 11): `taper run` records one per run, `taper exp
//! show | diff | apply | remove` read and act on them, `cache gc` keeps them, and a `command`
//! stage's `metrics:` file reaches the lock file, `taper metrics` and the experiment.

use std::fs;
use std::process::Output;

mod common;
use common::Project;

/// A pipeline param feeds a command that writes a nested metrics file.
const PIPELINE: &str = r#"version: 1
name: demo
params:
  score: 0.5  # the baseline
stages:
  score:
    kind: command
    # writes a nested metrics file
    run: |
      printf '{"eval": {"score": %s}, "history": [1, 2]}' ${params.score} > metrics.json
    metrics: [metrics.json]
"#;

fn ok(project: &Project, args: &[&str]) -> Output {
    let output = project.taper(args);
    assert!(output.status.success(), "{}", project.show(&output));
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A project with [`PIPELINE`] run twice: as written, then with `-S params.score=0.7`.
/// Returns the two experiment ids.
fn two_experiments() -> (Project, String, String) {
    let project = Project::empty();
    project.write("p.yaml", PIPELINE);
    fs::create_dir_all(project.path(".taper")).expect("project marker");
    ok(&project, &["run", "p.yaml"]);
    ok(&project, &["run", "p.yaml", "-S", "params.score=0.7"]);
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&ok(&project, &["exp", "show", "--json"]))).expect("json");
    let ids: Vec<String> = json["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{json:#}");
    (project, ids[0].clone(), ids[1].clone())
}

/// Snapshots `$text` with ids, stage keys and times masked (they vary between runs).
macro_rules! assert_masked {
    ($text:expr, @$snapshot:literal) => {
        insta::with_settings!({filters => vec![
            (r"\b[0-9a-f]{64}\b", "[KEY]"),
            (r"\b[0-9a-f]{12}\b", "[KEY]"),
            (r"\b[0-9a-f]{8}\b", "[ID]"),
            (r#""(duration_ms|wall_ms|finished_at)":\d+"#, "\"$1\":[N]"),
            (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[TIME]"),
        ]}, {
            insta::assert_snapshot!($text, @$snapshot);
        });
    };
}

/// `exp show` tabulates both runs: the override as a param column, the command's nested
/// metric as `<stage>.<dotted name>` (the list in the file is a series, not a metric); sorting,
/// filtering, CSV and Markdown work on any column.
#[test]
fn exp_show_tabulates_runs_with_params_and_metrics() {
    let (project, _, _) = two_experiments();
    assert_masked!(stdout(&ok(&project, &["exp", "show"])), @r"
        id        pipeline  started               commit  params.score  score.eval.score
        [ID]  p.yaml    [TIME]  -                  -            0.5000
        [ID]  p.yaml    [TIME]  -                0.7            0.7000
    ");
    assert_masked!(
        stdout(&ok(&project, &["exp", "show", "p.yaml", "--sort", "score.eval.score", "--desc", "--csv"])),
        @r"
            id,pipeline,started,commit,params.score,score.eval.score
            [ID],p.yaml,[TIME],,0.7,0.7000
            [ID],p.yaml,[TIME],,,0.5000
        "
    );
    assert_masked!(
        stdout(&ok(&project, &["exp", "show", "--filter", "score.eval.score>0.6", "--md"])),
        @r"
            | id | pipeline | started | commit | params.score | score.eval.score |
            | --- | --- | --- | --- | ---: | ---: |
            | [ID] | p.yaml | [TIME] | - | 0.7 | 0.7000 |
        "
    );
    let unknown = project.taper(&["exp", "show", "--sort", "accuracy"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_masked!(project.show(&unknown), @r"
        exit: 1
        --- stdout
        --- stderr
        taper::exp::unknown_column

          × no column `accuracy` in `--sort accuracy`
          help: columns: `id`, `pipeline`, `started`, `commit`, `params.score`,
                `score.eval.score`
    ");
}

/// `taper metrics` reads the command's metrics file (nested, flattened) and the lock file,
/// and `metrics diff` shows only what changed unless `--all`.
#[test]
fn command_metrics_reach_the_lock_file_and_taper_metrics() {
    let (project, _, _) = two_experiments();
    assert_eq!(
        stdout(&ok(&project, &["metrics", "p.yaml"])),
        "score.eval.score  0.7000\n"
    );
    assert_eq!(
        stdout(&ok(&project, &["metrics", "metrics.json", "--json"])),
        "{\"metrics\":{\"eval.score\":0.7},\"schema\":1}\n"
    );
    project.write("old.yaml", "eval:\n  score: 0.5\nsteps: 3\n");
    project.write("new.json", r#"{"eval": {"score": 0.7}, "steps": 3}"#);
    assert_eq!(
        stdout(&ok(&project, &["metrics", "diff", "new.json", "old.yaml"])),
        "metric             old         new      change\neval.score      0.5000      0.7000     +0.2000\n"
    );
    assert_eq!(
        stdout(&ok(
            &project,
            &["metrics", "diff", "new.json", "old.yaml", "--all"]
        ))
        .lines()
        .count(),
        3
    );
}

/// `exp diff` names the override, the setting it changed and the metric it moved.
#[test]
fn exp_diff_shows_params_settings_and_metrics_that_differ() {
    let (project, first, second) = two_experiments();
    assert_masked!(stdout(&ok(&project, &["exp", "diff", &first, &second])), @r#"
        [ID] → [ID]
        params
          params.score  - → 0.7
        stages
          score (key)  [KEY] → [KEY]
          score.run    printf '{"eval": {"score": %s}, "history": [1, 2]}' 0.5 > metrics.json → printf '{"eval": {"score": %s}, "history": [1, 2]}' 0.7 > metrics.json
        metrics
          score.eval.score  0.5000 → 0.7000  (+0.2000)
    "#);
}

/// `exp apply` writes the override into the file (the comment beside it survives), after
/// which `plan` finds everything cached; `cache gc` keeps both experiments' results until one
/// is removed with `exp remove`.
#[test]
fn exp_apply_writes_overrides_back_and_experiments_are_gc_roots() {
    let (project, first, second) = two_experiments();
    let applied = ok(&project, &["exp", "apply", &second[..5]]);
    assert_masked!(project.show(&applied), @r"
        exit: 0
        --- stdout
        --- stderr
        applied experiment `[ID]` to `p.yaml` (1 value)
    ");
    assert_eq!(
        project.read("p.yaml"),
        PIPELINE.replace("score: 0.5  # the baseline", "score: 0.7  # the baseline")
    );
    assert!(stdout(&ok(&project, &["plan", "p.yaml"])).contains("1 cached, 0 will run"));

    // The lock file now holds 0.7; only the first experiment keeps 0.5's result.
    ok(&project, &["cache", "gc", "--keep-runs", "0"]);
    let baseline = ["plan", "p.yaml", "-S", "params.score=0.5"];
    assert!(stdout(&ok(&project, &baseline)).contains("1 cached, 0 will run"));
    ok(&project, &["exp", "remove", &first]);
    ok(&project, &["cache", "gc", "--keep-runs", "0"]);
    assert!(stdout(&ok(&project, &baseline)).contains("0 cached, 1 will run"));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&ok(&project, &["exp", "show", "--json"]))).expect("json");
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(1), "{json:#}");
}

/// Running the same thing again is the same experiment, not a new row.
#[test]
fn a_repeated_run_is_the_same_experiment() {
    let (project, _, _) = two_experiments();
    ok(&project, &["run", "p.yaml", "-S", "params.score=0.7"]);
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&ok(&project, &["exp", "show", "--json"]))).expect("json");
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(2), "{json:#}");
    assert_eq!(json["rows"][1]["stages"]["score"]["status"], "ran");
}

/// `--json` on plan, run (one event per line, ending with the summary) and cache ls: the
/// shapes docs/spec.md documents, each with `"schema": 1`.
#[test]
fn plan_run_and_cache_ls_speak_json() {
    let project = Project::empty();
    project.write("p.yaml", PIPELINE);
    fs::create_dir_all(project.path(".taper")).expect("project marker");
    assert_masked!(stdout(&ok(&project, &["plan", "p.yaml", "--json"])), @r#"
        {"pipeline":"demo","schema":1,"stages":[{"decision":"will-run","key":"[KEY]","reasons":[{"message":"new stage","reason":"new-stage"}],"stage":"score"}],"sweeps":[]}
    "#);
    let run = ok(&project, &["run", "p.yaml", "--json"]);
    assert_masked!(stdout(&run), @r#"
        {"event":"started","reasons":[{"message":"new stage","reason":"new-stage"}],"schema":1,"stage":"score"}
        {"duration_ms":[N],"event":"finished","outputs_unchanged":false,"schema":1,"stage":"score"}
        {"cached":0,"event":"summary","experiment":"[ID]","failed":0,"lock_error":null,"ran":1,"schema":1,"skipped":0,"stages":{"score":{"duration_ms":[N],"key":"[KEY]","kind":"command","metrics":{"eval.score":0.5},"status":"ran"}},"wall_ms":[N]}
    "#);
    assert!(run.stderr.is_empty(), "{}", project.show(&run));
    assert_masked!(stdout(&ok(&project, &["run", "p.yaml", "--json"])), @r#"
        {"event":"cached","restored":[],"schema":1,"stage":"score"}
        {"cached":1,"event":"summary","experiment":"[ID]","failed":0,"lock_error":null,"ran":0,"schema":1,"skipped":0,"stages":{"score":{"duration_ms":[N],"key":"[KEY]","kind":"command","metrics":{"eval.score":0.5},"status":"cached"}},"wall_ms":[N]}
    "#);
    assert_masked!(stdout(&ok(&project, &["cache", "ls", "--json"])), @r#"
        {"results":[{"bytes":43,"duration_ms":[N],"files":1,"finished_at":[N],"key":"[KEY]","kind":"command","metrics":{"eval.score":0.5},"stage":"score"}],"schema":1}
    "#);
    for line in stdout(&run).lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).expect("one JSON object per line");
        assert_eq!(event["schema"], 1, "{line}");
    }
}
